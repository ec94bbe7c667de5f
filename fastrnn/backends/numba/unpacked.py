"""Products whose large operand is read where it lies: no packed copy of the weights.

:mod:`.gemm` packs the weights into panels once and reads them T times. A single step
reads each weight once, so there the copy would be most of the work; and a BLAS call
packs it again itself (NumPy's OpenBLAS took 375 µs for the two products of one LSTM
step at B=8, H=256, on one thread: a whole weight copy each). Here the same
micro-kernels read the weight matrix in place:

* ``A @ B`` with B's rows contiguous (a C-ordered W, or torch's ``weight_hh`` as U^T):
  every full NR-column panel of B is a panel already, its rows ``ldb`` apart; only the
  last, partial panel (fewer than NR columns) is copied, K x NR values.
* ``A @ B`` with B's columns contiguous (torch's ``weight_ih.T`` as W): computed as
  ``(B^T @ A^T)^T``, B^T's rows being the micro-kernel's broadcast rows and A^T, a few
  rows of activations, the packed side (one vector wide for up to NR_NARROW of them).

The compiled loops take addresses and strides as integers, so one compilation serves
every dtype and memory order. Results are C-contiguous (M, N) arrays.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .gemm import KC, MR, NR, NR_NARROW, tile, tile_narrow
from .math import JIT
from .threads import one_blas_thread, threads_for

__all__ = ["product"]

_BAND_BYTES = 128 * 1024        # rows of B read per pass over the panels: half an L2


@njit(**JIT)
def _rows_by_panels(a, a_rs, a_ks, M, K, b, ldb, full, tail_b, c, ldc, tmp, size, nr, p0, p1):
    """C[:, p*nr:(p+1)*nr] = A @ B[:, same] for the panels p0..p1 of B; panel ``full``
    (the partial one, if any) from its packed copy ``tail_b`` (K, nr) into ``tmp`` (M, nr).
    Addresses in bytes, strides in elements. B is read in bands of whole rows, so that a
    few rows of A stream the weights through memory in order (panel by panel down all K
    rows, a row 8 KB apart, took twice the time at H=512)."""
    band = max(8, min(KC, _BAND_BYTES // max(1, ldb * size)))
    for kb in range(0, K, band):         # a band of B's rows: contiguous memory, in cache
        kc = min(band, K - kb)
        for p in range(p0, p1):
            for i in range(0, M, MR):
                rows = min(MR, M - i)
                ai = a + (i * a_rs + kb * a_ks) * size
                if p < full:
                    tile(ai, a_rs, a_ks, b + (kb * ldb + p * nr) * size, ldb, kc,
                         c + (i * ldc + p * nr) * size, ldc, kb > 0, size, rows)
                else:
                    tile(ai, a_rs, a_ks, tail_b + kb * nr * size, nr, kc,
                         tmp + i * nr * size, nr, kb > 0, size, rows)


@njit(**dict(JIT, parallel=True))
def _rows_by_panels_threaded(a, a_rs, a_ks, M, K, b, ldb, full, tail_b, c, ldc, tmp, size, nr,
                             panels, per_chunk):
    for ci in prange(-(-panels // per_chunk)):
        _rows_by_panels(a, a_rs, a_ks, M, K, b, ldb, full, tail_b, c, ldc, tmp, size, nr,
                        ci * per_chunk, min((ci + 1) * per_chunk, panels))


@njit(**JIT)
def _broadcast_rows(bt, ldbt, N, K, at, w, P, d, ldd, size, narrow, n0, n1):
    """D[n0:n1] = Bt[n0:n1] @ AT for Bt (N, K) rows ``ldbt`` apart and AT packed as P
    panels (P, K, w); D (N, P*w) rows ``ldd`` apart."""
    for i in range(n0, n1, MR):
        rows = min(MR, N - i)
        for p in range(P):
            for kb in range(0, K, KC):
                kc = min(KC, K - kb)
                ai = bt + (i * ldbt + kb) * size
                bp = at + (p * K + kb) * w * size
                ci = d + (i * ldd + p * w) * size
                if narrow:
                    tile_narrow(ai, ldbt, 1, bp, w, kc, ci, ldd, kb > 0, size, rows)
                else:
                    tile(ai, ldbt, 1, bp, w, kc, ci, ldd, kb > 0, size, rows)


@njit(**dict(JIT, parallel=True))
def _broadcast_rows_threaded(bt, ldbt, N, K, at, w, P, d, ldd, size, narrow, per_chunk):
    chunks = -(-N // per_chunk)
    for ci in prange(chunks):
        _broadcast_rows(bt, ldbt, N, K, at, w, P, d, ldd, size, narrow, ci * per_chunk,
                        min((ci + 1) * per_chunk, N))


def _address(a: np.ndarray) -> int:
    """The address of a[0, ...] (the array interface reads it without a ctypes object)."""
    return a.__array_interface__["data"][0]


def _rows_contiguous(B: np.ndarray, size: int) -> bool:
    return B.strides[1] == size and B.strides[0] >= B.shape[1] * size


def product(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """A (M, K) @ B (K, N) as a new C-contiguous (M, N) array; A any strides, B with
    contiguous rows or contiguous columns (else copied once), one float dtype.

    One row (M = 1) goes to NumPy's BLAS, on the calling thread: a matrix-vector product
    streams B once, and BLAS's gemv does that best (at B=1, H=512 an LSTM step's products
    took 50 µs there against 100 µs through the panels)."""
    M, K = A.shape
    N = B.shape[1]
    dt = A.dtype
    size = dt.itemsize
    if M == 0 or N == 0 or K == 0:
        return np.zeros((M, N), dtype=dt)
    if M == 1:
        with one_blas_thread():                 # a vector-matrix product: BLAS's gemv
            return np.matmul(A, B)
    if A.strides[0] < 0 or A.strides[1] < 0 or A.strides[0] % size or A.strides[1] % size:
        A = np.ascontiguousarray(A)
    if _rows_contiguous(B, size):
        return _product_rows(A, B)
    if _rows_contiguous(B.T, size):
        return _product_columns(A, B)
    return _product_rows(A, np.ascontiguousarray(B))


def _product_rows(A, B):
    """B's rows contiguous: B's panels read in place, the partial one copied."""
    M, K = A.shape
    N = B.shape[1]
    dt = A.dtype

    size = dt.itemsize
    nr = NR[size]
    full = N // nr
    panels = -(-N // nr)
    C = np.empty((M, N), dtype=dt)
    tail_b = tmp = None
    tail_addr = tmp_addr = 0
    if full < panels:
        tail_b = np.zeros((K, nr), dtype=dt)
        tail_b[:, :N - full * nr] = B[:, full * nr:]
        tmp = np.empty((M, nr), dtype=dt)
        tail_addr, tmp_addr = _address(tail_b), _address(tmp)
    args = (_address(A), A.strides[0] // size, A.strides[1] // size, M, K, _address(B),
            B.strides[0] // size, full, tail_addr, _address(C), N, tmp_addr, size, nr)
    threads = threads_for(2 * M * N * K, panels)
    if threads == 1:
        _rows_by_panels(*args, 0, panels)
    else:
        _rows_by_panels_threaded(*args, panels, -(-panels // threads))
    if full < panels:
        C[:, full * nr:] = tmp[:, :N - full * nr]
    return C


def _product_columns(A, B):
    """B's columns contiguous: (B^T @ A^T)^T, B^T's rows broadcast, A^T packed."""
    M, K = A.shape
    N = B.shape[1]
    dt = A.dtype
    size = dt.itemsize
    narrow = M <= NR_NARROW[size]
    w = NR_NARROW[size] if narrow else NR[size]
    P = -(-M // w)
    at = np.zeros((P, K, w), dtype=dt)
    for p in range(P):
        cols = min(w, M - p * w)
        at[p, :, :cols] = A[p * w:p * w + cols].T
    Bt = B.T                                        # (N, K), rows contiguous
    D = np.empty((N, P * w), dtype=dt)
    args = (_address(Bt), Bt.strides[0] // size, N, K, _address(at), w, P, _address(D),
            P * w, size, narrow)
    threads = threads_for(2 * N * P * w * K, -(-N // MR))
    if threads == 1:
        _broadcast_rows(*args, 0, N)
    else:
        per = -(-N // threads)
        _broadcast_rows_threaded(*args, -(-per // MR) * MR)
    return np.ascontiguousarray(D[:, :M].T)
