"""The CUDA sources of ``kernels/`` and their compilation through NVRTC.

The sources are read from the installed package (``fastrnn/kernels``, where the wheel
puts ``kernels/``) or, in a source checkout, from the repository's ``kernels/``; each
(source, dtype) is compiled once per device by NVRTC through ``cupy.RawModule`` and kept
for the life of the process.
"""

from __future__ import annotations

import importlib.resources
import re
from pathlib import Path
from typing import Any

from .lib import cupy

__all__ = ["KERNELS", "COMMON_HEADER", "STORAGE_CTYPES", "NVRTC_OPTIONS", "kernel_dir",
           "kernel_source", "function"]


# source file (kernels/<name>.cu) -> the kernel templates it defines
KERNELS: dict[str, tuple[str, ...]] = {
    "rnn": ("rnn_forward", "rnn_backward", "rnn_persist_forward", "rnn_persist_backward"),
    "lstm": ("lstm_forward", "lstm_backward", "lstm_persist_forward", "lstm_persist_backward"),
    "gru": ("gru_forward", "gru_backward", "grurb_forward_rz", "grurb_forward_n",
            "grurb_backward_n", "grurb_backward_r", "gru_persist_forward",
            "gru_persist_backward"),
    "util": ("gather_steps",),
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
            module = cupy.RawModule(code=kernel_source(source), options=NVRTC_OPTIONS,
                                    name_expressions=[f"{k}<{ctype}>" for k in KERNELS[source]])
            _modules[mkey] = module
        fn = _functions[key] = module.get_function(f"{kernel}<{ctype}>")
    return fn
