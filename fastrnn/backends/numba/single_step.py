"""One time step (T = 1) on the weights as given: cells in a loop, decoding, small calls.

A sequence packs W and U into panels once and reads them T times (:mod:`.weights`). A
single step reads each weight once, so packing would copy every weight to save nothing:
a plain ``fastrnn.forward`` with T = 1 spent most of its time there. Here the two products
``x @ W`` and ``h @ U`` read the arrays as they come (:func:`.unpacked.product`: any
strides, a transposed view read in place), and one compiled pass applies the cell's
pointwise step with the row functions of :mod:`.kernels` (:func:`rows_forward`), so the
step matches the same reference functions as the kernels do (``reference.lstm_step``,
``gru_step``, ``rnn_step``).

The backward is its mirror: one pass turns the output gradients into the gate gradients
dG (B, G*H) (:func:`rows_backward`), then the products give ``dh0 = dG @ U^T``,
``dx = dG @ W^T`` and the weight gradients as ``dG^T @ x`` (G*H, I), returned as their
transposed views: the (I, G*H) shape of ``params`` in torch's memory layout.

``fastrnn.torch``'s cells use the two pointwise passes alone, with torch's own products.

Cells: rnn_tanh, rnn_relu, lstm, gru. lstmp and gru_reset_before take the sequence path.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .kernels import gates_sigm, gru_bwd_row, gru_state_row, lstm_bwd_row, lstm_row, rnn_bwd_row, \
    rnn_row
from .math import JIT
from .unpacked import product

__all__ = ["CELLS", "forward", "backward", "rows_forward", "rows_backward"]

CELLS = frozenset({"rnn_tanh", "rnn_relu", "lstm", "gru"})


# ------------------------------------------------------------------ pointwise passes
# One loop over the batch rows each, calling the row function the sequence kernels use.

@njit(**JIT)
def rnn_rows(ax, ah, bias, relu, h, out):
    B, H = h.shape
    for b in range(B):
        rnn_row(ax[b], ah[b], bias, relu, h[b], out[b], H)


@njit(**JIT)
def lstm_rows(ax, ah, bias, h, c, out, gates, tanhc):
    B, H = h.shape
    for b in range(B):
        lstm_row(gates[b], ax[b], ah[b], bias, c[b], h[b], out[b], tanhc[b], H)


@njit(**JIT)
def gru_rows(ax, ah, bias, bn, h, out, gates):
    B, H = h.shape
    for b in range(B):
        gates_sigm(gates[b], ax[b], ah[b], bias, 0, 2 * H)
        gru_state_row(gates[b], ax[b], ah[b], bias, bn, h[b], out[b], H)


@njit(**JIT)
def rnn_grad_rows(out, relu, dhc, d):
    B, H = out.shape
    for b in range(B):
        rnn_bwd_row(dhc[b], out[b], relu, d[b], H)


@njit(**JIT)
def lstm_grad_rows(gates, cprev, tanhc, dhc, dcc, d):
    B, H = cprev.shape
    for b in range(B):
        lstm_bwd_row(gates[b], cprev[b], tanhc[b], dhc[b], dcc[b], d[b], H)


@njit(**JIT)
def gru_grad_rows(gates, hprev, dhc, dgx, w):
    B, H = hprev.shape
    for b in range(B):
        gru_bwd_row(gates[b], hprev[b], dhc[b], dgx[b], w[b], H)


# --------------------------------------------------------------------------- passes

def forward(cell, x, weights, h0, c0, training):
    """One step: x (1, B, I), h0 (B, H), c0 (B, H) or None, C-contiguous, one dtype.

    Returns (out (1, B, H), h_n, c_n or None, saved or None): ``saved`` holds what
    :func:`backward` reads (the tape of the step).
    """
    p = weights.params
    ax, ah = product(x[0], p["W"]), product(h0, p["U"])
    h, c, step = rows_forward(cell, ax, ah, weights.b, weights.bn, h0, c0, training)
    out = h[None]                        # read by the step's tape (rnn), so h_n is a copy
    if not training:
        return out, h.copy(), c, None
    _, _, _, gates, tanhc, _ = step
    # Beside the step, the keys and (T, B, .) shapes of the sequence kernels' tape
    # (fastrnn.notebook reads them).
    saved = {"single_step": True, "step": step, "out": out, "hprev": h0[None]}
    if gates is not None:
        saved["gates"] = gates[None]
    if cell.name == "lstm":
        saved.update(tanhc=tanhc[None], cprev=c0[None])
    return out, h.copy(), c, saved


def _sum_rows(a: np.ndarray) -> np.ndarray:
    """Column sums accumulated in float64, as the sequence path's bias gradients are."""
    return a.sum(axis=0, dtype=np.float64).astype(a.dtype)


