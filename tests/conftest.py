"""Shared fixtures: the backends under test and random problems.

``backend`` runs a test on every backend that is not the reference. numba is a hard
dependency, so a numba that cannot run fails loudly; cupy is skipped, with the reason,
where no GPU or CuPy is present. "cupy-emulated" is the cupy backend's own code with its
kernels compiled for the CPU (tests/cuda_emulation): it runs everywhere a C++ compiler
is, under the backend name "cupy", so every GPU-path comparison also runs in CI.
"""

import numpy as np
import pytest

import fastrnn
from fastrnn.backends import BackendUnavailableError, get_backend
from fastrnn.tools.problems import random_problem

FAST_BACKENDS = ["numba", "cupy", "cupy-emulated"]
OPTIONAL_BACKENDS = {"cupy"}
EMULATED = "cupy-emulated"


def require_backend(name):
    try:
        return get_backend(name)
    except BackendUnavailableError as exc:
        if name in OPTIONAL_BACKENDS:
            pytest.skip(str(exc))
        raise


def use_backend(request, name):
    """The backend name a test passes to fastrnn for fixture parameter ``name``: the name
    itself, or "cupy" once the emulated cupy backend is installed for this test."""
    if name != EMULATED:
        require_backend(name)
        return name
    import cuda_emulation
    if cuda_emulation.compiler() is None:
        pytest.skip("the CUDA emulation needs a C++ compiler (g++), which is not on PATH")
    monkeypatch = request.getfixturevalue("monkeypatch")
    stack = cuda_emulation.emulated_cupy_backend(monkeypatch)
    stack.__enter__()
    request.addfinalizer(lambda: stack.__exit__(None, None, None))
    return "cupy"


@pytest.fixture(params=FAST_BACKENDS)
def backend(request):
    """Name of a fast backend to compare against the reference."""
    return use_backend(request, request.param)


@pytest.fixture(params=["numpy", "numba"])
def cpu_backend(request):
    """Name of each CPU backend (the reference and numba): for drop-ins of CPU libraries."""
    require_backend(request.param)
    return request.param


@pytest.fixture
def rng(request):
    """A generator seeded from the test's name: fresh inputs per test, reproducible per run."""
    import zlib
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def make_problem(rng, cell, T, B, I, H, dtype="float64", lengths=False, states=False):
    """Random inputs for one forward call: (x (T,B,I), params, h0, c0, lengths), from the
    package's one problem builder (:func:`fastrnn.tools.problems.random_problem`)."""
    p = random_problem(rng, cell, T, B, I, H, dtype, lengths=lengths, states=states)
    return p.x, p.params, p.h0, p.c0, p.lengths


# ---------------------------------------------------------------- appended helpers

ALL_BACKENDS = ["numpy"] + FAST_BACKENDS


@pytest.fixture(params=ALL_BACKENDS)
def any_backend(request):
    """Name of every backend, the reference included: for properties every backend must have."""
    return use_backend(request, request.param)


def to_backend(backend, a):
    """A NumPy array (or a dict of them, or None) as an array of backend ``backend`` (the
    cupy backend's arrays for "cupy", the emulated ones included): fastrnn refuses host and
    device arrays side by side, so a test that mixes results with its own inputs moves
    them first, as a user would."""
    if a is None:
        return None
    xp = get_backend(backend).xp
    if isinstance(a, dict):
        return {k: xp.asarray(v) for k, v in a.items()}
    return xp.asarray(a)


def named_results(res, g) -> dict:
    """Every array of a forward result and its gradients, by name (h, h_n, c_n, dx, dh0,
    dc0, d<param>), for comparing two runs array by array."""
    out = {"h": res.h, "h_n": res.h_n, "dx": g.dx, "dh0": g.dh0}
    if res.c_n is not None:
        out.update(c_n=res.c_n, dc0=g.dc0)
    out.update({f"d{k}": v for k, v in g.params.items()})
    return out


def widened(*arrays, dtype=np.float64):
    """The arrays (or dicts of them, or None) as ``dtype``: the reference's inputs for a
    run of lower precision on the same rounded values."""
    return [None if a is None else (a.astype(dtype) if isinstance(a, np.ndarray) else
                                    {k: v.astype(dtype) for k, v in a.items()})
            for a in arrays]


def make_upstream(rng, cell, T, B, H, dtype="float64"):
    """Random upstream gradients (dh (T,B,H), dh_n (B,H), dc_n (B,H) or None) for one forward."""
    return random_problem(rng, cell, T, B, 1, H, dtype).upstream


def run_both(cell, x, params, h0, c0, lengths, reverse, dh, dh_n, dc_n, backend, **kwargs):
    """Forward then backward on ``backend``: (ForwardResult, Gradients)."""
    res = fastrnn.forward(cell, x, params, h0, c0, lengths=lengths, reverse=reverse,
                          backend=backend, **kwargs)
    return res, fastrnn.backward(res.tape, dh, dh_n, dc_n)


# Worst relative errors measured by the comparison tests, by kind; printed at the end of
# the run (terminal summary) so closing notes can quote them.
WORST_ERRORS: dict[str, float] = {}


def record_error(kind: str, err: float) -> float:
    """Keep the largest relative error seen for ``kind``; returns ``err``."""
    WORST_ERRORS[kind] = max(WORST_ERRORS.get(kind, 0.0), float(err))
    return err


def pytest_terminal_summary(terminalreporter):
    if WORST_ERRORS:
        terminalreporter.section("worst relative errors measured")
        for kind, err in sorted(WORST_ERRORS.items()):
            terminalreporter.write_line(f"{kind:<50s} {err:.3e}")
