"""Batch inference with fastrnn.dask on 1 and 2 single-threaded workers, against one process.

N sequences (default 16384, T=100, I=32, H=128, float32, lstm) are scored: the forward
pass in inference mode, keeping each sequence's final state h_n. The baseline is
:func:`fastrnn.forward` on the whole (T, N, I) array in this process with numba on one
thread (and, for context, on every core). The dask runs use a
``distributed.LocalCluster`` of single-threaded worker processes (the scheduler runs in
this process, as it does by default); x is generated on the workers and persisted before
the clock starts, as data already loaded on a cluster would be, and ``res.h_n`` is
computed (the (T, N, H) outputs are made and dropped on the workers). Both clusters stay
up for the whole run; after one untimed warm-up each, every round runs every setting once,
in an order rotated from round to round so the drifting load of a shared machine hits all
alike; medians over ``--rounds`` are reported. Before timing, the dask result is checked
against the one-process result on the same x.

Reported: throughput (sequences/s), dask's overhead at 1 worker over the 1-thread
baseline (goal <= 15%), and the 2-worker speedup over 1 worker (goal >= 1.7x).

    python bench/dask_scaling.py                                   # the issue's setting
    python bench/dask_scaling.py --rounds 1 --n 2048               # a smoke run
    python bench/dask_scaling.py --json bench/results/cpu-dev-dask.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fastrnn                                            # noqa: E402  (before NumPy)
import numba                                              # noqa: E402
import numpy as np                                        # noqa: E402
import dask                                               # noqa: E402
import dask.array as da                                   # noqa: E402
import distributed                                        # noqa: E402

import fastrnn.dask as frd                                # noqa: E402
from fastrnn.core.tolerances import SHARDED, rel_err      # noqa: E402
from fastrnn.tools.problems import random_params         # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=16384, help="sequences")
    p.add_argument("--T", type=int, default=100)
    p.add_argument("--I", type=int, default=32)
    p.add_argument("--H", type=int, default=128)
    p.add_argument("--cell", default="lstm")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--chunk", type=int, default=1024, help="sequences per dask block")
    p.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the results here")
    return p.parse_args(argv)


def lazy_inputs(a):
    """x as a dask array generated block by block from a seed (the same numbers wherever
    it is computed), and the weights."""
    rng = da.random.default_rng(a.seed)
    x = rng.standard_normal((a.T, a.n, a.I), dtype=a.dtype, chunks=(a.T, a.chunk, a.I))
    params = random_params(np.random.default_rng(a.seed), a.cell, a.I, a.H, a.dtype)
    return x, params


def in_process(a, x_np, params, threads: int):
    """fastrnn.forward on the whole array with numba on ``threads`` threads; returns h_n."""
    def run():
        before = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            return fastrnn.forward(a.cell, x_np, params, training=False).h_n
        finally:
            numba.set_num_threads(before)
    return run


def on_cluster(stack, a, workers: int, x, params, want_h_n):
    """fastrnn.dask.forward on a LocalCluster of ``workers`` single-threaded processes
    (closed with ``stack``), checked against the one-process h_n; returns the runner."""
    cluster = stack.enter_context(distributed.LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None))
    client = stack.enter_context(distributed.Client(cluster, set_as_default=False))
    xp = client.persist(x)
    with client.as_current():
        distributed.wait(xp)

    def run():
        return client.compute(frd.forward(a.cell, xp, params).h_n, sync=True)
    err = rel_err(run(), want_h_n)
    tol = SHARDED[a.dtype]["forward"]
    if not err <= tol:
        raise SystemExit(f"dask on {workers} workers differs from one process: "
                         f"{err:.2e} > {tol:.0e}")
    return run


def timed_rounds(runners: dict, rounds: int) -> dict:
    """One untimed warm-up each, then ``rounds`` rounds in which every runner runs once,
    in an order rotated from round to round (drifting load on a shared machine hits all)."""
    for fn in runners.values():
        fn()
    names, times = list(runners), {n: [] for n in runners}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            runners[n]()
            times[n].append(time.perf_counter() - t0)
    return times


def summarize(a, times: dict) -> dict:
    """Throughputs, the 1-worker overhead and the 2-worker speedup, from medians."""
    med = {n: statistics.median(t) for n, t in times.items()}
    out = {n: {"times_s": t, "median_s": med[n], "seq_per_s": a.n / med[n]}
           for n, t in times.items()}
    base = med["one_process_1_thread"]
    if "dask_1_worker" in med:
        out["overhead_1_worker"] = med["dask_1_worker"] / base - 1
    if "dask_1_worker" in med and "dask_2_workers" in med:
        out["speedup_2_workers"] = med["dask_1_worker"] / med["dask_2_workers"]
        out["speedup_2_workers_vs_one_process"] = base / med["dask_2_workers"]
    return out


def report(s: dict) -> None:
    for k, v in s.items():
        if isinstance(v, dict):
            print(f"{k:<24s} {v['median_s'] * 1e3:9.1f} ms  {v['seq_per_s']:10.0f} seq/s  "
                  f"(rounds: {', '.join(f'{t * 1e3:.0f}' for t in v['times_s'])} ms)")
    if "overhead_1_worker" in s:
        print(f"dask overhead at 1 worker: {s['overhead_1_worker'] * 100:+.1f}% (goal <= 15%)")
    if "speedup_2_workers" in s:
        print(f"2-worker speedup: {s['speedup_2_workers']:.2f}x over 1 worker (goal >= 1.7x), "
              f"{s['speedup_2_workers_vs_one_process']:.2f}x over one process on 1 thread")


def main(argv=None):
    a = parse_args(argv)
    load_before = os.getloadavg()[0]
    # two schedulers in one process: the second one's HTTP server moves to another port
    warnings.filterwarnings("ignore", message="Port .* is already in use")
    started = time.time()
    x, params = lazy_inputs(a)
    x_np = x.compute(scheduler="threads")
    cores = numba.config.NUMBA_NUM_THREADS
    runners = {"one_process_1_thread": in_process(a, x_np, params, 1),
               f"one_process_{cores}_threads": in_process(a, x_np, params, cores)}
    want = runners["one_process_1_thread"]()
    with contextlib.ExitStack() as stack:
        for w in map(int, a.workers.split(",")):
            name = f"dask_{w}_worker" + ("s" if w > 1 else "")
            runners[name] = on_cluster(stack, a, w, x, params, want)
        summary = summarize(a, timed_rounds(runners, a.rounds))
    report(summary)
    if a.json:
        doc = {"benchmark": "dask_scaling", "config": vars(a),
               "command": [sys.executable] + sys.argv, "duration_s": time.time() - started,
               "cores": len(os.sched_getaffinity(0)), "load_avg_before": load_before,
               "load_avg_after": os.getloadavg()[0],
               "versions": {"python": platform.python_version(), "fastrnn": fastrnn.__version__,
                            "numpy": np.__version__, "numba": numba.__version__,
                            "dask": dask.__version__, "distributed": distributed.__version__},
               "machine": {"platform": platform.platform(), "processor": platform.processor()},
               "results": summary}
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
