"""Sizes and small buffers of the kernels' calls: padded batch rows, GEMM output widths,
full lengths, and how the batch splits into thread chunks.

The kernels compute in tiles of MR batch rows and NR columns, so their state and work
buffers have the batch padded to a multiple of MR rows and the columns to a multiple of
NR, the padding zero.
"""

from __future__ import annotations

import numba
import numpy as np

from ...core import config
from .gemm import MR, NR, padded

__all__ = ["chunk_size", "threads_for", "dummy", "full_lengths", "gemm_out", "padded_rows"]

_FULL_LENGTHS: dict[tuple[int, int], np.ndarray] = {}


def chunk_size(B: int, flops: float | None = None) -> int:
    """Rows per thread chunk (a multiple of MR) for a batch of B sequences: at least
    ``config.rows_per_thread`` rows per thread (``bench/threads.py`` measures why), and
    the whole batch in one chunk when the call's ``flops`` would give a thread less than
    ``config.min_flops_per_thread`` (waking a thread costs more than that work)."""
    Bp = padded(B, MR)
    if config.chunk_rows is not None:
        return padded(min(config.chunk_rows, Bp), MR)
    per_thread = config.rows_per_thread
    if Bp < 2 * per_thread:
        return Bp
    threads = max(1, min(numba.get_num_threads(), Bp // per_thread,
                         threads_for(flops) if flops is not None else Bp))
    return padded(-(-Bp // threads), MR)


def threads_for(flops: float) -> int:
    """How many threads ``flops`` of work keep busy: one per ``config.min_flops_per_thread``."""
    return max(1, int(flops // config.min_flops_per_thread))


def full_lengths(B: int, T: int) -> np.ndarray:
    """lengths (B,) int64, all T: what the kernels read when no sequence is padded. One
    array serves every call of that shape (kernels never write lengths; it stays writable
    because Numba compiles a separate variant for read-only arrays)."""
    key = (B, T)
    a = _FULL_LENGTHS.get(key)
    if a is None:
        a = np.full(B, T, dtype=np.int64)
        if len(_FULL_LENGTHS) < 256:
            _FULL_LENGTHS[key] = a
    return a


def dummy(dtype) -> np.ndarray:
    """A (1, 1, 1) stand-in for a tape buffer that a pass without a tape never touches."""
    return np.zeros((1, 1, 1), dtype=dtype)


def padded_rows(a: np.ndarray, Bp: int) -> np.ndarray:
    """a (B, n) as a zero-padded (Bp, n) copy."""
    out = np.zeros((Bp, a.shape[1]), dtype=a.dtype)
    out[:a.shape[0]] = a
    return out


def gemm_out(Bp: int, n: int, dtype) -> np.ndarray:
    """A zeroed (Bp, n rounded up to the panel width) buffer for packed_gemm results."""
    return np.zeros((Bp, padded(n, NR[np.dtype(dtype).itemsize])), dtype=dtype)
