"""A small GEMM for the per-step products of the numba kernels, with the weights packed once.

The recurrent product ``h @ U`` runs T times with the same U. A BLAS call re-packs U into
its panel layout on every call, a large share of the time of one step's product. Here U
is packed once per pass into panels of NR columns,
``Up[p, k, :] = U[k, p*NR:(p+1)*NR]``, and a register-blocked micro-kernel computes each
MR x NR tile of C with MR*4 vector accumulators: per k one vector load per accumulator
column, one broadcast per row, MR*4 fused multiply-adds. It is written as LLVM IR (an
intrinsic), because Numba has no vector types and would not keep the accumulators in
registers otherwise.

The kernels split the batch over threads, so each core runs its own tiles
(``bench/README.md`` has the rates measured against OpenBLAS).

Shapes: A (M, K) with M a multiple of MR (callers pad the batch), C (M, P*NR), both
C-contiguous rows with their own leading dimension; padded columns of Up are zero, so the
padded columns of C stay zero.
"""

from __future__ import annotations

import llvmlite.binding as _llvm
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .math import JIT
from .threads import threads_for

MR = 4                                            # rows of a tile
KC = 256                                          # depth of a block of B kept in cache
MC = 128                                          # rows of A reused across the panels of B
_WIDE = bool(_llvm.get_host_cpu_features().get("avx512f"))
LANES = {4: 16 if _WIDE else 8, 8: 8 if _WIDE else 4}    # vector lanes per itemsize
# Vectors of C per tile row: 4 where 32 vector registers hold a 4 x 4 tile (AVX-512); 3 on
# AVX2, whose 16 registers hold 12 accumulators, 3 B vectors and the broadcast A value.
VECS = 4 if _WIDE else 3
NR = {size: VECS * lanes for size, lanes in LANES.items()}  # columns of a tile


def _microkernel_codegen(float_type, lanes, rows, vecs=VECS):
    i64 = ir.IntType(64)

    def codegen(context, builder, signature, args):
        a_addr, a_rs, a_ks, bp_addr, ldb, K, c_addr, ldc, accumulate = args
        vec = ir.VectorType(float_type, lanes)
        fptr, vptr = float_type.as_pointer(), vec.as_pointer()
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vec, [vec, vec, vec]),
            f"llvm.fma.v{lanes}{'f32' if float_type == ir.FloatType() else 'f64'}")
        A = builder.inttoptr(a_addr, fptr)
        Bp = builder.inttoptr(bp_addr, fptr)
        C = builder.inttoptr(c_addr, fptr)
        zero = ir.Constant(vec, [0.0] * lanes)
        accs = [cgutils.alloca_once_value(builder, zero) for _ in range(rows * vecs)]
        splat = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
        with cgutils.for_range(builder, K) as loop:
            k = loop.index
            row = builder.gep(Bp, [builder.mul(k, ldb)])
            b = [builder.load(builder.bitcast(builder.gep(row, [ir.Constant(i64, lanes * q)]),
                                              vptr), align=4)
                 for q in range(vecs)]
            for r in range(rows):
                a = builder.load(builder.gep(A, [builder.add(
                    builder.mul(ir.Constant(i64, r), a_rs), builder.mul(k, a_ks))]), align=4)
                av = builder.insert_element(ir.Constant(vec, None), a, ir.Constant(ir.IntType(32), 0))
                av = builder.shuffle_vector(av, ir.Constant(vec, None), splat)
                for q in range(vecs):
                    acc = accs[r * vecs + q]
                    builder.store(builder.call(fma, [av, b[q], builder.load(acc)]), acc)
        add = builder.icmp_signed("!=", accumulate, ir.Constant(i64, 0))
        for r in range(rows):
            for q in range(vecs):
                offset = builder.add(builder.mul(ir.Constant(i64, r), ldc),
                                     ir.Constant(i64, lanes * q))
                cp = builder.bitcast(builder.gep(C, [offset]), vptr)
                v = builder.load(accs[r * vecs + q])
                v = builder.select(add, builder.fadd(v, builder.load(cp, align=4)), v)
                builder.store(v, cp, align=4)
        return context.get_dummy_value()
    return codegen


_SIG = types.void(*([types.int64] * 9))


