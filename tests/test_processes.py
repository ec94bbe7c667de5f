"""fastrnn inside multi-process and multi-threaded programs.

After the parent has used the numba backend (its thread pool started), children of
``fork``, ``forkserver`` and ``spawn`` pools compute the parent's numbers (a fork child of
a GNU OpenMP pool runs the kernels on its calling thread: the same chunks, one after
another, so the numbers are identical), and four Python threads calling forward and
backward at once get the numbers of one thread. Every wait is bounded: a hang fails.
"""

from __future__ import annotations

import multiprocessing as mp
import threading

import numpy as np
import pytest

import fastrnn
from conftest import make_problem, make_upstream

TIMEOUT_S = 180
CELL, T, B, I, H = "lstm", 12, 16, 8, 24        # B = 16: two thread chunks in the parent


def training_step(seed: int):
    """Forward and backward of a seeded problem on the numba backend: every result."""
    rng = np.random.default_rng(seed)
    x, params, h0, c0, lens = make_problem(rng, CELL, T, B, I, H, "float32", lengths=True,
                                           states=True)
    dh, dh_n, dc_n = make_upstream(rng, CELL, T, B, H, "float32")
    res = fastrnn.forward(CELL, x, params, h0, c0, lengths=lens, backend="numba")
    g = fastrnn.backward(res.tape, dh, dh_n, dc_n)
    return [np.array(a) for a in (res.h, res.h_n, res.c_n, g.dx, g.dh0, g.dc0)] + \
        [g.params[k] for k in sorted(g.params)]


def _same(got, want, what):
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want)):
        assert np.array_equal(a, b), f"{what}: result {k} differs"


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_pool_children_compute_the_parents_numbers(method):
    want = [training_step(seed) for seed in range(3)]       # the parent's pool is running
    ctx = mp.get_context(method)
    pool = ctx.Pool(2)
    try:
        got = pool.map_async(training_step, range(3)).get(timeout=TIMEOUT_S)
    except mp.TimeoutError:
        pytest.fail(f"a {method} pool did not finish in {TIMEOUT_S} s (a hung child)")
    finally:
        pool.terminate()
        pool.join()
    for seed, (g, w) in enumerate(zip(got, want)):
        _same(g, w, f"{method} child, seed {seed}")


def test_a_fork_child_runs_the_kernels_on_its_own_thread():
    """The fallback itself: in the child of a fork after the pool started, parallel work is
    off (numba's GNU OpenMP would kill the child), and the numbers stay the parent's."""
    from fastrnn.backends.numba import threads
    want = training_step(7)
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        allowed = pool.apply_async(threads.parallel_allowed).get(timeout=TIMEOUT_S)
        got = pool.apply_async(training_step, (7,)).get(timeout=TIMEOUT_S)
    import numba
    assert allowed is (numba.threading_layer() != "omp")
    _same(got, want, "fork child")


def test_four_threads_at_once_get_one_threads_numbers():
    want = {seed: training_step(seed) for seed in range(4)}
    got, errors = {}, []

    def run(seed):
        try:
            for _ in range(3):
                got[seed] = training_step(seed)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    workers = [threading.Thread(target=run, args=(s,)) for s in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(TIMEOUT_S)
    assert not any(w.is_alive() for w in workers), "a thread did not finish (a hang)"
    assert not errors, errors
    for seed in want:
        _same(got[seed], want[seed], f"thread {seed}")
