"""Speed of fastrnn.notebook against the course notebook's own functions.

The notebook's ``rnn_forward``, ``rnn_backward`` and ``lstm_forward`` are cut out of
``../shared/user-code/rnn_lstm_course_notebook.txt`` and run as they are (the helpers of
``tests/test_notebook.py`` do it, so the tests and this script run the same code). The
file has no LSTM backward; that baseline is the course's ``lstm_backward`` equations, the
oracle of the tests. Both sides get the same inputs in one process; the timed rounds
alternate between them (the order flips every round) so drifts of a shared machine hit
both alike. Reported per case: the median time of each side, the speedup (notebook median
over fastrnn median) and the largest relative error between the two sides' results.

Sizes: the course's test cells for these functions, which the notebook file does not
show (RNN n_x=3, m=10, T_x=4, n_a=5, n_y=2; LSTM the same with T_x=7), and a realistic one
(n_x=64, m=32, T_x=100, n_a=128, n_y=10).

    python bench/notebook_speed.py --threads 1   # bench/results/cpu-dev-notebook.json
    python bench/notebook_speed.py                # all usable cores, same file
    python bench/notebook_speed.py --rounds 1 --sample-s 0.001 --json /tmp/nb.json   # smoke run

One thread per side is the setting for a shared machine: Numba's and OpenBLAS's thread
pools wait on each other's descheduled threads when other work holds the cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import fastrnn  # noqa: E402,F401  (before NumPy: OpenBLAS thread settings)
import numpy as np  # noqa: E402

import fastrnn.notebook as fnb  # noqa: E402
from fastrnn.core.tolerances import rel_err  # noqa: E402
from fastrnn.tools.sysinfo import load_average, machine_info, usable_cores  # noqa: E402
from test_notebook import (course_lstm_backward, load_notebook,  # noqa: E402
                           notebook_lstm_steps)

SIZES = {"notebook": {"rnn": (3, 10, 4, 5, 2), "lstm": (3, 10, 7, 5, 2)},
         "realistic": {"rnn": (64, 32, 100, 128, 10), "lstm": (64, 32, 100, 128, 10)}}
DIMS = ("n_x", "m", "T_x", "n_a", "n_y")


@contextlib.contextmanager
def limit_threads(n):
    """BLAS (threadpoolctl) and Numba limited to n threads inside the block; yields what was
    set. Unlike fastrnn.tools.sysinfo.set_threads this never imports torch, whose OpenMP
    threads would share the cores with the two sides being timed."""
    import numba
    from threadpoolctl import threadpool_limits
    before = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        with threadpool_limits(limits=n):
            yield {"blas": n, "numba": numba.get_num_threads()}
    finally:
        numba.set_num_threads(before)


def make_problem(kind, size, seed):
    """x, a0, parameters, da; weights scaled by 1/sqrt(fan-in) so gates stay unsaturated
    at the realistic size (at the notebook's size that is about its randn)."""
    n_x, m, T_x, n_a, n_y = size
    rng = np.random.default_rng(seed)

    def w(rows, cols):
        return rng.standard_normal((rows, cols)) / np.sqrt(cols)

    if kind == "rnn":
        p = {"Wax": w(n_a, n_x), "Waa": w(n_a, n_a), "ba": w(n_a, 1)}
        p["Wya"] = w(n_y, n_a)
    else:
        p = {}
        for g in "fico":
            p[f"W{g}"], p[f"b{g}"] = w(n_a, n_a + n_x), w(n_a, 1)
        p["Wy"] = w(n_y, n_a)
    p["by"] = w(n_y, 1)
    return (rng.standard_normal((n_x, m, T_x)), rng.standard_normal((n_a, m)), p,
            rng.standard_normal((n_a, m, T_x)))


def runners(nb, kind, mode, x, a0, p, da):
    """(notebook, fastrnn) callables for one case; each returns the arrays it computed."""
    if kind == "rnn":
        def notebook():
            a, y, caches = nb["rnn_forward"](x, a0, p)
            return {"a": a, "y": y} if mode == "forward" else nb["rnn_backward"](da, caches)
    else:
        def notebook():
            a, y, c, caches = nb["lstm_forward"](x, a0, p)
            if mode == "forward":
                return {"a": a, "y": y, "c": c}
            return course_lstm_backward(da, caches[0])

    def ours():
        out = getattr(fnb, f"{kind}_forward")(x, a0, p)
        if mode == "forward":
            return dict(zip(("a", "y", "c"), out[:-1]))
        return getattr(fnb, f"{kind}_backward")(da, out[-1])

    return notebook, ours


def agreement(nb, kind, mode, x, a0, p, da, ours) -> float:
    """Largest relative error of fastrnn.notebook's results against the notebook's (the
    LSTM backward against the course equations on correctly chained cell caches: the
    notebook's lstm_forward keeps step 0's a_prev and c_prev overwritten)."""
    if kind == "lstm" and mode == "train":
        want = course_lstm_backward(da, notebook_lstm_steps(nb, x, a0, p))
    else:
        want = runners(nb, kind, mode, x, a0, p, da)[0]()
    got = ours()
    return max(rel_err(got[k], want[k]) for k in want)


def reps_for(fn, target_s):
    """Calls per timed sample so that one sample takes about target_s."""
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    return max(1, int(target_s / max(once, 1e-7)))


def time_interleaved(fns: dict, rounds: int, target_s: float) -> dict:
    """name -> per-call times (s) of each round, the callables alternating in order."""
    reps = {name: reps_for(fn, target_s) for name, fn in fns.items()}
    samples = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            fn, n = fns[name], reps[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - start) / n)
    return samples


