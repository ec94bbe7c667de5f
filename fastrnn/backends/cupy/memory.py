"""Device memory of the cupy backend: named allocations, and errors that say what did not fit.

CuPy's ``OutOfMemoryError`` gives a byte count. A user needs to know which of fastrnn's
buffers it was, for which call (cell, T, B, I, H, dtype), and what the call needs in all,
to choose what to change (a smaller batch, a shorter sequence, ``training=False``). The
errors raised here are subclasses of CuPy's, so code that catches that still does.
"""

from __future__ import annotations

import numpy as np

from .lib import cupy

__all__ = ["alloc", "out_of_memory", "call_bytes", "describe_failure"]

_classes: dict[type, type] = {}


def _rebuild(base, message, size, total, limit):
    return _error_class(base)(message, size, total, limit)


def _error_class(base: type) -> type:
    """A subclass of CuPy's out-of-memory error ``base`` that carries a message of ours."""
    cls = _classes.get(base)
    if cls is None:
        class DeviceMemoryError(base):
            """CuPy's OutOfMemoryError, saying which fastrnn buffer of which call did not
            fit (str) and keeping CuPy's size, total and limit."""

            def __init__(self, message, size=0, total=-1, limit=0):
                super().__init__(size, total, limit)
                self.args = (message,)
                self.message = message

            def __str__(self):
                return self.message

            def __reduce__(self):
                return (_rebuild, (base, self.message, getattr(self, "_size", 0),
                                   getattr(self, "_total", -1), getattr(self, "_limit", 0)))

        DeviceMemoryError.__qualname__ = DeviceMemoryError.__name__
        cls = _classes[base] = DeviceMemoryError
    return cls


def out_of_memory(exc: Exception, message: str) -> Exception:
    """An error of CuPy's out-of-memory type (``type(exc)``'s base) with ``message``."""
    base = next((c for c in type(exc).__mro__ if c not in _classes.values()), type(exc))
    return _error_class(base)(message, getattr(exc, "_size", 0), getattr(exc, "_total", -1),
                              getattr(exc, "_limit", 0))


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def alloc(what: str, shape, dtype, zeros: bool = False):
    """``cupy.empty`` (``cupy.zeros``) of ``shape``; running out of memory names ``what``."""
    shape = tuple(int(s) for s in shape)
    try:
        return (cupy.zeros if zeros else cupy.empty)(shape, dtype=dtype)
    except cupy.cuda.memory.OutOfMemoryError as exc:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        raise out_of_memory(exc, f"{what}, {shape} {np.dtype(dtype).name} "
                                 f"({_gib(nbytes)})") from exc


def call_bytes(cell, T: int, B: int, I: int, H: int, dtype, training: bool,
               backward: bool) -> int:
    """About how many bytes of device memory one forward (or backward) call allocates:
    the input projection or gate gradients, the states, the tape and the outputs."""
    item = np.dtype(dtype).itemsize
    acc = max(item, 4)
    G = cell.num_gates
    if backward:
        return T * B * (2 * G * H * item + I * item) + (I + H) * G * H * acc
    slots = T + 1 if training else 2
    states = slots * B * H * item * (2 if cell.has_cell_state else 1)
    tape = T * B * 4 * H * item if training else 0
    return T * B * G * H * acc + states + tape + T * B * H * item


def describe_failure(exc: Exception, cell, x_shape, H: int, dtype, training: bool,
                     backward: bool) -> Exception:
    """The error to raise for CuPy's out-of-memory ``exc`` in a forward or backward call:
    what did not fit (``exc``'s own message when it came from :func:`alloc`), the call's
    sizes, what it needs about, and what the device and CuPy's pool hold."""
    T, B, I = x_shape
    what = str(exc) if type(exc) in _classes.values() else "a work buffer"
    need = call_bytes(cell, T, B, I, H, dtype, training, backward)
    try:
        free, total = cupy.cuda.runtime.memGetInfo()
        pool = cupy.get_default_memory_pool()
        device = (f"; the device has {_gib(free)} free of {_gib(total)}, CuPy's memory pool "
                  f"holds {_gib(pool.total_bytes())} ({_gib(pool.used_bytes())} in use)")
    except Exception:  # noqa: BLE001 - the message is still useful without these
        device = ""
    call = "backward" if backward else ("forward (training)" if training else
                                         "forward (inference)")
    advice = ("a smaller batch or shorter sequences (run a long sequence in chunks, passing "
              "h_n on as h0)" + ("" if backward or not training else
                                 ", or training=False where no gradient is needed"))
    return out_of_memory(exc, f"fastrnn: the {cell.name} {call} with T={T}, B={B}, I={I}, "
                              f"H={H}, {np.dtype(dtype).name} ran out of GPU memory allocating "
                              f"{what}. The call needs about {_gib(need)}{device}. Try "
                              f"{advice}")
