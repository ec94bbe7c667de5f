"""A line on stderr while the first call of a kernel compiles.

Numba compiles a kernel at its first call for each cell and dtype, seconds of work that
look like a hang to someone who just swapped fastrnn in; afterwards the compiled code
comes from Numba's cache (``NUMBA_CACHE_DIR`` or ``__pycache__`` beside the package) in
well under a second. The first call of each (pass, cell, dtype) in a process starts a
timer: if the call is still running after ``config.compile_notice_s`` seconds, one line
says what is compiling and that it happens once. A call served from the cache ends before
the timer fires and prints nothing.
"""

from __future__ import annotations

import sys
import threading

from ...core import config

__all__ = ["compile_notice"]

_seen: set = set()
_lock = threading.Lock()


class compile_notice:
    """``with compile_notice("forward", cell, dtype): ...`` around a kernel call."""

    __slots__ = ("_timer",)

    def __init__(self, what: str, cell, dtype):
        self._timer = None
        key = (what, cell.name, dtype)
        if key in _seen:
            return
        with _lock:
            if key in _seen:
                return
            _seen.add(key)
        delay = config.compile_notice_s
        if delay is None:
            return
        message = (f"fastrnn: compiling the numba kernels of the {cell.name} {what} for "
                   f"{dtype} (first use on this machine: seconds, once; cached afterwards)")
        self._timer = threading.Timer(delay, _say, (message,))
        self._timer.daemon = True

    def __enter__(self):
        if self._timer is not None:
            self._timer.start()
        return self

    def __exit__(self, *exc):
        if self._timer is not None:
            self._timer.cancel()
        return False


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
