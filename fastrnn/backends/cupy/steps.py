"""The per-step path: cuBLAS for the products, one fused kernel per step for the rest.

Forward: ``xw = x @ W`` for all T*B rows is one GEMM before the loop; per step s,
``hu = h @ U`` is one ``cublasGemmEx`` call into a buffer allocated once, then ONE kernel
of ``kernels/step.cu`` (``kernels/grurb.cu``, ``kernels/lstmp.cu``) adds ``xw`` and the bias, applies the gates, updates the state,
masks by ``lengths``, indexes time in reverse where asked and writes the tape.
``gru_reset_before`` needs two GEMM + kernel pairs per step, since its ``(r * h) @ U_n``
depends on ``r``. Backward mirrors it: per step one kernel turns the state gradient into
the gate gradients ``dG[s]`` and cuBLAS computes ``dG[s] @ U^T``; after the loop ``dW``,
``dU`` and ``dx`` are one GEMM each over all T*B rows and the bias gradients one sum.
Nothing uses atomics for results, so two runs on the same inputs agree bit for bit.

Intermediates (``xw``, ``hu``, the carried gradients ``direct``, ``rec`` and ``dc``) are in
the arithmetic dtype :func:`acc_dtype`: float32 for 16-bit storage, whose GEMMs write a
float32 C from 16-bit A and B (``cublasGemmEx``), so nothing is rounded to 16 bits on its
way from one step to the next except the state and the tape themselves.

Tape (step-indexed: slot s belongs to step s, whatever time index it worked on):
``hs`` (T+1, B, H) the state before every step and after the last; lstm ``cs`` likewise
and ``gates`` (T, B, 4H) = i, f, g, o; gru ``gates`` (T, B, 4H) = r, z, n, h@U_n + bn;
gru_reset_before ``gates`` (T, B, 3H) = r, z, n and ``rh`` (T, B, H) = r * h; rnn needs
only ``hs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..base import BackwardOut
from .lib import cupy
from .memory import alloc
from .nvrtc import CELL_TYPES, cell_traits, function


THREADS = 256
_MAX_BLOCKS = 1 << 16          # the kernels loop (grid stride) over whatever is left
NULL = np.uint64(0)           # a null device pointer as a kernel argument


def grid(n: int) -> tuple:
    return (max(1, min((n + THREADS - 1) // THREADS, _MAX_BLOCKS)),)


def addr(a) -> int:
    """Device address of a C-contiguous array's first element."""
    return a.data.ptr


def ptr(address: int):
    """A device address as a kernel argument (8 bytes, like any pointer)."""
    return np.uint64(address)


def acc_dtype(dtype) -> np.dtype:
    """The dtype of the intermediates for storage ``dtype``: float32 for float16 and
    bfloat16 (the kernels' arithmetic type, ACC(T) of kernels/common.cuh), else itself."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype.itemsize < 4 else dtype


def cublas_bindings():
    """CuPy's cuBLAS bindings (``cupy_backends.cuda.libs.cublas``)."""
    try:
        from cupy_backends.cuda.libs import cublas  # noqa: PLC0415 - only with CuPy
    except ImportError:
        cublas = cupy.cuda.cublas
    return cublas


# cudaDataType of each storage dtype (library_types.h)
CUDA_DATA_TYPE = {"float32": 0, "float64": 1, "float16": 2, "bfloat16": 14}


