"""The CuPy backend: cuBLAS GEMMs plus one fused CUDA kernel per time step (the GPU path).

This module chooses, per call, between the per-step path (:mod:`.steps`) and the
persistent kernels (:mod:`.persistent`, opt-in); :mod:`.nvrtc` compiles the sources of
``kernels/``.

Where the arrays live: results are CuPy arrays on the device of ``x``. NumPy arrays or
lists passed with ``backend="cupy"`` are copied to the current device by the API
(``cupy.asarray``) and the results are CuPy arrays too; ``cupy.asnumpy(a)`` or ``a.get()``
brings one back to the host. ``backend="auto"`` picks this backend for CuPy inputs.

dtypes: float32 and float64; float16 storage with float32 arithmetic in the kernels (the
GEMMs accumulate in float32 inside cuBLAS); bfloat16 likewise where CuPy >= 14 and
``ml_dtypes`` are installed. With 16-bit storage the intermediates (``x @ W``, the per-step
``h @ U``, the state gradients carried from step to step) stay float32; only the outputs,
the states and the tape are rounded to 16 bits.

Float32 flushes subnormals to zero: CuPy compiles every kernel with ``-ftz=true``, so the
kernels' float32 arithmetic (also that of 16-bit storage) takes subnormal operands as 0
and returns 0 for results below 1.18e-38 in magnitude (FLT_MIN). So ``sigmoid`` is
exactly 0 below ln(FLT_MIN) ~ -87.34, where the reference still gives values down to
1e-45, and ``tanh`` of a subnormal pre-activation is 0. These differences lie below
1.2e-38 absolute, far inside every tolerance; float64 and cuBLAS's products are not
affected. tests/test_gpu.py models the kernels' float32 math the same way.

Compilation: the kernels compile on first use with NVRTC through CuPy (see :mod:`.nvrtc`,
which also says when CuPy's disk cache serves them to a new process).

Importing this module never fails: without CuPy (or without a GPU) the backend reports
why through :meth:`CupyBackend.unavailable_reason`.
"""

from __future__ import annotations

import warnings

from ..base import Backend, ForwardOut
from . import checksum as _checksum
from .lib import IMPORT_ERROR, cupy
from .memory import alloc, describe_failure
from .nvrtc import CELL_TYPES, compile_problem, kernel_dir
from .persistent import persistent_backward, persistent_forward, plan_for_call
from .steps import (NULL, Saved, StateSeq, Steps, cell_backward, cell_forward, cublas_bindings,
                    finish_backward, grad_init, grurb_backward, grurb_forward, lstmp_backward,
                    lstmp_forward, matmul)

__all__ = ["CupyBackend"]

def _supported_dtypes() -> tuple[str, ...]:
    names = ["float32", "float64", "float16"]
    try:
        import ml_dtypes  # noqa: F401, PLC0415 - registers numpy.dtype("bfloat16")
        if int(cupy.__version__.split(".")[0]) >= 14:
            names.append("bfloat16")
    except Exception:  # noqa: BLE001 - no ml_dtypes or an odd version string: no bfloat16
        pass
    return tuple(names)


