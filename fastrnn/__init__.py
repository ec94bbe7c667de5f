"""fastrnn: fast, exact forward and backward passes for Elman RNN, LSTM and GRU cells.

One API, three backends: ``numpy`` (the readable reference), ``numba`` (fused CPU kernels)
and ``cupy`` (GPU). See DESIGN.md and the README for the contract.
"""

import os as _os

# OpenBLAS keeps idle worker threads spinning for 2^28 cycles (~0.1 s) after each call. On
# a machine with few cores that time is stolen from whatever runs next (PyTorch's OpenMP
# threads, a second BLAS). fastrnn's kernels call BLAS every few microseconds, so a
# 2^20-cycle (~0.3 ms) timeout keeps the threads hot inside a pass and idle soon after.
# Only a default: an explicit OPENBLAS_THREAD_TIMEOUT wins, and it takes effect only if
# NumPy was not imported before fastrnn.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")

from . import cells  # noqa: E402
from .api import (ForwardResult, Gradients, ReadoutTape, Tape, backward, forward, readout,
                  readout_backward)
from .backends import BackendUnavailableError, available_backends, unavailable_reasons
from .cells import CELLS, get_cell
from .layers import GRU, LSTM, RNN, Layer
from .stack import Stack, init_stack_params, stack_backward, stack_forward

__version__ = "0.1.0"

__all__ = ["forward", "backward", "readout", "readout_backward", "available_backends",
           "unavailable_reasons", "BackendUnavailableError", "ForwardResult", "Gradients",
           "Tape", "ReadoutTape", "LSTM", "GRU", "RNN", "Layer", "CELLS", "get_cell", "cells",
           "Stack", "init_stack_params", "stack_forward", "stack_backward",
           "convert", "__version__"]


def __getattr__(name):
    # `fastrnn.convert` imports lazily so `import fastrnn` stays light.
    if name == "convert":
        import importlib
        return importlib.import_module(".convert", __name__)
    raise AttributeError(f"module 'fastrnn' has no attribute {name!r}")
