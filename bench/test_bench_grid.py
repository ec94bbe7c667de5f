"""pytest-benchmark over the grid of ``fastrnn bench``: same problems, same runners.

One benchmark per runner (numpy, numba, cupy, torch, torch-cuda), grouped by
``cell/size/mode/dtype`` so each group of the report compares the runners on one problem,
and test ids are stable, so saved runs compare with ``--benchmark-compare``::

    python -m pytest bench/ --benchmark-autosave          # save .benchmarks/<machine>/0001_*.json
    python -m pytest bench/ --benchmark-compare           # compare with the latest saved run

The grid is the ``fastrnn bench`` default; narrow it with comma-separated environment
variables FASTRNN_BENCH_CELLS, _SIZES (names or TxBxIxH), _MODES, _DTYPES, _BACKENDS, and
set FASTRNN_BENCH_THREADS (default: all usable cores), FASTRNN_BENCH_ROUNDS (default 5).
Runners that cannot run here, and the PyTorch twin of ``gru_reset_before``, are skipped
with the reason. Each runner's first output is checked against the NumPy reference.
"""

import functools
import os

import pytest

from fastrnn import benchmark as bm
from fastrnn.tools.sysinfo import set_threads, usable_cores
from fastrnn.core.tolerances import TOLERANCES, TORCH_TOLERANCES, rel_err


def _env_list(name, default):
    value = os.environ.get(name)
    return [s.strip() for s in value.split(",") if s.strip()] if value else list(default)


CELLS = _env_list("FASTRNN_BENCH_CELLS", bm.DEFAULT_CELLS)
SIZES = [bm.parse_size(s) for s in _env_list("FASTRNN_BENCH_SIZES", bm.DEFAULT_SIZES)]
MODES = _env_list("FASTRNN_BENCH_MODES", bm.MODES)
DTYPES = _env_list("FASTRNN_BENCH_DTYPES", ["float32"])
RUNNERS = _env_list("FASTRNN_BENCH_BACKENDS", ["numpy", "numba", "cupy", *bm.PEERS])
THREADS = int(os.environ.get("FASTRNN_BENCH_THREADS", usable_cores()))
ROUNDS = int(os.environ.get("FASTRNN_BENCH_ROUNDS", 5))


@pytest.fixture(scope="module", autouse=True)
def threads():
    with set_threads(THREADS) as applied:
        yield applied


@functools.lru_cache(maxsize=None)
def _status():
    return bm.runner_status()


@functools.lru_cache(maxsize=4)
def _problem(cell, size, mode, dtype):
    return bm.make_problem(cell, size, mode, dtype)


@functools.lru_cache(maxsize=4)
def _reference(cell, size, mode, dtype):
    job = bm.prepare("numpy", _problem(cell, size, mode, dtype))
    return job.call()


GRID = [pytest.param(c, s, m, d, r, id=f"{c}-{s.name}-{m}-{d}-{r}")
        for c in CELLS for s in SIZES for m in MODES for d in DTYPES for r in RUNNERS]


@pytest.mark.parametrize("cell, size, mode, dtype, runner", GRID)
def test_grid(benchmark, cell, size, mode, dtype, runner):
    why = _status().get(runner, f"unknown runner {runner!r}")
    if why:
        pytest.skip(why)
    problem = _problem(cell, size, mode, dtype)
    try:
        job = bm.prepare(runner, problem)
    except bm.NotApplicable as exc:
        pytest.skip(str(exc))
    benchmark.group = f"{cell}/{size.name}/{mode}/{dtype}"
    benchmark.extra_info.update(cell=cell, size=size.name, T=size.T, B=size.B, I=size.I,
                                H=size.H, mode=mode, dtype=dtype, runner=runner,
                                flops=problem.flops, threads=THREADS)
    first = job.call()
    job.sync()
    if runner != "numpy":
        table = TORCH_TOLERANCES if runner in bm.PEERS else TOLERANCES
        tol = table[dtype]["grad" if mode == "train" else "forward"]
        err = rel_err(first, _reference(cell, size, mode, dtype))
        assert err <= tol, f"{runner} disagrees with the numpy reference: {err:.2e} > {tol:.0e}"

    def call():
        job.call()
        job.sync()
    benchmark.pedantic(call, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    if benchmark.stats is not None:         # None under --benchmark-disable
        benchmark.extra_info["gflops"] = problem.flops / benchmark.stats.stats.median / 1e9
