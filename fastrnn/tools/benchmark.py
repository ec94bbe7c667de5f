"""The measurement engine of ``fastrnn bench``: problems, runners, timing protocol, records.

A *problem* is one (cell, size, mode, dtype): fixed random inputs, weights and upstream
gradient. A *runner* is something that solves it: a fastrnn backend (``numpy``, ``numba``,
``cupy``, or any registered one) or a PyTorch peer (``torch`` on the CPU, ``torch-cuda``
with cuDNN), all on the same numbers — the peers get fastrnn's weights mapped onto
``nn.RNN/LSTM/GRU``.

Modes: ``train`` is forward with a tape plus backward with a random ``dh`` (PyTorch:
forward plus ``autograd.grad`` of ``(out * dh).sum()`` with respect to the input and all
weights); ``infer`` is ``training=False`` (PyTorch: under ``no_grad``).

Protocol, per problem: every runner is called once to warm up (the first call's extra
time over the steady median is reported as ``compile_s``: Numba JIT, CUDA module loads,
PyTorch's lazy init); its output is compared with the NumPy reference's. Then rounds: in
each round every runner gets one untimed settling call and then ``block`` timed calls back to
back, the order of runners rotated from round to round so drifting load hits all alike, GPU
work synchronised before the clock is read, the garbage collector paused. The settling call
and the blocks matter on a small machine: OpenBLAS (numpy, fastrnn) and OpenMP (PyTorch)
keep their worker threads spinning for a while after each call, and a call made while the
other library's threads still spin is far slower than the same call in a block of its own
(``bench/README.md`` has the figures).
Rounds stop after ``repeat`` or, once ``min_rounds`` have run, when the problem has used
``budget_s`` seconds. Medians, quartiles and extremes are kept; speedups are ratios of
medians, pair by pair.
"""

from __future__ import annotations

import gc
import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from .. import api
from .. import backends as _backends
from ..core.cells import CellSpec, get_cell
from ..core.tolerances import TOLERANCES, TORCH_TOLERANCES, rel_err, to_numpy64
from .problems import random_problem

__all__ = ["SIZES", "Size", "parse_size", "MODES", "DTYPES", "PEERS", "BASELINES",
           "DEFAULT_CELLS", "DEFAULT_SIZES", "BenchConfig", "Problem", "make_problem",
           "NotApplicable", "Job", "prepare", "runner_device", "runner_status", "torch_module",
           "Record", "measure_problem", "measure_peaks", "problems"]

# (T, B, I, H)
SIZES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (100, 1, 32, 32),
    "small": (100, 16, 64, 128),
    "medium": (100, 64, 256, 256),
    "large": (50, 64, 512, 512),
}
MODES = ("train", "infer")
DTYPES = ("float32", "float64")
PEERS = ("torch", "torch-cuda")
BASELINES = ("numpy", "torch", "torch-cuda")   # the runners speedups are computed against
DEFAULT_CELLS = ("lstm", "gru", "rnn_tanh")
DEFAULT_SIZES = ("tiny", "small", "medium", "large")


@dataclass(frozen=True)
class Size:
    """A problem size: a name (``"small"`` or ``"200x8x32x64"``) and (T, B, I, H)."""

    name: str
    T: int
    B: int
    I: int
    H: int

    @property
    def dims(self) -> tuple[int, int, int, int]:
        return (self.T, self.B, self.I, self.H)


def parse_size(text: str) -> Size:
    """A size name from :data:`SIZES` or an explicit ``TxBxIxH`` such as ``200x8x32x64``."""
    key = text.strip().lower()
    if key in SIZES:
        return Size(key, *SIZES[key])
    parts = key.split("x")
    if len(parts) == 4 and all(p.isdigit() for p in parts):
        dims = tuple(int(p) for p in parts)
        if min(dims) >= 1:
            return Size("x".join(map(str, dims)), *dims)
    raise ValueError(f"unknown size {text!r}; expected one of {', '.join(SIZES)} or "
                     f"T x B x I x H written like 200x8x32x64 (all at least 1)")


@dataclass
class BenchConfig:
    """What one ``fastrnn bench`` run measures and how."""

    cells: list[str] = field(default_factory=lambda: list(DEFAULT_CELLS))
    sizes: list[Size] = field(default_factory=lambda: [parse_size(s) for s in DEFAULT_SIZES])
    backends: list[str] = field(default_factory=list)
    modes: list[str] = field(default_factory=lambda: list(MODES))
    dtypes: list[str] = field(default_factory=lambda: ["float32"])
    repeat: int = 7
    min_rounds: int = 3
    block: int = 2
    budget_s: float = 2.0
    threads: int = 1
    seed: int = 0
    in_program: bool = False

    @property
    def n_problems(self) -> int:
        return len(self.cells) * len(self.modes) * len(self.dtypes) * len(self.sizes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sizes"] = [{"name": s.name, "T": s.T, "B": s.B, "I": s.I, "H": s.H}
                      for s in self.sizes]
        return d


