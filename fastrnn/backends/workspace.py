"""A pool of large work arrays that the CPU kernels reuse from one call to the next.

A training step of the numba backend needs about 10 MB of tape and gradient buffers for a
(T=64, B=32, H=128) LSTM. Fresh memory of that size comes from the kernel page by page:
measured on the dev machine, ``python`` with ``fastrnn.forward`` + ``fastrnn.backward`` in a
loop took 1,155 page faults and 6.2 ms per step, against 0 faults and 4.8 ms when the
same buffers were reused. The pool keeps buffers that a finished pass gave back and hands
them to the next pass that asks for the same number of bytes.

Only memory that fastrnn alone sees goes through the pool: the tape's intermediates (given
back when the tape is freed) and temporaries of a backward pass. Outputs and gradients
returned to the caller are always fresh arrays.

The pool holds at most :data:`MAX_BYTES` (``FASTRNN_WORKSPACE_MB``, default 512) of idle
buffers; :func:`release` empties it.
"""

from __future__ import annotations

import os
import threading
import weakref

import numpy as np

__all__ = ["take", "give", "give_when_freed", "release", "idle_bytes", "MAX_BYTES"]

MIN_BYTES = 1 << 18                     # smaller arrays come from malloc's own free lists
MAX_BYTES = int(float(os.environ.get("FASTRNN_WORKSPACE_MB", "512")) * (1 << 20))

_lock = threading.Lock()
_idle: dict[int, list[np.ndarray]] = {}  # nbytes -> idle raw buffers (uint8)
_idle_total = 0


def take(shape, dtype, zero: bool = False) -> np.ndarray:
    """An uninitialised (or, with ``zero``, zeroed) C-contiguous array, from the pool when
    an idle buffer of the same size is there."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = None
    if nbytes >= MIN_BYTES:
        global _idle_total
        with _lock:
            bufs = _idle.get(nbytes)
            if bufs:
                raw = bufs.pop()
                _idle_total -= nbytes
    if raw is None:
        return (np.zeros if zero else np.empty)(shape, dtype=dtype)
    a = raw.view(dtype).reshape(shape)
    if zero:
        a.fill(0)
    return a


def give(*arrays) -> None:
    """Return arrays made by :func:`take` to the pool; the caller must not use them after.

    Arrays too small to pool, and any beyond the pool's limit, are simply dropped.
    """
    global _idle_total
    for a in arrays:
        if a is None or a.nbytes < MIN_BYTES:
            continue
        if not (a.flags.c_contiguous and a.flags.writeable):
            continue
        raw = a.reshape(-1).view(np.uint8)
        with _lock:
            if _idle_total + raw.nbytes > MAX_BYTES:
                continue
            _idle.setdefault(raw.nbytes, []).append(raw)
            _idle_total += raw.nbytes


def give_when_freed(owner, *arrays) -> None:
    """Return ``arrays`` to the pool once ``owner`` (which alone holds them) is freed."""
    weakref.finalize(owner, give, *arrays)


def release() -> None:
    """Drop every idle buffer (their memory goes back to the allocator)."""
    global _idle_total
    with _lock:
        _idle.clear()
        _idle_total = 0


def idle_bytes() -> int:
    """Bytes held by idle buffers now."""
    with _lock:
        return _idle_total
