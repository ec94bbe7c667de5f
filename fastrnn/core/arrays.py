"""What kind of array an object is, asked without importing the library that made it.

fastrnn takes NumPy arrays everywhere, CuPy arrays on the GPU backend, and torch tensors
in the converters and ``fastrnn.torch``. Importing CuPy or PyTorch just to ask would cost
seconds and fail where they are not installed, so these checks read the name of the
module that defines the object's type, as array-api-compat does.
"""

from __future__ import annotations

import numpy as np

__all__ = ["is_cupy_array", "is_torch_tensor", "is_foreign_array", "to_numpy", "library",
           "where"]


def _library(a) -> str:
    return type(a).__module__.partition(".")[0]


def library(a) -> str | None:
    """The library whose array ``a`` is ("numpy", "cupy", "torch", ...), or None for what
    is no array (a list, a scalar, None)."""
    if isinstance(a, np.ndarray) and not is_cupy_array(a):
        return "numpy"
    if hasattr(a, "shape") and hasattr(a, "dtype"):
        return _library(a)
    return None


def where(a) -> str:
    """Where the memory of array ``a`` is, in words: "a numpy.ndarray (host memory)",
    "a cupy.ndarray (GPU 0)"."""
    lib = library(a)
    name = f"{_library(a)}.{type(a).__name__}" if lib else type(a).__name__
    if lib == "numpy":
        return f"a {name} (host memory)"
    device = getattr(a, "device", None)
    index = getattr(device, "id", getattr(device, "index", None))
    if lib == "torch":
        return f"a {name} (device {device})"
    return f"a {name} (GPU {index})" if index is not None else f"a {name}"


def is_cupy_array(a) -> bool:
    """True for a ``cupy.ndarray`` (CuPy need not be importable)."""
    return _library(a) == "cupy"


def is_torch_tensor(a) -> bool:
    """True for a ``torch.Tensor`` (PyTorch need not be importable)."""
    return _library(a) == "torch"


def is_foreign_array(a) -> bool:
    """True for an array of a library that NumPy must not silently copy from: CuPy, torch,
    or anything else exposing ``__cuda_array_interface__`` (device memory)."""
    return is_cupy_array(a) or is_torch_tensor(a) or hasattr(a, "__cuda_array_interface__")


def to_numpy(a) -> np.ndarray:
    """``a`` as a NumPy array on the host: torch tensors detached and moved to the CPU,
    CuPy arrays copied from the device, anything else through ``numpy.asarray``."""
    if is_torch_tensor(a):
        a = a.detach().cpu().numpy()
    elif is_cupy_array(a):
        a = a.get()
    return np.asarray(a)
