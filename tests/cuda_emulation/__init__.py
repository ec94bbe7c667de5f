"""The cupy backend on the CPU: its kernels compiled as C++ and run by an emulation of CUDA.

No machine of CI has a GPU, and a GPU machine is lent to few sessions; yet the host code
of the cupy backend (the per-step loops, the persistent kernels' planner, the tape, the
lengths and reverse bookkeeping) and the index arithmetic of every kernel can be checked
on the CPU. This package compiles each ``kernels/<source>.cu`` with g++ against
``cuda_emu.h`` (a CPU stand-in for the CUDA built-ins the kernels use: one fiber per
CUDA thread, __syncthreads as a barrier, shared memory as a poisoned per-block buffer) and
runs the real :class:`~fastrnn.backends.cupy.CupyBackend` on NumPy memory:

* :class:`FakeCupy` stands in for the ``cupy`` module: NumPy arrays of a subclass whose
  type reads as CuPy's (so the API routes them to the cupy backend), with ``.get()``,
  ``.data.ptr`` and ``.device``;
* :class:`EmulatedKernel` is what ``nvrtc.function`` returns: called as CuPy calls a
  kernel, it packs the arguments as cuLaunchKernel does and runs the compiled C++;
* :class:`EmulatedGemm` does the per-step products (cuBLAS's gemmEx) with NumPy on the
  same addresses, in float32 for 16-bit operands, TF32 operands rounded where asked;
* :func:`emulated_cupy_backend` installs all of this for one test (monkeypatch) under the
  backend name "cupy", on a small device of its own (:class:`EmulatedDevice`).

What this cannot show: timing, races that a CPU's memory order hides, float32
flush-to-zero, CUDA's own math library (expf, tanhf differ in the last bits), or anything
of the real CuPy, cuBLAS and driver: those need the GPU suite (bench/gpu_run.sh).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastrnn.backends.cupy import nvrtc

HERE = Path(__file__).resolve().parent
HEADER = HERE / "cuda_emu.h"


# ------------------------------------------------------------------------------ compile

def compiler() -> str | None:
    """The C++ compiler the emulation builds with (g++ with C++20), or None."""
    return shutil.which(os.environ.get("CXX", "g++"))


def _cache_dir() -> Path:
    root = os.environ.get("FASTRNN_EMU_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(tempfile.gettempdir()),
        "fastrnn-cuda-emulation")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


_libraries: dict[tuple[str, str], tuple[ctypes.CDLL, dict[str, int]]] = {}


def library(source: str, ctype: str):
    """(the compiled emulation of kernels/<source>.cu for storage ``ctype``, name expression
    -> index of its exported launcher)."""
    key = (source, ctype)
    if key in _libraries:
        return _libraries[key]
    names = [nvrtc.name_expression(k, ctype) for k in nvrtc.KERNELS[source]]
    code = nvrtc.kernel_source(source)
    exports = "\n".join(f"FASTRNN_EMU_EXPORT({i}, {name})" for i, name in enumerate(names))
    text = f'#include "{HEADER}"\n{code}\n{exports}\n'
    digest = hashlib.sha256((text + HEADER.read_text()).encode()).hexdigest()[:16]
    out = _cache_dir() / f"{source}-{ctype}-{digest}.so"
    if not out.exists():
        cxx = compiler()
        if cxx is None:
            raise RuntimeError("no C++ compiler (g++) for the CUDA emulation")
        src = out.with_suffix(".cpp")
        src.write_text(text)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        cmd = [cxx, "-std=c++20", "-O1", "-g", "-fPIC", "-shared", "-pthread", "-w",
               "-o", str(tmp), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"compiling the emulation of {source}.cu <{ctype}> failed:\n"
                               f"{' '.join(cmd)}\n{proc.stderr[-6000:]}")
        os.replace(tmp, out)
    lib = ctypes.CDLL(str(out))
    index = {name: i for i, name in enumerate(names)}
    _libraries[key] = (lib, index)
    return _libraries[key]


# ------------------------------------------------------------------------------ kernels

def _argument(a):
    """A kernel argument as CuPy packs it: arrays by address, NumPy scalars by value in
    their own width, Python ints as 64-bit, floats as double."""
    if a is None:
        return ctypes.c_void_p(0)
    if isinstance(a, np.ndarray):
        return ctypes.c_void_p(a.ctypes.data)
    if isinstance(a, np.generic):
        return (ctypes.c_char * a.dtype.itemsize).from_buffer_copy(a.tobytes())
    if isinstance(a, bool):
        return ctypes.c_bool(a)
    if isinstance(a, int):
        return ctypes.c_int64(a)
    if isinstance(a, float):
        return ctypes.c_double(a)
    raise TypeError(f"emulated kernel argument of type {type(a).__name__}")


class EmulatedKernel:
    """A compiled kernel of the emulation, called as a ``cupy.RawKernel`` is."""

    def __init__(self, source: str, kernel: str, ctype: str):
        lib, index = library(source, ctype)
        self.name = nvrtc.name_expression(kernel, ctype)
        self._fn = getattr(lib, f"fastrnn_emu_{index[self.name]}")
        self._fn.restype = None
        self._fn.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_size_t, ctypes.c_int,
                             ctypes.POINTER(ctypes.c_void_p)]
        self.max_dynamic_shared_size_bytes = 48 * 1024
        self.launches = 0

    @property
    def kernel(self):
        """``RawKernel.kernel``, the compiled function: called with CuPy's launch options
        (the persistent path's cooperative launch goes through it)."""
        return self

    def __call__(self, grid, block, args, *, shared_mem=0, enable_cooperative_groups=False):
        grid, block = tuple(grid), tuple(block)
        if len(grid) != 1 or len(block) != 1:
            raise ValueError(f"{self.name}: the emulation runs 1-d grids, got {grid} x {block}")
        if shared_mem > 48 * 1024 and shared_mem > self.max_dynamic_shared_size_bytes:
            raise RuntimeError(f"{self.name}: {shared_mem} bytes of dynamic shared memory "
                               f"without raising max_dynamic_shared_size_bytes (CUDA refuses)")
        values = [_argument(a) for a in args]
        pointers = (ctypes.c_void_p * max(1, len(values)))(
            *[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        self._fn(int(grid[0]), int(block[0]), int(shared_mem), int(bool(enable_cooperative_groups)),
                 pointers)
        self.launches += 1


_kernels: dict[tuple, EmulatedKernel] = {}


def function(source: str, kernel: str, dtype) -> EmulatedKernel:
    """The emulated twin of :func:`fastrnn.backends.cupy.nvrtc.function`."""
    ctype = nvrtc.STORAGE_CTYPES[np.dtype(dtype).name]
    key = (source, kernel, ctype)
    if key not in _kernels:
        _kernels[key] = EmulatedKernel(source, kernel, ctype)
    return _kernels[key]


# ------------------------------------------------------------------------------- arrays

class _Pointer:
    __slots__ = ("ptr",)

    def __init__(self, ptr):
        self.ptr = ptr


class _Device:
    id = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __repr__(self):
        return "<emulated CUDA Device 0>"


class ndarray(np.ndarray):
    """A NumPy array that the API takes for a CuPy array (its type's module is named
    cupy...), with the few CuPy attributes the backend reads."""

    @property
    def data(self):
        return _Pointer(self.ctypes.data)

    @property
    def device(self):
        return _Device()

    def get(self, stream=None, order="C", out=None, blocking=True):
        if out is not None:
            out[...] = self
            return out
        return np.array(self, copy=True).view(np.ndarray)


ndarray.__module__ = "cupy._emulated"


def _wrap(value):
    if isinstance(value, np.ndarray) and not isinstance(value, ndarray):
        return value.view(ndarray)
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


class OutOfMemoryError(MemoryError):
    """CuPy's ``cupy.cuda.memory.OutOfMemoryError``, as CuPy 14 defines it."""

    def __init__(self, size, total, limit=0):
        self._size, self._total, self._limit = size, total, limit
        super().__init__(f"Out of memory allocating {size:,} bytes (allocated so far: "
                         f"{total:,} bytes).")

    def __reduce__(self):
        return (type(self), (self._size, self._total, self._limit))


class _Event:
    """cupy.cuda.Event: the emulation runs every launch to its end, so an event has always
    passed."""

    def __init__(self, *args, **kwargs):
        self.recorded = False

    def record(self, stream=None):
        self.recorded = True

    def synchronize(self):
        assert self.recorded, "an event synchronised before it was recorded"


class _Pool:
    def total_bytes(self):
        return 0

    def used_bytes(self):
        return 0

    def free_all_blocks(self):
        pass


class FakeCupy(types.ModuleType):
    """The ``cupy`` module as the backend uses it, on NumPy memory. ``memory_limit``: the
    largest allocation (bytes) that succeeds; beyond it CuPy's OutOfMemoryError."""

    ndarray = ndarray

    def __init__(self):
        super().__init__("cupy")
        self.__version__ = "14.2.0-emulated"
        self.memory_limit = None
        self.cuda = types.SimpleNamespace(
            runtime=types.SimpleNamespace(getDevice=lambda: 0, getDeviceCount=lambda: 1,
                                          memGetInfo=lambda: (1 << 30, 1 << 32)),
            Device=lambda *a: _Device(),
            device=types.SimpleNamespace(get_cublas_handle=lambda: 0),
            memory=types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError),
            alloc_pinned_memory=lambda n: bytearray(n),
            Event=_Event)

    def get_default_memory_pool(self):
        return _Pool()

    def _check(self, shape, dtype):
        shape = (shape,) if np.isscalar(shape) else tuple(shape)
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if self.memory_limit is not None and nbytes > self.memory_limit:
            raise OutOfMemoryError(nbytes, 0)

    def empty(self, shape, dtype=float, order="C"):
        self._check(shape, dtype)
        return np.empty(shape, dtype=dtype, order=order).view(ndarray)

    def zeros(self, shape, dtype=float, order="C"):
        self._check(shape, dtype)
        return np.zeros(shape, dtype=dtype, order=order).view(ndarray)

    def asnumpy(self, a, stream=None):
        return np.array(a, copy=True).view(np.ndarray)

    def __getattr__(self, name):
        target = getattr(np, name)
        if callable(target) and not isinstance(target, type):
            def call(*args, **kwargs):
                return _wrap(target(*args, **kwargs))
            call.__name__ = name
            return call
        return target


# --------------------------------------------------------------------------------- GEMM

def _from_address(address: int, shape: tuple, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) * dtype.itemsize
    buf = (ctypes.c_char * max(n, 1)).from_address(int(address))
    return np.frombuffer(buf, dtype=dtype, count=int(np.prod(shape))).reshape(shape)


def round_to_tf32(a: np.ndarray) -> np.ndarray:
    """float32 values with their mantissa rounded to TF32's 10 bits (to nearest, ties to
    even), as the tensor cores read float32 operands in TF32 mode."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    keep = ~np.uint32((1 << 13) - 1)
    rounded = (bits + np.uint32(0x0FFF) + ((bits >> np.uint32(13)) & np.uint32(1))) & keep
    finite = (bits & np.uint32(0x7F800000)) != np.uint32(0x7F800000)
    return np.where(finite, rounded, bits).view(np.float32)


class EmulatedGemm:
    """:class:`~fastrnn.backends.cupy.steps.StepGemm` (cuBLAS's gemmEx on addresses: row-major
    ``C (M, N) = A (M, K) @ B (K, N)``, each operand C-contiguous or its transpose), with
    NumPy: float32 arithmetic for 16-bit operands, TF32 operands rounded with ``tf32``."""

    def __init__(self, dtype, out_dtype=None, tf32=False):
        self.dtype = np.dtype(dtype)
        self.out_dtype = np.dtype(out_dtype or dtype)
        self.tf32 = bool(tf32) and self.dtype == np.float32
        self.calls = 0

    def host_scalars(self):
        pass

    def __call__(self, a, b, c, M, N, K, a_trans=False, b_trans=False):
        A = _from_address(a, (K, M), self.dtype).T if a_trans else _from_address(a, (M, K), self.dtype)
        B = _from_address(b, (N, K), self.dtype).T if b_trans else _from_address(b, (K, N), self.dtype)
        C = _from_address(c, (M, N), self.out_dtype)
        work = np.float64 if self.dtype == np.float64 else np.float32
        A, B = A.astype(work), B.astype(work)
        if self.tf32:
            A, B = round_to_tf32(A), round_to_tf32(B)
        C[...] = (A @ B).astype(self.out_dtype)
        self.calls += 1


# ------------------------------------------------------------------------------- device

@dataclass(frozen=True)
class EmulatedDevice:
    """The device the emulation pretends to be: few multiprocessors (every CUDA thread is
    a fiber), H100-like shared memory unless a test asks for less."""

    multiprocessors: int = 4
    smem_per_block: int = 232448
    cooperative: bool = True


@contextlib.contextmanager
def emulated_cupy_backend(monkeypatch, device: EmulatedDevice = EmulatedDevice()):
    """Install the emulated cupy backend under the name "cupy" for the duration."""
    from fastrnn import backends
    from fastrnn.backends.cupy import backend as cb_backend
    from fastrnn.backends.cupy import device as cb_device
    from fastrnn.backends.cupy import persistent as cb_persistent
    from fastrnn.backends.cupy import steps as cb_steps

    from fastrnn.backends.cupy import checksum as cb_checksum
    from fastrnn.backends.cupy import memory as cb_memory

    fake = FakeCupy()
    for module in (cb_backend, cb_steps, cb_persistent, cb_device, cb_memory, cb_checksum):
        monkeypatch.setattr(module, "cupy", fake)
    monkeypatch.setattr(cb_steps, "function", function)
    monkeypatch.setattr(cb_persistent, "function", function)
    monkeypatch.setattr(cb_checksum, "function", function)
    monkeypatch.setattr(cb_steps, "StepGemm", EmulatedGemm)
    monkeypatch.setattr(cb_steps, "_gemms", {})
    limits = cb_device.DeviceLimits(device.multiprocessors, device.smem_per_block,
                                    device.cooperative)
    monkeypatch.setattr(cb_device, "limits", lambda: limits)

    def resident_blocks(fn, threads, smem):          # as device.resident_blocks does
        if smem > 48 * 1024:
            fn.max_dynamic_shared_size_bytes = smem
        return device.multiprocessors if smem <= device.smem_per_block else 0

    monkeypatch.setattr(cb_device, "resident_blocks", resident_blocks)

    class EmulatedCupyBackend(cb_backend.CupyBackend):
        xp = fake

        @classmethod
        def unavailable_reason(cls):
            return None

    be = EmulatedCupyBackend()
    monkeypatch.setitem(backends._instances, "cupy", be)
    monkeypatch.delitem(backends._reasons, "cupy", raising=False)
    yield be
