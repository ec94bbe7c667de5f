"""fastrnn: fast, exact forward and backward passes for Elman RNN, LSTM and GRU cells.

One API, three backends: ``numpy`` (the readable reference), ``numba`` (fused CPU kernels)
and ``cupy`` (GPU). See DESIGN.md and the README for the contract.
"""

from . import cells
from .api import (ForwardResult, Gradients, ReadoutTape, Tape, backward, forward, readout,
                  readout_backward)
from .backends import BackendUnavailableError, available_backends, unavailable_reasons
from .cells import CELLS, get_cell
from .layers import GRU, LSTM, RNN, Layer

__version__ = "0.1.0"

__all__ = ["forward", "backward", "readout", "readout_backward", "available_backends",
           "unavailable_reasons", "BackendUnavailableError", "ForwardResult", "Gradients",
           "Tape", "ReadoutTape", "LSTM", "GRU", "RNN", "Layer", "CELLS", "get_cell", "cells",
           "convert", "__version__"]


def __getattr__(name):
    # `fastrnn.convert` imports lazily so `import fastrnn` stays light.
    if name == "convert":
        import importlib
        return importlib.import_module(".convert", __name__)
    raise AttributeError(f"module 'fastrnn' has no attribute {name!r}")
