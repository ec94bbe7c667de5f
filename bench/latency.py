"""Small calls and swaps: what a program pays when fastrnn replaces what it used.

Side by side in one process, float32, medians of interleaved runs (each round calls every
contender once, in an order that rotates from round to round), each row with its goal
(issue 20: a swap to fastrnn never makes the user's program slower):

* ``cell_train``: forward + backward of one cell step, ``fastrnn.torch.RNNCell`` /
  ``GRUCell`` / ``LSTMCell`` against ``torch.nn``'s, B 1, 8, 64 and H 64, 256, 512 (I = H);
* ``cell_infer``: the same cells under ``torch.no_grad`` at B = 1;
* ``t1``: ``fastrnn.forward`` with T = 1, B = 1, ``training=False`` on plain params, against
  the NumPy reference backend and ``torch.nn.RNN`` / ``GRU`` / ``LSTM`` called with T = 1
  (and prepared weights, for comparison);
* ``step``: one step at batch 1, no gradients: ``fastrnn.Stepper`` against
  ``torch.nn.GRUCell`` / ``LSTMCell`` under ``no_grad``;
* ``tiny``: a whole tiny sequence (T=100, B=1, I=H=32), training (forward + backward) and
  inference: ``fastrnn.forward`` against ``torch.nn.GRU`` / ``LSTM``;
* ``in program``: one LSTM training step (T=100, B=16, I=64, H=128) alone, right after a
  NumPy product (NumPy imported first, as users do) and right after a PyTorch training
  step: the time of the fastrnn step only; the goal bounds the slowdown.

No settling call precedes a timed call beyond the warm-up at the start: this is how a
decoding loop meets them.

    python bench/latency.py                              # prints the table
    python bench/latency.py --json bench/results/cpu-avx2-latency.json --markdown out.md
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

TORCH_CELLS = {"rnn_tanh": (torch.nn.RNNCell, frt.RNNCell),
               "gru": (torch.nn.GRUCell, frt.GRUCell), "lstm": (torch.nn.LSTMCell, frt.LSTMCell)}
TORCH_LAYERS = {"rnn_tanh": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}


def interleaved(contenders: dict, rounds: int, warmup: int = 20) -> dict:
    """Median seconds of each callable, one call of each per round, order rotating. A
    callable may return its own time (seconds of the part that counts), else the whole
    call is timed."""
    names = list(contenders)
    for name in names:
        for _ in range(warmup):
            contenders[name]()
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            own = contenders[name]()
            took = time.perf_counter() - t0
            times[name].append(own if isinstance(own, float) else took)
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
            "numpy reference": lambda: fastrnn.forward(cell, x, p, training=False,
                                                       backend="numpy"),
            f"torch.nn.{type(layer).__name__} T=1": lambda: layer(xt),
            "fastrnn (prepared)": lambda: fastrnn.forward(cell, x, w, training=False)},
            rounds)


def _cells(cell, H):
    tcls, fcls = TORCH_CELLS[cell]
    torch.manual_seed(0)
    tc = tcls(H, H)
    fc = fcls(H, H)
    fc.load_state_dict(tc.state_dict())
    return tcls, tc, fc


def case_cell_train(cell, H, rounds, B=8):
    tcls, tc, fc = _cells(cell, H)
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


def case_cell_infer(cell, H, rounds, B=1):
    tcls, tc, fc = _cells(cell, H)
    x = torch.randn(B, H)
    hx = torch.randn(B, H)
    state = (hx, hx) if cell == "lstm" else hx
    with torch.no_grad():
        return interleaved({f"fastrnn.torch.{tcls.__name__}": lambda: fc(x, state),
                            f"torch.nn.{tcls.__name__}": lambda: tc(x, state)}, rounds)


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


def case_in_program(rounds, T=100, B=16, I=64, H=128):
    """The same fastrnn LSTM training step alone and right after other work (its own time)."""
    rng = np.random.default_rng(4)
    p = fastrnn.get_cell("lstm").init_params(I, H, "float32")
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dh = np.ones((T, B, H), np.float32)
    a = rng.standard_normal((256, 256)).astype(np.float32)
    layer = torch.nn.LSTM(I, H)
    xt = torch.from_numpy(x)

    def fast() -> float:
        t0 = time.perf_counter()
        res = fastrnn.forward("lstm", x, p)
        fastrnn.backward(res.tape, dh)
        return time.perf_counter() - t0

    def after_numpy() -> float:
        a @ a
        return fast()

    def after_torch() -> float:
        layer(xt)[0].sum().backward()
        return fast()
    return interleaved({"fastrnn step alone": fast, "right after a NumPy product": after_numpy,
                        "right after a torch.nn.LSTM step": after_torch}, rounds)


# What each row should reach: peer time / fastrnn time (>=), or for "in program" the
# slowdown against the step alone (<=).
def goal(row, peer) -> tuple[str, float]:
    case, cell, H, B = row["case"], row["cell"], row["H"], row.get("B")
    if case == "in program":
        return "<=", 1.15
    if case == "cell_train" and B == 8 and H in (64, 256) and cell in ("gru", "lstm"):
        return ">=", 1.5
    if case == "step" and H == 256:
        return ">=", 3.0
    if case.startswith("tiny") and cell == "lstm":
        return ">=", 2.5
    if case == "t1" and "prepared" in peer:
        return "", 0.0                           # shown for comparison, no goal
    return ">=", 1.0


def run_all(rounds: int, quick: bool) -> list[dict]:
    rows = []
    sizes = (64,) if quick else (64, 256, 512)
    batches = (8,) if quick else (1, 8, 64)

    def add(row):
        rows.append(row)
        print(_line(row), flush=True)

    for cell in ("rnn_tanh", "gru", "lstm"):
        for H in sizes:
            for B in batches:
                n = rounds if B * H <= 8 * 256 else max(rounds // 8, 20)
                add({"case": "cell_train", "cell": cell, "H": H, "B": B,
                     "median_s": case_cell_train(cell, H, n, B)})
            add({"case": "t1", "cell": cell, "H": H, "B": 1,
                 "median_s": case_t1(cell, H, rounds)})
        add({"case": "cell_infer", "cell": cell, "H": 256, "B": 1,
             "median_s": case_cell_infer(cell, 256, rounds)})
    for cell in ("gru", "lstm"):
        for H in (64, 256):
            add({"case": "step", "cell": cell, "H": H, "B": 1,
                 "median_s": case_step(cell, H, rounds)})
        for mode in ("train", "infer"):
            add({"case": f"tiny {mode}", "cell": cell, "H": 32, "B": 1, "T": 100,
                 "median_s": case_tiny(cell, mode, max(rounds // 4, 5))})
    add({"case": "in program", "cell": "lstm", "H": 128, "B": 16, "T": 100,
         "median_s": case_in_program(max(rounds // 8, 10))})
    return rows


def _ratios(row):
    """(peer, value, sense, goal, met) per comparison of the row."""
    times = row["median_s"]
    names = list(times)
    out = []
    for peer in names[1:]:
        value = times[peer] / times[names[0]]        # speedup, or slowdown for "in program"
        sense, target = goal(row, peer)
        if row["case"] == "in program":
            met = value <= target
        else:
            met = None if not sense else value >= target
        out.append((peer, value, sense, target, met))
    return out


def _line(row) -> str:
    times = row["median_s"]
    first = next(iter(times))
    parts = [f"{name} {t * 1e6:.1f} us" for name, t in times.items()]
    ratios = [f"{value:.2f}x {peer}" + (f" (goal {sense} {target:g}x: "
                                        f"{'met' if met else 'MISSED'})" if sense else "")
              for peer, value, sense, target, met in _ratios(row)]
    batch = f" B={row['B']:<2d}" if "B" in row else ""
    return (f"{row['case']:<11s} {row['cell']:<8s} H={row['H']:<3d}{batch}: " + ", ".join(parts)
            + " | " + ", ".join(ratios))


def markdown(rows) -> str:
    out = ["| case | cell | B | H | fastrnn | µs | compared with | µs | ratio | goal |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        times = row["median_s"]
        names = list(times)
        for peer, value, sense, target, met in _ratios(row):
            mark = "" if not sense else f"{sense} {target:g}× {'✓' if met else '✗'}"
            kind = "slowdown" if row["case"] == "in program" else "speedup"
            out.append(f"| {row['case']} | {row['cell']} | {row.get('B', '')} | {row['H']} | "
                       f"{names[0]} | {times[names[0]] * 1e6:.1f} | {peer} | "
                       f"{times[peer] * 1e6:.1f} | {value:.2f}× {kind} | {mark} |")
    return "\n".join(out) + "\n"
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=400, help="timed calls per contender")
    ap.add_argument("--threads", type=int, default=None, help="threads of torch and numba")
    ap.add_argument("--quick", action="store_true", help="H = 64 and B = 8 only")
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
