"""The GPU backend: CuPy, cuBLAS and the CUDA kernels of ``kernels/``.

* :mod:`.backend` — :class:`CupyBackend`, the entry the registry loads;
* :mod:`.nvrtc` — finding the CUDA sources and compiling them through NVRTC;
* :mod:`.steps` — the per-step path: one cuBLAS GEMM and one fused kernel per step;
* :mod:`.persistent` — the persistent kernels (whole time loop in one launch) and their planner;
* :mod:`.lib` — CuPy, imported once, never failing.
"""

from .backend import CupyBackend

__all__ = ["CupyBackend"]
