"""The per-step readout ``y = activation(h @ Wy + by)`` that every backend shares.

Plain array code written against an array module ``xp`` (NumPy or CuPy): one GEMM over
all rows, so there is nothing a backend would gain by its own kernel. The reference and
the numba backend run it on NumPy, the cupy backend on CuPy.
"""

from __future__ import annotations

__all__ = ["READOUT_ACTIVATIONS", "readout_forward", "readout_backward"]

READOUT_ACTIVATIONS = ("softmax", "sigmoid", "linear")


def readout_forward(xp, h2, Wy, by, activation):
    """y (N, n_y) = activation(h2 @ Wy + by) for h2 (N, H), Wy (H, n_y), by (n_y,)."""
    a = h2 @ Wy + by
    if activation == "linear":
        return a
    if activation == "sigmoid":
        e = xp.exp(-xp.abs(a))                     # exp of -|a| only: no overflow
        return xp.where(a >= 0, 1 / (1 + e), e / (1 + e)).astype(a.dtype, copy=False)
    a = a - a.max(axis=-1, keepdims=True)          # softmax, shifted so exp cannot overflow
    e = xp.exp(a)
    return e / e.sum(axis=-1, keepdims=True)


def readout_backward(xp, h2, Wy, y2, activation, dy2):
    """(dh2 (N, H), dWy (H, n_y), dby (n_y,)) for dy2 = dL/dy (N, n_y)."""
    if activation == "linear":
        da = dy2
    elif activation == "sigmoid":
        da = dy2 * y2 * (1 - y2)
    else:
        da = y2 * (dy2 - (dy2 * y2).sum(axis=-1, keepdims=True))
    return da @ Wy.T, h2.T @ da, da.sum(axis=0)
