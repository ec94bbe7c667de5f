"""A pool of large work arrays that the CPU kernels reuse from one call to the next.

A training step of the numba backend needs megabytes of tape and gradient buffers. Fresh
memory of that size comes from the operating system page by page, a page fault each,
which costs a training loop a large share of its time. The pool keeps buffers that a
finished pass gave back and hands them to the next pass that asks for the same number of
bytes.

Only memory that fastrnn alone sees goes through the pool: the tape's intermediates (given
back when the tape is freed) and temporaries of a backward pass. Outputs and gradients
returned to the caller are always fresh arrays.

The pool holds at most ``config.workspace_mb`` (``FASTRNN_WORKSPACE_MB``, default 256) MiB
of idle buffers. When a returned buffer does not fit, the buffers idle the longest are dropped to
make room, so that a run whose shapes change (bucketed sequence lengths, say) keeps the
sizes it uses now rather than those of its first steps. :func:`release` empties the pool.
"""

from __future__ import annotations

import collections
import threading
import weakref

import numpy as np

from ...core import config

__all__ = ["take", "give", "give_when_freed", "Lease", "release", "idle_bytes"]

_lock = threading.Lock()
_idle: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()  # id -> raw, oldest first
_idle_total = 0
# Buffers of freed tapes. A finaliser can run inside any allocation, also one made while
# _lock is held, so it only appends here (atomic, no lock); take and give move them over.
_freed: collections.deque = collections.deque()


def take(shape, dtype, zero: bool = False) -> np.ndarray:
    """An uninitialised (or, with ``zero``, zeroed) C-contiguous array, from the pool when
    an idle buffer of the same size is there."""
    global _idle_total
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = None
    if nbytes >= config.workspace_min_bytes:
        _collect_freed()
        with _lock:
            for key, buf in reversed(_idle.items()):      # the most recently returned first
                if buf.nbytes == nbytes:
                    raw = _idle.pop(key)
                    _idle_total -= nbytes
                    break
    if raw is None:
        return (np.zeros if zero else np.empty)(shape, dtype=dtype)
    a = raw.view(dtype).reshape(shape)
    if zero:
        a.fill(0)
    return a


def give(*arrays) -> None:
    """Return arrays made by :func:`take` to the pool; the caller must not use them after.

    Arrays too small to pool, views that are not C-contiguous, and arrays larger than the
    whole pool are simply dropped.
    """
    _collect_freed()
    _add(arrays)


def _add(arrays):
    limit = config.workspace_max_bytes()
    raws = [a.reshape(-1).view(np.uint8) for a in arrays
            if a is not None and a.nbytes >= config.workspace_min_bytes
            and a.flags.c_contiguous and a.flags.writeable and a.nbytes <= limit]
    if raws:
        with _lock:
            for raw in raws:
                _add_locked(raw, limit)


def _add_locked(raw, limit):
    global _idle_total
    while _idle and _idle_total + raw.nbytes > limit:
        _, old = _idle.popitem(last=False)                # idle the longest
        _idle_total -= old.nbytes
    if _idle_total + raw.nbytes <= limit:
        _idle[id(raw)] = raw
        _idle_total += raw.nbytes


def _collect_freed():
    while _freed:
        try:
            arrays = _freed.popleft()
        except IndexError:                                # another thread took the last
            return
        _add(arrays)


def give_when_freed(owner, *arrays) -> None:
    """Return ``arrays`` to the pool once ``owner`` (which alone holds them) is freed."""
    weakref.finalize(owner, _freed.append, arrays)


class Lease:
    """The arrays one pass takes from the pool, given back together: at the end of the pass
    (:meth:`give`) or when the object that holds them is freed (:meth:`give_when_freed`)."""

    __slots__ = ("arrays",)

    def __init__(self):
        self.arrays = []

    def take(self, shape, dtype, zero: bool = False) -> np.ndarray:
        a = take(shape, dtype, zero)
        self.arrays.append(a)
        return a

    def give(self) -> None:
        give(*self.arrays)
        self.arrays = []

    def give_when_freed(self, owner) -> None:
        if self.arrays:
            give_when_freed(owner, *self.arrays)
        self.arrays = []


def release() -> None:
    """Drop every idle buffer (their memory goes back to the allocator)."""
    global _idle_total
    with _lock:
        _freed.clear()
        _idle.clear()
        _idle_total = 0


def idle_bytes() -> int:
    """Bytes held by idle buffers now (buffers of freed tapes included)."""
    _collect_freed()
    with _lock:
        return _idle_total
