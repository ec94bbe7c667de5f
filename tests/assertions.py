"""Assertions that compare results by the tolerances of :mod:`fastrnn.core.tolerances`.

Errors are relative norms, ||a - b|| / ||b||, of whole arrays (see ``rel_err``).
"""

import numpy as np

from fastrnn.core.tolerances import (FLOAT32_CONDITIONING_FACTOR, TOLERANCES, rel_err,
                                     tolerance)


def assert_close(a, b, dtype, kind, what="", table=TOLERANCES):
    """Fail with the measured error when rel_err(a, b) exceeds the tolerance of (dtype, kind);
    dtype may be "tf32" (float32 with TF32 products)."""
    tol = tolerance(dtype, kind, table)
    err = rel_err(a, b)
    name = dtype if dtype == "tf32" else np.dtype(dtype).name
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.0e} ({name}, {kind})"
    return err


def assert_matches_reference(a, ref, ref64, dtype, kind, what="", perturbed=None):
    """Compare a backend's result with the reference's, accounting for conditioning.

    float64: rel_err(a, ref) within the tolerance. float32: rel_err(a, ref64), with ref64
    the reference run in float64 on the same (float32-valued) inputs, may be up to the
    tolerance plus FLOAT32_CONDITIONING_FACTOR times how far float32 results of the
    reference land from ref64: its result on the inputs themselves (ref) and on the inputs
    moved by one ulp (perturbed, optional). A float32 backend must be about as exact as
    float32 arithmetic allows for that problem, no more.
    """
    name = np.dtype(dtype).name
    if name == "float64":
        return assert_close(a, ref, dtype, kind, what)
    tol = TOLERANCES[name][kind]
    own = max(rel_err(r, ref64) for r in [ref] + ([perturbed] if perturbed is not None else []))
    err = rel_err(a, ref64)
    bound = tol + FLOAT32_CONDITIONING_FACTOR * own
    assert err <= bound, (f"{what}: relative error to float64 {err:.3e} > {bound:.1e} "
                          f"(float32 tolerance {tol:.0e} + {FLOAT32_CONDITIONING_FACTOR:g} x "
                          f"the float32 reference's own error {own:.1e}, {kind})")
    return err
