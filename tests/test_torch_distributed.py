"""fastrnn.torch under DistributedDataParallel and torch.compile, as torch.nn modules are.

DDP: one training step of a 2-layer bidirectional LSTM with a linear head, in 2 processes
on the gloo backend, each on half of the batch, equals the step on the whole batch in one
process (float64). torch.compile: the same model gives eager mode's outputs and
gradients. The compile backend is ``aot_eager``: dynamo captures the graphs and
AOTAutograd traces their backward, which is what touches fastrnn's autograd.Function;
inductor's code generation (gcc) adds ~35 s here and nothing fastrnn-specific.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import fastrnn.torch as frt
from fastrnn.core.tolerances import SAME_ARITHMETIC, SHARDED
from assertions import assert_close

B, T, I, H, OUT = 8, 7, 5, 6, 3
WORLD = 2
DDP_SECONDS = 120


class Model(nn.Module):
    """A 2-layer bidirectional fastrnn LSTM and a linear head on every step."""

    def __init__(self):
        super().__init__()
        self.rnn = frt.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=True,
                            dtype=torch.float64)
        self.head = nn.Linear(2 * H, OUT, dtype=torch.float64)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out)


def make_model() -> Model:
    torch.manual_seed(0)
    return Model()


def make_batch():
    """x (B, T, I) and targets (B, T, OUT), the same in every process."""
    g = torch.Generator().manual_seed(1)
    return (torch.randn(B, T, I, generator=g, dtype=torch.float64),
            torch.randn(B, T, OUT, generator=g, dtype=torch.float64))


def train_step(model, x, y) -> tuple[dict, dict]:
    """One SGD step on the mean squared error (a mean over the batch: DDP averages ranks,
    so two half-batch means average to the whole batch's). Returns (grads, new params)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    named = list(_named(model))
    grads = {n: p.grad.detach().clone() for n, p in named}
    opt.step()
    return grads, {n: p.detach().clone() for n, p in named}


def _named(model):
    """Parameters by their names in the bare model (DDP prefixes 'module.')."""
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    return inner.named_parameters()


def _rank(rank: int, init_file: str, out_dir: str) -> None:
    """One DDP process: half of the batch, one step, its gradients saved to out_dir."""
    import numba
    torch.set_num_threads(1)                 # 2 processes on 2 cores: one thread each
    numba.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        model = DistributedDataParallel(make_model())
        x, y = make_batch()
        part = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
        grads, params = train_step(model, x[part], y[part])
        torch.save({"grads": grads, "params": params}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _spawn_bounded(fn, args, seconds: int) -> None:
    """torch.multiprocessing.spawn of WORLD processes that fails, killing them, after
    ``seconds`` instead of hanging."""
    ctx = mp.spawn(fn, args=args, nprocs=WORLD, join=False)
    end = time.monotonic() + seconds
    while not ctx.join(timeout=max(0.1, end - time.monotonic())):
        if time.monotonic() >= end:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the {WORLD} DDP processes did not finish in {seconds} s")


def test_ddp_step_equals_one_process_step(tmp_path):
    _spawn_bounded(_rank, (str(tmp_path / "init"), str(tmp_path)), DDP_SECONDS)
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in range(WORLD)]
    want_grads, want_params = train_step(make_model(), *make_batch())
    assert sorted(ranks[0]["grads"]) == sorted(want_grads)
    for r, got in enumerate(ranks):
        for name, want in want_grads.items():
            assert_close(got["grads"][name], want, "float64", "grad", f"rank {r} d{name}",
                         table=SHARDED)
            assert_close(got["params"][name], want_params[name], "float64", "grad",
                         f"rank {r} {name} after the step", table=SHARDED)


# ---------------------------------------------------------------------- torch.compile

def _counting_aot_eager(graphs: list):
    """The aot_eager backend, counting the graphs dynamo hands it."""
    from torch._dynamo.backends.registry import lookup_backend
    aot_eager = lookup_backend("aot_eager")

    def backend(gm, example_inputs):
        graphs.append(gm)
        return aot_eager(gm, example_inputs)
    return backend


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")   # dynamo's guards
def test_compile_matches_eager():
    """Eager first (which also loads the numba kernels), then the compiled model."""
    x, y = make_batch()
    model = make_model()
    want_out = model(x)
    nn.functional.mse_loss(want_out, y).backward()
    want = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad()
    graphs = []
    torch._dynamo.reset()
    try:
        compiled = torch.compile(model, backend=_counting_aot_eager(graphs))
        out = compiled(x)
        nn.functional.mse_loss(out, y).backward()
    finally:
        torch._dynamo.reset()
    assert graphs, "dynamo compiled no graph: the test compared eager with eager"
    torch.testing.assert_close(out, want_out, **SAME_ARITHMETIC)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[n], **SAME_ARITHMETIC, msg=f"d{n}")


COLD_COMPILE = textwrap.dedent("""
    import torch, fastrnn.torch as frt
    m = frt.LSTM(3, 4, dtype=torch.float64)
    out, _ = torch.compile(m, backend="aot_eager")(torch.randn(5, 2, 3, dtype=torch.float64))
    out.sum().backward()
""")


def test_compile_before_any_eager_call():
    """In a fresh process, where the numba kernels are not loaded yet: dynamo must not
    trace into them (fastrnn.torch keeps its work out of the graph)."""
    proc = subprocess.run([sys.executable, "-c", COLD_COMPILE], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
