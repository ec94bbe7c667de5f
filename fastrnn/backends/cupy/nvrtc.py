"""The CUDA sources of ``kernels/`` and their compilation through NVRTC.

The sources are read from the installed package (``fastrnn/kernels``, where the wheel
puts ``kernels/``) or, in a source checkout, from the repository's ``kernels/``; each
(source, dtype) is compiled once per device by NVRTC through ``cupy.RawModule`` and kept
for the life of the process.

What NVRTC gets: :func:`module_spec`'s code, ``NVRTC_OPTIONS`` and name expressions, plus
what CuPy adds (:func:`compiler_options`: its CCCL and header folders and the CUDA
headers' folder, which it must find; then ``-ftz=true``, ``-arch=sm_<device>`` and
``--device-as-default-execution-space``). ``-ftz=true`` makes float32 arithmetic flush
subnormals to zero (see the backend's docstring). tests/test_nvrtc_compile.py runs this
path for every source, storage type and name expression without a GPU.

Across processes: CuPy keeps compiled modules in its disk cache (``~/.cupy/kernel_cache``,
``CUPY_CACHE_DIR``; none with ``CUPY_CACHE_IN_MEMORY=1``), but with ``name_expressions``,
which these modules use, CuPy reads that cache back only from 14.2 on, which stores the
mangled names with the binary. CuPy 13.x and 14.0 write the binary and compile again in
every new process (to learn the mangled names); 14.1 reads it back only where the driver
can enumerate a module's functions (CUDA 12.4+), else compiles again. So with CuPy < 14.2,
expect each new process to compile the sources it uses once more.
"""

from __future__ import annotations

import importlib.resources
import re
from pathlib import Path
from typing import Any

import numpy as np

from .lib import cupy

__all__ = ["KERNELS", "CELL_TYPES", "name_expression", "header_constants", "cell_traits",
           "COMMON_HEADER", "STORAGE_CTYPES", "NVRTC_OPTIONS", "kernel_dir",
           "kernel_source", "module_spec", "compiler_options", "compile_problem", "function"]


# The cells of kernels/cells.cuh that step.cu and persist.cu are instantiated for, by the
# name of fastrnn's cell.
CELL_TYPES: dict[str, str] = {"rnn_tanh": "RnnTanh", "rnn_relu": "RnnRelu", "lstm": "LstmCell",
                              "gru": "GruCell"}


def _per_cell(*kernels: str) -> tuple[str, ...]:
    return tuple(f"{k}<{c}>" for k in kernels for c in CELL_TYPES.values())


# source file (kernels/<name>.cu) -> the kernels it defines: a template over the storage
# type, written with its other template arguments ("step_forward<LstmCell>"); the name
# expression NVRTC gets adds the storage type last ("step_forward<LstmCell, float>"). A
# name ending in "()" is a plain function, the same in every storage type's module.
KERNELS: dict[str, tuple[str, ...]] = {
    "step": _per_cell("step_forward", "step_backward"),
    "persist": _per_cell("persist_forward", "persist_backward"),
    "lstmp": ("lstmp_forward_cell", "lstmp_forward_proj", "lstmp_backward_in",
              "lstmp_backward_cell"),
    "grurb": ("grurb_forward_rz", "grurb_forward_n", "grurb_backward_n", "grurb_backward_r"),
    "util": ("gather_steps", "digest_arrays()"),
}
COMMON_HEADER = "common.cuh"
# dtype name -> the C++ storage type the templates are instantiated with
STORAGE_CTYPES: dict[str, str] = {
    "float32": "float", "float64": "double", "float16": "half_t", "bfloat16": "bf16_t",
}
NVRTC_OPTIONS = ("--std=c++17",)

_LOCAL_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.MULTILINE)


def kernel_dir():
    """The folder holding the CUDA sources (a ``Path`` or importlib ``Traversable``).

    The installed package first (``fastrnn/kernels``, put there by the wheel's
    force-include of ``kernels/``), then the repository's ``kernels/`` beside the package
    (a source checkout or an editable install). FileNotFoundError if neither has them.
    """
    candidates = []
    try:
        candidates.append(importlib.resources.files("fastrnn").joinpath("kernels"))
    except (ModuleNotFoundError, TypeError):   # pragma: no cover - fastrnn is importable here
        pass
    candidates.append(Path(__file__).resolve().parents[3] / "kernels")
    for folder in candidates:
        if folder.joinpath(COMMON_HEADER).is_file():
            return folder
    raise FileNotFoundError("fastrnn's CUDA kernel sources (common.cuh and *.cu) were found "
                            "neither in the installed package (fastrnn/kernels) nor in a "
                            "source checkout (kernels/); looked in "
                            + ", ".join(str(c) for c in candidates))


def kernel_source(name: str) -> str:
    """The source of ``kernels/<name>.cu`` with its local ``#include "..."`` inlined.

    NVRTC gets one self-contained string (no include path to set up, and CuPy's cache key,
    a hash of the source, changes whenever the header does). Each header is inlined once.
    """
    if name not in KERNELS:
        raise ValueError(f"name: unknown kernel source {name!r}; expected one of "
                         f"{', '.join(KERNELS)}")
    folder = kernel_dir()
    seen: set[str] = set()

    def expand(text: str) -> str:
        def include(match):
            header = match.group(1)
            if header in seen:
                return f"// {header} already included"
            seen.add(header)
            return expand(folder.joinpath(header).read_text())
        return _LOCAL_INCLUDE.sub(include, text)

    return expand(folder.joinpath(f"{name}.cu").read_text())


