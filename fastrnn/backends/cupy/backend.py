"""The CuPy backend: cuBLAS GEMMs plus one fused CUDA kernel per time step (the GPU path).

Plan of a forward pass (DESIGN.md, "How speed is reached"):

1. ``xw = x @ W`` for all T*B rows: one cuBLAS GEMM before the loop.
2. Per step s: ``hu = h @ U`` with cuBLAS (one ``cublasGemmEx`` call into a buffer
   allocated once), then ONE kernel from ``kernels/<cell>.cu`` adds ``xw`` and the bias,
   applies the gates, updates the state, masks by ``lengths``, indexes time in reverse
   where asked and writes the tape. ``gru_reset_before`` needs two GEMM + kernel pairs
   per step, since its ``(r * h) @ U_n`` depends on ``r``.

Backward mirrors it: per step one kernel turns the state gradient into the gate gradients
``dG[s]`` and cuBLAS computes ``dG[s] @ U^T``; after the loop ``dW``, ``dU`` and ``dx``
are one GEMM each over all T*B rows and the bias gradients one sum. Nothing uses atomics
for results, so two runs on the same inputs agree bit for bit.

Persistent kernels (rnn, lstm, gru; opt-in through ``FASTRNN_CUPY_PERSISTENT``, see the
last section): the whole time loop of the forward, or of the backward, in one cooperative
launch that keeps U on chip, for small batches where the per-step path is bound by
launches. They write the same tape and gradients, so either forward pairs with either
backward.

Where the arrays live: results are CuPy arrays on the device of ``x``. NumPy arrays or
lists passed with ``backend="cupy"`` are copied to the current device by the API
(``cupy.asarray``) and the results are CuPy arrays too; ``cupy.asnumpy(a)`` or ``a.get()``
brings one back to the host. ``backend="auto"`` picks this backend for CuPy inputs.

dtypes: float32 and float64; float16 storage with float32 arithmetic in the kernels (the
GEMMs accumulate in float32 inside cuBLAS); bfloat16 likewise where CuPy >= 14 and
``ml_dtypes`` are installed.

Tape (step-indexed: slot s belongs to step s, whatever time index it worked on):
``hs`` (T+1, B, H) the state before every step and after the last; lstm ``cs`` likewise
and ``gates`` (T, B, 4H) = i, f, g, o; gru ``gates`` (T, B, 4H) = r, z, n, h@U_n + bn;
gru_reset_before ``gates`` (T, B, 3H) = r, z, n and ``rh`` (T, B, H) = r * h; rnn needs
only ``hs``.

Importing this module never fails: without CuPy (or without a GPU) the backend reports
why through :meth:`CupyBackend.unavailable_reason`. The CUDA sources are read from the
installed package (``fastrnn/kernels``, where the wheel puts ``kernels/``) or, in a source
checkout, from the repository's ``kernels/``; each (source, dtype) is compiled once by
NVRTC through ``cupy.RawModule`` and cached (CuPy also caches the binary on disk).
"""

from __future__ import annotations

import importlib.resources
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .base import Backend, BackwardOut, ForwardOut
from .numpy_ref import readout_backward as _readout_backward
from .numpy_ref import readout_forward as _readout_forward

try:
    import cupy
    _IMPORT_ERROR: Exception | None = None
except Exception as _exc:  # noqa: BLE001 - ImportError, or a broken CUDA install
    cupy = None
    _IMPORT_ERROR = _exc

__all__ = ["CupyBackend", "KERNELS", "STORAGE_CTYPES", "PERSIST_ENV", "kernel_dir",
           "kernel_source", "persistent_plan"]

# ----------------------------------------------------------------------- CUDA sources

# source file (kernels/<name>.cu) -> the kernel templates it defines
KERNELS: dict[str, tuple[str, ...]] = {
    "rnn": ("rnn_forward", "rnn_backward", "rnn_persist_forward", "rnn_persist_backward"),
    "lstm": ("lstm_forward", "lstm_backward", "lstm_persist_forward", "lstm_persist_backward"),
    "gru": ("gru_forward", "gru_backward", "grurb_forward_rz", "grurb_forward_n",
            "grurb_backward_n", "grurb_backward_r", "gru_persist_forward",
            "gru_persist_backward"),
    "util": ("gather_steps",),
}
COMMON_HEADER = "common.cuh"
# dtype name -> the C++ storage type the templates are instantiated with
STORAGE_CTYPES: dict[str, str] = {
    "float32": "float", "float64": "double", "float16": "half_t", "bfloat16": "bf16_t",
}
NVRTC_OPTIONS = ("--std=c++17",)

_LOCAL_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.MULTILINE)


