"""The engine of ``fastrnn check``: every backend against the NumPy reference, here and now.

For every cell, dtype, size and variant (plain, lengths, reverse, both) a fresh random
problem — inputs, weights, initial states, upstream gradients ``dh``, ``dh_n`` (and ``dc_n``
for LSTM) — is run through the reference and through each backend. Compared: the forward
outputs with a tape (``h``, ``h_n``, ``c_n``), ``h`` of an inference run
(``training=False``), and every gradient (``dx``, ``dh0``, ``dc0``, one per parameter). Errors
are relative norms against the reference, tolerances from :mod:`fastrnn.core.tolerances`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import api
from ..backends import get_backend
from ..core.cells import cell_names
from ..core.tolerances import TOLERANCES, rel_err, to_numpy64
from .problems import random_problem

__all__ = ["VARIANTS", "QUICK_DIMS", "FULL_DIMS", "CaseResult", "Summary", "run_check",
           "summarize", "cases"]

VARIANTS = ("plain", "lengths", "reverse", "lengths+reverse")
# (T, B, I, H): odd sizes catch tail handling; the larger ones take the paths backends
# choose for bigger problems (BLAS calls, other tilings) instead of their small-size loops.
QUICK_DIMS = [(6, 3, 5, 7), (10, 16, 20, 48)]
FULL_DIMS = [(6, 3, 5, 7), (24, 16, 33, 70), (12, 64, 96, 160)]
REFERENCE = "numpy"


@dataclass
class Case:
    """One random problem: cell, dtype, dims, variant and its NumPy inputs."""

    cell: str
    dtype: str
    dims: tuple
    variant: str
    inputs: dict


@dataclass
class CaseResult:
    """One backend on one case: the worst forward and gradient errors and where they were."""

    backend: str
    cell: str
    dtype: str
    dims: tuple
    variant: str
    fwd_err: float = float("nan")
    fwd_what: str = ""
    grad_err: float = float("nan")
    grad_what: str = ""
    error: str | None = None

    @property
    def passed(self) -> bool:
        tol = TOLERANCES[self.dtype]
        # written so that NaN fails
        return (self.error is None and self.fwd_err <= tol["forward"]
                and self.grad_err <= tol["grad"])


def _make_case(rng, cell: str, dims, dtype: str, variant: str) -> Case:
    p = random_problem(rng, cell, *dims, dtype, lengths="lengths" in variant, states=True)
    inputs = dict(x=p.x, params=p.params, h0=p.h0, c0=p.c0, lengths=p.lengths,
                  reverse="reverse" in variant, dh=p.dh, dh_n=p.dh_n, dc_n=p.dc_n)
    return Case(p.cell.name, dtype, tuple(dims), variant, inputs)


def cases(cells, dtypes, quick: bool, seed: int):
    """Every case of a check run, freshly drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    for cell in cells:
        for dtype in dtypes:
            for dims in (QUICK_DIMS if quick else FULL_DIMS):
                variants = VARIANTS[:3] if quick else VARIANTS
                for variant in variants:
                    yield _make_case(rng, cell, dims, dtype, variant)


def _run(backend: str, case: Case) -> tuple[dict, dict]:
    """(forward outputs, gradients) of one backend on one case, as float64 NumPy arrays."""
    be = get_backend(backend)
    xp = be.xp
    dev = {k: (None if v is None or isinstance(v, bool) else xp.asarray(v))
           for k, v in case.inputs.items() if k not in ("params", "lengths")}
    params = {k: xp.asarray(v) for k, v in case.inputs["params"].items()}
    kw = dict(lengths=case.inputs["lengths"], reverse=case.inputs["reverse"], backend=be)
    res = api.forward(case.cell, dev["x"], params, dev["h0"], dev["c0"], training=True, **kw)
    infer = api.forward(case.cell, dev["x"], params, dev["h0"], dev["c0"], training=False, **kw)
    g = api.backward(res.tape, dev["dh"], dev["dh_n"], dev["dc_n"])
    fwd = {"h": res.h, "h_n": res.h_n, "c_n": res.c_n, "h (training=False)": infer.h}
    grads = {"dx": g.dx, "dh0": g.dh0, "dc0": g.dc0, **{f"d{k}": v for k, v in g.params.items()}}
    return ({k: to_numpy64(v) for k, v in fwd.items() if v is not None},
            {k: to_numpy64(v) for k, v in grads.items() if v is not None})


def _worst(out: dict, ref: dict) -> tuple[float, str]:
    worst, what = -1.0, ""
    for name, r in ref.items():
        if name not in out:
            return float("nan"), f"{name} missing"
        try:
            e = rel_err(out[name], r)
        except ValueError as exc:
            return float("nan"), f"{name}: {exc}"
        if not e <= worst:                   # NaN wins, so it is reported
            worst, what = e, name
            if np.isnan(e):
                break
    return worst, what


def run_check(backends: list[str], cells=None, dtypes=("float32", "float64"),
              quick: bool = False, seed: int = 0, on_step=None) -> list[CaseResult]:
    """Compare each backend with the reference on every case; ``on_step(text)`` reports progress."""
    cells = list(cells or cell_names())
    results = []
    for case in cases(cells, dtypes, quick, seed):
        label = f"{case.cell} {case.dtype} {'x'.join(map(str, case.dims))} {case.variant}"
        ref = _run(REFERENCE, case)
        for name in backends:
            if on_step:
                on_step(f"{name}: {label}")
            res = CaseResult(name, case.cell, case.dtype, case.dims, case.variant)
            try:
                fwd, grads = _run(name, case)
                res.fwd_err, res.fwd_what = _worst(fwd, ref[0])
                res.grad_err, res.grad_what = _worst(grads, ref[1])
            except Exception as exc:   # a crashing backend is a failed check, not a crash
                res.error = f"{type(exc).__name__}: {exc}"
            results.append(res)
    return results


def count_steps(n_backends: int, cells, dtypes, quick: bool) -> int:
    """How many (backend, case) comparisons :func:`run_check` makes."""
    per = len(QUICK_DIMS if quick else FULL_DIMS) * (3 if quick else len(VARIANTS))
    return n_backends * len(list(cells)) * len(list(dtypes)) * per


@dataclass
class Summary:
    """All cases of one (backend, cell, dtype), reduced to the worst errors."""

    backend: str
    cell: str
    dtype: str
    results: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> int:
        return sum(not r.passed for r in self.results)

    def worst(self, kind: str) -> CaseResult:
        """The case with the largest ``fwd_err`` or ``grad_err`` (NaN first)."""
        key = "fwd_err" if kind == "forward" else "grad_err"
        return max(self.results, key=lambda r: (np.isnan(getattr(r, key)), getattr(r, key)))

    @property
    def errors(self) -> list[str]:
        return [f"{r.variant} {'x'.join(map(str, r.dims))}: {r.error}"
                for r in self.results if r.error]


def summarize(results: list[CaseResult]) -> list[Summary]:
    """Group results by (backend, cell, dtype) in the order they came."""
    groups: dict[tuple, Summary] = {}
    for r in results:
        key = (r.backend, r.cell, r.dtype)
        groups.setdefault(key, Summary(*key)).results.append(r)
    return list(groups.values())