# ----------------------------------------------------------------------------- problems

@dataclass
class Problem:
    """Inputs of one measurement, as NumPy arrays: x (T, B, I), params, dh (T, B, H).

    Initial states are zero (None) for every runner.
    """

    cell: CellSpec
    size: Size
    mode: str
    dtype: str
    x: np.ndarray
    params: dict
    dh: np.ndarray

    @property
    def key(self) -> tuple:
        return (self.cell.name, self.size.name, self.mode, self.dtype)

    @property
    def flops(self) -> int:
        """Matmul FLOPs of one call: forward, plus backward in train mode."""
        f = self.cell.forward_flops(*self.size.dims)
        return f + self.cell.backward_flops(*self.size.dims) if self.mode == "train" else f


def make_problem(cell, size: Size, mode: str, dtype: str, seed: int = 0) -> Problem:
    """Random inputs for one problem, reproducible from ``seed`` and the problem itself."""
    spec = get_cell(cell)
    T, B, I, H = size.dims
    tag = zlib.crc32(f"{spec.name}/{size.name}/{dtype}".encode())
    p = random_problem(np.random.default_rng([seed, tag]), spec, T, B, I, H, dtype)
    return Problem(spec, size, mode, dtype, p.x, p.params, p.dh)


def problems(config: BenchConfig):
    """The problems of a run, made one at a time: by cell, mode, dtype, then size."""
    for cell in config.cells:
        for mode in config.modes:
            for dtype in config.dtypes:
                for size in config.sizes:
                    yield make_problem(cell, size, mode, dtype, config.seed)


# ----------------------------------------------------------------------------- runners

class NotApplicable(Exception):
    """A runner has no twin of this problem (e.g. PyTorch and the reset-before GRU)."""


@dataclass
class Job:
    """One runner ready to solve one problem.

    call(): one forward (+ backward) returning its main output (h in infer mode, dx in
    train mode) on the runner's device; sync(): wait for the device; device: "cpu"/"gpu".
    """

    call: Callable[[], Any]
    sync: Callable[[], None]
    device: str


def runner_status() -> dict[str, str | None]:
    """Every runner name -> None if it can run here, else the reason it cannot."""
    from .sysinfo import torch_status
    reasons = _backends.unavailable_reasons()
    out: dict[str, str | None] = {name: reasons.get(name) for name in _backends.backend_names()}
    out["torch"], out["torch-cuda"] = torch_status()
    return out


def runner_device(name: str) -> str:
    """"gpu" for torch-cuda and for backends computing on device arrays, else "cpu"."""
    if name in PEERS:
        return "gpu" if name == "torch-cuda" else "cpu"
    return "cpu" if _backends.get_backend(name).xp is np else "gpu"


def prepare(name: str, problem: Problem) -> Job:
    """A :class:`Job` for runner ``name``; NotApplicable if it has no twin of the problem."""
    if name in PEERS:
        return _prepare_torch(problem, "cuda" if name == "torch-cuda" else "cpu")
    return _prepare_fastrnn(name, problem)


def _prepare_fastrnn(name: str, p: Problem) -> Job:
    be = _backends.get_backend(name)
    xp = be.xp
    if p.dtype not in be.dtypes:
        raise NotApplicable(f"backend {name!r} does not compute in {p.dtype}")
    x, dh = xp.asarray(p.x), xp.asarray(p.dh)
    params = {k: xp.asarray(v) for k, v in p.params.items()}
    if xp is np:
        sync = lambda: None                                     # noqa: E731
    else:       # cupy, or any device backend whose module follows CuPy's stream API
        sync = xp.cuda.get_current_stream().synchronize
    if p.mode == "train":
        def call():
            res = api.forward(p.cell, x, params, backend=be, training=True)
            return api.backward(res.tape, dh=dh).dx
    else:
        def call():
            return api.forward(p.cell, x, params, backend=be, training=False).h
    return Job(call, sync, runner_device(name))


