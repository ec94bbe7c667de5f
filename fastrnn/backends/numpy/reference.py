"""The NumPy reference backend: the specification every other backend must match.

Written to be read, not to be fast: one time step at a time, each cell's equations as in
the cell table of :mod:`fastrnn.core.cells`, and backward through time as the chain rule applied step by step in reverse.
At every step only the sequences still running take part (``rows``), so padded steps
never touch a state, an output or a gradient, and a NaN in one sequence stays there.
"""

from __future__ import annotations

import numpy as np

from ...core.cells import CellSpec, sigmoid
from ..base import Backend, BackwardOut, ForwardOut

# ----------------------------------------------------------------------------- cells
# Each `*_step` maps (x_t, h, c, params) -> (h_new, c_new, cache) for the running rows;
# each `*_step_backward` maps (dh_new, dc_new, cache, params, grads) -> (dx_t, dh, dc)
# and adds the parameter gradients of this step into `grads`.


def _split(a, parts):
    return np.split(a, parts, axis=-1)


def rnn_step(cell, x_t, h, c, p):
    a = x_t @ p["W"] + h @ p["U"] + p["b"]
    h_new = np.tanh(a) if cell.nonlinearity == "tanh" else np.maximum(a, 0)
    return h_new, None, (x_t, h, a, h_new)


def rnn_step_backward(cell, dh_new, dc_new, cache, p, g):
    x_t, h, a, h_new = cache
    if cell.nonlinearity == "tanh":
        da = dh_new * (1 - h_new * h_new)
    else:
        da = dh_new * (a > 0)
    g["W"] += x_t.T @ da
    g["U"] += h.T @ da
    g["b"] += da.sum(axis=0)
    return da @ p["W"].T, da @ p["U"].T, None


def lstm_step(cell, x_t, h, c, p):
    a = x_t @ p["W"] + h @ p["U"] + p["b"]
    a_i, a_f, a_g, a_o = _split(a, 4)
    i, f, g, o = sigmoid(a_i), sigmoid(a_f), np.tanh(a_g), sigmoid(a_o)
    c_new = f * c + i * g
    tanh_c = np.tanh(c_new)
    h_new = o * tanh_c
    return h_new, c_new, (x_t, h, c, i, f, g, o, tanh_c)


def lstm_step_backward(cell, dh_new, dc_new, cache, p, grads):
    x_t, h, c, i, f, g, o, tanh_c = cache
    do = dh_new * tanh_c
    dc = dc_new + dh_new * o * (1 - tanh_c * tanh_c)
    di, df, dg = dc * g, dc * c, dc * i
    da = np.concatenate([di * i * (1 - i), df * f * (1 - f),
                         dg * (1 - g * g), do * o * (1 - o)], axis=-1)
    grads["W"] += x_t.T @ da
    grads["U"] += h.T @ da
    grads["b"] += da.sum(axis=0)
    return da @ p["W"].T, da @ p["U"].T, dc * f


def lstmp_step(cell, x_t, h, c, p):
    """lstm's step on the P-wide h, then the projection h' = (o * tanh(c')) @ Wr."""
    m, c_new, cache = lstm_step(cell, x_t, h, c, p)
    return m @ p["Wr"], c_new, (cache, m)


def lstmp_step_backward(cell, dh_new, dc_new, cache, p, grads):
    lstm_cache, m = cache
    grads["Wr"] += m.T @ dh_new
    return lstm_step_backward(cell, dh_new @ p["Wr"].T, dc_new, lstm_cache, p, grads)


def gru_step(cell, x_t, h, c, p):
    ax_r, ax_z, ax_n = _split(x_t @ p["W"] + p["b"], 3)
    U_r, U_z, U_n = _split(p["U"], 3)
    r = sigmoid(ax_r + h @ U_r)
    z = sigmoid(ax_z + h @ U_z)
    if cell.has_recurrent_bias:                      # gru: reset applied after U_n
        hn = h @ U_n + p["bn"]
        n = np.tanh(ax_n + r * hn)
    else:                                            # gru_reset_before
        hn = None
        n = np.tanh(ax_n + (r * h) @ U_n)
    h_new = (1 - z) * n + z * h
    return h_new, None, (x_t, h, r, z, n, hn)


