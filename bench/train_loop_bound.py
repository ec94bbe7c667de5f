"""How fast the recurrent layer of ``bench/train_loop.py`` would have to be for a speedup.

The char-LM step of ``train_loop.py`` is recurrent layer + everything else (embedding,
output layer, loss, Adam), and only the first part changes when ``torch.nn.LSTM`` becomes
``fastrnn.torch.LSTM``. This script measures, side by side in one process:

* the whole torch.nn training step, and torch.nn's LSTM forward + backward alone on the
  same shapes (their difference is the part that fastrnn does not touch);
* fastrnn.torch's LSTM forward + backward alone;
* a reference rate for the machine: fastrnn's GEMM micro-kernel on one recurrent step's
  product (B/threads x H times H x G*H per thread, operands in cache), on every thread at
  once: a bare in-cache GEMM, without the layer's pointwise work, tape traffic or step
  dependencies. It is a measured lower bound on the machine's peak, not the peak itself
  (the VM does not say its clock). The 1600^3 products of NumPy's BLAS / fastrnn's packed GEMM and of torch.mm are
  shown beside it.

From these it prints the time the recurrent layer must take for the end-to-end target
speedup, and the GFLOP/s that time means for the layer's FLOPs (forward 2*T*B*G*H*(I+H),
backward twice that), as a share of that reference rate, beside the shares torch.nn and
fastrnn reach now. A required share near 100% means the target asks the whole layer to
run as fast as a bare in-cache GEMM of its step's shape.

    python bench/train_loop_bound.py                        # LSTM, train_loop's defaults
    python bench/train_loop_bound.py --cell gru --hidden 256
    python bench/train_loop_bound.py --json bench/results/cpu-dev-train-loop-bound.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numba
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fastrnn.backends.numba.gemm import pack_panels, packed_gemm  # noqa: E402
from fastrnn.tools.sysinfo import gemm_peak              # noqa: E402
from train_loop import (CELLS, CharLM, _limit_threads, markov_batches,  # noqa: E402
                        train_steps, write_json)

GATES = {"lstm": 4, "gru": 3}


def _median_ms(fn, rounds, reps):
    """Median over rounds of the mean time of reps calls, in ms (one untimed call first)."""
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        times.append((time.perf_counter() - t0) / reps)
    return statistics.median(times) * 1e3


def _torch_mm_peak(n=1600):
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)
    best = min(_timed(lambda: torch.mm(a, b, out=out)) for _ in range(5))
    return 2.0 * n ** 3 / best / 1e9


@numba.njit(parallel=True, nogil=True)
def _repeat_step_products(A, Up, C, reps):
    for ci in numba.prange(A.shape[0]):
        for _ in range(reps):
            packed_gemm(A[ci], 0, A.shape[1], Up[ci], C[ci], 0)


def _kernel_rate(rows, K, N, threads, seconds=0.5):
    """GFLOP/s of the micro-kernel on a (rows, K) x (K, N) product per thread, operands
    in cache, all threads at once: the best of 3 runs of about ``seconds`` each."""
    rng = np.random.default_rng(0)
    rows = max(4, -(-rows // 4) * 4)
    A = rng.random((threads, rows, K)).astype(np.float32)
    Up = np.stack([pack_panels(rng.random((K, N)).astype(np.float32)) for _ in range(threads)])
    C = np.zeros((threads, rows, Up.shape[1] * Up.shape[3]), np.float32)
    _repeat_step_products(A, Up, C, 1)
    flop = 2.0 * rows * K * N * threads
    t = _timed(lambda: _repeat_step_products(A, Up, C, 100))
    reps = max(100, int(seconds / t * 100))
    best = min(_timed(lambda: _repeat_step_products(A, Up, C, reps)) for _ in range(3))
    return flop * reps / best / 1e9


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(args):
    torch_cls, fast_cls = CELLS[args.cell]
    dtype = torch.float32
    torch.manual_seed(args.seed)
    model = CharLM(torch_cls, args.vocab, args.embed, args.hidden, 1, dtype)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = markov_batches(args.reps + 1, args.batch, args.seq_len, args.vocab, args.seed)
    layer_t = torch_cls(args.embed, args.hidden, batch_first=True)
    layer_f = fast_cls(args.embed, args.hidden, batch_first=True)
    layer_f.load_state_dict(layer_t.state_dict())
    x = torch.randn(args.batch, args.seq_len, args.embed, requires_grad=True)
    dy = torch.randn(args.batch, args.seq_len, args.hidden)

    def layer_step(layer):
        out, _ = layer(x)
        out.backward(dy)

    rows = {"step_torch": [], "layer_torch": [], "layer_fastrnn": []}
    for _ in range(args.rounds):                     # interleaved: drifts hit all alike
        rows["step_torch"].append(_median_ms(
            lambda: train_steps(model, opt, batches[:1], args.vocab), 1, args.reps))
        rows["layer_torch"].append(_median_ms(lambda: layer_step(layer_t), 1, args.reps))
        rows["layer_fastrnn"].append(_median_ms(lambda: layer_step(layer_f), 1, args.reps))
    med = {k: statistics.median(v) for k, v in rows.items()}

    G, T, B, I, H = GATES[args.cell], args.seq_len, args.batch, args.embed, args.hidden
    flops = 3 * 2.0 * T * B * G * H * (I + H)        # forward once, backward twice
    rest = med["step_torch"] - med["layer_torch"]
    needed = med["step_torch"] / args.target - rest
    threads = numba.get_num_threads()
    step_rate = _kernel_rate(-(-args.batch // threads), H, G * H, threads)
    peaks = {"numpy/fastrnn packed GEMM 1600^3": gemm_peak("float32", "cpu", n=1600),
             "torch.mm 1600^3": _torch_mm_peak(1600)}
    return {
        "ms": med, "rounds_ms": rows, "rest_of_step_ms": rest,
        "layer_gflop": flops / 1e9,
        "layer_rate_gflops": {"torch": flops / med["layer_torch"] / 1e6,
                              "fastrnn": flops / med["layer_fastrnn"] / 1e6},
        "target_speedup": args.target,
        "layer_ms_needed": needed,
        "rate_needed_gflops": (flops / needed / 1e6) if needed > 0 else float("inf"),
        "kernel_rate_gflops": step_rate,
        "gemm_1600_gflops": peaks,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--cell", choices=sorted(GATES), default="lstm")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=64)
    ap.add_argument("--embed", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--target", type=float, default=1.5, help="end-to-end speedup asked for")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=10, help="calls per timed round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    threads = _limit_threads(args.threads)
    r = measure(args)
    ms, rate = r["ms"], r["layer_rate_gflops"]
    peak = r["kernel_rate_gflops"]
    print(f"{args.cell} char-LM step, B={args.batch} T={args.seq_len} E={args.embed} "
          f"H={args.hidden} float32, threads {threads}; medians of {args.rounds} interleaved "
          f"rounds of {args.reps} calls")
    print(f"  torch.nn training step            {ms['step_torch']:8.3f} ms")
    print(f"  torch.nn {args.cell} forward+backward     {ms['layer_torch']:8.3f} ms "
          f"({rate['torch']:.0f} GFLOP/s on {r['layer_gflop']:.3f} GFLOP)")
    print(f"  rest of the step (not the layer)  {r['rest_of_step_ms']:8.3f} ms")
    print(f"  fastrnn {args.cell} forward+backward      {ms['layer_fastrnn']:8.3f} ms "
          f"({rate['fastrnn']:.0f} GFLOP/s)")
    print(f"  for {args.target}x end to end the layer must take {r['layer_ms_needed']:.3f} ms: "
          f"{r['rate_needed_gflops']:.0f} GFLOP/s")
    print(f"  bare in-cache GEMM of the step's shape (micro-kernel, all threads) {peak:.0f} "
          f"GFLOP/s; 1600^3 products: " + ", ".join(
              f"{k} {v:.0f}" for k, v in r["gemm_1600_gflops"].items()))
    print(f"  -> the whole layer would have to run at {r['rate_needed_gflops'] / peak:.0%} of "
          f"that rate, pointwise work and tape traffic included "
          f"(torch.nn now: {rate['torch'] / peak:.0%}, fastrnn: {rate['fastrnn'] / peak:.0%})")
    if args.json:
        write_json(args.json, "train_loop_bound", args, threads, r)
    return r


if __name__ == "__main__":
    main()