class StepGemm:
    """Row-major ``C (M, N) = A (M, K) @ B (K, N)`` of device blocks given by address,
    through one ``cublasGemmEx`` call: every product of the backend, the per-step ones
    without the cost of building array views and of ``cupy.matmul``'s dispatch. A and B
    are of ``dtype``, C of ``out_dtype`` (default ``dtype``; float32 for 16-bit A and B).
    Each operand is C-contiguous, or with ``a_trans`` / ``b_trans`` the C-contiguous
    transpose of the operand (a ``.T`` view), which cuBLAS reads through its op flag.

    cuBLAS is column-major: the row-major C is the column-major C^T = B^T A^T, so the call
    passes B first, then A, and ldc = N. Compute type: float64 for float64; float32
    otherwise, on TF32 tensor cores for float32 operands when ``tf32`` is set (the
    caller's ``allow_tf32``). CuPy's binding puts the call on the current stream.
    """

    def __init__(self, dtype, out_dtype=None, tf32: bool = False):
        dtype = np.dtype(dtype)
        cublas = cublas_bindings()
        self._cublas = cublas
        self._gemm = cublas.gemmEx
        self._handle = cupy.cuda.device.get_cublas_handle()
        self._type = CUDA_DATA_TYPE[dtype.name]
        self._ctype = CUDA_DATA_TYPE[np.dtype(out_dtype or dtype).name]
        if dtype.name == "float64":
            self._compute = getattr(cublas, "CUBLAS_COMPUTE_64F", 70)
            scalar = np.float64
        else:
            self._compute = getattr(cublas, "CUBLAS_COMPUTE_32F", 68)
            if dtype.name == "float32" and tf32:
                self._compute = getattr(cublas, "CUBLAS_COMPUTE_32F_FAST_TF32", 77)
            scalar = np.float32
        self._scalars = np.array([1, 0], dtype=scalar)        # alpha, beta on the host
        self._one = self._scalars.ctypes.data
        self._zero = self._one + self._scalars.itemsize
        self.host_scalars()

    def host_scalars(self) -> None:
        """alpha and beta are read from the host (the handle is CuPy's, shared: set at the
        start of every forward and backward, in case other code changed it since)."""
        self._cublas.setPointerMode(self._handle, self._cublas.CUBLAS_POINTER_MODE_HOST)

    def __call__(self, a: int, b: int, c: int, M: int, N: int, K: int,
                 a_trans: bool = False, b_trans: bool = False) -> None:
        t = self._type
        self._gemm(self._handle, int(b_trans), int(a_trans), N, M, K, self._one,
                   b, t, K if b_trans else N, a, t, M if a_trans else K, self._zero,
                   c, self._ctype, N, self._compute, -1)


_gemms: dict[tuple, StepGemm] = {}


def gemm_for(dtype, out_dtype, tf32: bool) -> StepGemm:
    """The :class:`StepGemm` of these types on the current device, made once."""
    key = (StepGemm, cupy.cuda.runtime.getDevice(), np.dtype(dtype).name,
           np.dtype(out_dtype).name, bool(tf32))
    found = _gemms.get(key)
    if found is None:
        found = _gemms[key] = StepGemm(dtype, out_dtype, tf32)
    return found


def _operand(a):
    """(a C-contiguous array holding ``a`` or its transpose, whether it is the transpose)."""
    if a.flags.c_contiguous:
        return a, False
    if a.T.flags.c_contiguous:
        return a, True
    return cupy.ascontiguousarray(a), False


def matmul(a, b, tf32: bool = False, what: str = "a product"):
    """a (M, K) @ b (K, N) of 2-d device arrays (C-contiguous or ``.T`` views of such) as a
    C-contiguous array of dtype ``acc_dtype(a.dtype)``, through one ``cublasGemmEx``:
    float32 C for 16-bit operands, TF32 tensor cores for float32 ones with ``tf32``.
    ``what`` names the result where it does not fit in memory."""
    (M, K), N = a.shape, b.shape[1]
    acc = acc_dtype(a.dtype)
    if M == 0 or N == 0 or K == 0:
        return alloc(what, (M, N), acc, zeros=True)
    a, a_t = _operand(a)
    b, b_t = _operand(b)
    out = alloc(what, (M, N), acc)
    gemm_for(a.dtype, acc, tf32)(addr(a), addr(b), addr(out), M, N, K, a_t, b_t)
    return out


def sum_rows(a):
    """Sum over every axis but the last (a bias gradient), accumulated in >= float32."""
    axes = tuple(range(a.ndim - 1))
    if a.dtype.itemsize < 4:
        return a.sum(axis=axes, dtype=cupy.float32).astype(a.dtype)
    return a.sum(axis=axes)


def grad_init(a, shape, dtype):
    """A private, writable copy of an upstream gradient in ``dtype``, or zeros when it is
    None."""
    return cupy.zeros(shape, dtype=dtype) if a is None else a.astype(dtype, copy=True)


