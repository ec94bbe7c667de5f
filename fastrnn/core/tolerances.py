"""The one place that states how close two computations of the same function must agree.

Errors are relative norms, ``||a - b|| / ||b||`` of whole arrays, taken in float64 (see
:func:`rel_err`), unless a name below says otherwise. ``fastrnn check``, ``fastrnn bench``
and the test suite all read these numbers from here; no test states its own.
"""

from __future__ import annotations

import numpy as np

from .arrays import to_numpy

__all__ = ["TOLERANCES", "TORCH_TOLERANCES", "SAME_ARITHMETIC", "PRIMITIVE_TOLERANCES",
           "FLOAT32_SIGMOID_ULPS", "FLOAT32_TANH_ULPS", "FD_EPS", "FD_TOLERANCE",
           "FLOAT32_CONDITIONING_FACTOR", "GRADCHECK", "NOTEBOOK_TOLERANCES", "rel_err",
           "tolerance"]

# dtype -> (forward outputs and states, gradients): every backend against the reference.
TOLERANCES = {
    "float64": {"forward": 1e-10, "grad": 1e-10},
    "float32": {"forward": 1e-5, "grad": 1e-4},
    # 16-bit storage with float32 arithmetic (GPU only): about 4x the worst errors seen
    "float16": {"forward": 2e-3, "grad": 5e-3},
    "bfloat16": {"forward": 1.5e-2, "grad": 4e-2},
    # float32 with TF32 products allowed (GPU only; allow_tf32): operands of the cuBLAS
    # products rounded to 10-bit mantissas. About 4x the worst of every cell, T = 30 and
    # 200, B = 8, I = H = 64, both GPU paths, modelled on the CPU (the emulated backend
    # with TF32 rounding, tests/cuda_emulation): forward 4.4e-4, gradients 5.5e-4.
    "tf32": {"forward": 2e-3, "grad": 2.5e-3},
}
# The reference against PyTorch (an independent implementation, other summation orders).
TORCH_TOLERANCES = {
    "float64": {"forward": 1e-9, "grad": 1e-9},
    "float32": {"forward": 2e-4, "grad": 2e-4},
    # fastrnn and cuDNN both with TF32 allowed: each about 5e-4 from the truth
    "tf32": {"forward": 3e-3, "grad": 4e-3},
}


# Two routes to the same arithmetic in float64 (fastrnn.torch against the API it wraps, a
# drop-in against its twin where both run the same equations): elementwise, rtol and atol.
SAME_ARITHMETIC = {"rtol": 1e-12, "atol": 1e-12}

# The numba backend's building blocks on their own: packed GEMMs and column sums against
# a float64 product (relative norm), and float32 sigmoid / tanh against float64 (ulps).
PRIMITIVE_TOLERANCES = {"float32": 1e-5, "float64": 1e-12}
FLOAT32_SIGMOID_ULPS = 4
FLOAT32_TANH_ULPS = 1

# Central finite differences of the float64 reference: step, and the relative error that
# truncation O(eps^2) and rounding O(1e-16/eps) leave.
FD_EPS = 1e-6
FD_TOLERANCE = 1e-6

# How many times the float32 reference's own error (against float64 on the same inputs)
# a float32 backend may add on top of the tolerance. Matters only for ill-conditioned
# problems (saturated gates), where no float32 code can meet a fixed relative bound.
FLOAT32_CONDITIONING_FACTOR = 4.0

# torch.autograd.gradcheck of fastrnn.torch in float64.
GRADCHECK = {"eps": 1e-6, "atol": 1e-7, "rtol": 1e-5}

# fastrnn.notebook against the course notebook's own NumPy functions, float64: the same
# equations summed in another order (float32 inputs are held to TOLERANCES).
NOTEBOOK_TOLERANCES = {"float64": {"forward": 1e-12, "grad": 1e-12}}

# One computation split along the batch (fastrnn.dask blocks, DistributedDataParallel
# ranks) against the whole batch in one process: the same arithmetic per sequence, only
# the parameter-gradient sums over sequences run in another order (relative norms).
SHARDED = {
    "float64": {"forward": 1e-12, "grad": 1e-12},
    "float32": {"forward": 1e-6, "grad": 1e-5},
}
__all__ += ["SHARDED"]

# The cupy kernels' float32 sigmoid (expf, 2 ulp, then one division) against float64, in
# ulps, where the result is at least the smallest normal float32; below that the kernels
# flush to zero (-ftz=true, see fastrnn/backends/cupy/backend.py).
CUDA_FLOAT32_SIGMOID_ULPS = 4
__all__ += ["CUDA_FLOAT32_SIGMOID_ULPS"]


def to_numpy64(a) -> np.ndarray:
    """A NumPy float64 copy of a NumPy, CuPy or PyTorch array."""
    return np.asarray(to_numpy(a), dtype=np.float64)


def rel_err(a, b) -> float:
    """``||a - b|| / ||b||`` in float64; the absolute norm of the difference when b is all zero.

    ``b`` is the reference. NaN or inf anywhere gives NaN or inf, which no tolerance accepts.
    """
    a, b = to_numpy64(a), to_numpy64(b)
    if a.shape != b.shape:
        raise ValueError(f"rel_err: shapes differ: {a.shape} vs {b.shape}")
    diff = np.linalg.norm((a - b).ravel())
    ref = np.linalg.norm(b.ravel())
    return float(diff / ref) if ref > 0 else float(diff)


def tolerance(dtype, kind: str, table=None) -> float:
    """The tolerance for ``dtype`` (a dtype, or "tf32") and ``kind`` ("forward" or "grad")."""
    table = TOLERANCES if table is None else table
    return table["tf32" if dtype == "tf32" else np.dtype(dtype).name][kind]
