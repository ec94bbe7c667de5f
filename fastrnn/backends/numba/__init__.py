"""The fast CPU backend: the whole time loop in fused kernels compiled by Numba.

* :mod:`.backend` — :class:`NumbaBackend`: packing, buffers and the calls into the kernels;
* :mod:`.kernels` — the time loops, one forward and one backward per cell;
* :mod:`.gemm` — the packed-weight micro-kernel GEMM the loops call;
* :mod:`.math` — vectorisable tanh and sigmoid;
* :mod:`.workspace` — the pool of tape and temporary buffers reused across calls.
"""

from .backend import NumbaBackend

__all__ = ["NumbaBackend"]
