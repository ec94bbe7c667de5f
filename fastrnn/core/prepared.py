"""Prepared weights: a cell's parameters checked, copied and packed once for one backend.

Every call of :func:`fastrnn.forward` with a plain ``params`` mapping checks the arrays and
lets the backend pack them into the layout its kernels read (the numba backend's panels,
say). Calls that reuse the same weights — streaming one frame at a time, decoding one
token at a time, a cell called in a loop — can pay that once: ``w = fastrnn.prepare(cell,
params)`` and then ``fastrnn.forward(cell, x, w)`` anywhere ``params`` goes.

The contract: a :class:`PreparedWeights` is a **snapshot**. ``prepare`` copies the arrays,
so changing the source arrays afterwards (an optimiser step, say) is not seen until they
are prepared again. Nothing is cached behind the caller's back: there is no lookup keyed
on the identity of the arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import backends as _backends
from .cells import CellSpec, get_cell
from .validation import check_params, describe

__all__ = ["PreparedWeights", "prepare"]


class PreparedWeights:
    """A cell's weights packed for one backend (see the module docstring).

    Attributes:
        cell: the :class:`~fastrnn.core.cells.CellSpec`.
        backend: the backend object the weights are packed for.
        input_size, hidden_size: I and H.
        dtype: the dtype of every array (and of the inputs they accept).
        params: the snapshot, name -> read-only array (shapes of :mod:`fastrnn.core.cells`).
        packed: what the backend's kernels read (backend-private).
    """

    __slots__ = ("cell", "backend", "input_size", "hidden_size", "dtype", "params", "packed")

    def __init__(self, cell: CellSpec, backend, params: dict, packed: Any):
        self.cell, self.backend, self.params, self.packed = cell, backend, params, packed
        self.input_size, self.hidden_size = params["W"].shape[0], params["U"].shape[0]
        self.dtype = params["W"].dtype

    def __repr__(self):
        return (f"PreparedWeights(cell={self.cell.name!r}, backend={self.backend.name!r}, "
                f"input_size={self.input_size}, hidden_size={self.hidden_size}, "
                f"dtype={self.dtype})")


def prepare(cell, params, backend="auto") -> PreparedWeights:
    """Check, copy and pack ``params`` of ``cell`` once, for ``backend``.

    Args:
        cell: cell name (see :mod:`fastrnn.core.cells`) or spec.
        params: mapping name -> array with the shapes of the cell (W (I, G*H), U (H, G*H),
            b (G*H,), bn (H,) for gru), one float dtype.
        backend: ``"auto"`` (chosen from the type of ``params["W"]``, as for inputs), a
            backend name or object.

    Returns:
        :class:`PreparedWeights`, accepted by :func:`fastrnn.forward`, :class:`fastrnn.Stepper`
        and the layers wherever ``params`` is; :func:`fastrnn.backward` of such a forward
        returns gradients with the keys of ``params``.
    """
    spec = get_cell(cell)
    if isinstance(params, PreparedWeights):
        raise TypeError(f"params: already a PreparedWeights ({params!r}); pass it to forward "
                        f"as it is, or prepare its .params again for another backend")
    W = params.get("W") if isinstance(params, Mapping) else None
    be = _backends.resolve(backend, W)
    if W is not None and getattr(W, "ndim", None) != 2:
        raise ValueError(f"params['W']: expected a 2-d array (I, {spec.num_gates}*H), got "
                         f"{describe(W)}")
    checked, _ = check_params(be.xp, spec, params, 0 if W is None else int(W.shape[0]),
                              be.dtypes)
    snapshot = {k: be.xp.array(a, copy=True, order="C") for k, a in checked.items()}
    return PreparedWeights(spec, be, _read_only_views(snapshot), be.prepare(spec, snapshot))


def _read_only_views(arrays: dict) -> dict:
    """Views the caller may read but not write (NumPy; device arrays have no such flag)."""
    out = {}
    for k, a in arrays.items():
        view = a.view()
        if hasattr(view.flags, "writeable"):
            view.flags.writeable = False
        out[k] = view
    return out
