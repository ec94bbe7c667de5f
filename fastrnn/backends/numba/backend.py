"""The numba backend: the whole time loop in fused, compiled kernels (the fast CPU path).

Plan of a forward pass:
1. W and U packed into panels once (:func:`.gemm.pack_panels`).
2. One kernel call runs every step: ``x_t @ W`` and ``h @ U`` through the packed GEMM of
   :mod:`.gemm`, then one pass that adds them and the bias, applies the gates, updates
   the state, masks by ``lengths`` and writes the tape. The batch is split into chunks
   that run the whole loop on their own threads.

Backward mirrors it: only ``dgates @ U^T`` runs per step; ``dW``, ``dU``, ``db`` and ``dx``
are each one GEMM (or sum) over all T*B rows after the loop. The LSTM and GRU kernels
write their gate gradients straight into the panel layout of :func:`.gemm.pack_panels`,
so those GEMMs read them as the packed operand without another copy. Tape buffers and
backward temporaries come from the :mod:`.workspace` pool.

What the tape holds per (t, b), beyond x and the params (H floats each unless stated):
rnn h_prev and h (shared: one (T+1, B, H) buffer without lengths); lstm gates i, f, g, o
(4H), c_prev, tanh(c_new), h_prev; gru r, z, n, h@U_n + bn (4H), h_prev; gru_reset_before
r, z, n (3H), h_prev. Inference (``training=False``) keeps no tape and allocates only the
outputs and a few (B, G*H) work buffers per call, nothing per step.

Threads: everything runs on Numba's thread pool (``NUMBA_NUM_THREADS``, or
``numba.set_num_threads`` at run time): the time loop over batch chunks of at least
``config.rows_per_thread`` rows, the GEMMs over row tiles. BLAS is not called.
"""

from __future__ import annotations

import numpy as np

from ..base import Backend, BackwardOut, ForwardOut
from . import kernels, single_step, workspace
from .first_use import compile_notice
from .buffers import chunk_size, dummy, full_lengths, gemm_out, padded_rows
from .gemm import (MR, NR, matmul, matmul_packed, pack_panels, padded, panel_column_sums,
                   panel_matmul)
from .launch import launch
from .stepper import NumbaStepRunner
from .threads import start_pool
from .weights import NumbaWeights


