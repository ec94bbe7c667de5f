"""Two biases (input side and recurrent side) folded into fastrnn's ``b`` and ``bn``.

PyTorch keeps ``bias_ih`` and ``bias_hh`` (G*H,), Keras 3's ``GRU(reset_after=True)`` a
``(2, 3H)`` bias of the same two rows. fastrnn has one bias ``b`` plus, for ``gru``,
``bn``: the n part of the recurrent bias, which sits inside ``r * (h U_n + bn)``.

The fold, its documented inverse and the gradient of the fold live here and nowhere
else: :mod:`fastrnn.convert` and ``fastrnn.torch`` use them. The biases are in fastrnn's
gate order; every function takes the array module ``xp`` of its arrays (NumPy or CuPy).
"""

from __future__ import annotations

import numpy as np

from ..core.cells import CellSpec

__all__ = ["fold_biases", "split_biases", "fold_gradients"]

def fold_biases(spec: CellSpec, b_ih, b_hh, H: int, dtype, xp=np) -> dict:
    """fastrnn's ``b`` (and ``bn``) from an input-side and a recurrent-side bias (G*H,),
    either possibly None (a torch module built with ``bias=False``). Always new arrays.

    rnn, lstm: ``b = b_ih + b_hh``. gru: ``b = b_ih + [b_hh_r, b_hh_z, 0]``, ``bn = b_hh_n``.
    """
    gh = spec.num_gates * H
    b = xp.zeros(gh, dtype=dtype) if b_ih is None else b_ih.copy()
    if not spec.has_recurrent_bias:
        if b_hh is not None:
            b += b_hh
        return {"b": b}
    n = spec.gate_slice("n", H)
    if b_hh is None:
        return {"b": b, "bn": xp.zeros(H, dtype=dtype)}
    b[:n.start] += b_hh[:n.start]
    return {"b": b, "bn": b_hh[n].copy()}


def split_biases(spec: CellSpec, b, bn=None, xp=np):
    """The inverse fastrnn writes: ``(bias_ih, bias_hh) = (b, 0)``, or ``(b, [0, 0, bn])``
    for gru. torch -> fastrnn -> torch thus gives the same function with the r, z (and,
    for rnn and lstm, all) recurrent bias moved into ``bias_ih``."""
    b_hh = xp.zeros_like(b)
    if spec.has_recurrent_bias:
        b_hh[spec.gate_slice("n", bn.shape[0])] = bn
    return b.copy(), b_hh


def fold_gradients(spec: CellSpec, db, dbn=None, xp=np):
    """Gradients of the two biases ``(b_ih, b_hh)`` from fastrnn's ``db`` (and ``dbn``):
    the chain rule through :func:`fold_biases`. Two separate arrays (torch's ``.grad``
    of one parameter must not alias another's)."""
    if not spec.has_recurrent_bias:
        return db, db.copy()
    H = dbn.shape[0]
    return db, xp.concatenate([db[:spec.gate_slice("n", H).start], dbn])