def run_case(nb, kind, size_name, mode, args):
    size = SIZES[size_name][kind]
    x, a0, p, da = make_problem(kind, size, args.seed)
    notebook, ours = runners(nb, kind, mode, x, a0, p, da)
    err = agreement(nb, kind, mode, x, a0, p, da, ours)
    rounds = args.rounds if size_name == "realistic" else args.rounds * 2
    samples = time_interleaved({"notebook": notebook, "fastrnn.notebook": ours}, rounds,
                               args.sample_s)
    med = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    return {"cell": kind, "size": size_name, "dims": dict(zip(DIMS, size)),
            "mode": "forward" if mode == "forward" else "forward+backward",
            "median_ms": med,
            "rounds_ms": {k: [s * 1e3 for s in v] for k, v in samples.items()},
            "speedup": med["notebook"] / med["fastrnn.notebook"], "max_rel_err": err}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9,
                        help="timed rounds per side at the realistic size (twice as many at "
                             "the notebook's)")
    parser.add_argument("--sample-s", type=float, default=0.02,
                        help="seconds per timed sample (small cases repeat calls to fill it)")
    parser.add_argument("--threads", type=int, default=usable_cores(),
                        help="threads of BLAS and Numba (default: all usable cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results/cpu-dev-notebook.json")
    args = parser.parse_args(argv)

    nb = load_notebook()
    results = []
    load_at_start = load_average()
    start = time.perf_counter()
    with limit_threads(args.threads) as applied:
        for size_name in SIZES:
            for kind in ("rnn", "lstm"):
                for mode in ("forward", "train"):
                    rec = run_case(nb, kind, size_name, mode, args)
                    results.append(rec)
                    med = rec["median_ms"]
                    print(f"{kind:4s} {size_name:9s} {rec['mode']:16s} notebook "
                          f"{med['notebook']:9.3f} ms  fastrnn {med['fastrnn.notebook']:9.3f} ms"
                          f"  {rec['speedup']:6.2f}x  (max rel err {rec['max_rel_err']:.1e})",
                          flush=True)
    payload = {"benchmark": "notebook_speed",
               "command": "python bench/notebook_speed.py " + " ".join(argv or sys.argv[1:]),
               "config": {k: (str(v) if isinstance(v, Path) else v)
                          for k, v in vars(args).items()},
               "sizes": {name: {kind: dict(zip(DIMS, s)) for kind, s in by_kind.items()}
                         for name, by_kind in SIZES.items()},
               "baseline": "the notebook's rnn_forward, rnn_backward, lstm_forward (cut out of "
                           "shared/user-code/rnn_lstm_course_notebook.txt); LSTM backward: the "
                           "course's lstm_backward equations (tests/test_notebook.py)",
               "threads_applied": applied, "load_avg_at_start": load_at_start,
               "wall_s": time.perf_counter() - start,
               "machine": machine_info(args.threads),        # after timing: it may import torch
               "results": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
