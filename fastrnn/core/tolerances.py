"""The one place that states how close two computations of the same function must agree.

Errors are relative norms, ``||a - b|| / ||b||`` of whole arrays, taken in float64 (see
:func:`rel_err`). ``fastrnn check``, ``fastrnn bench`` and the test suite all read these
numbers from here.
"""

from __future__ import annotations

import numpy as np

__all__ = ["TOLERANCES", "TORCH_TOLERANCES", "rel_err", "tolerance"]

# dtype -> (forward outputs and states, gradients): every backend against the reference.
TOLERANCES = {
    "float64": {"forward": 1e-10, "grad": 1e-10},
    "float32": {"forward": 1e-5, "grad": 1e-4},
    # 16-bit storage with float32 arithmetic (GPU only): about 4x the worst errors seen
    "float16": {"forward": 2e-3, "grad": 5e-3},
    "bfloat16": {"forward": 1.5e-2, "grad": 4e-2},
}
# The reference against PyTorch (an independent implementation, other summation orders).
TORCH_TOLERANCES = {
    "float64": {"forward": 1e-9, "grad": 1e-9},
    "float32": {"forward": 2e-4, "grad": 2e-4},
}


def to_numpy64(a) -> np.ndarray:
    """A NumPy float64 copy of a NumPy, CuPy or PyTorch array."""
    if hasattr(a, "detach"):                       # torch.Tensor
        a = a.detach().cpu().numpy()
    elif hasattr(a, "get") and not isinstance(a, np.ndarray):   # cupy.ndarray
        a = a.get()
    return np.asarray(a, dtype=np.float64)


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
    """The tolerance for ``dtype`` (float32/float64) and ``kind`` ("forward" or "grad")."""
    table = TOLERANCES if table is None else table
    return table[np.dtype(dtype).name][kind]