class Steps:
    """One call's geometry: sizes, lengths on the device, reverse, launch configuration,
    the dtype of the intermediates (``acc``), whether products may use TF32 and the
    per-step GEMM (storage in, acc out)."""

    def __init__(self, T, B, H, lengths, reverse, dtype, tf32: bool = False):
        self.T, self.B, self.H, self.dtype = T, B, H, dtype
        self.acc = acc_dtype(dtype)
        self.tf32 = bool(tf32)
        self.lengths = lengths                     # device int64 (B,) or None
        self.reverse = bool(reverse)
        self.grid = grid(B * H)
        self.block = (THREADS,)
        self.gemm = gemm_for(dtype, self.acc, self.tf32)
        self.gemm.host_scalars()
        self.lens_arg = NULL if lengths is None else lengths
        self._sizes = (np.int32(T), np.int32(B), np.int32(H), np.int32(self.reverse))

    def tail(self, s: int) -> tuple:
        """The trailing kernel arguments (lengths, s, T, B, H, reverse) of step s."""
        return (self.lens_arg, np.int32(s)) + self._sizes

    @property
    def trivial_order(self) -> bool:
        """True when step s is time s for every row and nothing is padded."""
        return self.lengths is None and not self.reverse

    def gather(self, a):
        """``gather_steps`` of kernels/util.cu: time <-> step order of a C-contiguous
        (T, B, W) array, rows of finished steps (padding) set to zero."""
        out = cupy.empty_like(a)
        width = a.shape[2]
        fn = function("util", "gather_steps", a.dtype)
        fn(grid(self.T * self.B * width), self.block,
           (a, out, self.lens_arg, np.int32(self.T), np.int32(self.B), np.int64(width),
            np.int32(self.reverse)))
        return out


class Seq:
    """A step-indexed C-contiguous buffer (T', B, W): the device address of slot s."""

    __slots__ = ("array", "_base", "_step")

    def __init__(self, array):
        self.array = array
        self._base = addr(array)
        self._step = array.strides[0]

    def __call__(self, s: int):
        return ptr(self._base + s * self._step)


class StateSeq:
    """A recurrent state over the steps: all T+1 of them (T+1, B, H) when training, else
    one (B, H) buffer updated in place by the kernels. Always a private copy of the
    initial state. ``prev(s)`` / ``next(s)``: device addresses before / after step s."""

    def __init__(self, init, T: int, keep: bool, name: str = "h"):
        self.keep = keep
        if keep:
            self.buf = alloc(f"the tape of the states {name}", (T + 1,) + tuple(init.shape),
                             init.dtype)
            self.buf[0] = init
            self._seq = Seq(self.buf)
        else:
            self.buf = init.copy()
            self._addr = ptr(addr(self.buf))

    def prev(self, s: int):
        return self._seq(s) if self.keep else self._addr

    def next(self, s: int):
        return self._seq(s + 1) if self.keep else self._addr

    def final(self):
        """The state after the last step, as an array no tape shares."""
        return self.buf[-1].copy() if self.keep else self.buf


@dataclass
class Saved:
    """The device tape of one forward (see the module docstring)."""

    hs: Any
    cs: Any
    gates: Any
    rh: Any
    lengths: Any



# --------------------------------------------------------------------- shared pieces