def gru_step_backward(cell, dh_new, dc_new, cache, p, grads):
    x_t, h, r, z, n, hn = cache
    U_r, U_z, U_n = _split(p["U"], 3)
    H = h.shape[-1]
    dn = dh_new * (1 - z)
    dz = dh_new * (h - n)
    dh = dh_new * z
    da_n = dn * (1 - n * n)
    if cell.has_recurrent_bias:
        dr = da_n * hn
        dhn = da_n * r                                # gradient of h @ U_n + bn
        dh += dhn @ U_n.T
        grads["U"][:, 2 * H:] += h.T @ dhn
        grads["bn"] += dhn.sum(axis=0)
    else:
        drh = da_n @ U_n.T                            # gradient of r * h
        dr = drh * h
        dh += drh * r
        grads["U"][:, 2 * H:] += (r * h).T @ da_n
    da_r = dr * r * (1 - r)
    da_z = dz * z * (1 - z)
    dh += da_r @ U_r.T + da_z @ U_z.T
    grads["U"][:, :H] += h.T @ da_r
    grads["U"][:, H:2 * H] += h.T @ da_z
    dax = np.concatenate([da_r, da_z, da_n], axis=-1)
    grads["W"] += x_t.T @ dax
    grads["b"] += dax.sum(axis=0)
    return dax @ p["W"].T, dh, None


def _step_functions(cell: CellSpec):
    if cell.name == "lstm":
        return lstm_step, lstm_step_backward
    if cell.name == "lstmp":
        return lstmp_step, lstmp_step_backward
    if cell.is_gru:
        return gru_step, gru_step_backward
    return rnn_step, rnn_step_backward


# ---------------------------------------------------------------------- time order

def step_positions(s: int, lengths, reverse: bool):
    """Batch rows still running at step s and the time index each of them reads.

    Forward direction: step s reads time s. Reverse: sequence b reads time
    lengths[b] - 1 - s, so it runs from its last valid step back to its first.
    Returns (rows, times), two int arrays of equal length.
    """
    rows = np.flatnonzero(s < lengths)
    times = lengths[rows] - 1 - s if reverse else np.full(rows.shape, s)
    return rows, times


# ------------------------------------------------------------------------- backend

class NumpyBackend(Backend):
    """Reference backend: plain NumPy, one readable step at a time."""

    name = "numpy"
    xp = np

    def forward(self, cell, x, params, h0, c0, lengths, reverse, training, *, tf32=False):
        T, B, _ = x.shape
        lengths = np.full(B, T, dtype=np.int64) if lengths is None else lengths
        step, _ = _step_functions(cell)
        h, c = h0.copy(), (c0.copy() if cell.has_cell_state else None)
        out = np.zeros((T, B, h0.shape[1]), dtype=x.dtype)
        caches = []
        for s in range(T):
            rows, times = step_positions(s, lengths, reverse)
            h_new, c_new, cache = step(cell, x[times, rows], h[rows],
                                       None if c is None else c[rows], params)
            h[rows] = h_new
            if c is not None:
                c[rows] = c_new
            out[times, rows] = h_new
            if training:
                caches.append(cache)
        saved = caches if training else None
        return ForwardOut(out, h, c, saved)

    def backward(self, cell, saved, x, params, h0, c0, lengths, reverse, dh, dh_n, dc_n, *,
                 tf32=False):
        T, B, I = x.shape
        lengths = np.full(B, T, dtype=np.int64) if lengths is None else lengths
        _, step_backward = _step_functions(cell)
        grads = {k: np.zeros_like(v) for k, v in params.items()}
        dx = np.zeros_like(x)
        dh_carry = np.zeros_like(h0) if dh_n is None else dh_n.copy()
        dc_carry = None
        if cell.has_cell_state:
            dc_carry = np.zeros_like(c0) if dc_n is None else dc_n.copy()
        for s in reversed(range(T)):
            rows, times = step_positions(s, lengths, reverse)
            dh_new = dh_carry[rows]
            if dh is not None:
                dh_new = dh_new + dh[times, rows]
            dc_new = None if dc_carry is None else dc_carry[rows]
            dx_t, dh_prev, dc_prev = step_backward(cell, dh_new, dc_new, saved[s], params, grads)
            dx[times, rows] = dx_t
            dh_carry[rows] = dh_prev
            if dc_carry is not None:
                dc_carry[rows] = dc_prev
        return BackwardOut(dx, dh_carry, dc_carry, grads)
