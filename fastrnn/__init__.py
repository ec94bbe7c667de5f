"""fastrnn: fast, exact forward and backward passes for Elman RNN, LSTM and GRU cells.

One API, three backends: ``numpy`` (the readable reference), ``numba`` (fused CPU kernels)
and ``cupy`` (GPU). The public names live here and at a few flat module paths
(``fastrnn.torch``, ``fastrnn.convert``, ``fastrnn.notebook``, ``fastrnn.dask``); the code
lives in one subpackage per layer:

* ``fastrnn.core`` — the contract: cell math, validation, result objects, tolerances,
  config (it imports no backend);
* ``fastrnn.api`` — forward, backward, readout, prepare: checks, then dispatch to a backend;
* ``fastrnn.backends`` — one folder per backend behind a small protocol, and a registry;
* ``fastrnn.layers`` — objects built on the API that hold parameters or state (layers,
  stacks, the Stepper);
* ``fastrnn.interop`` — other libraries: conversions, ``torch.nn`` drop-ins, the course
  notebook's functions, dask;
* ``fastrnn.tools`` — the ``fastrnn`` command: bench, check, info.
"""

import os as _os
import sys as _sys

from .core import config


def _tune_openblas_before_numpy() -> None:
    """Shorten how long OpenBLAS's idle threads spin, if NumPy is not loaded yet and the
    user set nothing: by default they spin for about 0.1 s after each call, time stolen
    from whatever runs next on a machine with few cores."""
    if "numpy" not in _sys.modules:
        _os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", config.openblas_thread_timeout)


_tune_openblas_before_numpy()

from .core import cells  # noqa: E402
from .api import backward, forward, prepare, readout, readout_backward  # noqa: E402
from .backends import (BackendUnavailableError, available_backends,  # noqa: E402
                       unavailable_reasons)
from .core.cells import CELLS, get_cell  # noqa: E402
from .core.prepared import PreparedWeights  # noqa: E402
from .core.results import ForwardResult, Gradients, ReadoutTape, Tape  # noqa: E402
from .layers import (GRU, LSTM, RNN, Layer, Stack, Stepper,  # noqa: E402
                     init_stack_params, stack_backward, stack_forward)

__version__ = "0.1.0"

__all__ = ["forward", "backward", "readout", "readout_backward", "available_backends",
           "unavailable_reasons", "BackendUnavailableError", "ForwardResult", "Gradients",
           "Tape", "ReadoutTape", "LSTM", "GRU", "RNN", "Layer", "CELLS", "get_cell", "cells",
           "Stack", "init_stack_params", "stack_forward", "stack_backward", "config",
           "prepare", "PreparedWeights", "Stepper",
           "convert", "__version__"]


_LAZY = ("convert", "torch", "notebook", "dask")


def __getattr__(name):
    # The interop modules import on first use, so `import fastrnn` stays light and never
    # imports torch or dask.
    if name in _LAZY:
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'fastrnn' has no attribute {name!r}")