class CupyBackend(Backend):
    """GPU backend: cuBLAS GEMMs and fused CUDA kernels per step, loaded with CuPy."""

    name = "cupy"
    xp = cupy
    checks_later = True         # the tape's checksums are compared on the device

    def __init__(self):
        self.dtypes = _supported_dtypes()
        self._device_checksum_failed: str | None = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None if CuPy, a CUDA device, cuBLAS, the kernel sources and CuPy's compile path
        (NVRTC, the CUDA headers it needs, a compile and load of one kernel module) all
        work, else why not, as a sentence. Never raises."""
        try:
            if cupy is None:
                return (f"CuPy is not installed or cannot be imported ({IMPORT_ERROR}); "
                        f"install the CuPy wheel for your CUDA version, e.g. "
                        f"pip install cupy-cuda13x")
            try:
                count = cupy.cuda.runtime.getDeviceCount()
            except Exception as exc:  # noqa: BLE001 - CUDARuntimeError, driver errors
                return (f"CuPy cannot reach a CUDA GPU: no driver or no device "
                        f"({type(exc).__name__}: {exc})")
            if count < 1:
                return "CuPy sees no CUDA device (cupy.cuda.runtime.getDeviceCount() is 0)"
            try:
                cublas_bindings().gemmEx  # noqa: B018 - the binding the per-step GEMMs call
            except Exception as exc:  # noqa: BLE001
                return (f"CuPy's cuBLAS bindings cannot be loaded "
                        f"({type(exc).__name__}: {exc})")
            try:
                kernel_dir()
            except FileNotFoundError as exc:
                return str(exc)
            return compile_problem()
        except Exception as exc:  # noqa: BLE001 - never raise from a probe
            return f"checking the GPU failed ({type(exc).__name__}: {exc})"

    # ----------------------------------------------------------------------- the guard

    def checksum(self, arrays):
        """On the device, without waiting for it (:mod:`.checksum`); where that fails (it
        needs CuPy's asynchronous copies to pinned memory), the host's checksums, with a
        warning once: a guard that waits beats none."""
        if self._device_checksum_failed is None:
            try:
                with arrays[0].device:
                    return _checksum.checksum(arrays)
            except Exception as exc:  # noqa: BLE001 - degrade, say so once
                self._device_checksum_failed = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"fastrnn: the tape's checksums on the GPU failed "
                              f"({self._device_checksum_failed}); taking them on the host, "
                              f"which waits for the device", RuntimeWarning, stacklevel=2)
        return super().checksum(arrays)

    def changed(self, then, arrays):
        if isinstance(then, _checksum.DeviceChecksum):
            with arrays[0].device:
                return _checksum.changed(then, arrays)
        return super().changed(then, arrays)

    # ---------------------------------------------------------------- forward / backward

    def forward(self, cell, x, params, h0, c0, lengths, reverse, training, *, tf32=False):
        try:
            return self._forward(cell, x, params, h0, c0, lengths, reverse, training, tf32)
        except cupy.cuda.memory.OutOfMemoryError as exc:
            raise describe_failure(exc, cell, x.shape, h0.shape[1], x.dtype, training,
                                   backward=False) from exc

    def backward(self, cell, saved, x, params, h0, c0, lengths, reverse, dh, dh_n, dc_n, *,
                 tf32=False):
        try:
            return self._backward(cell, saved, x, params, h0, c0, lengths, reverse, dh, dh_n,
                                  dc_n, tf32)
        except cupy.cuda.memory.OutOfMemoryError as exc:
            raise describe_failure(exc, cell, x.shape, h0.shape[1], x.dtype, True,
                                   backward=True) from exc

    def _forward(self, cell, x, params, h0, c0, lengths, reverse, training, tf32):
        with x.device:
            T, B, I = x.shape
            H = h0.shape[1]
            lens = None if lengths is None else cupy.asarray(lengths, dtype=cupy.int64)
            st = Steps(T, B, H, lens, reverse, x.dtype, tf32)
            xw = matmul(x.reshape(T * B, I), params["W"], tf32,
                        "the input projection x @ W").reshape(T, B, -1)            # st.acc
            out = alloc("the outputs h", (T, B, H), x.dtype)
            plan = plan_for_call(cell, B, H, x.dtype, backward=False)
            if plan is not None:
                done = persistent_forward(st, cell, xw, params, h0, c0, out, training, plan)
                if done is not None:
                    return done
            hs = StateSeq(h0, T, training)
            cs = StateSeq(c0, T, training, "c") if cell.has_cell_state else None
            rh = None
            if cell.name in CELL_TYPES:
                gates = cell_forward(st, cell, xw, params, hs, cs, out, training)
            elif cell.name == "lstmp":
                gates = lstmp_forward(st, xw, params, hs, cs, out, training)
            else:
                gates, rh = grurb_forward(st, xw, params, hs, out, training)
            saved = (Saved(hs.buf, None if cs is None else cs.buf, gates, rh, lens)
                     if training else None)
            return ForwardOut(out, hs.final(), None if cs is None else cs.final(), saved)

    def _backward(self, cell, saved, x, params, h0, c0, lengths, reverse, dh, dh_n, dc_n,
                  tf32):
        with x.device:
            T, B, I = x.shape
            H = h0.shape[1]
            st = Steps(T, B, H, saved.lengths, reverse, x.dtype, tf32)
            dh_arg = NULL if dh is None else dh
            plan = plan_for_call(cell, B, H, x.dtype, backward=True)
            done = None
            if plan is not None:
                done = persistent_backward(st, cell, saved, params, dh_arg, dh_n, dc_n, plan)
            if done is not None:
                return finish_backward(st, cell, saved, x, params, *done)
            direct = grad_init(dh_n, (B, H), st.acc)     # state gradient: the kernels' part
            rec = cupy.zeros((B, H), dtype=st.acc)         # ... and the cuBLAS part
            dc0 = grad_init(dc_n, c0.shape, st.acc) if cell.has_cell_state else None
            if cell.name in CELL_TYPES:
                dgx, dgr = cell_backward(st, cell, saved, params, dh_arg, direct, rec, dc0)
            elif cell.name == "lstmp":
                dgr = lstmp_backward(st, saved, params, dh_arg, direct, rec, dc0)
                dgx = dgr[0]
            else:
                dgx, *dgr = grurb_backward(st, saved, params, dh_arg, direct, rec)
            dh0 = (direct + rec).astype(x.dtype, copy=False)
            if dc0 is not None:
                dc0 = dc0.astype(x.dtype, copy=False)
            return finish_backward(st, cell, saved, x, params, dgx, dgr, dh0, dc0)

    def readout(self, h2, Wy, by, activation):
        with h2.device:
            return super().readout(h2, Wy, by, activation)

    def readout_backward(self, h2, Wy, y2, activation, dy2):
        with h2.device:
            return super().readout_backward(h2, Wy, y2, activation, dy2)
