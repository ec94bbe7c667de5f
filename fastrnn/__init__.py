"""fastrnn: fast, exact forward and backward passes for Elman RNN, LSTM and GRU cells.

One API, three backends: ``numpy`` (the readable reference), ``numba`` (fused CPU kernels)
and ``cupy`` (GPU). See DESIGN.md and the README for the contract.
"""

import os as _os
import sys as _sys


def _tune_openblas_before_numpy() -> None:
    """Shorten how long OpenBLAS's idle threads spin, if NumPy is not loaded yet and the
    user set nothing.

    They spin for 2^28 cycles (~0.1 s) after each call; on a machine with few cores that
    time is stolen from whatever runs next (PyTorch's OpenMP threads, say: a PyTorch call
    right after a NumPy one was measured 40x slower here). fastrnn calls BLAS in bursts, so
    2^20 cycles (~0.3 ms) keeps the threads hot within a pass and idle soon after.
    """
    if "numpy" not in _sys.modules:
        _os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")


_tune_openblas_before_numpy()

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