def kernel_dir():
    """The folder holding the CUDA sources (a ``Path`` or importlib ``Traversable``).

    The installed package first (``fastrnn/kernels``, put there by the wheel's
    force-include of ``kernels/``), then the repository's ``kernels/`` beside the package
    (a source checkout or an editable install). FileNotFoundError if neither has them.
    """
    candidates = []
    try:
        candidates.append(importlib.resources.files("fastrnn").joinpath("kernels"))
    except (ModuleNotFoundError, TypeError):   # pragma: no cover - fastrnn is importable here
        pass
    candidates.append(Path(__file__).resolve().parents[2] / "kernels")
    for folder in candidates:
        if folder.joinpath(COMMON_HEADER).is_file():
            return folder
    raise FileNotFoundError("fastrnn's CUDA kernel sources (common.cuh and *.cu) were found "
                            "neither in the installed package (fastrnn/kernels) nor in a "
                            "source checkout (kernels/); looked in "
                            + ", ".join(str(c) for c in candidates))


def kernel_source(name: str) -> str:
    """The source of ``kernels/<name>.cu`` with its local ``#include "..."`` inlined.

    NVRTC gets one self-contained string (no include path to set up, and CuPy's cache key,
    a hash of the source, changes whenever the header does). Each header is inlined once.
    """
    if name not in KERNELS:
        raise ValueError(f"name: unknown kernel source {name!r}; expected one of "
                         f"{', '.join(KERNELS)}")
    folder = kernel_dir()
    seen: set[str] = set()

    def expand(text: str) -> str:
        def include(match):
            header = match.group(1)
            if header in seen:
                return f"// {header} already included"
            seen.add(header)
            return expand(folder.joinpath(header).read_text())
        return _LOCAL_INCLUDE.sub(include, text)

    return expand(folder.joinpath(f"{name}.cu").read_text())


# (device, source, dtype) -> cupy.RawModule; (device, source, kernel, dtype) -> function
_modules: dict[tuple, Any] = {}
_functions: dict[tuple, Any] = {}


def _function(source: str, kernel: str, dtype):
    """The compiled ``kernel<ctype>`` of ``kernels/<source>.cu`` for the current device."""
    device = cupy.cuda.runtime.getDevice()
    key = (device, source, kernel, dtype.name)
    fn = _functions.get(key)
    if fn is None:
        ctype = STORAGE_CTYPES[dtype.name]
        mkey = (device, source, dtype.name)
        module = _modules.get(mkey)
        if module is None:
            module = cupy.RawModule(code=kernel_source(source), options=NVRTC_OPTIONS,
                                    name_expressions=[f"{k}<{ctype}>" for k in KERNELS[source]])
            _modules[mkey] = module
        fn = _functions[key] = module.get_function(f"{kernel}<{ctype}>")
    return fn


# --------------------------------------------------------------------------- launches

_THREADS = 256
_MAX_BLOCKS = 1 << 16          # the kernels loop (grid stride) over whatever is left
_NULL = np.uint64(0)           # a null device pointer as a kernel argument