def torch_module(cell: CellSpec, params: dict, device: str = "cpu"):
    """A PyTorch ``nn.RNN/LSTM/GRU`` computing the same function as fastrnn's ``cell``.

    The weights go in through :func:`fastrnn.convert.to_torch` (weight_ih = W.T,
    weight_hh = U.T, bias_ih = b, bias_hh = 0 but its n block = bn for ``gru``).
    ``gru_reset_before`` has no twin: NotApplicable.
    """
    import torch
    from ..interop.convert import to_torch
    if cell.name == "gru_reset_before":
        raise NotApplicable("PyTorch has no reset-before GRU (nn.GRU is the reset-after form)")
    I, GH = params["W"].shape
    H = GH // cell.num_gates
    kw = dict(dtype=getattr(torch, str(params["W"].dtype)))
    if cell.name == "lstm":
        m = torch.nn.LSTM(I, H, **kw)
    elif cell.name == "gru":
        m = torch.nn.GRU(I, H, **kw)
    elif cell.nonlinearity is not None:
        m = torch.nn.RNN(I, H, nonlinearity=cell.nonlinearity, **kw)
    else:
        raise NotApplicable(f"no PyTorch twin of cell {cell.name!r}")
    return to_torch(cell.name, params, m).to(device)


def _prepare_torch(p: Problem, device: str) -> Job:
    import torch
    m = torch_module(p.cell, p.params, device)
    x = torch.from_numpy(p.x).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    job_device = "gpu" if device == "cuda" else "cpu"
    if p.mode == "train":
        m.train()
        x.requires_grad_(True)
        dh = torch.from_numpy(p.dh).to(device)
        inputs = [x, *m.parameters()]

        def call():
            out, _ = m(x)
            return torch.autograd.grad(out, inputs, grad_outputs=dh)[0]
    else:
        m.eval()

        def call():
            with torch.no_grad():
                return m(x)[0]
    return Job(call, sync, job_device)


# ----------------------------------------------------------------------------- records

@dataclass
class Record:
    """One runner on one problem. Times in seconds; see bench/README.md for the schema.

    status: "ok", "n/a" (the runner has no twin of the problem) or "error" (it raised,
    or its output disagreed with the NumPy reference: ``agrees`` False).
    """

    cell: str
    size: str
    T: int
    B: int
    I: int
    H: int
    mode: str
    dtype: str
    backend: str
    device: str | None = None
    status: str = "ok"
    note: str = ""
    times_s: list = field(default_factory=list)
    median_s: float | None = None
    q1_s: float | None = None
    q3_s: float | None = None
    min_s: float | None = None
    max_s: float | None = None
    first_call_s: float | None = None
    compile_s: float | None = None
    flops: int = 0
    in_program_times_s: list = field(default_factory=list)
    in_program_median_s: float | None = None
    in_program_ratio: float | None = None
    gflops: float | None = None
    peak_gflops: float | None = None
    pct_peak: float | None = None
    speedup: dict = field(default_factory=dict)
    rel_err: float | None = None
    tolerance: float | None = None
    agrees: bool | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _new_record(p: Problem, name: str) -> Record:
    return Record(p.cell.name, p.size.name, *p.size.dims, p.mode, p.dtype, name, flops=p.flops)


def _finish(rec: Record, times: list[float], first: float, peaks: dict) -> None:
    t = np.asarray(times)
    rec.times_s = [float(v) for v in t]
    rec.median_s = float(np.median(t))
    rec.q1_s, rec.q3_s = (float(v) for v in np.percentile(t, [25, 75]))
    rec.min_s, rec.max_s = float(t.min()), float(t.max())
    rec.first_call_s = first
    rec.compile_s = max(0.0, first - rec.median_s)
    rec.gflops = rec.flops / rec.median_s / 1e9
    rec.peak_gflops = peaks.get((rec.device, rec.dtype))
    if rec.peak_gflops:
        rec.pct_peak = 100.0 * rec.gflops / rec.peak_gflops


def _finish_in_program(rec: Record, times: list[float]) -> None:
    if times and rec.median_s:
        rec.in_program_times_s = [float(v) for v in times]
        rec.in_program_median_s = float(np.median(times))
        rec.in_program_ratio = rec.in_program_median_s / rec.median_s


