"""fastrnn.dask against fastrnn.forward / backward on the whole batch in one process.

Every chunking of the batch must give the one-process numbers (float64, SHARDED), on the
threaded scheduler, the processes scheduler and a ``distributed.LocalCluster`` of two
worker processes. Tests that start processes run under a deadline: they fail, not hang.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

da = pytest.importorskip("dask.array", reason="fastrnn.dask needs the extra fastrnn[dask]")
import dask  # noqa: E402
import numba  # noqa: E402

import fastrnn  # noqa: E402
import fastrnn.dask as frd  # noqa: E402
from fastrnn.core.tolerances import SHARDED  # noqa: E402
from assertions import assert_close  # noqa: E402
from conftest import make_problem, make_upstream  # noqa: E402

T, I, H = 6, 3, 5


@contextlib.contextmanager
def deadline(seconds: int, what: str):
    """Raise TimeoutError in the main thread once ``seconds`` pass (SIGALRM)."""
    def expire(signum, frame):
        raise TimeoutError(f"{what} took more than {seconds} s")
    before = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)


# ------------------------------------------------------------------------- problems

class Case:
    """A problem, its batch chunking, and its arguments as NumPy (and, optionally, dask)."""

    def __init__(self, rng, cell, chunks, *, dtype="float64", lengths=True, reverse=False,
                 batch_first=False, dask_args=False, hidden=H):
        B, self.H = sum(chunks), hidden
        x, self.params, h0, c0, lens = make_problem(rng, cell, T, B, I, hidden, dtype,
                                                    lengths=lengths, states=True)
        dh, dh_n, dc_n = make_upstream(rng, cell, T, B, hidden, dtype)
        self.cell, self.chunks, self.dtype = cell, tuple(chunks), dtype
        self.reverse, self.batch_first = reverse, batch_first
        seq = (lambda a: a.transpose(1, 0, 2).copy()) if batch_first else (lambda a: a)
        self.np = dict(x=seq(x), h0=h0, c0=c0, lengths=lens, dh=seq(dh), dh_n=dh_n, dc_n=dc_n)
        self.x = da.from_array(self.np["x"], chunks=self.seq_chunks(I))
        self.args = {k: v for k, v in self.np.items() if k != "x"}
        if dask_args:
            self.args = {k: self.as_dask(k, v) for k, v in self.args.items()}

    def seq_chunks(self, width):
        return ((self.chunks, (T,), (width,)) if self.batch_first
                else ((T,), self.chunks, (width,)))

    def as_dask(self, name, a):
        if a is None:
            return None
        if name == "dh":
            return da.from_array(a, chunks=self.seq_chunks(self.H))
        return da.from_array(a, chunks=(self.chunks,) + ((self.H,) if a.ndim == 2 else ()))

    def inputs(self):
        return {k: self.args[k] for k in ("h0", "c0", "lengths")}

    def upstream(self):
        return {k: self.args[k] for k in ("dh", "dh_n", "dc_n")}

    def kwargs(self):
        return dict(reverse=self.reverse, batch_first=self.batch_first)

    def reference(self):
        """fastrnn.forward and backward on the whole batch in this process."""
        n = self.np
        res = fastrnn.forward(self.cell, n["x"], self.params, n["h0"], n["c0"],
                              lengths=n["lengths"], **self.kwargs())
        return res, fastrnn.backward(res.tape, n["dh"], n["dh_n"], n["dc_n"])

    def forward(self, **kw):
        return frd.forward(self.cell, self.x, self.params, **self.inputs(), **self.kwargs(), **kw)

    def gradients(self, **kw):
        return frd.gradients(self.cell, self.x, self.params, **self.inputs(), **self.upstream(),
                             **self.kwargs(), **kw)


def check_forward(case, h, h_n, c_n):
    ref, _ = case.reference()
    for name, got, want in (("h", h, ref.h), ("h_n", h_n, ref.h_n), ("c_n", c_n, ref.c_n)):
        if want is None:
            assert got is None, f"{name}: expected None for cell {case.cell!r}"
        else:
            assert_close(got, want, case.dtype, "forward", f"{case.cell} {name}", table=SHARDED)


def check_gradients(case, g):
    _, ref = case.reference()
    assert sorted(g.params) == sorted(case.params)
    for k, want in ref.params.items():
        assert isinstance(g.params[k], np.ndarray)
        assert_close(g.params[k], want, case.dtype, "grad", f"{case.cell} d{k}", table=SHARDED)
    assert g.dx.chunks == case.x.chunks
    assert g.dh0.chunks == (case.chunks, (case.H,))
    dx, dh0, dc0 = dask.compute(g.dx, g.dh0, g.dc0)
    assert_close(dx, ref.dx, case.dtype, "grad", f"{case.cell} dx", table=SHARDED)
    assert_close(dh0, ref.dh0, case.dtype, "grad", f"{case.cell} dh0", table=SHARDED)
    if ref.dc0 is None:
        assert dc0 is None
    else:
        assert g.dc0.chunks == (case.chunks, (case.H,))
        assert_close(dc0, ref.dc0, case.dtype, "grad", f"{case.cell} dc0", table=SHARDED)


CASES = [  # cell, batch chunks, options
    pytest.param("lstm", (11,), {}, id="lstm-one-block"),
    pytest.param("lstm", (3, 5, 3), dict(reverse=True, dask_args=True),
                 id="lstm-reverse-dask-args"),
    pytest.param("gru", (1,) * 9, dict(batch_first=True), id="gru-single-sequences-batch-first"),
    pytest.param("gru_reset_before", (4, 7), dict(reverse=True, batch_first=True,
                                                  dask_args=True), id="grurb-reverse-bf"),
    pytest.param("rnn_tanh", (2, 3, 1, 5), dict(lengths=False), id="rnn-tanh-no-lengths"),
    pytest.param("rnn_relu", (6, 6), dict(dtype="float32"), id="rnn-relu-float32"),
]


# ---------------------------------------------------------------- threaded scheduler

@pytest.mark.parametrize("cell, chunks, opts", CASES)
def test_forward_equals_one_process(rng, cell, chunks, opts):
    case = Case(rng, cell, chunks, **opts)
    res = case.forward()
    assert res.tape is None
    assert res.h.chunks == case.seq_chunks(H) and res.h_n.chunks == (case.chunks, (H,))
    check_forward(case, *dask.compute(res.h, res.h_n, res.c_n, scheduler="threads"))


@pytest.mark.parametrize("cell, chunks, opts", CASES)
def test_gradients_equal_one_process(rng, cell, chunks, opts):
    case = Case(rng, cell, chunks, **opts)
    with dask.config.set(scheduler="threads"):
        check_gradients(case, case.gradients(split_every=2))


def test_gradients_without_input_grads_and_any_upstream(rng):
    """input_grads=False keeps only the parameter gradients; omitted upstreams are zeros."""
    case = Case(rng, "lstm", (4, 4, 4))
    case.args.update(dh=None, dc_n=None)
    case.np.update(dh=None, dc_n=None)
    with dask.config.set(scheduler="threads"):
        g = case.gradients(input_grads=False)
        check_gradients(case, case.gradients())
    assert g.dx is None and g.dh0 is None and g.dc0 is None
    _, ref = case.reference()
    for k, want in ref.params.items():
        assert_close(g.params[k], want, case.dtype, "grad", f"d{k}", table=SHARDED)


def test_reference_backend_on_blocks(rng):
    """backend= reaches the blocks: the numpy reference gives the same numbers."""
    case = Case(rng, "gru", (5, 6))
    res = case.forward(backend="numpy")
    check_forward(case, *dask.compute(res.h, res.h_n, res.c_n, scheduler="threads"))


# ----------------------------------------------------------------- the weights, once

def _run_recording(fn, *args, **kwargs):
    """Run fn on the threaded scheduler; return (its result, the graph it ran, keys run)."""
    from dask.callbacks import Callback
    graphs, ran = [], []
    with Callback(start=graphs.append, pretask=lambda key, dsk, state: ran.append(key)), \
            dask.config.set(scheduler="threads"):
        out = fn(*args, **kwargs)
    return out, {k: v for g in graphs for k, v in g.items()}, ran


def _weights_keys(graph):
    return [k for k in graph if str(k).startswith("fastrnn-weights-")]


@pytest.mark.parametrize("step", ["forward", "gradients"])
def test_weights_enter_the_graph_once(rng, step):
    """One weights key that every block task reads; more blocks do not copy the weights."""
    from dask.core import get_dependencies
    import cloudpickle
    sizes = {}
    for nblocks in (2, 8):
        case = Case(rng, "lstm", (32 // nblocks,) * nblocks, dask_args=True, hidden=64)
        if step == "forward":
            res = case.forward()
            _, graph, ran = _run_recording(dask.compute, res.h, res.h_n)
            block = "_forward_block"
        else:
            _, graph, ran = _run_recording(case.gradients)
            block = "_gradient_block"
        (wkey,) = _weights_keys(graph)
        blocks = [k for k in graph if str(k).startswith(block)]
        assert len(blocks) == nblocks
        assert all(wkey in get_dependencies(graph, k) for k in blocks)
        assert sum(str(k).startswith(block) for k in ran) == nblocks, "a block ran twice"
        sizes[nblocks] = len(cloudpickle.dumps(graph))
    weights = sum(v.nbytes for v in case.params.values())
    assert sizes[8] - sizes[2] < weights / 2, (sizes, weights)


def test_params_are_a_snapshot(rng):
    """Changing params in place after the call does not change the lazy result."""
    case = Case(rng, "rnn_tanh", (3, 3))
    res = case.forward()
    for v in case.params.values():
        v += 1.0
    h = res.h.compute(scheduler="threads")
    for v in case.params.values():
        v -= 1.0
    check_forward(case, h, *dask.compute(res.h_n, res.c_n, scheduler="threads"))


# ------------------------------------------------------------------ numba's threads

def _cores():
    return max(1, min(len(os.sched_getaffinity(0)), numba.config.NUMBA_NUM_THREADS))


def _spy_on_block_threads(monkeypatch) -> list:
    """Record numba's thread count each time a block calls fastrnn.forward."""
    seen, original = [], frd._api.forward

    def spy(*args, **kwargs):
        seen.append(numba.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(frd._api, "forward", spy)
    return seen


@pytest.mark.parametrize("pool", [1, 2, 4])
def test_block_threads_follow_the_threaded_pool(rng, monkeypatch, pool):
    """Each block runs numba on cores // (threads of the pool) threads, at least one."""
    seen = _spy_on_block_threads(monkeypatch)
    res = Case(rng, "gru", (3,) * 4).forward()
    res.h_n.compute(scheduler="threads", num_workers=pool)
    assert seen == [max(1, _cores() // pool)] * 4


def test_block_threads_are_restored(rng, monkeypatch):
    """A block's count holds for the block only: the pool thread gets its own count back."""
    seen = _spy_on_block_threads(monkeypatch)
    res = Case(rng, "gru", (3, 3)).forward(threads=1)

    def count(*_):
        return numba.get_num_threads()

    before = dask.delayed(count)()
    after = dask.delayed(count)(before, res.h_n)            # runs after the blocks
    got = dask.compute(before, after, scheduler="threads", num_workers=1)
    assert seen == [1, 1]
    assert got[1] == got[0] == numba.config.NUMBA_NUM_THREADS


def test_threads_override_and_main_thread():
    assert frd.threads_per_task() == numba.get_num_threads()
    assert frd.threads_per_task(1) == 1
    assert frd.threads_per_task(10**6) == numba.config.NUMBA_NUM_THREADS
    got = dask.delayed(frd.threads_per_task)(1).compute(scheduler="threads", num_workers=1)
    assert got == 1


WORKQUEUE_SCRIPT = """
import dask, dask.array as da, numpy as np
import fastrnn.dask as frd
from fastrnn.tools.problems import random_problem
p = random_problem(np.random.default_rng(0), "lstm", 50, 256, 16, 64, "float64")
x = da.from_array(p.x, chunks=(50, 16, 16))
for _ in range(5):
    frd.forward("lstm", x, p.params, threads=2).h.compute(scheduler="threads", num_workers=4)
"""


def test_workqueue_layer_blocks_take_turns():
    """Numba's workqueue layer aborts the process when two threads enter it at once; under
    it the blocks of a threaded scheduler must take turns."""
    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue"}
    proc = subprocess.run([sys.executable, "-c", WORKQUEUE_SCRIPT], env=env, timeout=120,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


# -------------------------------------------------------------------------- bad input

def _bad(rng, **change):
    case = Case(rng, "lstm", (4, 4), dask_args=True)
    args = dict(x=case.x, params=case.params, **case.inputs(), **case.upstream())
    args.update(change)
    return case, args


@pytest.mark.parametrize("change, exc, words", [
    (lambda c: dict(x=c.np["x"]), TypeError, ["x:", "dask array"]),
    (lambda c: dict(x=c.x.rechunk({0: 3})), ValueError, ["x:", "time axis", "rechunk({0: -1})"]),
    (lambda c: dict(x=c.x.rechunk({2: 1})), ValueError, ["x:", "feature axis", "rechunk({2: -1})"]),
    (lambda c: dict(x=c.x[0]), ValueError, ["x:", "3-d"]),
    (lambda c: dict(x=c.x.astype(np.int32)), TypeError, ["x:", "float"]),
    (lambda c: dict(dh=c.args["dh"].rechunk({1: 2})), ValueError, ["dh:", "chunks", "rechunk"]),
    (lambda c: dict(dh_n=c.args["dh_n"].rechunk({0: 8})), ValueError, ["dh_n:", "chunks"]),
    (lambda c: dict(dc_n=c.args["dc_n"].rechunk({1: 2})), ValueError, ["dc_n:", "chunks"]),
    (lambda c: dict(lengths=c.args["lengths"].rechunk(3)), ValueError, ["lengths:", "chunks"]),
    (lambda c: dict(h0=c.args["h0"].rechunk({0: 2})), ValueError, ["h0:", "chunks"]),
    (lambda c: dict(c0=c.args["c0"][:4]), ValueError, ["c0:", "shape"]),
    (lambda c: dict(lengths=np.full(8, T + 1)), ValueError, ["lengths:", "1..6"]),
    (lambda c: dict(lengths=c.args["lengths"].astype(float)), TypeError, ["lengths:", "integers"]),
    (lambda c: dict(h0=c.np["h0"].astype(np.float32)), TypeError, ["h0:", "float64"]),
    (lambda c: dict(dh=c.np["dh"][:, :, :2]), ValueError, ["dh:", "shape"]),
    (lambda c: dict(params={**c.params, "W": c.params["W"].astype(np.float32)}), TypeError,
     ["params[", "float"]),
])
def test_bad_input_names_the_argument(rng, change, exc, words):
    """gradients refuses it with the argument's name; forward too where it takes it."""
    case, args = _bad(rng)
    changed = change(case)
    args.update(changed)
    upstream = ("dh", "dh_n", "dc_n")
    calls = [frd.gradients] + ([frd.forward] if not set(changed) & set(upstream) else [])
    for call in calls:
        kwargs = args if call is frd.gradients else {k: v for k, v in args.items()
                                                     if k not in upstream}
        with pytest.raises(exc) as info:
            call("lstm", **kwargs)
        for w in words:
            assert w in str(info.value), (call.__name__, w, str(info.value))


def test_bad_cell_state_and_split_every(rng):
    case = Case(rng, "gru", (4, 4))
    with pytest.raises(ValueError, match="c0: cell 'gru' has no cell state"):
        frd.forward("gru", case.x, case.params, c0=np.zeros((8, H)))
    with pytest.raises(ValueError, match="dc_n: cell 'gru' has no cell state"):
        frd.gradients("gru", case.x, case.params, dc_n=np.zeros((8, H)))
    with pytest.raises(ValueError, match="split_every"):
        frd.gradients("gru", case.x, case.params, split_every=1)


def test_bad_lengths_in_a_dask_array_fail_at_compute(rng):
    """Values of a dask lengths array are only known on the worker; the error names them."""
    case = Case(rng, "gru", (4, 4))
    bad = da.from_array(np.full(8, T + 1), chunks=4)
    res = frd.forward("gru", case.x, case.params, lengths=bad)
    with pytest.raises(ValueError, match="lengths: expected values in 1..6"):
        res.h_n.compute(scheduler="threads")


# ------------------------------------------------------------- processes scheduler

def test_processes_scheduler(rng):
    case = Case(rng, "lstm", (3, 4, 4), reverse=True, dask_args=True)
    with deadline(120, "the processes scheduler"), \
            dask.config.set(scheduler="processes", num_workers=2):
        res = case.forward()
        check_forward(case, *dask.compute(res.h, res.h_n, res.c_n))
        check_gradients(case, case.gradients())


# ------------------------------------------------------------ distributed.LocalCluster

@pytest.fixture(scope="module")
def client():
    """A LocalCluster of 2 single-threaded worker processes, closed after this module."""
    distributed = pytest.importorskip("distributed", reason="the cluster tests need the "
                                      "extra fastrnn[dask] (distributed)")
    with deadline(90, "starting the LocalCluster"):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None, worker_dashboard_address=None)
        cl = distributed.Client(cluster, timeout=60)
    try:
        yield cl
    finally:
        with deadline(60, "closing the LocalCluster"):
            cl.close(timeout=30)
            cluster.close(timeout=30)


def test_cluster_forward(rng, client):
    case = Case(rng, "gru", (2, 3, 3, 2), reverse=True, dask_args=True)
    case.x = case.x.persist()
    with deadline(120, "forward on the cluster"):
        res = case.forward()
        check_forward(case, *client.compute([res.h, res.h_n], sync=True), None)


def test_cluster_gradients(rng, client):
    case = Case(rng, "lstm", (5, 1, 4, 3), batch_first=True, dask_args=True)
    with deadline(120, "gradients on the cluster"):
        check_gradients(case, case.gradients(split_every=2))


def test_cluster_weights_computed_once(rng, client):
    """On the cluster the weights key runs once per call, whatever the number of blocks."""
    from distributed import get_task_stream
    case = Case(rng, "rnn_tanh", (2,) * 6)
    case.x = case.x.persist()
    with deadline(120, "forward on the cluster"), get_task_stream(client) as ts:
        res = case.forward()
        dask.compute(res.h, res.h_n)
    keys = [str(t["key"]) for t in ts.data]
    assert sum(k.startswith("fastrnn-weights-") for k in keys) == 1
    assert sum(k.startswith("_forward_block") for k in keys) == 6


def test_cluster_worker_threads(client):
    """A block on a worker with one thread runs numba on one thread."""
    with deadline(60, "a task on the cluster"):
        got = client.compute(dask.delayed(frd.threads_per_task)(), sync=True)
    assert got == 1