def finish_backward(st, cell, saved, x, params, dgx, dgr, dh0, dc0) -> BackwardOut:
    """The GEMMs and sums over all T*B rows after the time loop, for either path.

    dgx (T, B, G*H): step-ordered gradients of x @ W + b; dgr: those of the recurrent
    product (h_prev @ U, + bn for gru), (T, B, G*H), or for gru_reset_before the pair
    (dg_rz (T, B, 2H), da_n (T, B, H)) of h_prev @ U[:, :2H] and (r * h_prev) @ U[:, 2H:].
    """
    T, B, H = st.T, st.B, st.H                  # H: the width of h (P for lstmp)
    grads = input_grads(st, x, params["W"], dgx)
    h_prev = saved.hs[:T].reshape(T * B, H)
    if cell.has_projection:                     # dgr = (gate gradients, dL/dh' of each step)
        dgr, dH = dgr
        C = saved.cs.shape[2]
        m = saved.gates[:, :, 3 * C:] * cupy.tanh(saved.cs[1:])   # o * tanh(c'), 0 if padded
        grads["Wr"] = matmul(m.reshape(T * B, C).T, dH.reshape(T * B, H), st.tf32, "dWr")
    if cell.name == "gru_reset_before":
        dg_rz, da_n = dgr
        grads["U"] = cupy.concatenate(
            [matmul(h_prev.T, dg_rz.reshape(T * B, 2 * H), st.tf32),
             matmul(saved.rh.reshape(T * B, H).T, da_n.reshape(T * B, H), st.tf32)], axis=1)
    else:
        grads["U"] = matmul(h_prev.T, dgr.reshape(T * B, -1), st.tf32, "dU")
    if cell.name == "gru":
        grads["bn"] = sum_rows(dgr[:, :, 2 * H:])
    dt = st.dtype
    return BackwardOut(grads["dx"].astype(dt, copy=False), dh0, dc0,
                       {k: grads[k].astype(dt, copy=False) for k in params})


def input_grads(st: Steps, x, W, dgx) -> dict:
    """dW, db and dx from the step-ordered gradients dgx (T, B, G*H) of x @ W + b.

    The inputs go through gather_steps into step order with padded rows zeroed (needed
    only with lengths or reverse), so dW is one GEMM over all T*B rows; the step-ordered
    dx comes back to time order through the same (self-inverse) gather.
    """
    T, B, I = x.shape
    dg2 = dgx.reshape(T * B, -1)
    xs = x if st.trivial_order else st.gather(x)
    dxs = matmul(dg2, W.T, st.tf32, "dx").reshape(T, B, I)
    return {"W": matmul(xs.reshape(T * B, I).T, dg2, st.tf32, "dW"), "b": sum_rows(dg2),
            "dx": st.gather(dxs) if st.reverse else dxs}


def transposed(a):
    return cupy.ascontiguousarray(a.T)


# -------------------------------------------------------------------------- per cell
# Forward loops: per step one GEMM into `hu` (two for gru_reset_before) and one kernel.
# Backward loops (s = T-1 .. 0): one kernel writes the gate gradients of step s, then
# `rec` = their product with U^T; `direct` and `rec` together are the state gradient.
# rnn_tanh, rnn_relu, lstm and gru share one loop over the kernels of kernels/step.cu.

def cell_forward(st, cell, xw, p, hs, cs, out, training):
    """rnn_tanh, rnn_relu, lstm, gru: per step one GEMM (hu = h_prev @ U) and one
    ``step_forward`` kernel. Returns the tape (T, B, TAPE*H), or None (inference, or a cell
    that keeps none). cs: the cell state's StateSeq, or None."""
    traits = cell_traits(cell.name)
    fn = function("step", f"step_forward<{CELL_TYPES[cell.name]}>", st.dtype)
    B, H, GH = st.B, st.H, cell.num_gates * st.H
    U = addr(p["U"])
    hu = cupy.empty((B, GH), dtype=st.acc)
    hu_p = addr(hu)
    width = traits["TAPE"] * H
    tape = (alloc("the tape of the gates", (st.T, B, width), st.dtype)
            if training and width else None)
    ts = Seq(tape) if tape is not None else (lambda s: NULL)
    bn = p["bn"] if traits["BIAS_N"] else NULL
    c_prev = cs.prev if cs is not None else (lambda s: NULL)
    c_next = cs.next if cs is not None else (lambda s: NULL)
    for s in range(st.T):
        hp = hs.prev(s)
        st.gemm(int(hp), U, hu_p, B, GH, H)
        fn(st.grid, st.block, (xw, p["b"], bn, hu, hp, hs.next(s), c_prev(s), c_next(s), out,
                               ts(s)) + st.tail(s))
    return tape


