"""End-to-end training speed: fastrnn.torch modules against torch.nn modules.

A small character-level language model (embedding -> recurrent layers -> linear ->
cross-entropy, Adam) is trained on synthetic text drawn from a random Markov chain, once
with ``torch.nn.GRU/LSTM`` and once with ``fastrnn.torch.GRU/LSTM``. Both start from the
same weights (``load_state_dict``), see the same batches in the same order and run on the
CPU with the same thread count; the timed rounds alternate between the two so drifts of a
shared machine hit both alike. Reported: training steps per second (median over rounds),
the speedup, and the losses, which must track each other since both compute the same
function.

    python bench/train_loop.py                       # GRU and LSTM, default sizes
    python bench/train_loop.py --steps 3 --rounds 1  # a smoke run
    python bench/train_loop.py --json bench/results/train_loop.json
    python bench/train_loop.py --device cuda --batch 64 --seq-len 100 --embed 256 \
        --hidden 512 --layers 2                      # on a GPU: cuDNN against the cupy backend

On CUDA both run with torch's default precision settings (cuDNN's RNNs may use TF32, and
fastrnn.torch follows the same switch); every step ends in ``loss.item()``, which waits
for the device, so the host clock times whole steps.
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
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fastrnn                                    # noqa: E402
import fastrnn.torch as frt                       # noqa: E402

CELLS = {"gru": (nn.GRU, frt.GRU), "lstm": (nn.LSTM, frt.LSTM)}


class CharLM(nn.Module):
    """Embedding -> recurrent stack -> linear over the vocabulary, batch-first."""

    def __init__(self, rnn_cls, vocab, embed, hidden, layers, dtype, **rnn_kwargs):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed, dtype=dtype)
        self.rnn = rnn_cls(embed, hidden, num_layers=layers, batch_first=True, dtype=dtype,
                           **rnn_kwargs)
        self.head = nn.Linear(hidden, vocab, dtype=dtype)

    def forward(self, tokens):
        out, _ = self.rnn(self.embed(tokens))
        return self.head(out)


def markov_batches(n, batch, seq_len, vocab, seed):
    """n batches of (inputs, targets), (batch, seq_len) int64, from a sparse random chain."""
    rng = np.random.default_rng(seed)
    trans = rng.dirichlet(np.full(vocab, 0.1), size=vocab)          # peaked next-symbol rows
    cum = trans.cumsum(axis=1)
    seqs = np.empty((n * batch, seq_len + 1), dtype=np.int64)
    seqs[:, 0] = rng.integers(0, vocab, size=n * batch)
    for t in range(1, seq_len + 1):
        u = rng.random(n * batch)[:, None]
        seqs[:, t] = np.minimum((u > cum[seqs[:, t - 1]]).sum(axis=1), vocab - 1)
    seqs = torch.from_numpy(seqs).view(n, batch, seq_len + 1)
    return [(s[:, :-1].contiguous(), s[:, 1:].contiguous()) for s in seqs]


def train_steps(model, opt, batches, vocab):
    """One optimiser step per batch; returns the losses."""
    losses = []
    loss_fn = nn.CrossEntropyLoss()
    for tokens, targets in batches:
        opt.zero_grad(set_to_none=True)
        logits = model(tokens)
        loss = loss_fn(logits.reshape(-1, vocab), targets.reshape(-1))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def bench_cell(cell, args, dtype):
    torch_cls, fast_cls = CELLS[cell]
    torch.manual_seed(args.seed)
    ref = CharLM(torch_cls, args.vocab, args.embed, args.hidden, args.layers, dtype)
    fast = CharLM(fast_cls, args.vocab, args.embed, args.hidden, args.layers, dtype,
                  backend=args.backend)
    fast.load_state_dict(ref.state_dict())
    ref, fast = ref.to(args.device), fast.to(args.device)
    models = {"torch.nn": ref, "fastrnn": fast}
    opts = {k: torch.optim.Adam(m.parameters(), lr=args.lr) for k, m in models.items()}
    n = args.warmup + args.rounds * args.steps
    batches = [(a.to(args.device), b.to(args.device))
               for a, b in markov_batches(n, args.batch, args.seq_len, args.vocab, args.seed + 1)]
    losses = {k: train_steps(m, opts[k], batches[:args.warmup], args.vocab)
              for k, m in models.items()}                          # warm-up, JIT, caches
    rates = {k: [] for k in models}
    for r in range(args.rounds):
        chunk = batches[args.warmup + r * args.steps: args.warmup + (r + 1) * args.steps]
        for k, m in models.items():
            t0 = time.perf_counter()
            losses[k] += train_steps(m, opts[k], chunk, args.vocab)
            rates[k].append(len(chunk) / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "cell": cell,
        "steps_per_s": med,
        "rounds_steps_per_s": rates,
        "speedup": med["fastrnn"] / med["torch.nn"],
        "first_loss": {k: v[0] for k, v in losses.items()},
        "last_loss": {k: v[-1] for k, v in losses.items()},
        "max_loss_diff": max(abs(a - b) for a, b in zip(losses["torch.nn"], losses["fastrnn"])),
    }


def _limit_threads(n):
    """Pin torch, the BLAS under NumPy and numba to n threads; returns what was set."""
    torch.set_num_threads(n)
    info = {"torch": torch.get_num_threads()}
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=n)
        info["blas"] = n
    except ImportError:
        info["blas"] = "unlimited (threadpoolctl missing)"
    try:
        import numba
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
        info["numba"] = numba.get_num_threads()
    except ImportError:
        pass
    return info


def write_json(path, benchmark, args, threads, results, **extra):
    """Write one run as JSON: the benchmark's name, its arguments, thread counts, versions,
    the machine, any ``extra`` fields and the results."""
    payload = {
        "benchmark": benchmark,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        **extra,
        "threads": threads,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__, "fastrnn": fastrnn.__version__},
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "results": results,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--cells", nargs="+", choices=sorted(CELLS), default=["gru", "lstm"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=64)
    ap.add_argument("--embed", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (JIT, caches)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds, alternating models")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="auto", help="fastrnn backend of the fastrnn model")
    ap.add_argument("--device", default="cpu", help="torch device of both models (cpu, cuda)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    for name in ("batch", "seq_len", "vocab", "embed", "hidden", "layers", "steps", "rounds",
                 "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        ap.error("--warmup must be at least 0")

    threads = _limit_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if args.device != "cpu":
        backend = "cupy" if args.backend == "auto" else args.backend
    else:
        backend = (fastrnn.backends.auto_backend_name(np.empty(0)) if args.backend == "auto"
                   else args.backend)
    results = [bench_cell(cell, args, dtype) for cell in args.cells]

    print(f"char-LM training, B={args.batch} T={args.seq_len} V={args.vocab} E={args.embed} "
          f"H={args.hidden} layers={args.layers} {args.dtype} on {args.device}, {args.rounds}x"
          f"{args.steps} timed steps after {args.warmup} warm-up, threads {threads}, fastrnn "
          f"backend {backend!r}")
    head = (f"{'cell':<6}{'torch.nn step/s':>17}{'fastrnn step/s':>16}{'speedup':>9}"
            f"{'loss torch':>12}{'loss fastrnn':>14}{'max |dloss|':>13}")
    print(head)
    print("-" * len(head))
    for r in results:
        s, last = r["steps_per_s"], r["last_loss"]
        print(f"{r['cell']:<6}{s['torch.nn']:>17.2f}{s['fastrnn']:>16.2f}{r['speedup']:>8.2f}x"
              f"{last['torch.nn']:>12.4f}{last['fastrnn']:>14.4f}{r['max_loss_diff']:>13.2e}")
    if args.json:
        write_json(args.json, "train_loop", args, threads, results, fastrnn_backend=backend)
    return results


if __name__ == "__main__":
    main()