def _panels(lease, rows, n, dtype, zeroed):
    """Room for a (rows, n) matrix kept as panels (see pack_panels), taken by ``lease``
    from the workspace pool. Padded columns are always zero; with ``zeroed`` (masked passes
    leave rows unwritten) every entry is."""
    nr = NR[np.dtype(dtype).itemsize]
    P = -(-n // nr)
    return lease.take((P, rows, nr), dtype, zero=zeroed or P * nr != n)


class _Saved(dict):
    """The tape's intermediates: a dict that can carry a finaliser (plain dicts cannot)."""


def _t_matmul(G, X):
    """X^T @ G as a C-contiguous array, for G (R, n) and X (R, m) with many rows R."""
    return np.ascontiguousarray(matmul(G.T, X).T)


def _weight_grad(X, Gp, n):
    """X^T @ G (m, n), C-contiguous, for X (R, m) and G (R, n) packed into panels Gp.

    Packing the wide gradient once and reading the inputs through a transposed view
    leaves no padded columns for narrow inputs (I = 32 would waste half of each 64-wide
    panel) and no transposed copy of the result.
    """
    return np.ascontiguousarray(matmul_packed(X.T, Gp, n))


class NumbaBackend(Backend):
    """Fused CPU kernels compiled by Numba."""

    name = "numba"
    xp = np
    strided_params = True

    def __init__(self):
        start_pool()

    @classmethod
    def unavailable_reason(cls):
        return None          # numba is a dependency: importing this module already needed it

    def prepare(self, cell, params):
        return NumbaWeights(cell, params)

    def step_rows_forward(self, cell, ax, ah, b, bn, h0, c0, training):
        """A step's pointwise pass from its products (fastrnn.torch's cells compute those
        with torch): see :func:`.single_step.rows_forward`."""
        with compile_notice("step", cell, ax.dtype):
            return single_step.rows_forward(cell, ax, ah, b, bn, h0, c0, training)

    def step_rows_backward(self, saved, dh, dc):
        """See :func:`.single_step.rows_backward`."""
        with compile_notice("step's backward", saved[0], saved[1].dtype):
            return single_step.rows_backward(saved, dh, dc)

    def stepper(self, cell, weights, batch_size, dtype):
        return NumbaStepRunner(cell, weights, batch_size, dtype)

    # ------------------------------------------------------------------------- forward
    def forward(self, cell, x, weights, h0, c0, lengths, reverse, training, *, tf32=False):
        if x.shape[0] == 1 and cell.name in single_step.CELLS and not weights.packed:
            with compile_notice("step", cell, x.dtype):
                return ForwardOut(*single_step.forward(cell, x, weights, h0, c0, training))
        with compile_notice("forward", cell, x.dtype):
            return self._forward(cell, x, weights, h0, c0, lengths, reverse, training)

    def _forward(self, cell, x, weights, h0, c0, lengths, reverse, training):
        T, B, I = x.shape
        G = cell.num_gates
        H, P = weights.params["U"].shape[1] // G, h0.shape[1]   # gate width, h width
        dt = x.dtype
        Bp, chunk = padded(B, MR), chunk_size(B, cell.forward_flops(T, B, I, H, P))
        masked = lengths is not None
        lens = lengths if masked else full_lengths(B, T)
        Wp, Up, b, bn = weights.Wp, weights.Up, weights.b, weights.bn
        xs = np.zeros((Bp, I), dtype=dt)                 # the step's input rows, padded
        ax = gemm_out(Bp, G * H, dt)                      # their projection x_t @ W
        h = padded_rows(h0, Bp)
        c = padded_rows(c0, Bp) if cell.has_cell_state else None

        hs = None
        if training and not masked:
            # outputs and h_prev share one buffer of the T+1 states
            hs = np.empty((T + 1, B, P), dtype=dt)
            out, hprev = (hs[:-1], hs[1:]) if reverse else (hs[1:], hs[:-1])
        else:
            out = np.zeros((T, B, P), dtype=dt) if masked else np.empty((T, B, P), dtype=dt)
            hprev = np.zeros((T, B, P), dtype=dt) if training else dummy(dt)
        lease = workspace.Lease()            # tape buffers no caller sees: back to the pool

        def tape(*shape):
            return lease.take(shape, dt, zero=masked) if training else dummy(dt)

        saved = _Saved(hs=hs, out=out, hprev=hprev, lens=lens, masked=masked)
        if cell.name == "lstm":
            gates, cprev, tanhc = tape(T, B, 4 * H), tape(T, B, H), tape(T, B, H)
            launch(kernels.lstm_forward, Bp, chunk, x, Wp, Up, b, h, c, lens, reverse, out, hprev,
                   gates, cprev, tanhc, training, xs, ax, gemm_out(Bp, 4 * H, dt),
                   np.empty((Bp, 4 * H), dt), np.empty((Bp, H), dt))
            saved.update(gates=gates, cprev=cprev, tanhc=tanhc)
        elif cell.name == "lstmp":
            gates, cprev, tanhc = tape(T, B, 4 * H), tape(T, B, H), tape(T, B, H)
            launch(kernels.lstmp_forward, Bp, chunk, x, Wp, Up, weights.Rp, b, h, c,
                   np.zeros((Bp, H), dt), lens, reverse, out, hprev, gates, cprev, tanhc,
                   training, xs, ax, gemm_out(Bp, 4 * H, dt), gemm_out(Bp, P, dt),
                   np.empty((Bp, 4 * H), dt), np.empty((Bp, H), dt))
            saved.update(gates=gates, cprev=cprev, tanhc=tanhc)
        elif cell.name == "gru":
            gates = tape(T, B, 4 * H)
            launch(kernels.gru_forward, Bp, chunk, x, Wp, Up, b, bn, h, lens, reverse, out, hprev,
                   gates, training, xs, ax, gemm_out(Bp, 3 * H, dt), np.empty((Bp, 4 * H), dt))
            saved.update(gates=gates)
        elif cell.name == "gru_reset_before":
            gates = tape(T, B, 3 * H)
            launch(kernels.grurb_forward, Bp, chunk, x, Wp, Up, weights.Up_n, b, h, lens, reverse,
                   out, hprev, gates, training, xs, ax, gemm_out(Bp, 2 * H, dt),
                   np.zeros((Bp, H), dt), gemm_out(Bp, H, dt), np.empty((Bp, 3 * H), dt))
            saved.update(gates=gates)
        else:
            launch(kernels.rnn_forward, Bp, chunk, x, Wp, Up, b, cell.nonlinearity == "relu", h,
                   lens, reverse, out, hprev, training, xs, ax, gemm_out(Bp, H, dt))
        lease.give_when_freed(saved)
        # The caller gets its own view of out, so flags it sets do not reach the tape's.
        return ForwardOut(out[...], h[:B], None if c is None else c[:B],
                          saved if training else None)

    # ------------------------------------------------------------------------ backward
    def backward(self, cell, saved, x, weights, h0, c0, lengths, reverse, dh, dh_n, dc_n, *,
                 tf32=False):
        if saved.get("single_step"):
            with compile_notice("step's backward", cell, x.dtype):
                return BackwardOut(*single_step.backward(cell, saved, x, weights, h0, c0, dh,
                                                         dh_n, dc_n))
        with compile_notice("backward", cell, x.dtype):
            return self._backward(cell, saved, x, weights, h0, c0, lengths, reverse, dh, dh_n,
                                  dc_n)

    def _backward(self, cell, saved, x, weights, h0, c0, lengths, reverse, dh, dh_n, dc_n):
        T, B, I = x.shape
        G = cell.num_gates
        H, P = weights.params["U"].shape[1] // G, h0.shape[1]   # gate width, h width
        dt = x.dtype
        Bp, chunk = padded(B, MR), chunk_size(B, cell.backward_flops(T, B, I, H, P))
        masked, lens = saved["masked"], saved["lens"]
        lease = workspace.Lease()            # temporaries of this pass: back to the pool

        has_dh = dh is not None
        dh_arr = dh if has_dh else dummy(dt)
        dh_carry = gemm_out(Bp, P, dt)
        if dh_n is not None:
            dh_carry[:B, :P] = dh_n
        dc_carry = None
        UTp, UTp_n = weights.ut_panels()
        hprev = saved["hprev"]
        grads = {}
        dGp = dGx = None                        # dL/da over all T*B rows: panels or rows
        u_panels = None                         # what meets h_prev in dU, if not dGp

        if cell.has_cell_state:
            dc_carry = np.zeros((Bp, H), dtype=dt)
            if dc_n is not None:
                dc_carry[:B] = dc_n
        if cell.name == "lstmp":
            dGp = _panels(lease, T * B, 4 * H, dt, masked)
            dH = lease.take((T, B, P), dt, zero=masked)
            launch(kernels.lstmp_backward, Bp, chunk, saved["gates"], saved["cprev"],
                   saved["tanhc"], UTp, weights.rt_panels(), lens, reverse, dh_arr, has_dh,
                   dh_carry, dc_carry, dGp, dH, np.zeros((Bp, 4 * H), dt),
                   gemm_out(Bp, H, dt))
            m = saved["gates"][:, :, 3 * H:] * saved["tanhc"]       # o * tanh(c'), (T, B, H)
            grads["Wr"] = _t_matmul(dH.reshape(T * B, P), m.reshape(T * B, H))
        elif cell.name == "lstm":
            dGp = _panels(lease, T * B, 4 * H, dt, masked)
            launch(kernels.lstm_backward, Bp, chunk, saved["gates"], saved["cprev"],
                   saved["tanhc"], UTp, lens, reverse, dh_arr, has_dh, dh_carry, dc_carry, dGp,
                   np.zeros((Bp, 4 * H), dt))
        elif cell.name == "gru":
            dGp = _panels(lease, T * B, 3 * H, dt, masked)
            u_panels = _panels(lease, T * B, 3 * H, dt, masked)  # (da_r, da_z, dhn): U's grad
            launch(kernels.gru_backward, Bp, chunk, saved["gates"], hprev, UTp, lens, reverse,
                   dh_arr, has_dh, dh_carry, dGp, u_panels, np.zeros((Bp, 3 * H), dt),
                   np.empty((Bp, 3 * H), dt))
            grads["bn"] = panel_column_sums(u_panels, 3 * H)[2 * H:]
        elif cell.name == "gru_reset_before":
            dGx = lease.take((T, B, 3 * H), dt, zero=masked)
            rh = lease.take((T, B, H), dt, zero=masked)
            launch(kernels.grurb_backward, Bp, chunk, saved["gates"], hprev, UTp, UTp_n, lens,
                   reverse, dh_arr, has_dh, dh_carry, dGx, rh, np.zeros((Bp, H), dt),
                   np.zeros((Bp, 2 * H), dt), gemm_out(Bp, H, dt))
        else:
            dG = lease.take((T, B, H), dt, zero=masked)
            out = saved["out"]
            if not out.flags.writeable:          # numba would compile a read-only variant
                out = out.view()
                out.flags.writeable = True
            launch(kernels.rnn_backward, Bp, chunk, out, hprev, UTp, cell.nonlinearity == "relu",
                   lens, reverse, dh_arr, has_dh, dh_carry, dG, np.zeros((Bp, H), dt))
            dGx = dG

        rows = T * B
        if dGp is None:
            dGx2 = dGx.reshape(rows, G * H)
            dGp = pack_panels(dGx2)
        hprev2 = hprev.reshape(rows, P)
        x2 = x.reshape(rows, I)
        if masked:
            # Padded rows of x are never read by the forward: keep a NaN there out of dW.
            valid = (np.arange(T)[:, None] < lens[None, :]).reshape(rows, 1)
            x2 = np.where(valid, x2, 0)
        grads["W"] = _weight_grad(x2, dGp, G * H)
        if cell.name == "gru_reset_before":         # U_n sees r * h_prev, its grad dGx's n part
            grads["U"] = np.concatenate([_t_matmul(dGx2[:, :2 * H], hprev2),
                                         _t_matmul(dGx2[:, 2 * H:], rh.reshape(rows, H))], axis=1)
        else:                                       # U sees h_prev in every gate column
            grads["U"] = _weight_grad(hprev2, dGp if u_panels is None else u_panels, G * H)
        grads["b"] = panel_column_sums(dGp, G * H)
        dx = np.ascontiguousarray(panel_matmul(dGp, G * H, weights.params["W"].T,
                                               weights.wt_panels())).reshape(T, B, I)
        ordered = {k: grads[k] for k in cell.param_names}
        dh0 = np.ascontiguousarray(dh_carry[:B, :P])
        dc0 = None if dc_carry is None else dc_carry[:B]
        lease.give()
        return BackwardOut(dx, dh0, dc0, ordered)
