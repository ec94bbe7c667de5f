"""How one kernel call uses Numba's threads.

A batch that fits one chunk runs on the calling thread, through the kernel's ``*_rows``
function: no parallel region, so no waiting for pool threads that the operating system
may have given to another process or library. A batch in n chunks runs on n threads, or
chunk after chunk on the calling thread where the pool cannot be used (after a fork, see
:mod:`.threads`).
"""

from __future__ import annotations

import numba

from . import kernels
from .threads import parallel_allowed

__all__ = ["launch"]

_ROWS = {kernel: getattr(kernels, kernel.py_func.__name__ + "_rows")
         for kernel in (kernels.rnn_forward, kernels.rnn_backward, kernels.lstm_forward,
                        kernels.lstm_backward, kernels.lstmp_forward, kernels.lstmp_backward,
                        kernels.gru_forward, kernels.gru_backward, kernels.grurb_forward,
                        kernels.grurb_backward)}


def launch(kernel, batch_rows: int, chunk: int, *args) -> None:
    """``kernel(*args, chunk)`` over ``batch_rows`` (padded) rows in chunks of ``chunk``."""
    chunks = -(-batch_rows // chunk)
    if chunks == 1 or not parallel_allowed():
        rows = _ROWS[kernel]
        for b0 in range(0, batch_rows, chunk):
            rows(*args, b0, min(b0 + chunk, batch_rows))
        return
    before = numba.get_num_threads()
    if chunks >= before:
        kernel(*args, chunk)
        return
    numba.set_num_threads(chunks)
    try:
        kernel(*args, chunk)
    finally:
        numba.set_num_threads(before)