def _grid(n: int) -> tuple:
    return (max(1, min((n + _THREADS - 1) // _THREADS, _MAX_BLOCKS)),)


def _addr(a) -> int:
    """Device address of a C-contiguous array's first element."""
    return a.data.ptr


def _ptr(address: int):
    """A device address as a kernel argument (8 bytes, like any pointer)."""
    return np.uint64(address)


def _mm(a, b, out=None):
    """a @ b through cuBLAS (cupy.matmul): the GEMMs run once per call, over all T*B rows."""
    return cupy.matmul(a, b, out=out)


def _cublas():
    """CuPy's cuBLAS bindings (``cupy_backends.cuda.libs.cublas``)."""
    try:
        from cupy_backends.cuda.libs import cublas  # noqa: PLC0415 - only with CuPy
    except ImportError:
        cublas = cupy.cuda.cublas
    return cublas


# cudaDataType of each storage dtype (library_types.h)
_CUDA_DATA_TYPE = {"float32": 0, "float64": 1, "float16": 2, "bfloat16": 14}


class _StepGemm:
    """Row-major ``C (M, N) = A (M, K) @ B (K, N)`` of C-contiguous device blocks given by
    address, through one ``cublasGemmEx`` call: the per-step products, without the cost
    of building array views and of ``cupy.matmul``'s dispatch at every step.

    cuBLAS is column-major: the row-major C is the column-major C^T = B^T A^T, so the call
    passes B first with ldb = N, then A with lda = K, and ldc = N. Compute type: float64
    for float64, float32 otherwise (TF32 tensor cores for float32 only when ``CUPY_TF32``
    asks for them, as for ``cupy.matmul``). CuPy's binding puts the call on the current
    stream.
    """

    def __init__(self, dtype):
        cublas = _cublas()
        self._gemm = cublas.gemmEx
        self._handle = cupy.cuda.device.get_cublas_handle()
        cublas.setPointerMode(self._handle, cublas.CUBLAS_POINTER_MODE_HOST)
        self._type = _CUDA_DATA_TYPE[dtype.name]
        if dtype.name == "float64":
            self._compute = getattr(cublas, "CUBLAS_COMPUTE_64F", 70)
            scalar = np.float64
        else:
            self._compute = getattr(cublas, "CUBLAS_COMPUTE_32F", 68)
            if dtype.name == "float32" and _tf32_requested():
                self._compute = getattr(cublas, "CUBLAS_COMPUTE_32F_FAST_TF32", 77)
            scalar = np.float32
        self._scalars = np.array([1, 0], dtype=scalar)        # alpha, beta on the host
        self._one = self._scalars.ctypes.data
        self._zero = self._one + self._scalars.itemsize

    def __call__(self, a: int, b: int, c: int, M: int, N: int, K: int) -> None:
        t = self._type
        self._gemm(self._handle, 0, 0, N, M, K, self._one, b, t, N, a, t, K, self._zero,
                   c, t, N, self._compute, -1)


def _tf32_requested() -> bool:
    import os  # noqa: PLC0415
    try:
        return int(os.environ.get("CUPY_TF32", "0")) > 0
    except ValueError:
        return False


def _sum_rows(a):
    """Sum over every axis but the last (a bias gradient), accumulated in >= float32."""
    axes = tuple(range(a.ndim - 1))
    if a.dtype.itemsize < 4:
        return a.sum(axis=axes, dtype=cupy.float32).astype(a.dtype)
    return a.sum(axis=axes)


def _grad_init(a, shape, dtype):
    """A private, writable copy of an upstream gradient, or zeros when it is None."""
    return cupy.zeros(shape, dtype=dtype) if a is None else a.copy()


class _Steps:
    """One call's geometry: sizes, lengths on the device, reverse, launch configuration,
    and the per-step GEMM."""

    def __init__(self, T, B, H, lengths, reverse, dtype):
        self.T, self.B, self.H, self.dtype = T, B, H, dtype
        self.lengths = lengths                     # device int64 (B,) or None
        self.reverse = bool(reverse)
        self.grid = _grid(B * H)
        self.block = (_THREADS,)
        self.gemm = _StepGemm(dtype)
        self._lens = _NULL if lengths is None else lengths
        self._sizes = (np.int32(T), np.int32(B), np.int32(H), np.int32(self.reverse))

    def tail(self, s: int) -> tuple:
        """The trailing kernel arguments (lengths, s, T, B, H, reverse) of step s."""
        return (self._lens, np.int32(s)) + self._sizes

    @property
    def trivial_order(self) -> bool:
        """True when step s is time s for every row and nothing is padded."""
        return self.lengths is None and not self.reverse

    def gather(self, a):
        """``gather_steps`` of kernels/util.cu: time <-> step order of a C-contiguous
        (T, B, W) array, rows of finished steps (padding) set to zero."""
        out = cupy.empty_like(a)
        width = a.shape[2]
        fn = _function("util", "gather_steps", a.dtype)
        fn(_grid(self.T * self.B * width), self.block,
           (a, out, self._lens, np.int32(self.T), np.int32(self.B), np.int64(width),
            np.int32(self.reverse)))
        return out


class _Seq:
    """A step-indexed C-contiguous buffer (T', B, W): the device address of slot s."""

    __slots__ = ("array", "_base", "_step")

    def __init__(self, array):
        self.array = array
        self._base = _addr(array)
        self._step = array.strides[0]

    def __call__(self, s: int):
        return _ptr(self._base + s * self._step)


class _StateSeq:
    """A recurrent state over the steps: all T+1 of them (T+1, B, H) when training, else
    one (B, H) buffer updated in place by the kernels. Always a private copy of the
    initial state. ``prev(s)`` / ``next(s)``: device addresses before / after step s."""

    def __init__(self, init, T: int, keep: bool):
        self.keep = keep
        if keep:
            self.buf = cupy.empty((T + 1,) + tuple(init.shape), dtype=init.dtype)
            self.buf[0] = init
            self._seq = _Seq(self.buf)
        else:
            self.buf = init.copy()
            self._addr = _ptr(_addr(self.buf))

    def prev(self, s: int):
        return self._seq(s) if self.keep else self._addr

    def next(self, s: int):
        return self._seq(s + 1) if self.keep else self._addr

    def final(self):
        """The state after the last step, as an array no tape shares."""
        return self.buf[-1].copy() if self.keep else self.buf


@dataclass
class _Saved:
    """The device tape of one forward (see the module docstring)."""

    hs: Any
    cs: Any
    gates: Any
    rh: Any
    lengths: Any


# ------------------------------------------------------------------------ the backend

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

    def __init__(self):
        self.dtypes = _supported_dtypes()

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None if CuPy, a CUDA device, NVRTC, cuBLAS and the kernel sources are all there,
        else why not, as a sentence. Never raises."""
        try:
            if cupy is None:
                return (f"CuPy is not installed or cannot be imported ({_IMPORT_ERROR}); "
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
                cupy.cuda.nvrtc.getVersion()
            except AttributeError:
                pass
            except Exception as exc:  # noqa: BLE001 - the NVRTC library is missing
                return (f"CuPy cannot load NVRTC, which compiles fastrnn's CUDA kernels "
                        f"({type(exc).__name__}: {exc})")
            try:
                _cublas().gemmEx  # noqa: B018 - the binding the per-step GEMMs call
            except Exception as exc:  # noqa: BLE001
                return (f"CuPy's cuBLAS bindings cannot be loaded "
                        f"({type(exc).__name__}: {exc})")
            try:
                kernel_dir()
            except FileNotFoundError as exc:
                return str(exc)
            return None
        except Exception as exc:  # noqa: BLE001 - never raise from a probe
            return f"checking the GPU failed ({type(exc).__name__}: {exc})"

    # ---------------------------------------------------------------- forward / backward

    def forward(self, cell, x, params, h0, c0, lengths, reverse, training):
        with x.device:
            T, B, I = x.shape
            H = h0.shape[1]
            lens = None if lengths is None else cupy.asarray(lengths, dtype=cupy.int64)
            st = _Steps(T, B, H, lens, reverse, x.dtype)
            xw = _mm(x.reshape(T * B, I), params["W"]).reshape(T, B, -1)
            out = cupy.empty((T, B, H), dtype=x.dtype)
            plan = _persist_plan(cell, B, H, x.dtype, backward=False)
            if plan is not None:
                done = _persist_forward(st, cell, xw, params, h0, c0, out, training, plan)
                if done is not None:
                    return done
            hs = _StateSeq(h0, T, training)
            if cell.name == "lstm":
                cs = _StateSeq(c0, T, training)
                gates = _lstm_forward(st, xw, params, hs, cs, out, training)
                saved = _Saved(hs.buf, cs.buf, gates, None, lens) if training else None
                return ForwardOut(out, hs.final(), cs.final(), saved)
            rh = None
            if cell.name == "gru":
                gates = _gru_forward(st, xw, params, hs, out, training)
            elif cell.name == "gru_reset_before":
                gates, rh = _grurb_forward(st, xw, params, hs, out, training)
            else:
                gates = _rnn_forward(st, xw, params, hs, out, cell.nonlinearity == "relu")
            saved = _Saved(hs.buf, None, gates, rh, lens) if training else None
            return ForwardOut(out, hs.final(), None, saved)

    def backward(self, cell, saved, x, params, h0, c0, lengths, reverse, dh, dh_n, dc_n):
        with x.device:
            T, B, I = x.shape
            H = h0.shape[1]
            st = _Steps(T, B, H, saved.lengths, reverse, x.dtype)
            dh_arg = _NULL if dh is None else dh
            plan = _persist_plan(cell, B, H, x.dtype, backward=True)
            done = None
            if plan is not None:
                done = _persist_backward(st, cell, saved, params, dh_arg, dh_n, dc_n, plan)
            if done is not None:
                return _finish_backward(st, cell, saved, x, params, *done)
            direct = _grad_init(dh_n, (B, H), x.dtype)    # state gradient: the kernels' part
            rec = cupy.zeros((B, H), dtype=x.dtype)        # ... and the cuBLAS part
            dc0 = None
            if cell.name == "lstm":
                dc0 = _grad_init(dc_n, (B, H), x.dtype)
                dgx = dgr = _lstm_backward(st, saved, params, dh_arg, direct, rec, dc0)
            elif cell.name == "gru":
                dgx, dgr = _gru_backward(st, saved, params, dh_arg, direct, rec)
            elif cell.name == "gru_reset_before":
                dgx, *dgr = _grurb_backward(st, saved, params, dh_arg, direct, rec)
            else:
                dgx = dgr = _rnn_backward(st, saved, params, dh_arg, direct, rec,
                                          cell.nonlinearity == "relu")
            return _finish_backward(st, cell, saved, x, params, dgx, dgr, direct + rec, dc0)

    # ------------------------------------------------------------------------- readout

    def readout(self, h2, Wy, by, activation):
        with h2.device:
            return _readout_forward(cupy, h2, Wy, by, activation)

    def readout_backward(self, h2, Wy, y2, activation, dy2):
        with h2.device:
            return _readout_backward(cupy, h2, Wy, y2, activation, dy2)


# --------------------------------------------------------------------- shared pieces

def _finish_backward(st, cell, saved, x, params, dgx, dgr, dh0, dc0) -> BackwardOut:
    """The GEMMs and sums over all T*B rows after the time loop, for either path.

    dgx (T, B, G*H): step-ordered gradients of x @ W + b; dgr: those of the recurrent
    product (h_prev @ U, + bn for gru), (T, B, G*H), or for gru_reset_before the pair
    (dg_rz (T, B, 2H), da_n (T, B, H)) of h_prev @ U[:, :2H] and (r * h_prev) @ U[:, 2H:].
    """
    T, B, H = st.T, st.B, st.H
    grads = _input_grads(st, x, params["W"], dgx)
    h_prev = saved.hs[:T].reshape(T * B, H)
    if cell.name == "gru_reset_before":
        dg_rz, da_n = dgr
        grads["U"] = cupy.concatenate(
            [_mm(h_prev.T, dg_rz.reshape(T * B, 2 * H)),
             _mm(saved.rh.reshape(T * B, H).T, da_n.reshape(T * B, H))], axis=1)
    else:
        grads["U"] = _mm(h_prev.T, dgr.reshape(T * B, -1))
    if cell.name == "gru":
        grads["bn"] = _sum_rows(dgr[:, :, 2 * H:])
    return BackwardOut(grads["dx"], dh0, dc0, {k: grads[k] for k in params})


def _input_grads(st: _Steps, x, W, dgx) -> dict:
    """dW, db and dx from the step-ordered gradients dgx (T, B, G*H) of x @ W + b.

    The inputs go through gather_steps into step order with padded rows zeroed (needed
    only with lengths or reverse), so dW is one GEMM over all T*B rows; the step-ordered
    dx comes back to time order through the same (self-inverse) gather.
    """
    T, B, I = x.shape
    dg2 = dgx.reshape(T * B, -1)
    xs = x if st.trivial_order else st.gather(x)
    dxs = _mm(dg2, W.T).reshape(T, B, I)
    return {"W": _mm(xs.reshape(T * B, I).T, dg2), "b": _sum_rows(dg2),
            "dx": st.gather(dxs) if st.reverse else dxs}


def _transposed(a):
    return cupy.ascontiguousarray(a.T)


# -------------------------------------------------------------------------- per cell
# Forward loops: per step one GEMM into `hu` (two for gru_reset_before) and one kernel.
# Backward loops (s = T-1 .. 0): one kernel writes the gate gradients of step s, then
# `rec` = their product with U^T; `direct` and `rec` together are the state gradient.

def _rnn_forward(st, xw, p, hs, out, relu):
    fn = _function("rnn", "rnn_forward", st.dtype)
    B, H = st.B, st.H
    U = _addr(p["U"])
    hu = cupy.empty((B, H), dtype=st.dtype)
    hu_p, flag = _addr(hu), np.int32(relu)
    for s in range(st.T):
        hp, hn = hs.prev(s), hs.next(s)
        st.gemm(int(hp), U, hu_p, B, H, H)
        fn(st.grid, st.block, (xw, p["b"], hu, hp, hn, out) + st.tail(s) + (flag,))
    return None


def _rnn_backward(st, saved, p, dh_arg, direct, rec, relu):
    fn = _function("rnn", "rnn_backward", st.dtype)
    B, H = st.B, st.H
    UT = _transposed(p["U"])                                   # (H, H)
    dg = cupy.empty((st.T, B, H), dtype=st.dtype)
    hs, dgs = _Seq(saved.hs), _Seq(dg)
    UT_p, rec_p, flag = _addr(UT), _addr(rec), np.int32(relu)
    for s in reversed(range(st.T)):
        fn(st.grid, st.block, (dh_arg, direct, direct, rec, hs(s + 1), dgs(s)) + st.tail(s)
           + (flag,))
        st.gemm(int(dgs(s)), UT_p, rec_p, B, H, H)
    return dg


def _lstm_forward(st, xw, p, hs, cs, out, training):
    fn = _function("lstm", "lstm_forward", st.dtype)
    B, H = st.B, st.H
    U = _addr(p["U"])
    hu = cupy.empty((B, 4 * H), dtype=st.dtype)
    hu_p = _addr(hu)
    gates = cupy.empty((st.T, B, 4 * H), dtype=st.dtype) if training else None
    gs = _Seq(gates) if training else (lambda s: _NULL)
    for s in range(st.T):
        hp = hs.prev(s)
        st.gemm(int(hp), U, hu_p, B, 4 * H, H)
        fn(st.grid, st.block,
           (xw, p["b"], hu, hp, hs.next(s), cs.prev(s), cs.next(s), out, gs(s)) + st.tail(s))
    return gates


def _lstm_backward(st, saved, p, dh_arg, direct, rec, dc):
    fn = _function("lstm", "lstm_backward", st.dtype)
    B, H = st.B, st.H
    UT = _transposed(p["U"])                                   # (4H, H)
    dg = cupy.empty((st.T, B, 4 * H), dtype=st.dtype)
    gs, cs, dgs = _Seq(saved.gates), _Seq(saved.cs), _Seq(dg)
    UT_p, rec_p = _addr(UT), _addr(rec)
    for s in reversed(range(st.T)):
        fn(st.grid, st.block,
           (dh_arg, direct, direct, rec, dc, gs(s), cs(s), cs(s + 1), dgs(s)) + st.tail(s))
        st.gemm(int(dgs(s)), UT_p, rec_p, B, H, 4 * H)
    return dg


def _gru_forward(st, xw, p, hs, out, training):
    fn = _function("gru", "gru_forward", st.dtype)
    B, H = st.B, st.H
    U = _addr(p["U"])
    hu = cupy.empty((B, 3 * H), dtype=st.dtype)
    hu_p = _addr(hu)
    gates = cupy.empty((st.T, B, 4 * H), dtype=st.dtype) if training else None
    gs = _Seq(gates) if training else (lambda s: _NULL)
    for s in range(st.T):
        hp = hs.prev(s)
        st.gemm(int(hp), U, hu_p, B, 3 * H, H)
        fn(st.grid, st.block,
           (xw, p["b"], p["bn"], hu, hp, hs.next(s), out, gs(s)) + st.tail(s))
    return gates


def _gru_backward(st, saved, p, dh_arg, direct, rec):
    fn = _function("gru", "gru_backward", st.dtype)
    B, H = st.B, st.H
    UT = _transposed(p["U"])                                   # (3H, H)
    dg_rec = cupy.empty((st.T, B, 3 * H), dtype=st.dtype)
    dg_x = cupy.empty((st.T, B, 3 * H), dtype=st.dtype)
    gs, hs, drs, dxs = _Seq(saved.gates), _Seq(saved.hs), _Seq(dg_rec), _Seq(dg_x)
    UT_p, rec_p = _addr(UT), _addr(rec)
    for s in reversed(range(st.T)):
        fn(st.grid, st.block,
           (dh_arg, direct, direct, rec, gs(s), hs(s), drs(s), dxs(s)) + st.tail(s))
        st.gemm(int(drs(s)), UT_p, rec_p, B, H, 3 * H)
    return dg_x, dg_rec


def _grurb_forward(st, xw, p, hs, out, training):
    fn_rz = _function("gru", "grurb_forward_rz", st.dtype)
    fn_n = _function("gru", "grurb_forward_n", st.dtype)
    B, H = st.B, st.H
    U_rz = cupy.ascontiguousarray(p["U"][:, :2 * H])          # (H, 2H)
    U_n = cupy.ascontiguousarray(p["U"][:, 2 * H:])           # (H, H)
    hu = cupy.empty((B, 2 * H), dtype=st.dtype)
    hn = cupy.empty((B, H), dtype=st.dtype)
    lead = (st.T,) if training else (1,)
    gates = cupy.empty(lead + (B, 3 * H), dtype=st.dtype)     # r, z, n
    rh = cupy.empty(lead + (B, H), dtype=st.dtype)            # r * h_prev
    gs, rhs = _Seq(gates), _Seq(rh)
    slot = (lambda s: s) if training else (lambda s: 0)
    U_rz_p, U_n_p, hu_p, hn_p = _addr(U_rz), _addr(U_n), _addr(hu), _addr(hn)
    for s in range(st.T):
        hp, g, r = hs.prev(s), gs(slot(s)), rhs(slot(s))
        st.gemm(int(hp), U_rz_p, hu_p, B, 2 * H, H)
        fn_rz(st.grid, st.block, (xw, p["b"], hu, hp, g, r) + st.tail(s))
        st.gemm(int(r), U_n_p, hn_p, B, H, H)
        fn_n(st.grid, st.block, (xw, p["b"], hn, hp, hs.next(s), out, g) + st.tail(s))
    return (gates, rh) if training else (None, None)


def _grurb_backward(st, saved, p, dh_arg, direct, rec):
    fn_n = _function("gru", "grurb_backward_n", st.dtype)
    fn_r = _function("gru", "grurb_backward_r", st.dtype)
    B, H = st.B, st.H
    U_rzT = _transposed(p["U"][:, :2 * H])                    # (2H, H)
    U_nT = _transposed(p["U"][:, 2 * H:])                     # (H, H)
    dg_x = cupy.empty((st.T, B, 3 * H), dtype=st.dtype)
    dg_rz = cupy.empty((st.T, B, 2 * H), dtype=st.dtype)
    da_n = cupy.empty((st.T, B, H), dtype=st.dtype)
    drh = cupy.empty((B, H), dtype=st.dtype)
    gs, hs = _Seq(saved.gates), _Seq(saved.hs)
    dxs, drzs, dans = _Seq(dg_x), _Seq(dg_rz), _Seq(da_n)
    U_rzT_p, U_nT_p, drh_p, rec_p = _addr(U_rzT), _addr(U_nT), _addr(drh), _addr(rec)
    for s in reversed(range(st.T)):
        g, hp, dx_s, drz_s, dan_s = gs(s), hs(s), dxs(s), drzs(s), dans(s)
        fn_n(st.grid, st.block,
             (dh_arg, direct, direct, rec, g, hp, dx_s, drz_s, dan_s) + st.tail(s))
        st.gemm(int(dan_s), U_nT_p, drh_p, B, H, H)
        fn_r(st.grid, st.block, (drh, direct, g, hp, dx_s, drz_s) + st.tail(s))
        st.gemm(int(drz_s), U_rzT_p, rec_p, B, H, 2 * H)
    return dg_x, dg_rz, da_n


# ------------------------------------------------------------------ persistent kernels
# One cooperative launch runs all T steps (kernels/persist.cuh): each block keeps its
# slice of U in shared memory, and the blocks synchronise between steps inside the
# kernel, so a step costs no launch and no pass of U through memory. It pays where the
# per-step path is bound by launches and small GEMMs: small batches.
#
# FASTRNN_CUPY_PERSISTENT chooses: "0" (the default until the crossover against the
# per-step path is measured on hardware) never; "1" whenever the size fits the device
# (a failed launch is then an error); "auto" when B <= PERSIST_AUTO_MAX_B and
# H <= PERSIST_AUTO_MAX_H and the size fits, falling back to the per-step path if the
# launch is refused. gru_reset_before always takes the per-step path (its second product
# depends on r, which would need a second grid barrier per step).

PERSIST_ENV = "FASTRNN_CUPY_PERSISTENT"
PERSIST_AUTO_MAX_B = 32
PERSIST_AUTO_MAX_H = 512
_PERSIST_THREADS = 256
_PERSIST_TS = 65               # PERSIST_TS of persist.cuh: row stride of the staged tile
_PERSIST_R = 8                 # PERSIST_R: outputs per thread at most
_PERSIST_CELLS = {"rnn_tanh": ("rnn", 1), "rnn_relu": ("rnn", 1), "lstm": ("lstm", 4),
                  "gru": ("gru", 3)}
# per-unit shared-memory arrays of each backward kernel (rec, carry, dc, direct)
_PERSIST_BACKWARD_STATE = {"rnn": 3, "lstm": 4, "gru": 3}
_device_limits_cache: dict[int, tuple[int, int, bool]] = {}


def _persist_mode() -> str:
    import os  # noqa: PLC0415
    mode = os.environ.get(PERSIST_ENV, "0").strip().lower()
    return mode if mode in ("0", "1", "auto") else "0"


def _device_limits() -> tuple[int, int, bool]:
    """(multiprocessors, opt-in shared memory per block in bytes, cooperative launch)."""
    rt = cupy.cuda.runtime
    device = rt.getDevice()
    limits = _device_limits_cache.get(device)
    if limits is None:
        attr = lambda name, number: rt.deviceGetAttribute(              # noqa: E731
            getattr(rt, name, number), device)
        limits = (attr("cudaDevAttrMultiProcessorCount", 16),
                  attr("cudaDevAttrMaxSharedMemoryPerBlockOptin", 97),
                  bool(attr("cudaDevAttrCooperativeLaunch", 95)))
        _device_limits_cache[device] = limits
    return limits


def persistent_plan(cell, B: int, H: int, dtype, backward: bool):
    """(blocks, hidden units per block, shared-memory bytes) of the persistent kernel of
    ``cell`` for this size on the current device, or None if it has none (gru_reset_before)
    or the size does not fit (one block per multiprocessor, U's slice in shared memory)."""
    if cell.name not in _PERSIST_CELLS:
        return None
    source, G = _PERSIST_CELLS[cell.name]
    sms, max_smem, cooperative = _device_limits()
    if not cooperative:
        return None
    nj = -(-H // sms)                          # fewest units per block on one block per SM
    blocks = -(-H // nj)
    NT = _PERSIST_THREADS
    if backward:
        outputs = B * nj
        elems = G * H * nj + B * _PERSIST_TS + NT + _PERSIST_BACKWARD_STATE[source] * B * nj
    else:
        outputs = B * G * nj
        elems = H * G * nj + B * _PERSIST_TS + NT + B * G * nj
    smem = elems * (8 if dtype.itemsize == 8 else 4)
    if outputs > _PERSIST_R * NT or smem > max_smem:
        return None
    return blocks, nj, smem


def _persist_plan(cell, B: int, H: int, dtype, backward: bool):
    """The plan to run now (FASTRNN_CUPY_PERSISTENT), or None for the per-step path."""
    mode = _persist_mode()
    if mode == "0" or (mode == "auto" and (B > PERSIST_AUTO_MAX_B or H > PERSIST_AUTO_MAX_H)):
        return None
    return persistent_plan(cell, B, H, dtype, backward)


def _launch_persistent(fn, plan, args) -> bool:
    """Cooperative launch of a persistent kernel. False if the device refuses the grid
    in "auto" mode (the caller then takes the per-step path); an error in mode "1".

    All ``blocks`` must be resident at once (the kernel synchronises them): the launch
    goes ahead only if the occupancy calculator allows them, and CuPy's habit of
    shrinking a too-large cooperative grid with a warning is turned into an error.
    """
    import warnings  # noqa: PLC0415
    blocks, _, smem = plan
    try:
        if smem > 48 * 1024:
            fn.max_dynamic_shared_size_bytes = smem
        kernel = fn.kernel
        per_sm = cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(
            kernel.ptr, _PERSIST_THREADS, smem)
        if per_sm * _device_limits()[0] < blocks:
            raise RuntimeError(f"the persistent kernel needs {blocks} resident blocks; the "
                               f"device holds {per_sm} per multiprocessor")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            kernel((blocks,), (_PERSIST_THREADS,), args, shared_mem=smem,
                   enable_cooperative_groups=True)
    except Exception:
        if _persist_mode() == "1":
            raise
        return False
    return True


def _persist_forward(st, cell, xw, p, h0, c0, out, training, plan):
    """All steps in one launch; a ForwardOut, or None when the launch was refused."""
    source, _ = _PERSIST_CELLS[cell.name]
    T, B, H, dt = st.T, st.B, st.H, st.dtype
    slots = T + 1 if training else 2
    hs = cupy.empty((slots, B, H), dtype=dt)
    hs[0] = h0
    cs = None
    if cell.name == "lstm":
        cs = cupy.empty((slots, B, H), dtype=dt)
        cs[0] = c0
    gates = None
    if training and cell.name in ("lstm", "gru"):
        gates = cupy.empty((T, B, 4 * H), dtype=dt)
    bar = cupy.zeros(2, dtype=cupy.uint32)
    tail = (st._lens, np.int32(T), np.int32(B), np.int32(H), np.int32(st.reverse),
            np.int32(training), np.int32(plan[1]), bar)
    g_arg = _NULL if gates is None else gates
    if cell.name == "lstm":
        args = (xw, p["b"], p["U"], hs, cs, out, g_arg) + tail
    elif cell.name == "gru":
        args = (xw, p["b"], p["bn"], p["U"], hs, out, g_arg) + tail
    else:
        args = (xw, p["b"], p["U"], hs, out) + tail + (np.int32(cell.nonlinearity == "relu"),)
    if not _launch_persistent(_function(source, f"{source}_persist_forward", dt), plan, args):
        return None
    last = T if training else T % 2
    saved = _Saved(hs, cs, gates, None, st.lengths) if training else None
    return ForwardOut(out, hs[last].copy(), None if cs is None else cs[last].copy(), saved)


def _persist_backward(st, cell, saved, p, dh_arg, dh_n, dc_n, plan):
    """All steps of the backward in one launch: (dgx, dgr, dh0, dc0) for _finish_backward,
    or None when the launch was refused."""
    source, G = _PERSIST_CELLS[cell.name]
    T, B, H, dt = st.T, st.B, st.H, st.dtype
    dh0 = cupy.empty((B, H), dtype=dt)
    dc0 = cupy.empty((B, H), dtype=dt) if cell.name == "lstm" else None
    bar = cupy.zeros(2, dtype=cupy.uint32)
    tail = (st._lens, np.int32(T), np.int32(B), np.int32(H), np.int32(st.reverse),
            np.int32(plan[1]), bar)
    dhn_arg = _NULL if dh_n is None else dh_n
    dgx = cupy.empty((T, B, G * H), dtype=dt)
    dgr = dgx
    if cell.name == "lstm":
        args = (dh_arg, dhn_arg, _NULL if dc_n is None else dc_n, saved.gates, saved.cs,
                p["U"], dgx, dh0, dc0) + tail
    elif cell.name == "gru":
        dgr = cupy.empty((T, B, G * H), dtype=dt)
        args = (dh_arg, dhn_arg, saved.gates, saved.hs, p["U"], dgr, dgx, dh0) + tail
    else:
        args = (dh_arg, dhn_arg, saved.hs, p["U"], dgx, dh0) + tail + (
            np.int32(cell.nonlinearity == "relu"),)
    if not _launch_persistent(_function(source, f"{source}_persist_backward", dt), plan, args):
        return None
    return dgx, dgr, dh0, dc0