def cell_backward(st, cell, saved, p, dh_arg, direct, rec, dc):
    """The backward of :func:`cell_forward`, s = T-1 .. 0: per step one ``step_backward``
    kernel writes the gate gradients of the step, then ``rec`` = dg_rec[s] @ U^T (cuBLAS
    reads U transposed: no copy).
    Returns (dg_x, dg_rec) (T, B, G*H): the gradients of x @ W + b and of h_prev @ U
    (+ bn), one array where the cell does not tell them apart. dc: (B, H) or None."""
    traits = cell_traits(cell.name)
    fn = function("step", f"step_backward<{CELL_TYPES[cell.name]}>", st.dtype)
    B, H, GH = st.B, st.H, cell.num_gates * st.H
    dg_rec = alloc("the gate gradients", (st.T, B, GH), st.dtype)
    dg_x = (alloc("the gate gradients of x @ W", (st.T, B, GH), st.dtype)
            if traits["SPLIT_GRAD"] else None)
    drs = Seq(dg_rec)
    dxs = Seq(dg_x) if dg_x is not None else (lambda s: NULL)
    ts = Seq(saved.gates) if saved.gates is not None else (lambda s: NULL)
    hs = Seq(saved.hs)
    cs = Seq(saved.cs) if saved.cs is not None else (lambda s: NULL)
    dc_arg = NULL if dc is None else dc
    U_p, rec_p = addr(p["U"]), addr(rec)
    for s in reversed(range(st.T)):
        fn(st.grid, st.block, (dh_arg, direct, direct, rec, dc_arg, ts(s), hs(s), hs(s + 1),
                               cs(s), cs(s + 1), drs(s), dxs(s)) + st.tail(s))
        st.gemm(int(drs(s)), U_p, rec_p, B, H, GH, False, True)     # dg_rec[s] @ U^T
    return (dg_rec if dg_x is None else dg_x), dg_rec


def _cell_tail(st, s: int, C: int) -> tuple:
    """The trailing kernel arguments of step s for kernels over (B, C) units (st.tail is
    over the B x H units of h)."""
    return (st.lens_arg, np.int32(s), np.int32(st.T), np.int32(st.B), np.int32(C),
            np.int32(st.reverse))


def lstmp_forward(st, xw, p, hs, cs, out, training):
    """lstmp: st.H is P (the width of h); C, the width of c, is read off U (P, 4C)."""
    fn_cell = function("lstmp", "lstmp_forward_cell", st.dtype)
    fn_proj = function("lstmp", "lstmp_forward_proj", st.dtype)
    B, P = st.B, st.H
    C = p["U"].shape[1] // 4
    U, Wr = addr(p["U"]), addr(p["Wr"])
    hu = cupy.empty((B, 4 * C), dtype=st.acc)
    m = cupy.empty((B, C), dtype=st.dtype)
    hr = cupy.empty((B, P), dtype=st.acc)
    hu_p, m_p, hr_p = addr(hu), addr(m), addr(hr)
    gates = cupy.zeros((st.T, B, 4 * C), dtype=st.dtype) if training else None
    gs = Seq(gates) if training else (lambda s: NULL)
    cell_grid = grid(B * C)
    for s in range(st.T):
        hp = hs.prev(s)
        st.gemm(int(hp), U, hu_p, B, 4 * C, P)
        fn_cell(cell_grid, st.block, (xw, p["b"], hu, cs.prev(s), cs.next(s), m, gs(s))
                + _cell_tail(st, s, C))
        st.gemm(m_p, Wr, hr_p, B, P, C)
        fn_proj(st.grid, st.block, (hr, hp, hs.next(s), out) + st.tail(s))
    return gates