def _microkernel(float_type, lanes: int, rows: int, name: str, vecs: int = VECS):
    """The intrinsic C[0:rows, 0:NR] (+)= A[0:rows, 0:K] @ B[0:K, 0:NR] (NR = vecs*lanes).

    Addresses in bytes; strides in elements: A[r, k] at a_addr + (r*a_rs + k*a_ks), B's
    rows ldb apart (NR for a packed panel), C's rows ldc apart. One variant per row count,
    so a batch of one row does one row's work, not MR rows'.
    """
    def typer(typingctx, a_addr, a_rs, a_ks, b_addr, ldb, K, c_addr, ldc, accumulate):
        return _SIG, _microkernel_codegen(float_type, lanes, rows, vecs)
    typer.__name__ = typer.__qualname__ = name
    return intrinsic(typer)


_f32, _f64 = ir.FloatType(), ir.DoubleType()
mk32_1, mk32_2, mk32_3, mk32_4 = (_microkernel(_f32, LANES[4], r, f"microkernel_f32_{r}")
                                  for r in (1, 2, 3, 4))
mk64_1, mk64_2, mk64_3, mk64_4 = (_microkernel(_f64, LANES[8], r, f"microkernel_f64_{r}")
                                  for r in (1, 2, 3, 4))
# One vector wide (NR_NARROW = lanes columns): for products whose packed side has only a
# few columns, such as h^T of a batch of 1 to 8 rows (see unpacked.py).
NR_NARROW = {size: lanes for size, lanes in LANES.items()}
nk32_1, nk32_2, nk32_3, nk32_4 = (_microkernel(_f32, LANES[4], r, f"narrow_f32_{r}", 1)
                                  for r in (1, 2, 3, 4))
nk64_1, nk64_2, nk64_3, nk64_4 = (_microkernel(_f64, LANES[8], r, f"narrow_f64_{r}", 1)
                                  for r in (1, 2, 3, 4))
assert MR == 4, "the tile() dispatch below has one microkernel per row count up to MR"


