"""The Numba backend: the whole time loop in fused, compiled kernels (fast CPU path).

Plan of a forward pass (see DESIGN.md, "How speed is reached"):
1. ``xp = x @ W`` for all T*B rows: one BLAS GEMM before the loop.
2. One kernel call runs every step: ``h @ U`` (BLAS called from compiled code, or an own
   loop for small sizes), then one pass that adds ``xp`` and the bias, applies the gates,
   updates the state, masks by ``lengths`` and writes the tape.
Backward mirrors it: only ``dgates @ U^T`` runs per step; ``dW``, ``dU``, ``db`` and ``dx``
are each one GEMM (or sum) over all T*B rows after the loop.

What the tape holds per (t, b), beyond x and the params (H floats each unless stated):
rnn h_prev and h (shared: one (T+1, B, H) buffer without lengths); lstm gates i, f, g, o
(4H), c_prev, tanh(c_new), h_prev; gru r, z, n, h@U_n + bn (4H), h_prev; gru_reset_before
r, z, n (3H), h_prev. Inference (``training=False``) keeps no tape and allocates only the
outputs and two (B, G*H) work buffers per call, nothing per step.

Threads: BLAS runs on its own thread pool (OpenBLAS: ``OPENBLAS_NUM_THREADS``, or
threadpoolctl at run time); the kernels themselves are single-threaded, so nothing is
oversubscribed.
"""

from __future__ import annotations

import numpy as np

from . import numba_kernels as K
from ._blas import gemm_address
from .base import BackwardOut, ForwardOut
from .numpy_ref import NumpyBackend

def use_blas_for(B: int, H: int, G: int, dtype) -> tuple[int, bool]:
    """(gemm address, whether the per-step product h @ U should go through BLAS).

    Measured with ``python bench/crossover.py`` (one training step, LSTM and GRU, float32):
    for a single sequence (B = 1, 2) the kernel's own matrix-vector loop wins at every H
    (2.7x at H = 256), at B = 4 it wins from H = 128 on, and from B = 8 BLAS wins by
    1.2-1.7x. ``FASTRNN_NO_BLAS_IN_KERNELS=1`` forces the own loop everywhere.
    """
    fn = gemm_address(dtype)
    blas = B >= 8 or (B >= 3 and H < 128)
    return fn, bool(fn) and blas


def _writable(a):
    """Numba compiles a separate variant for read-only arrays; hand it a writable copy."""
    return a if a.flags.writeable else a.copy()


def _dummy(dtype):
    return np.zeros((1, 1, 1), dtype=dtype)


