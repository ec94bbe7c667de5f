"""GPU benchmark: fastrnn's cupy backend against torch.nn.LSTM / GRU / RNN (cuDNN), same GPU.

Run from the repository root on a machine with a CUDA GPU, CuPy and PyTorch with cuDNN
(bench/gpu_run.sh calls it after the test suite)::

    python bench/gpu_bench.py [--precision strict|tf32|bf16] [--quick] [--budget-s 240]

What it measures, T = 100, I = H, cells lstm, gru, rnn_tanh, B in {1, 16, 64, 256},
H in {128, 256, 512, 1024}:

* training: forward with a tape + backward (all gradients, dx included) per iteration;
  inference: forward with ``training=False`` / ``torch.no_grad()``;
* fastrnn as users get it (``config.cupy_persistent="auto"``: the planner picks the
  persistent kernels or the per-step path) against cuDNN; with ``--paths`` also each path
  forced, to check the planner's choice;
* implementations interleaved, one iteration of each per repetition (order rotating), the
  device synchronised before each clock read, medians over the repetitions;
* achieved TFLOP/s from :mod:`fastrnn.core.cells` FLOP counts (matmul FLOPs, the usual RNN
  convention), against the card's measured GEMM peak in that precision;
* per size, that both compute the same function (relative difference of the outputs);
* the host's share: the time to enqueue one call (no synchronisation) at T = 100 and
  T = 1000, and one step (T = 1, B = 1, H = 128, inference) against cuDNN's.

Precision: ``strict`` float32 on both sides (cuDNN and cuBLAS TF32 off), ``tf32`` (TF32
allowed on both: torch's default for cuDNN RNNs, ``allow_tf32=True`` for fastrnn), ``bf16``
(bfloat16 storage on both; fastrnn accumulates in float32). Goals: issue 19 (see
:func:`goal`). Writes ``gpu-<device-slug>[-tf32|-bf16].json`` and ``.md`` into ``--out``
(default bench/results) and into ``$OUT`` when that is set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

T_STEPS = 100
CELLS = ("lstm", "gru", "rnn_tanh")
BATCHES = (1, 16, 64, 256)
HIDDENS = (128, 256, 512, 1024)
MODES = ("train", "infer")
PRECISIONS = ("strict", "tf32", "bf16")
TORCH_MODULES = {"lstm": ("LSTM", {}), "gru": ("GRU", {}),
                 "rnn_tanh": ("RNN", {"nonlinearity": "tanh"})}


# --------------------------------------------------------------------------- goals

def middle(B: int, H: int) -> bool:
    """The sizes where research code trains: 16 <= B <= 64 and 256 <= H <= 512, and B = 16
    at H = 1024."""
    return (16 <= B <= 64 and 256 <= H <= 512) or (B == 16 and H == 1024)


def goal(precision: str, B: int, H: int) -> float:
    """The speedup over cuDNN in the same precision that issue 19 asks for at this size."""
    if precision == "strict":
        return 2.0 if middle(B, H) else 1.5 if (B, H) == (64, 1024) else 1.0
    if precision == "tf32":
        return 2.0 if middle(B, H) or (B, H) == (64, 1024) else 1.0
    return 1.5 if middle(B, H) else 1.0


def slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown-gpu"


# ------------------------------------------------------------------------ rendering

def _ms(v):
    return "—" if v is None else f"{v:.3f}"


def render_markdown(meta: dict, rows: list[dict]) -> str:
    peak = meta["gemm_peak_tflops"]
    lines = [
        f"# fastrnn cupy vs PyTorch cuDNN — {meta['device']} ({meta['precision_text']})",
        "",
        f"T = {meta['T']}, I = H, medians of interleaved repetitions. fastrnn as users get "
        f"it: the planner's path (`path`: persistent kernels or per-step); `per-step` and "
        f"`persistent` are each path forced where measured. speedup = cuDNN time / fastrnn "
        f"time (> 1: fastrnn faster). TFLOP/s from matmul FLOPs (fastrnn.core.cells); "
        f"measured GEMM peak in this precision: {peak:.1f} TFLOP/s "
        f"({meta['gemm_peak_source']}).",
        "",
        f"Versions: {meta['versions']}",
        "",
        "| cell | mode | B | H | path | fastrnn ms | per-step ms | persistent ms | cuDNN ms "
        "| speedup | goal | fastrnn TFLOP/s | cuDNN TFLOP/s | rel. diff |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['cell']} | {r['mode']} | {r['B']} | {r['H']} | error: "
                         f"{r['error']} |||||||||| ")
            continue
        verdict = f"≥{r['goal']:g}x {'met' if r['speedup'] >= r['goal'] else 'MISSED'}"
        lines.append(
            f"| {r['cell']} | {r['mode']} | {r['B']} | {r['H']} | {r['path']} | "
            f"{r['fastrnn_ms']:.3f} | {_ms(r.get('step_ms'))} | {_ms(r.get('persistent_ms'))} | "
            f"{r['torch_ms']:.3f} | {r['speedup']:.2f} | {verdict} | "
            f"{r['fastrnn_tflops']:.2f} | {r['torch_tflops']:.2f} | {r['rel_diff']:.1e} |")
    ok = [r for r in rows if not r.get("error")]
    met = sum(r["speedup"] >= r["goal"] for r in ok)
    mid = [r for r in ok if middle(r["B"], r["H"])]
    lines += ["", f"Goals met: {met} of {len(ok)} sizes measured; at the middle sizes "
                  f"(16 <= B <= 64, 256 <= H <= 512, and B = 16, H = 1024): "
                  f"{sum(r['speedup'] >= r['goal'] for r in mid)} of {len(mid)}."]
    if meta.get("not_run"):
        lines.append(f"Not run (time budget): {meta['not_run']} sizes.")
    host = meta.get("host")
    if host:
        lines.append(f"Host's share (lstm B={host['B']} H={host['H']}, enqueue without "
                     f"synchronising): T=100 {host['enqueue_ms'][0]:.3f} ms, T=1000 "
                     f"{host['enqueue_ms'][1]:.3f} ms ({host['ratio']:.2f}x; goal ≤ 1.5x); "
                     f"wall T=100 {host['wall_ms'][0]:.3f} ms, T=1000 {host['wall_ms'][1]:.3f} ms.")
    s = meta.get("single_step")
    if s:
        lines.append(f"Single step (T = 1, B = 1, H = 128, lstm, inference): fastrnn "
                     f"{s['fastrnn_us']:.0f} µs, cuDNN {s['torch_us']:.0f} µs.")
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------- timing

class Bench:
    def __init__(self, precision: str):
        import cupy
        import numpy as np
        import torch
        import fastrnn
        self.cp, self.np, self.torch, self.fastrnn = cupy, np, torch, fastrnn
        self.precision = precision
        tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        fastrnn.config.allow_tf32 = tf32
        if precision == "bf16":
            import ml_dtypes
            self.np_dtype, self.torch_dtype = np.dtype(ml_dtypes.bfloat16), torch.bfloat16
        else:
            self.np_dtype, self.torch_dtype = np.dtype(np.float32), torch.float32

    def sync(self):
        self.cp.cuda.runtime.deviceSynchronize()

    def time_once(self, fn) -> float:
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0

    def gemm_peak(self, n: int = 8192, reps: int = 10) -> tuple[float, str]:
        """TFLOP/s of an n^3 matmul on random data in this precision (torch)."""
        torch = self.torch
        a = torch.randn(n, n, device="cuda", dtype=self.torch_dtype)
        b = torch.randn(n, n, device="cuda", dtype=self.torch_dtype)
        for _ in range(3):
            torch.matmul(a, b)
        t = statistics.median(self.time_once(lambda: torch.matmul(a, b)) for _ in range(reps))
        return 2 * n ** 3 / t / 1e12, f"torch.matmul {n}x{n}x{n} {self.torch_dtype}"

    def problem(self, cell: str, B: int, H: int, T: int = T_STEPS):
        """fastrnn's (x, params, dh) on the device and torch's (module, x, dh), same values."""
        cp, np, torch, fastrnn = self.cp, self.np, self.torch, self.fastrnn
        from fastrnn import convert
        spec = fastrnn.get_cell(cell)
        rng = np.random.default_rng(B * 7919 + H)
        params_np = spec.init_params(H, H, "float32", seed=B + H)
        x_np = rng.standard_normal((T, B, H)).astype(np.float32)
        dh_np = rng.standard_normal((T, B, H)).astype(np.float32)
        low = self.np_dtype
        params = {k: cp.asarray(v.astype(low)) for k, v in params_np.items()}
        x, dh = cp.asarray(x_np.astype(low)), cp.asarray(dh_np.astype(low))
        name, kwargs = TORCH_MODULES[cell]
        module = getattr(torch.nn, name)(H, H, **kwargs).to("cuda", torch.float32)
        convert.to_torch(cell, params_np, module)
        module = module.to(self.torch_dtype)
        module.flatten_parameters()          # cuDNN's weights in one buffer after the cast
        xt = torch.tensor(x_np, device="cuda").to(self.torch_dtype)
        dht = torch.tensor(dh_np, device="cuda").to(self.torch_dtype)
        return spec, (x, params, dh), (module, xt, dht)

    def case(self, cell: str, B: int, H: int, mode: str, target_s: float, max_reps: int,
             paths: bool):
        """Median seconds of fastrnn (and its forced paths) and torch for one size."""
        cp, torch, fastrnn = self.cp, self.torch, self.fastrnn
        import numpy as np
        from fastrnn.backends.cupy import persistent as cb
        spec, (x, params, dh), (module, xt, dht) = self.problem(cell, B, H)
        training = mode == "train"
        xt.requires_grad_(training)

        def ours(path: str):
            def run():
                fastrnn.config.cupy_persistent = path
                res = fastrnn.forward(cell, x, params, backend="cupy", training=training)
                if training:
                    fastrnn.backward(res.tape, dh=dh)
                return res
            return run

        def theirs():
            if training:
                xt.grad = None
                for p in module.parameters():
                    p.grad = None
                out, _ = module(xt)
                out.backward(dht)
            else:
                with torch.no_grad():
                    out, _ = module(xt)
            return out

        dirs = (False, True) if training else (False,)
        planned = [cb.plan_for_call(spec, B, H, self.np_dtype, backward=bw) for bw in dirs]
        fits = all(cb.plan(spec, B, H, self.np_dtype, backward=bw) is not None for bw in dirs)
        path = ("persistent" if all(p is not None for p in planned) else
                "per-step" if all(p is None for p in planned) else "mixed")
        impls = {"fastrnn": ours("auto"), "torch": theirs}
        if paths:
            impls["step"] = ours("0")
            if fits:
                impls["persistent"] = ours("1")
        ref = theirs().detach().float()
        rel = {}
        for name in [n for n in impls if n != "torch"]:
            h = impls[name]().h.astype(cp.float32)
            rel[name] = float(cp.linalg.norm(h - cp.asarray(ref)) / cp.linalg.norm(h))
        for _ in range(2):
            for fn in impls.values():
                fn()
        times = {name: [] for name in impls}
        spent, rep = 0.0, 0
        while rep < max_reps and (rep < 5 or spent < target_s * len(impls)):
            order = list(impls)
            for name in order[rep % len(order):] + order[:rep % len(order)]:   # rotate
                dt = self.time_once(impls[name])
                times[name].append(dt)
                spent += dt
            rep += 1
        fastrnn.config.cupy_persistent = "auto"
        flops = spec.forward_flops(T_STEPS, B, H, H)
        if training:
            flops += spec.backward_flops(T_STEPS, B, H, H)
        med = {name: statistics.median(ts) for name, ts in times.items()}
        mo, mt = med["fastrnn"], med["torch"]
        return {"cell": cell, "mode": mode, "B": B, "H": H, "T": T_STEPS, "reps": rep,
                "path": path, "fastrnn_ms": 1e3 * mo, "torch_ms": 1e3 * mt,
                "step_ms": 1e3 * med["step"] if "step" in med else None,
                "persistent_ms": 1e3 * med["persistent"] if "persistent" in med else None,
                "speedup": mt / mo, "fastrnn_tflops": flops / mo / 1e12,
                "torch_tflops": flops / mt / 1e12, "flops": flops,
                "goal": goal(self.precision, B, H), "rel_diff": max(rel.values()),
                "rel_diff_paths": rel,
                "times_ms": {n: [1e3 * t for t in ts] for n, ts in times.items()}}

    def host_share(self, B: int = 64, H: int = 256) -> dict:
        """Host time to enqueue one lstm training forward + backward at T = 100 and 1000,
        without waiting for the device, and the wall time of each."""
        fastrnn = self.fastrnn
        enqueue, wall = [], []
        for T in (100, 1000):
            _, (x, params, dh), _ = self.problem("lstm", B, H, T)

            def call():
                res = fastrnn.forward("lstm", x, params, backend="cupy")
                fastrnn.backward(res.tape, dh=dh)

            for _ in range(2):
                call()
            marks, walls = [], []
            for _ in range(7):
                self.sync()
                t0 = time.perf_counter()
                call()
                t1 = time.perf_counter()
                self.sync()
                marks.append(t1 - t0)
                walls.append(time.perf_counter() - t0)
            enqueue.append(1e3 * statistics.median(marks))
            wall.append(1e3 * statistics.median(walls))
        return {"B": B, "H": H, "enqueue_ms": enqueue, "wall_ms": wall,
                "ratio": enqueue[1] / enqueue[0]}

    def single_step(self) -> dict:
        """Fixed cost of one call: lstm, T = 1, B = 1, H = 128, inference."""
        fastrnn, torch = self.fastrnn, self.torch
        _, (x, params, _), (module, xt, _) = self.problem("lstm", 1, 128, 1)

        def ours():
            fastrnn.forward("lstm", x, params, backend="cupy", training=False)

        def theirs():
            with torch.no_grad():
                module(xt)

        out = {}
        for key, fn in (("fastrnn_us", ours), ("torch_us", theirs)):
            for _ in range(20):
                fn()
            out[key] = 1e6 * statistics.median(self.time_once(fn) for _ in range(200))
        return out


def versions() -> str:
    parts = [f"python {platform.python_version()}"]
    for mod in ("numpy", "cupy", "torch"):
        try:
            parts.append(f"{mod} {__import__(mod).__version__}")
        except Exception as exc:  # noqa: BLE001
            parts.append(f"{mod} missing ({type(exc).__name__})")
    try:
        import cupy
        import torch
        parts.append(f"CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}")
        parts.append(f"driver {cupy.cuda.runtime.driverGetVersion()}")
        parts.append(f"cuDNN {torch.backends.cudnn.version()}")
    except Exception:  # noqa: BLE001
        pass
    return ", ".join(parts)


def device_name() -> str:
    import cupy
    name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench/results", help="folder for the result files")
    ap.add_argument("--precision", choices=PRECISIONS, default="strict")
    ap.add_argument("--tf32", action="store_true", help="the same as --precision tf32")
    ap.add_argument("--budget-s", type=float, default=300.0,
                    help="stop starting new sizes after this many seconds")
    ap.add_argument("--target-s", type=float, default=0.15,
                    help="timed seconds per size and implementation (at least 5 repetitions)")
    ap.add_argument("--max-reps", type=int, default=25)
    ap.add_argument("--quick", action="store_true",
                    help="only the middle sizes (where the goals are above 1x) and B = 1")
    ap.add_argument("--paths", action="store_true",
                    help="also time the per-step and the persistent path, each forced")
    ap.add_argument("--cells", default=",".join(CELLS))
    ap.add_argument("--print-slug", action="store_true", help="print the device slug and exit")
    args = ap.parse_args(argv)
    precision = "tf32" if args.tf32 else args.precision
    try:
        import cupy  # noqa: F401
        import torch
    except ImportError as exc:
        print(f"gpu_bench: needs CuPy and PyTorch ({exc})", file=sys.stderr)
        return 2
    name = device_name()
    if args.print_slug:
        print(slug(name))
        return 0
    if not torch.cuda.is_available() or not torch.backends.cudnn.is_available():
        print("gpu_bench: PyTorch here has no CUDA/cuDNN; nothing to compare with",
              file=sys.stderr)
        return 2
    import fastrnn
    reason = fastrnn.unavailable_reasons().get("cupy")
    if reason:
        print(f"gpu_bench: {reason}", file=sys.stderr)
        return 2

    started = time.perf_counter()
    bench = Bench(precision)
    peak, peak_source = bench.gemm_peak()
    text = {"strict": "strict float32 (TF32 off)", "tf32": "TF32 allowed on both sides",
            "bf16": "bfloat16 storage on both sides"}[precision]
    print(f"{name}: GEMM peak {peak:.1f} TFLOP/s ({peak_source}); {text}", flush=True)
    cells = [c for c in args.cells.split(",") if c]
    sizes = [(c, B, H, m) for m in MODES for c in cells for B in BATCHES for H in HIDDENS]
    sizes.sort(key=lambda s: (not middle(s[1], s[2]), s[1] != 1))     # middle sizes first
    if args.quick:
        sizes = [s for s in sizes if middle(s[1], s[2]) or s[1] == 1]
    rows, not_run = [], 0
    for cell, B, H, mode in sizes:
        if time.perf_counter() - started > args.budget_s:
            not_run += 1
            continue
        try:
            row = bench.case(cell, B, H, mode, args.target_s, args.max_reps, args.paths)
        except Exception as exc:  # noqa: BLE001 - record, go on with the other sizes
            row = {"cell": cell, "mode": mode, "B": B, "H": H,
                   "goal": goal(precision, B, H), "error": f"{type(exc).__name__}: {exc}"[:300]}
            fastrnn.config.cupy_persistent = "auto"
        rows.append(row)
        if row.get("error"):
            print(f"{cell:9s} {mode:5s} B={B:<4d} H={H:<5d} {row['error']}", flush=True)
        else:
            extra = "".join(f" {k} {row[k + '_ms']:.3f}" for k in ("step", "persistent")
                            if row.get(k + "_ms") is not None)
            print(f"{cell:9s} {mode:5s} B={B:<4d} H={H:<5d} {row['path']:10s} "
                  f"{row['fastrnn_ms']:8.3f}{extra}  cuDNN {row['torch_ms']:8.3f} ms  "
                  f"x{row['speedup']:.2f} (goal {row['goal']:g})  diff {row['rel_diff']:.1e}",
                  flush=True)
        bench.cp.get_default_memory_pool().free_all_blocks()
        torch.cuda.empty_cache()
    rows.sort(key=lambda r: (CELLS.index(r["cell"]), MODES.index(r["mode"]), r["B"], r["H"]))

    meta = {"device": name, "slug": slug(name), "precision": precision, "precision_text": text,
            "T": T_STEPS, "gemm_peak_tflops": peak, "gemm_peak_source": peak_source,
            "versions": versions(), "not_run": not_run,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    for key, fn in (("host", bench.host_share), ("single_step", bench.single_step)):
        try:
            meta[key] = fn()
        except Exception as exc:  # noqa: BLE001
            meta[f"{key}_error"] = f"{type(exc).__name__}: {exc}"
    meta["seconds"] = time.perf_counter() - started
    base = f"gpu-{slug(name)}" + ("" if precision == "strict" else f"-{precision}")
    md = render_markdown(meta, rows)
    targets = [Path(args.out)] + ([Path(os.environ["OUT"])] if os.environ.get("OUT") else [])
    for folder in targets:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{base}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        (folder / f"{base}.md").write_text(md)
    print(md)
    print(f"wrote {base}.json and {base}.md to {', '.join(map(str, targets))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