def module_spec(source: str, ctype: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(code, options, name_expressions) of the ``cupy.RawModule`` that holds every kernel of
    ``kernels/<source>.cu`` for the C++ storage type ``ctype`` (a value of STORAGE_CTYPES)."""
    if ctype not in STORAGE_CTYPES.values():
        raise ValueError(f"ctype: expected one of {', '.join(STORAGE_CTYPES.values())}, "
                         f"got {ctype!r}")
    names = tuple(name_expression(k, ctype) for k in KERNELS.get(source, ()))
    return kernel_source(source), NVRTC_OPTIONS, names


def name_expression(kernel: str, ctype: str) -> str:
    """``kernel`` (a name of KERNELS) instantiated for the storage type ``ctype``:
    "gather_steps" -> "gather_steps<float>", "step_forward<LstmCell>" ->
    "step_forward<LstmCell, float>", "digest_arrays()" -> "digest_arrays"."""
    if kernel.endswith("()"):
        return kernel[:-2]
    if kernel.endswith(">"):
        return f"{kernel[:-1]}, {ctype}>"
    return f"{kernel}<{ctype}>"


_DEFINE = re.compile(r"^#define\s+([A-Z][A-Z0-9_]*)\s+(\d+)\b", re.MULTILINE)
_STRUCT = re.compile(r"^struct\s+(\w+)\s*\{(.*?)^\};", re.MULTILINE | re.DOTALL)
_CONSTANT = re.compile(r"static\s+constexpr\s+(int|bool)\s+(\w+)\s*=\s*(\w+)\s*;")
_facts: dict[str, Any] = {}


def header_constants(header: str) -> dict[str, int]:
    """The integer ``#define``s of ``kernels/<header>``: the one place such a constant is
    written, read here by the host code that must agree with it (persist.cuh's tile and
    block sizes, say)."""
    key = f"defines:{header}"
    if key not in _facts:
        text = kernel_dir().joinpath(header).read_text()
        _facts[key] = {name: int(value) for name, value in _DEFINE.findall(text)}
    return _facts[key]


def cell_traits(cell_name: str) -> dict[str, int | bool]:
    """The compile-time facts of a cell of ``kernels/cells.cuh`` (G, TAPE, HAS_C,
    SPLIT_GRAD, ...), by fastrnn's cell name ("lstm") or the C++ name ("LstmCell")."""
    if "cells" not in _facts:
        text = kernel_dir().joinpath("cells.cuh").read_text()
        table = {}
        for name, body in _STRUCT.findall(text):
            consts = {k: (int(v) if t == "int" else v == "true")
                      for t, k, v in _CONSTANT.findall(body)}
            if consts:
                table[name] = consts
        _facts["cells"] = table
    ctype = CELL_TYPES.get(cell_name, cell_name)
    struct = "RnnCell" if ctype in ("RnnTanh", "RnnRelu") else ctype
    return _facts["cells"][struct]


def compiler_options() -> tuple[str, ...]:
    """The options CuPy assembles around ``NVRTC_OPTIONS`` before every compile (its CCCL and
    header folders, the CUDA headers' folder). Raises (RuntimeError) where CuPy cannot find
    the CUDA headers, as the first compile would; needs no GPU."""
    from cupy._core import core  # noqa: PLC0415 - only with CuPy
    return tuple(core.assemble_cupy_compiler_options(NVRTC_OPTIONS))


def compile_problem() -> str | None:
    """None if NVRTC loads, CuPy can assemble its compiler options, and a kernel of
    ``kernels/util.cu`` compiles and loads on the current device; else why not, as a
    sentence. What every first forward needs, checked once (the module is kept)."""
    try:
        from cupy.cuda import compiler  # noqa: PLC0415 - only with CuPy
        compiler._get_nvrtc_version()
    except Exception as exc:  # noqa: BLE001 - the NVRTC library is missing or broken
        return (f"CuPy cannot load NVRTC, which compiles fastrnn's CUDA kernels "
                f"({type(exc).__name__}: {exc}); install it with pip install "
                f"nvidia-cuda-nvrtc (or the CUDA toolkit)")
    try:
        compiler_options()
    except Exception as exc:  # noqa: BLE001 - RuntimeError: no CUDA headers; old CuPy
        return (f"CuPy cannot assemble its NVRTC compiler options, so no kernel could "
                f"compile ({type(exc).__name__}: {exc}); it needs the CUDA headers: "
                f"install the CUDA toolkit or pip install \"cupy-cuda13x[ctk]\", or set "
                f"CUDA_PATH")
    try:
        function("util", "gather_steps", np.dtype(np.float32))
    except Exception as exc:  # noqa: BLE001 - CompileException, driver errors
        return (f"CuPy cannot compile and load fastrnn's CUDA kernels here "
                f"({type(exc).__name__}: {str(exc).strip()[:400]})")
    return None


# (device, source, dtype) -> cupy.RawModule; (device, source, kernel, dtype) -> function
_modules: dict[tuple, Any] = {}
_functions: dict[tuple, Any] = {}


def function(source: str, kernel: str, dtype):
    """The compiled ``kernel<ctype>`` of ``kernels/<source>.cu`` for the current device."""
    device = cupy.cuda.runtime.getDevice()
    key = (device, source, kernel, dtype.name)
    fn = _functions.get(key)
    if fn is None:
        ctype = STORAGE_CTYPES[dtype.name]
        mkey = (device, source, dtype.name)
        module = _modules.get(mkey)
        if module is None:
            code, options, names = module_spec(source, ctype)
            module = cupy.RawModule(code=code, options=options, name_expressions=names)
            _modules[mkey] = module
        fn = _functions[key] = module.get_function(name_expression(kernel, ctype))
    return fn