class NumbaBackend(NumpyBackend):
    """Fused CPU kernels compiled by Numba; readout is inherited from the reference."""

    name = "numba"

    @classmethod
    def unavailable_reason(cls):
        try:
            import numba  # noqa: F401
        except ImportError as exc:  # pragma: no cover - numba is a dependency
            return f"numba is not importable ({exc}); pip install numba"
        return None

    # ------------------------------------------------------------------------- forward
    def forward(self, cell, x, params, h0, c0, lengths, reverse, training):
        T, B, I = x.shape
        H = h0.shape[1]
        G = cell.num_gates
        dt = x.dtype
        masked = lengths is not None
        lens = lengths if masked else np.full(B, T, dtype=np.int64)
        fn, blas = use_blas_for(B, H, G, dt)
        xp = (x.reshape(T * B, I) @ params["W"]).reshape(T, B, G * H)
        h = h0.copy()
        c = c0.copy() if cell.has_cell_state else None

        hs = None
        if training and not masked:
            # outputs and h_prev share one buffer of the T+1 states
            hs = np.empty((T + 1, B, H), dtype=dt)
            out, hprev = (hs[:-1], hs[1:]) if reverse else (hs[1:], hs[:-1])
        else:
            out = np.zeros((T, B, H), dtype=dt) if masked else np.empty((T, B, H), dtype=dt)
            hprev = np.zeros((T, B, H), dtype=dt) if training else _dummy(dt)
        alloc = np.zeros if masked else np.empty

        def tape(*shape):
            return alloc(shape, dtype=dt) if training else _dummy(dt)

        saved = {"hs": hs, "out": out, "hprev": hprev, "lens": lens, "masked": masked}
        acc = np.empty((B, G * H), dtype=dt)
        U, b = _writable(params["U"]), _writable(params["b"])
        if cell.name == "lstm":
            gates, cprev, tanhc = tape(T, B, 4 * H), tape(T, B, H), tape(T, B, H)
            K.lstm_forward(xp, U, b, h, c, lens, reverse, out, hprev, gates, cprev, tanhc,
                           training, acc, np.empty((2, 4 * H), dt), fn, blas)
            saved.update(gates=gates, cprev=cprev, tanhc=tanhc)
        elif cell.name == "gru":
            gates = tape(T, B, 4 * H)
            K.gru_forward(xp, U, b, _writable(params["bn"]), h, lens, reverse, out, hprev,
                          gates, training, acc, np.empty(4 * H, dt), fn, blas)
            saved.update(gates=gates)
        elif cell.name == "gru_reset_before":
            gates = tape(T, B, 3 * H)
            U_rz = np.ascontiguousarray(U[:, :2 * H])
            U_n = np.ascontiguousarray(U[:, 2 * H:])
            K.gru_rb_forward(xp, U_rz, U_n, b, h, lens, reverse, out, hprev, gates, training,
                             np.empty((B, 2 * H), dt), np.empty((B, H), dt),
                             np.empty((B, H), dt), np.empty((B, 3 * H), dt), fn, blas)
            saved.update(gates=gates)
        else:
            K.rnn_forward(xp, U, b, cell.nonlinearity == "relu", h, lens, reverse, out, hprev,
                          training, acc, fn, blas)
        # The caller gets its own view of out, so flags it sets do not reach the tape's.
        return ForwardOut(out[...], h, c, saved if training else None)

    # ------------------------------------------------------------------------ backward
    def backward(self, cell, saved, x, params, h0, c0, lengths, reverse, dh, dh_n, dc_n):
        T, B, I = x.shape
        H = h0.shape[1]
        G = cell.num_gates
        dt = x.dtype
        masked, lens = saved["masked"], saved["lens"]
        fn, blas = use_blas_for(B, H, G, dt)
        simple = not masked and not reverse
        alloc = np.zeros if masked else np.empty
        has_dh = dh is not None
        dh_arr = dh if has_dh else _dummy(dt)
        dh_carry = dh_n.copy() if dh_n is not None else np.zeros((B, H), dtype=dt)
        dc_carry = None
        W, U = params["W"], params["U"]
        hprev = saved["hprev"]
        grads = {}

        if cell.name == "lstm":
            dc_carry = dc_n.copy() if dc_n is not None else np.zeros((B, H), dtype=dt)
            dG = alloc((T, B, 4 * H), dtype=dt)
            K.lstm_backward(saved["gates"], saved["cprev"], saved["tanhc"],
                            np.ascontiguousarray(U.T), lens, reverse, simple, dh_arr, has_dh,
                            dh_carry, dc_carry, dG, np.empty((B, 4 * H), dt), fn, blas)
            dGx = dG
            u_inputs = None
        elif cell.name == "gru":
            dGx = alloc((T, B, 3 * H), dtype=dt)
            dhn = alloc((T, B, H), dtype=dt)
            K.gru_backward(saved["gates"], hprev, np.ascontiguousarray(U.T), lens, reverse,
                           dh_arr, has_dh, dh_carry, dGx, dhn, np.empty((B, 3 * H), dt), fn,
                           blas)
            grads["bn"] = dhn.reshape(T * B, H).sum(axis=0)
            u_inputs = (hprev, dhn)              # U_rz sees h_prev, U_n too (through dhn)
        elif cell.name == "gru_reset_before":
            dGx = alloc((T, B, 3 * H), dtype=dt)
            rh = alloc((T, B, H), dtype=dt)
            UT = np.ascontiguousarray(U.T)
            K.gru_rb_backward(saved["gates"], hprev, UT[:2 * H].copy(), UT[2 * H:].copy(),
                              lens, reverse, dh_arr, has_dh, dh_carry, dGx, rh,
                              np.empty((B, H), dt), np.empty((B, 2 * H), dt),
                              np.empty((B, H), dt), fn, blas)
            u_inputs = (rh, None)                # U_n sees r * h_prev; its grad is dGx's n part
        else:
            dG = alloc((T, B, H), dtype=dt)
            out = saved["out"]
            if not out.flags.writeable:          # numba would compile a read-only variant
                out = out.view()
                out.flags.writeable = True
            K.rnn_backward(out, hprev, np.ascontiguousarray(U.T), cell.nonlinearity == "relu",
                           lens, reverse, simple, dh_arr, has_dh, dh_carry, dG,
                           np.empty((B, H), dt), fn, blas)
            dGx = dG
            u_inputs = None

        rows = T * B
        dGx2 = dGx.reshape(rows, G * H)
        hprev2 = hprev.reshape(rows, H)
        x2 = x.reshape(rows, I)
        if masked:
            # Padded rows of x are never read by the forward: keep a NaN there out of dW.
            valid = (np.arange(T)[:, None] < lens[None, :]).reshape(rows, 1)
            x2 = np.where(valid, x2, 0)
        grads["W"] = x2.T @ dGx2
        if u_inputs is None:                        # U sees h_prev in every gate column
            grads["U"] = hprev2.T @ dGx2
        else:                                       # GRUs: the n columns see another input
            n_input, n_grad = u_inputs
            dU = np.empty((H, G * H), dtype=dt)
            np.matmul(hprev2.T, dGx2[:, :2 * H], out=dU[:, :2 * H])
            n_grad = dGx2[:, 2 * H:] if n_grad is None else n_grad.reshape(rows, H)
            np.matmul(n_input.reshape(rows, H).T, n_grad, out=dU[:, 2 * H:])
            grads["U"] = dU
        grads["b"] = dGx2.sum(axis=0)
        dx = (dGx2 @ W.T).reshape(T, B, I)
        ordered = {k: grads[k] for k in cell.param_names}
        return BackwardOut(dx, dh_carry, dc_carry, ordered)
