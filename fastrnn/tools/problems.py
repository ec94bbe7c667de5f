"""Random recurrent problems: the one builder that the test suite, ``fastrnn check`` and
``fastrnn bench`` draw their inputs from.

A problem is everything one forward and backward call takes: the input, weights in the
PyTorch-style init range, optional initial states and lengths, and the upstream
gradients. Everything comes from the generator it is given, so a seed reproduces it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.cells import CellSpec, get_cell

__all__ = ["RandomProblem", "random_params", "random_problem"]


@dataclass
class RandomProblem:
    """Inputs of one call, NumPy arrays of one dtype (time-major).

    x (T, B, I); params as :mod:`fastrnn.core.cells` shapes them; h0, c0 (B, H) or None
    (c0 only for lstm); lengths (B,) int64 or None; dh (T, B, H), dh_n (B, H), dc_n (B, H)
    or None (lstm only).
    """

    cell: CellSpec
    x: np.ndarray
    params: dict
    h0: Any
    c0: Any
    lengths: Any
    dh: np.ndarray
    dh_n: np.ndarray
    dc_n: Any

    @property
    def upstream(self) -> tuple:
        """(dh, dh_n, dc_n), as :func:`fastrnn.backward` takes them."""
        return self.dh, self.dh_n, self.dc_n


def random_params(rng: np.random.Generator, cell, I: int, H: int, dtype="float64",
                  scale: float | None = None, proj_size: int | None = None) -> dict:
    """Every parameter uniform(-scale, scale); scale 1/sqrt(H) (PyTorch's init) unless given.
    ``proj_size`` is P of lstmp (H when None, so that h is H wide for every cell)."""
    spec = get_cell(cell)
    bound = 1.0 / np.sqrt(H) if scale is None else scale
    P = (H if proj_size is None else proj_size) if spec.has_projection else None
    return {k: (rng.uniform(-1, 1, s) * bound).astype(dtype)
            for k, s in spec.param_shapes(I, H, P).items()}


def random_problem(rng: np.random.Generator, cell, T: int, B: int, I: int, H: int,
                   dtype="float64", *, lengths: bool = False, states: bool = False,
                   param_scale: float | None = None,
                   proj_size: int | None = None) -> RandomProblem:
    """A random problem of size (T, B, I, H) (and P = proj_size for lstmp, default H).

    lengths: draw lengths in 1..T, the first sequence full length (as in a padded batch)
        and, from B = 2 on, the last one at most T // 2 long, so padding is always there.
    states: draw h0 (and c0 for lstm) with standard deviation 0.5; else None (zeros).
    param_scale: see :func:`random_params`.
    """
    spec = get_cell(cell)
    params = random_params(rng, spec, I, H, dtype, param_scale, proj_size)
    P = spec.sizes_of(params)[1]                          # the width of h
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = (rng.standard_normal((B, P)) * 0.5).astype(dtype) if states else None
    c0 = ((rng.standard_normal((B, H)) * 0.5).astype(dtype)
          if states and spec.has_cell_state else None)
    lens = None
    if lengths:
        lens = rng.integers(1, T + 1, size=B).astype(np.int64)
        if B > 1:
            lens[0] = T
            lens[-1] = min(lens[-1], max(1, T // 2))
    dh = rng.standard_normal((T, B, P)).astype(dtype)
    dh_n = rng.standard_normal((B, P)).astype(dtype)
    dc_n = rng.standard_normal((B, H)).astype(dtype) if spec.has_cell_state else None
    return RandomProblem(spec, x, params, h0, c0, lens, dh, dh_n, dc_n)