def lstmp_backward(st, saved, p, dh_arg, direct, rec, dc):
    """(dgates (T, B, 4C), dH (T, B, P)): the gate gradients and dL/dh' of every step."""
    fn_in = function("lstmp", "lstmp_backward_in", st.dtype)
    fn_cell = function("lstmp", "lstmp_backward_cell", st.dtype)
    B, P = st.B, st.H
    C = p["U"].shape[1] // 4
    UT, WrT = transposed(p["U"]), transposed(p["Wr"])       # (4C, P), (P, C)
    dg = cupy.empty((st.T, B, 4 * C), dtype=st.dtype)
    dH = cupy.empty((st.T, B, P), dtype=st.dtype)
    dm = cupy.empty((B, C), dtype=st.acc)
    gs, cs, dgs, dHs = Seq(saved.gates), Seq(saved.cs), Seq(dg), Seq(dH)
    UT_p, WrT_p, dm_p, rec_p = addr(UT), addr(WrT), addr(dm), addr(rec)
    cell_grid = grid(B * C)
    for s in reversed(range(st.T)):
        fn_in(st.grid, st.block, (dh_arg, direct, direct, rec, dHs(s)) + st.tail(s))
        st.gemm(int(dHs(s)), WrT_p, dm_p, B, C, P)
        fn_cell(cell_grid, st.block, (dm, dc, gs(s), cs(s), cs(s + 1), dgs(s))
                + _cell_tail(st, s, C))
        st.gemm(int(dgs(s)), UT_p, rec_p, B, P, 4 * C)
    return dg, dH


def grurb_forward(st, xw, p, hs, out, training):
    fn_rz = function("grurb", "grurb_forward_rz", st.dtype)
    fn_n = function("grurb", "grurb_forward_n", st.dtype)
    B, H = st.B, st.H
    U_rz = cupy.ascontiguousarray(p["U"][:, :2 * H])          # (H, 2H)
    U_n = cupy.ascontiguousarray(p["U"][:, 2 * H:])           # (H, H)
    hu = cupy.empty((B, 2 * H), dtype=st.acc)
    hn = cupy.empty((B, H), dtype=st.acc)
    lead = (st.T,) if training else (1,)
    gates = cupy.empty(lead + (B, 3 * H), dtype=st.dtype)     # r, z, n
    rh = cupy.empty(lead + (B, H), dtype=st.dtype)            # r * h_prev
    gs, rhs = Seq(gates), Seq(rh)
    slot = (lambda s: s) if training else (lambda s: 0)
    U_rz_p, U_n_p, hu_p, hn_p = addr(U_rz), addr(U_n), addr(hu), addr(hn)
    for s in range(st.T):
        hp, g, r = hs.prev(s), gs(slot(s)), rhs(slot(s))
        st.gemm(int(hp), U_rz_p, hu_p, B, 2 * H, H)
        fn_rz(st.grid, st.block, (xw, p["b"], hu, hp, g, r) + st.tail(s))
        st.gemm(int(r), U_n_p, hn_p, B, H, H)
        fn_n(st.grid, st.block, (xw, p["b"], hn, hp, hs.next(s), out, g) + st.tail(s))
    return (gates, rh) if training else (None, None)


def grurb_backward(st, saved, p, dh_arg, direct, rec):
    fn_n = function("grurb", "grurb_backward_n", st.dtype)
    fn_r = function("grurb", "grurb_backward_r", st.dtype)
    B, H = st.B, st.H
    U_rzT = transposed(p["U"][:, :2 * H])                    # (2H, H)
    U_nT = transposed(p["U"][:, 2 * H:])                     # (H, H)
    dg_x = cupy.empty((st.T, B, 3 * H), dtype=st.dtype)
    dg_rz = cupy.empty((st.T, B, 2 * H), dtype=st.dtype)
    da_n = cupy.empty((st.T, B, H), dtype=st.dtype)
    drh = cupy.empty((B, H), dtype=st.acc)
    gs, hs = Seq(saved.gates), Seq(saved.hs)
    dxs, drzs, dans = Seq(dg_x), Seq(dg_rz), Seq(da_n)
    U_rzT_p, U_nT_p, drh_p, rec_p = addr(U_rzT), addr(U_nT), addr(drh), addr(rec)
    for s in reversed(range(st.T)):
        g, hp, dx_s, drz_s, dan_s = gs(s), hs(s), dxs(s), drzs(s), dans(s)
        fn_n(st.grid, st.block,
             (dh_arg, direct, direct, rec, g, hp, dx_s, drz_s, dan_s) + st.tail(s))
        st.gemm(int(dan_s), U_nT_p, drh_p, B, H, H)
        fn_r(st.grid, st.block, (drh, direct, g, hp, dx_s, drz_s) + st.tail(s))
        st.gemm(int(drz_s), U_rzT_p, rec_p, B, H, 2 * H)
    return dg_x, dg_rz, da_n
