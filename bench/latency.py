"""Small calls: the fixed cost of one call, where streaming and decoding live.

Side by side in one process, float32, medians of interleaved runs (each round calls every
contender once, in an order that rotates from round to round):

* ``step``: one step at batch 1, no gradients: ``fastrnn.Stepper`` against
  ``torch.nn.GRUCell`` / ``LSTMCell`` under ``no_grad``;
* ``t1``: ``fastrnn.forward`` with T = 1, B = 1, ``training=False`` (plain params and
  prepared weights) against the NumPy reference backend and ``torch.nn.GRU`` / ``LSTM``
  called with T = 1;
* ``cell_train``: forward + backward of one cell step at B = 8: ``fastrnn.torch.GRUCell`` /
  ``LSTMCell`` against ``torch.nn``'s;
* ``tiny``: a whole tiny sequence (T=100, B=1, I=H=32), training (forward + backward) and
  inference: ``fastrnn.forward`` against ``torch.nn.GRU`` / ``LSTM``.

H is 64 and 256 for the first three (I = H). No settling call precedes a timed call
beyond the warm-up at the start: this is how a decoding loop meets them.

    python bench/latency.py                              # prints the table
    python bench/latency.py --json bench/results/cpu-dev-latency.json --markdown out.md
    python bench/latency.py --rounds 50 --quick          # a smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fastrnn                                    # noqa: E402
import fastrnn.torch as frt                       # noqa: E402

TORCH_CELLS = {"gru": (torch.nn.GRUCell, frt.GRUCell), "lstm": (torch.nn.LSTMCell, frt.LSTMCell)}
TORCH_LAYERS = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}


def interleaved(contenders: dict, rounds: int, warmup: int = 20) -> dict:
    """Median seconds of each callable, one call of each per round, order rotating."""
    names = list(contenders)
    for name in names:
        for _ in range(warmup):
            contenders[name]()
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def torch_layer(cell, I, H):
    torch.manual_seed(0)
    return TORCH_LAYERS[cell](I, H)


def params_of(module):
    """fastrnn params of a one-layer torch module (float32)."""
    return fastrnn.convert.from_torch(module).params


def case_step(cell, H, rounds):
    tc = TORCH_CELLS[cell][0](H, H)
    st = fastrnn.Stepper(cell, params_of(tc))
    x = np.random.default_rng(1).standard_normal((1, H)).astype(np.float32)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        return interleaved({"fastrnn.Stepper": lambda: st(x),
                            f"torch.nn.{type(tc).__name__}": lambda: tc(xt)}, rounds)


def case_t1(cell, H, rounds):
    layer = torch_layer(cell, H, H)
    p = params_of(layer)
    w = fastrnn.prepare(cell, p)
    x = np.random.default_rng(2).standard_normal((1, 1, H)).astype(np.float32)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        return interleaved({
            "fastrnn (params)": lambda: fastrnn.forward(cell, x, p, training=False),
            "fastrnn (prepared)": lambda: fastrnn.forward(cell, x, w, training=False),
            "numpy reference": lambda: fastrnn.forward(cell, x, p, training=False,
                                                       backend="numpy"),
            f"torch.nn.{type(layer).__name__} T=1": lambda: layer(xt)}, rounds)


def case_cell_train(cell, H, rounds, B=8):
    tcls, fcls = TORCH_CELLS[cell]
    torch.manual_seed(0)
    tc = tcls(H, H)
    fc = fcls(H, H)
    fc.load_state_dict(tc.state_dict())
    x = torch.randn(B, H, requires_grad=True)
    hx = torch.randn(B, H)
    state = (hx, hx) if cell == "lstm" else hx

    def step(module):
        def run():
            out = module(x, state)
            (out[0] if isinstance(out, tuple) else out).sum().backward()
        return run
    return interleaved({f"fastrnn.torch.{tcls.__name__}": step(fc),
                        f"torch.nn.{tcls.__name__}": step(tc)}, rounds)


def case_tiny(cell, mode, rounds, T=100, B=1, H=32):
    layer = torch_layer(cell, H, H)
    p = params_of(layer)
    x = np.random.default_rng(3).standard_normal((T, B, H)).astype(np.float32)
    dh = np.ones((T, B, H), np.float32)
    xt = torch.from_numpy(x)
    if mode == "infer":
        with torch.no_grad():
            return interleaved({"fastrnn": lambda: fastrnn.forward(cell, x, p, training=False),
                                f"torch.nn.{type(layer).__name__}": lambda: layer(xt)}, rounds)
    xg = xt.clone().requires_grad_()
    dht = torch.from_numpy(dh)
    weights = list(layer.parameters())

    def fast():
        res = fastrnn.forward(cell, x, p)
        fastrnn.backward(res.tape, dh)

    def peer():
        out = layer(xg)[0]
        torch.autograd.grad(out, [xg, *weights], dht)
    return interleaved({"fastrnn": fast, f"torch.nn.{type(layer).__name__}": peer}, rounds)


def run_all(rounds: int, quick: bool) -> list[dict]:
    rows = []
    sizes = (64,) if quick else (64, 256)
    for cell in ("gru", "lstm"):
        for H in sizes:
            rows.append({"case": "step", "cell": cell, "H": H, "B": 1,
                         "median_s": case_step(cell, H, rounds)})
            rows.append({"case": "t1", "cell": cell, "H": H, "B": 1,
                         "median_s": case_t1(cell, H, rounds)})
            rows.append({"case": "cell_train", "cell": cell, "H": H, "B": 8,
                         "median_s": case_cell_train(cell, H, rounds)})
        for mode in ("train", "infer"):
            rows.append({"case": f"tiny {mode}", "cell": cell, "H": 32, "B": 1, "T": 100,
                         "median_s": case_tiny(cell, mode, max(rounds // 4, 5))})
        for row in rows[-(2 + 3 * len(sizes)):]:
            print(_line(row), flush=True)
    return rows


def _line(row) -> str:
    times = row["median_s"]
    first = next(iter(times))
    parts = [f"{name} {t * 1e6:.1f} us" for name, t in times.items()]
    ratios = [f"{t / times[first]:.2f}x {name}" for name, t in times.items() if name != first]
    return (f"{row['case']:<11s} {row['cell']:<4s} H={row['H']:<3d}: " + ", ".join(parts)
            + " | " + first + " faster by " + ", ".join(ratios))


def markdown(rows) -> str:
    out = ["| case | cell | H | fastrnn | µs | peer | µs | ratio |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        times = row["median_s"]
        names = list(times)
        for peer in names[1:]:
            out.append(f"| {row['case']} | {row['cell']} | {row['H']} | {names[0]} | "
                       f"{times[names[0]] * 1e6:.1f} | {peer} | {times[peer] * 1e6:.1f} | "
                       f"{times[peer] / times[names[0]]:.2f}× |")
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=400, help="timed calls per contender")
    ap.add_argument("--threads", type=int, default=None, help="threads of torch and numba")
    ap.add_argument("--quick", action="store_true", help="H = 64 only")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--markdown", type=Path, help="write a Markdown table here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        import numba
        numba.set_num_threads(args.threads)
    rows = run_all(args.rounds, args.quick)
    if args.json:
        payload = {"benchmark": "latency", "rounds": args.rounds, "dtype": "float32",
                   "threads": {"torch": torch.get_num_threads()},
                   "versions": {"python": platform.python_version(),
                                "torch": torch.__version__, "numpy": np.__version__,
                                "fastrnn": fastrnn.__version__},
                   "machine": {"platform": platform.platform(),
                               "processor": platform.processor()},
                   "results": rows}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(rows))


if __name__ == "__main__":
    main()