def pack_panels(U: np.ndarray) -> np.ndarray:
    """U (K, N) -> Up (P, K, NR), P = ceil(N / NR), zero in the padded columns."""
    K, N = U.shape
    nr = NR[U.dtype.itemsize]
    P = -(-N // nr)
    if P * nr != N:
        U = np.concatenate([U, np.zeros((K, P * nr - N), dtype=U.dtype)], axis=1)
    return np.ascontiguousarray(U.reshape(K, P, nr).transpose(1, 0, 2))


def padded(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@njit(**JIT)
def tile(a_addr, a_rs, a_ks, b_addr, ldb, K, c_addr, ldc, accumulate, size, rows):
    """One tile of C: ``rows`` (1..MR) rows by NR columns, float32 (size 4) or float64."""
    if size == 4:
        if rows >= 4:
            mk32_4(a_addr, a_rs, a_ks, b_addr, ldb, K, c_addr, ldc, accumulate)
        elif rows == 1:
            mk32_1(a_addr, a_rs, a_ks, b_addr, ldb, K, c_addr, ldc, accumulate)
        elif rows == 2:
            mk32_2(a_addr, a_rs, a_ks, b_addr, ldb, K, c_addr, ldc, accumulate)
        else:
            mk32_3(a_addr, a_rs, a_ks, b_addr, ldb, K, c_addr, ldc, accumulate)
    else:
        if rows >= 4:
            mk64_4(a_addr, a_rs, a_ks, b_addr, ldb, K, c_addr, ldc, accumulate)
        elif rows == 1:
            mk64_1(a_addr, a_rs, a_ks, b_addr, ldb, K, c_addr, ldc, accumulate)
        elif rows == 2:
            mk64_2(a_addr, a_rs, a_ks, b_addr, ldb, K, c_addr, ldc, accumulate)
        else:
            mk64_3(a_addr, a_rs, a_ks, b_addr, ldb, K, c_addr, ldc, accumulate)


@njit(**JIT)
def tile_narrow(a_addr, a_rs, a_ks, b_addr, ldb, K, c_addr, ldc, accumulate, size, rows):
    """:func:`tile` one vector (NR_NARROW columns) wide."""
    if size == 4:
        if rows >= 4:
            nk32_4(a_addr, a_rs, a_ks, b_addr, ldb, K, c_addr, ldc, accumulate)
        elif rows == 1:
            nk32_1(a_addr, a_rs, a_ks, b_addr, ldb, K, c_addr, ldc, accumulate)
        elif rows == 2:
            nk32_2(a_addr, a_rs, a_ks, b_addr, ldb, K, c_addr, ldc, accumulate)
        else:
            nk32_3(a_addr, a_rs, a_ks, b_addr, ldb, K, c_addr, ldc, accumulate)
    else:
        if rows >= 4:
            nk64_4(a_addr, a_rs, a_ks, b_addr, ldb, K, c_addr, ldc, accumulate)
        elif rows == 1:
            nk64_1(a_addr, a_rs, a_ks, b_addr, ldb, K, c_addr, ldc, accumulate)
        elif rows == 2:
            nk64_2(a_addr, a_rs, a_ks, b_addr, ldb, K, c_addr, ldc, accumulate)
        else:
            nk64_3(a_addr, a_rs, a_ks, b_addr, ldb, K, c_addr, ldc, accumulate)


@njit(**JIT)
def packed_gemm(A, r0, r1, Up, C, accumulate):
    """C[r0:r1] (+)= A[r0:r1] @ U for U packed by :func:`pack_panels`.

    A (M, K) and C (M, >= P*NR) C-contiguous; r0 a multiple of MR, r1 <= M any row (the
    rows from r1 to the next multiple of MR are neither read nor written).
    """
    P, K, nr = Up.shape
    lda, ldc = A.shape[1], C.shape[1]
    size = A.itemsize
    a0, c0, u0 = A.ctypes.data, C.ctypes.data, Up.ctypes.data
    for p in range(P):                      # a panel is read once and used by every tile
        for i in range(r0, r1, MR):
            tile(a0 + i * lda * size, lda, 1, u0 + p * K * nr * size, nr, K,
                 c0 + (i * ldc + p * nr) * size, ldc, accumulate, size, min(MR, r1 - i))


@njit(**JIT)
def _gemm_tiles(A, Bp, C, t0, t1):
    """C[i] = A[i] @ B for the rows i of the MR-row tiles t0..t1, on the calling thread.

    A any strides (a view); B packed by :func:`pack_panels`, Bp (P, K, NR); C (M, P*NR).
    """
    M, K = A.shape
    P, _, nr = Bp.shape
    ldc = C.shape[1]
    size = A.itemsize
    a_rs, a_ks = A.strides[0] // size, A.strides[1] // size
    for mb in range(t0, t1, MC // MR):              # MC rows of C stay in cache over all K
        for kb in range(0, K, KC):                  # a KC x NR panel block of B in L1/L2
            kc = min(KC, K - kb)
            for p in range(P):
                for ti in range(mb, min(mb + MC // MR, t1)):
                    i = ti * MR
                    tile(A.ctypes.data + (i * a_rs + kb * a_ks) * size, a_rs, a_ks,
                         Bp.ctypes.data + ((p * K + kb) * nr) * size, nr, kc,
                         C.ctypes.data + (i * ldc + p * nr) * size, ldc, kb > 0, size, MR)


@njit(**dict(JIT, parallel=True))
def _gemm_tiles_threaded(A, Bp, C, tiles_per_chunk):
    """:func:`_gemm_tiles` over all whole tiles of A, chunks of tiles on Numba's threads."""
    tiles = A.shape[0] // MR
    for ci in prange(-(-tiles // tiles_per_chunk)):
        _gemm_tiles(A, Bp, C, ci * tiles_per_chunk, min((ci + 1) * tiles_per_chunk, tiles))


def matmul(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """A (M, K) @ B (K, N) with the micro-kernel, rows of A split over Numba's threads.

    A may be any strided view (a transpose costs no copy); B is packed into panels (a copy
    of B: give the smaller operand as B). The last M % MR rows go through NumPy.
    """
    M, K = A.shape
    N = B.shape[1]
    tiles = M // MR
    if M % MR == 0:
        return matmul_packed(A, pack_panels(B), N)
    C = np.empty((M, N), dtype=A.dtype)
    if tiles:
        C[:tiles * MR] = matmul_packed(A[:tiles * MR], pack_panels(B), N)
    if M % MR:
        C[tiles * MR:] = A[tiles * MR:] @ B
    return C


def matmul_packed(A: np.ndarray, Bp: np.ndarray, n: int) -> np.ndarray:
    """A (M, K) @ B (K, n) for B already packed by :func:`pack_panels` into Bp (P, K, NR).

    A may be any strided view; when M is not a multiple of MR it is first copied into a
    zero-padded (M rounded up, K) array. Returns an (M, n) view of a C-contiguous
    (M rounded up, P*NR) result.
    """
    M, K = A.shape
    P, Kb, nr = Bp.shape
    if Kb != K or A.dtype != Bp.dtype:
        raise ValueError(f"matmul_packed: A ({K} columns, {A.dtype}) does not fit packed B "
                         f"({Kb} rows, {Bp.dtype})")
    if K == 0:
        return np.zeros((M, n), dtype=A.dtype)
    Mp = padded(M, MR)
    if Mp != M:
        Ap = np.zeros((Mp, K), dtype=A.dtype)
        Ap[:M] = A
        A = Ap
    C = np.empty((Mp, P * nr), dtype=A.dtype)
    tiles = Mp // MR
    threads = threads_for(2 * M * K * n, tiles)
    if threads == 1:
        _gemm_tiles(A, Bp, C, 0, tiles)
    else:
        _gemm_tiles_threaded(A, Bp, C, -(-tiles // threads))
    return C[:M, :n]


@njit(**JIT)
def _panel_gemm_tiles(Ap, K, Bp, C, t0, t1):
    """C = A @ B on the MR-row tiles t0..t1 for A stored as panels, A[r, p*NR + j] =
    Ap[p, r, j] (K real columns), on the calling thread.

    Ap (PA, M, NR) with M a multiple of MR, Bp (PB, >= K, NR) packed; C (M, PB*NR). Each
    panel of A is one depth block of the product.
    """
    PA, M, nra = Ap.shape
    PB, Kb, nrb = Bp.shape
    ldc = C.shape[1]
    size = Ap.itemsize
    for ti in range(t0, t1):
        i = ti * MR
        for q in range(PB):
            for p in range(PA):
                kc = min(nra, K - p * nra)
                tile(Ap.ctypes.data + (p * M + i) * nra * size, nra, 1,
                     Bp.ctypes.data + (q * Kb + p * nra) * nrb * size, nrb, kc,
                     C.ctypes.data + (i * ldc + q * nrb) * size, ldc, p > 0, size, MR)


@njit(**dict(JIT, parallel=True))
def _panel_gemm_tiles_threaded(Ap, K, Bp, C, tiles_per_chunk):
    """:func:`_panel_gemm_tiles` over all tiles, chunks of tiles on Numba's threads."""
    tiles = Ap.shape[1] // MR
    for ci in prange(-(-tiles // tiles_per_chunk)):
        _panel_gemm_tiles(Ap, K, Bp, C, ci * tiles_per_chunk,
                          min((ci + 1) * tiles_per_chunk, tiles))


def panel_matmul(Ap: np.ndarray, K: int, B: np.ndarray, Bp: np.ndarray | None = None
                 ) -> np.ndarray:
    """A @ B (M, N) for A (M, K) stored as panels like :func:`pack_panels` makes them
    (Ap (PA, M, NR), A[r, p*NR + j] = Ap[p, r, j]) and B (K, N) a plain array; ``Bp`` is
    ``pack_panels(B)`` when the caller has it already."""
    PA, M, nr = Ap.shape
    if K > PA * nr or B.shape[0] != K:
        raise ValueError(f"panel_matmul: A panels {Ap.shape} with K={K}, B {B.shape}")
    N = B.shape[1]
    if Bp is None:
        Bp = pack_panels(B)
    C = np.empty((M, Bp.shape[0] * Bp.shape[2]), dtype=Ap.dtype)
    tiles = M // MR
    if tiles:
        threads = threads_for(2 * M * K * N, tiles)
        if threads == 1:
            _panel_gemm_tiles(Ap, K, Bp, C, 0, tiles)
        else:
            _panel_gemm_tiles_threaded(Ap, K, Bp, C, -(-tiles // threads))
    if M % MR:                                   # the last rows, unpacked, through NumPy
        tail = Ap[:, tiles * MR:].transpose(1, 0, 2).reshape(M - tiles * MR, PA * nr)
        C[tiles * MR:, :N] = tail[:, :K] @ B
    return C[:, :N]


@njit(**JIT)
def _panel_sums(Ap, out):
    P, M, nr = Ap.shape
    acc = np.zeros(nr, dtype=np.float64)
    for p in range(P):
        acc[:] = 0.0
        for r in range(M):
            row = Ap[p, r]
            for j in range(nr):
                acc[j] += row[j]
        for j in range(nr):
            out[p * nr + j] = acc[j]


def panel_column_sums(Ap: np.ndarray, n: int) -> np.ndarray:
    """Column sums (n,) of the (M, n) matrix stored as panels Ap (P, M, NR), accumulated in
    float64 in one compiled pass (NumPy's sum over the middle axis of Ap strides badly)."""
    out = np.empty(Ap.shape[0] * Ap.shape[2], dtype=Ap.dtype)
    _panel_sums(Ap, out)
    return out[:n]
