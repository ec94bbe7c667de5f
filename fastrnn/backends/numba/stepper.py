"""Streaming inference on the numba kernels: state and work buffers kept between calls.

Each call of :meth:`NumbaStepRunner.run` is one call of the cell's forward kernel (the
same kernel as :func:`fastrnn.forward`, without a tape) on buffers allocated once, so a
step at batch 1 costs the kernel and the dispatch into it, nothing else.
"""

from __future__ import annotations

import numpy as np

from ...core.cells import CellSpec
from . import kernels
from .buffers import chunk_size, dummy, full_lengths, gemm_out
from .gemm import MR, padded
from .launch import launch
from .weights import NumbaWeights

__all__ = ["NumbaStepRunner"]


class NumbaStepRunner:
    """The :class:`fastrnn.backends.base.StepRunner` of the numba backend.

    h, c: the state (B, H), views into zero-padded (Bp, H) buffers the kernels update in
    place (c None unless lstm).
    """

    def __init__(self, cell: CellSpec, weights: NumbaWeights, batch_size: int, dtype):
        self.cell, self.weights = cell, weights
        B = self.batch_size = batch_size
        I, GH = weights.params["W"].shape
        H, P = cell.sizes_of(weights.params)
        self.hidden_size = P                             # the width of h and of the outputs
        Bp = padded(B, MR)
        dt = self.dtype = np.dtype(dtype)
        self._h = np.zeros((Bp, P), dtype=dt)
        self._c = np.zeros((Bp, H), dtype=dt) if cell.has_cell_state else None
        self.h = self._h[:B]
        self.c = None if self._c is None else self._c[:B]
        self._bp, self._chunk = Bp, chunk_size(B, cell.forward_flops(1, B, I, H, P))
        self._none = dummy(dt)
        self._xs = np.zeros((Bp, I), dtype=dt)
        self._ax = gemm_out(Bp, GH, dt)
        if cell.name == "lstm":
            self._work = (gemm_out(Bp, GH, dt), np.empty((Bp, GH), dt), np.empty((Bp, H), dt))
        elif cell.name == "lstmp":
            self._m = np.zeros((Bp, H), dtype=dt)
            self._work = (gemm_out(Bp, GH, dt), gemm_out(Bp, P, dt), np.empty((Bp, GH), dt),
                          np.empty((Bp, H), dt))
        elif cell.name == "gru":
            self._work = (gemm_out(Bp, GH, dt), np.empty((Bp, 4 * H), dt))
        elif cell.name == "gru_reset_before":
            self._work = (gemm_out(Bp, 2 * H, dt), np.zeros((Bp, H), dt), gemm_out(Bp, H, dt),
                          np.empty((Bp, 3 * H), dt))
        else:
            self._work = (gemm_out(Bp, H, dt),)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Outputs (T, B, H), a fresh array, of the chunk x (T, B, I); the state advances.
        Matches reference.NumpyBackend.forward (no lengths, no reverse, no tape)."""
        T, B = x.shape[0], self.batch_size
        out = np.empty((T, B, self.hidden_size), dtype=self.dtype)
        w, none, lens = self.weights, self._none, full_lengths(B, T)
        name = self.cell.name
        if name == "lstm":
            launch(kernels.lstm_forward, self._bp, self._chunk, x, w.Wp, w.Up, w.b, self._h,
                   self._c, lens, False, out, none, none, none, none, False, self._xs, self._ax,
                   *self._work)
        elif name == "lstmp":
            launch(kernels.lstmp_forward, self._bp, self._chunk, x, w.Wp, w.Up, w.Rp, w.b,
                   self._h, self._c, self._m, lens, False, out, none, none, none, none, False,
                   self._xs, self._ax, *self._work)
        elif name == "gru":
            launch(kernels.gru_forward, self._bp, self._chunk, x, w.Wp, w.Up, w.b, w.bn, self._h,
                   lens, False, out, none, none, False, self._xs, self._ax, *self._work)
        elif name == "gru_reset_before":
            launch(kernels.grurb_forward, self._bp, self._chunk, x, w.Wp, w.Up, w.Up_n, w.b,
                   self._h, lens, False, out, none, none, False, self._xs, self._ax, *self._work)
        else:
            launch(kernels.rnn_forward, self._bp, self._chunk, x, w.Wp, w.Up, w.b,
                   name == "rnn_relu", self._h, lens, False, out, none, False, self._xs, self._ax,
                   *self._work)
        return out