def backward(cell, saved, x, weights, h0, c0, dh, dh_n, dc_n):
    """Gradients of one step (see :func:`forward`); returns (dx, dh0, dc0, params).

    The weight gradients are transposed views of C-contiguous (G*H, I) and (G*H, H)
    arrays: torch's layout of its weights."""
    p = weights.params
    x0 = x[0]
    dh_total = None if dh is None else dh[0]
    if dh_n is not None:
        dh_total = dh_n if dh_total is None else dh_total + dh_n
    dG, dR, direct, dc0 = rows_backward(saved["step"], dh_total, dc_n)
    grads = {"b": _sum_rows(dG), "W": product(dG.T, x0).T, "U": product(dR.T, h0).T}
    if cell.has_recurrent_bias:
        grads["bn"] = _sum_rows(dR[:, 2 * h0.shape[1]:])
    dh0 = product(dR, p["U"].T)
    if direct is not None:
        dh0 += direct
    dx = product(dG, p["W"].T)[None]
    return dx, dh0, dc0, {k: grads[k] for k in cell.param_names}


# ------------------------------------------------------------ the pointwise pass alone
# fastrnn.torch's cells compute a step's products with torch itself (its GEMMs on its own
# thread pool, beside which another pool would contend for the cores) and hand the cell's
# math, one compiled pass each way, to these two.

def rows_forward(cell, ax, ah, b, bn, h0, c0, training):
    """The pointwise step of rnn_tanh/rnn_relu/lstm/gru from its products.

    ax = x @ W (B, G*H), ah = h0 @ U (B, G*H), b (G*H,), bn (H,) (gru, else None), h0, c0
    (B, H) (c0 lstm, else None): C-contiguous, one dtype. Returns (h, c or None, saved or
    None); h and c are new arrays.
    """
    B, H = h0.shape
    dt = ax.dtype
    h = h0.copy()
    c = gates = tanhc = None
    if cell.name == "lstm":
        c = c0.copy()
        gates, tanhc = np.empty((B, 4 * H), dt), np.empty((B, H), dt)
        lstm_rows(ax, ah, b, h, c, h, gates, tanhc)
    elif cell.name == "gru":
        gates = np.empty((B, 4 * H), dt)
        gru_rows(ax, ah, b, bn, h, h, gates)
    else:
        rnn_rows(ax, ah, b, cell.nonlinearity == "relu", h, h)
    saved = (cell, h0, c0, gates, tanhc, h) if training else None
    return h, c, saved


def rows_backward(saved, dh, dc):
    """The gradients of :func:`rows_forward`'s step from dh (B, H) and dc (B, H) (lstm),
    either None for zeros: (dG, dR, direct, dc0). dG (B, G*H) meets x and W (and gives the
    bias gradient), dR meets h0 and U (the same array but for gru), direct is the part of
    dh0 that does not pass through U (gru's z * dh, else None), dc0 (lstm, else None)."""
    cell, h0, c0, gates, tanhc, h = saved
    B, H = h0.shape
    dt = h0.dtype
    dhc = np.zeros((B, H), dt) if dh is None else np.array(dh, dtype=dt)
    dG = np.empty((B, cell.num_gates * H), dt)
    if cell.name == "lstm":
        dc0 = np.zeros((B, H), dt) if dc is None else np.array(dc, dtype=dt)
        lstm_grad_rows(gates, c0, tanhc, dhc, dc0, dG)
        return dG, dG, None, dc0
    if cell.name == "gru":
        dR = np.empty((B, 3 * H), dt)
        gru_grad_rows(gates, h0, dhc, dG, dR)
        return dG, dR, dhc, None
    rnn_grad_rows(h, cell.nonlinearity == "relu", dhc, dG)
    return dG, dG, None, None
