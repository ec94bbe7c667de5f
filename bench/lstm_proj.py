"""The projected LSTM at a speech-recognition size: fastrnn.torch.LSTM(proj_size) against
torch.nn.LSTM(proj_size), side by side in one process.

T=200, B=16, I=80, H=512, P=128, float32, one layer: training (forward + backward of a
random upstream gradient of the outputs) and inference (``no_grad``), medians of
interleaved calls (the order alternating from round to round).

    python bench/lstm_proj.py                      # prints the table
    python bench/lstm_proj.py --json bench/results/cpu-avx2-lstm-proj.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fastrnn                                    # noqa: E402
import fastrnn.torch as frt                       # noqa: E402

SIZE = {"T": 200, "B": 16, "I": 80, "H": 512, "P": 128}


def interleaved(contenders: dict, rounds: int) -> dict:
    names = list(contenders)
    for name in names:
        contenders[name]()
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    T, B, I, H, P = (SIZE[k] for k in "TBIHP")
    torch.manual_seed(0)
    ref = torch.nn.LSTM(I, H, proj_size=P)
    ours = frt.LSTM(I, H, proj_size=P)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I)
    dout = torch.randn(T, B, P)
    results = {}
    for mode in ("train", "infer"):
        def call(module):
            def run():
                if mode == "infer":
                    with torch.no_grad():
                        module(x)
                else:
                    xg = x.clone().requires_grad_()
                    out, _ = module(xg)
                    out.backward(dout)
            return run
        results[mode] = interleaved({"fastrnn.torch": call(ours), "torch.nn": call(ref)},
                                    args.rounds)
        t = results[mode]
        print(f"{mode:5s} fastrnn.torch {t['fastrnn.torch'] * 1e3:8.2f} ms  torch.nn "
              f"{t['torch.nn'] * 1e3:8.2f} ms  speedup {t['torch.nn'] / t['fastrnn.torch']:.2f}x",
              flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "lstm_proj", "size": SIZE, "dtype": "float32", "rounds": args.rounds,
            "threads": torch.get_num_threads(),
            "versions": {"torch": torch.__version__, "fastrnn": fastrnn.__version__,
                         "python": platform.python_version()},
            "median_s": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