class UserWork:
    """What a program typically runs between two fastrnn calls: a NumPy matrix product
    (700 x 700, through NumPy's BLAS) and a small PyTorch training step (a 2-layer MLP,
    cross-entropy, SGD) where PyTorch is installed. Both leave their libraries' worker
    threads spinning for a while, which is what an in-program measurement is about."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.a = rng.standard_normal((700, 700))
        self.torch_step = None
        try:
            import torch
        except ImportError:
            return
        gen = torch.Generator().manual_seed(seed)
        mlp = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(),
                                  torch.nn.Linear(256, 10))
        opt = torch.optim.SGD(mlp.parameters(), lr=0.01)
        xb, yb = torch.randn(64, 256, generator=gen), torch.randint(0, 10, (64,), generator=gen)

        def step():
            opt.zero_grad()
            torch.nn.functional.cross_entropy(mlp(xb), yb).backward()
            opt.step()
        self.torch_step = step

    def __call__(self, k: int) -> None:
        """Round k: the NumPy product on even rounds, the PyTorch step on odd ones (the
        NumPy product where PyTorch is missing)."""
        if k % 2 and self.torch_step is not None:
            self.torch_step()
        else:
            self.a @ self.a


def _add_speedups(records: list[Record]) -> None:
    medians = {r.backend: r.median_s for r in records if r.status == "ok"}
    for r in records:
        if r.status != "ok":
            continue
        r.speedup = {base: medians[base] / r.median_s for base in BASELINES
                     if base in medians and base != r.backend}


def _check_against_reference(rec: Record, out, ref, mode: str) -> None:
    table = TORCH_TOLERANCES if rec.backend in PEERS else TOLERANCES
    rec.tolerance = table[rec.dtype]["grad" if mode == "train" else "forward"]
    rec.rel_err = rel_err(out, ref)
    rec.agrees = bool(rec.rel_err <= rec.tolerance)
    if not rec.agrees:
        rec.status = "error"
        what = "dx" if mode == "train" else "h"
        rec.note = (f"{what} disagrees with the numpy reference: relative error "
                    f"{rec.rel_err:.2e} > {rec.tolerance:.0e}")


def measure_problem(p: Problem, names: list[str], config: BenchConfig, peaks: dict,
                    clock=time.perf_counter) -> list[Record]:
    """Run the protocol (module docstring) for one problem; one :class:`Record` per runner."""
    records = {name: _new_record(p, name) for name in names}
    jobs: dict[str, Job] = {}
    outputs: dict[str, np.ndarray] = {}
    first: dict[str, float] = {}
    for name in names:
        rec = records[name]
        try:
            job = prepare(name, p)
            rec.device = job.device
            t0 = clock()
            out = job.call()
            job.sync()
            first[name] = clock() - t0
            outputs[name] = to_numpy64(out)
            jobs[name] = job
        except NotApplicable as exc:
            rec.status, rec.note = "n/a", str(exc)
        except Exception as exc:       # a runner that fails must not stop the others
            rec.status, rec.note = "error", f"{type(exc).__name__}: {exc}"
    if "numpy" in outputs:
        for name in list(jobs):
            if name != "numpy":
                _check_against_reference(records[name], outputs[name], outputs["numpy"], p.mode)
                if records[name].status == "error":
                    del jobs[name]
    outputs.clear()
    times, in_program = _timed_rounds(jobs, records, config, clock)
    for name, job in jobs.items():
        if records[name].status == "ok":
            _finish(records[name], times[name], first[name], peaks)
            _finish_in_program(records[name], in_program[name])
    result = [records[n] for n in names]
    _add_speedups(result)
    return result


def _timed_rounds(jobs: dict[str, Job], records: dict[str, Record], config: BenchConfig,
                  clock) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(stand-alone times, in-program times) per runner; the second only with
    ``config.in_program``: after each runner's block, one more call right after
    :class:`UserWork`, without a settling call."""
    order = list(jobs)
    times: dict[str, list[float]] = {name: [] for name in order}
    in_program: dict[str, list[float]] = {name: [] for name in order}
    user_work = UserWork(config.seed) if config.in_program else None
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = clock()
        for r in range(config.repeat):
            k = r % len(order) if order else 0
            for name in order[k:] + order[:k]:
                if records[name].status != "ok":
                    continue
                job = jobs[name]
                try:
                    job.call()                      # settle this runner's thread pool
                    job.sync()
                    for _ in range(config.block):
                        t0 = clock()
                        job.call()
                        job.sync()
                        times[name].append(clock() - t0)
                    if user_work is not None:
                        user_work(r)
                        t0 = clock()
                        job.call()
                        job.sync()
                        in_program[name].append(clock() - t0)
                except Exception as exc:
                    records[name].status = "error"
                    records[name].note = f"{type(exc).__name__}: {exc}"
            done = r + 1
            if (done >= config.min_rounds and config.budget_s > 0
                    and clock() - start >= config.budget_s):
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return times, in_program


def measure_peaks(dtypes, devices, n_cpu: int = 1600) -> dict[tuple[str, str], float]:
    """GEMM peak in GFLOP/s per (device, dtype): NumPy's BLAS for "cpu", cuBLAS for "gpu".

    The CPU size is not a power of two: rows 2048 floats apart map to the same L1 sets,
    which costs the packed GEMM much of its rate.
    """
    from .sysinfo import gemm_peak
    peaks = {}
    for device in devices:
        for dtype in dtypes:
            n = n_cpu if device == "cpu" else 8192
            if device == "cpu" and dtype == "float64":
                n = (n_cpu * 3) // 4
            peaks[(device, dtype)] = gemm_peak(dtype, device, n=n)
    return peaks
