"""GPU benchmark: fastrnn's cupy backend against torch.nn.LSTM / GRU / RNN (cuDNN), same GPU.

Run from the repository root on a machine with a CUDA GPU, CuPy and PyTorch with cuDNN
(bench/gpu_run.sh calls it after the test suite)::

    python bench/gpu_bench.py [--out bench/results] [--tf32] [--budget-s 240] [--quick]

What it measures, float32, T = 100, I = H, cells lstm, gru, rnn_tanh, B in {1, 16, 64, 256},
H in {128, 256, 512, 1024}:

* training: forward with a tape + backward (all gradients, dx included) per iteration;
  inference: forward with ``training=False`` / ``torch.no_grad()``;
* fastrnn and torch interleaved, one iteration of each per repetition (order alternating),
  the device synchronised before each clock read, medians over the repetitions;
* achieved TFLOP/s from :mod:`fastrnn.core.cells` FLOP counts (matmul FLOPs, the usual RNN
  convention), against the card's measured GEMM peak (a large square matmul, the best of
  cupy and torch);
* a check per size that both compute the same function (relative error of the outputs);
* whether the persistent kernels' cooperative launch works on this device, as a result of
  its own (``meta["cooperative_launch"]``), and per size the persistent path's error if it
  fails there: a failure costs that path only, never the per-step and cuDNN numbers.

Precision: by default strict float32 on both sides (cuDNN and cuBLAS TF32 off). With
``--tf32`` both may use TF32 tensor cores (torch's default for cuDNN RNNs; ``CUPY_TF32=1``
for fastrnn's cuBLAS calls), and the result files get a ``-tf32`` suffix.

Writes ``gpu-<device-slug>[-tf32].json`` and ``.md`` (a markdown table) into ``--out``
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

T_STEPS = 100
CELLS = ("lstm", "gru", "rnn_tanh")
BATCHES = (1, 16, 64, 256)
HIDDENS = (128, 256, 512, 1024)
MODES = ("train", "infer")
TORCH_MODULES = {"lstm": ("LSTM", {}), "gru": ("GRU", {}),
                 "rnn_tanh": ("RNN", {"nonlinearity": "tanh"})}


# --------------------------------------------------------------------------- goals

def goal(mode: str, B: int, H: int) -> float | None:
    """The speedup over cuDNN that issue 4 asks for at this size, or None (no goal)."""
    large = B in (64, 256) and H in (512, 1024)
    small = B in (1, 16) and H in (128, 256)
    if mode == "train":
        return 1.0 if large else 1.5 if small else None
    return 1.0 if (large or small) else None


def slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown-gpu"


# ------------------------------------------------------------------------ rendering

def render_markdown(meta: dict, rows: list[dict]) -> str:
    peak = meta["gemm_peak_tflops"]
    lines = [
        f"# fastrnn cupy vs PyTorch cuDNN — {meta['device']} ({meta['precision']})",
        "",
        f"T = {meta['T']}, I = H, float32, medians of interleaved repetitions. fastrnn runs "
        f"its per-step path (cuBLAS + one fused kernel per step) and, where the size fits, "
        f"its persistent kernels (one launch for all steps); speedup = cuDNN time / the "
        f"faster fastrnn path (> 1: fastrnn faster). TFLOP/s from matmul FLOPs "
        f"(fastrnn.core.cells); measured GEMM peak of the card: {peak:.1f} TFLOP/s "
        f"({meta['gemm_peak_source']}).",
        "",
        f"Versions: {meta['versions']}",
        "",
        "| cell | mode | B | H | per-step ms | persistent ms | cuDNN ms | speedup | goal "
        "| fastrnn TFLOP/s | % of peak | cuDNN TFLOP/s | rel. diff |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['cell']} | {r['mode']} | {r['B']} | {r['H']} | "
                         f"error: {r['error']} ||||||||| ")
            continue
        g = r["goal"]
        verdict = "" if g is None else (f"≥{g:g}x {'met' if r['speedup'] >= g else 'MISSED'}")
        persistent = ("failed" if r.get("persistent_error") else
                      "—" if r["persistent_ms"] is None else f"{r['persistent_ms']:.3f}")
        lines.append(
            f"| {r['cell']} | {r['mode']} | {r['B']} | {r['H']} | {r['step_ms']:.3f} | "
            f"{persistent} | {r['torch_ms']:.3f} | {r['speedup']:.2f} | {verdict} | "
            f"{r['fastrnn_tflops']:.2f} | {100 * r['fastrnn_tflops'] / peak:.1f} | "
            f"{r['torch_tflops']:.2f} | {r['rel_diff']:.1e} |")
    met = [r for r in rows if not r.get("error") and r["goal"] is not None]
    ok = sum(r["speedup"] >= r["goal"] for r in met)
    lines += ["", f"Goals met: {ok} of {len(met)} measured goal sizes."]
    coop = meta.get("cooperative_launch")
    if coop:
        lines.append(f"Cooperative launch (persistent kernels): {coop['summary']}")
    failed = [r for r in rows if r.get("persistent_error")]
    if failed:
        first = failed[0]
        lines.append(f"Persistent path failed at {len(failed)} sizes (first: {first['cell']} "
                     f"{first['mode']} B={first['B']} H={first['H']}: "
                     f"{first['persistent_error']}); those rows use the per-step path.")
    if meta.get("not_run"):
        lines.append(f"Not run (time budget): {meta['not_run']} sizes.")
    if meta.get("single_step"):
        s = meta["single_step"]
        lines.append(f"Single step (T = 1, B = 1, H = 128, lstm, inference), the fixed cost "
                     f"of a call: fastrnn {s['fastrnn_us']:.0f} µs, "
                     f"cuDNN {s['torch_us']:.0f} µs.")
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------- timing

class Bench:
    def __init__(self, tf32: bool):
        import cupy
        import torch
        import fastrnn
        self.cp, self.torch, self.fastrnn = cupy, torch, fastrnn
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        self.tf32 = tf32

    def sync(self):
        self.cp.cuda.runtime.deviceSynchronize()

    def time_once(self, fn) -> float:
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0

    def gemm_peak(self, n: int = 8192, reps: int = 10) -> tuple[float, str]:
        """TFLOP/s of an n^3 float32 matmul on random data, best of cupy and torch."""
        cp, torch = self.cp, self.torch
        a = cp.random.standard_normal((n, n), dtype=cp.float32)
        b = cp.random.standard_normal((n, n), dtype=cp.float32)
        ta = torch.randn(n, n, device="cuda")
        tb = torch.randn(n, n, device="cuda")
        best = {}
        for name, fn in (("cupy.matmul", lambda: cp.matmul(a, b)),
                         ("torch.matmul", lambda: torch.matmul(ta, tb))):
            for _ in range(3):
                fn()
            times = [self.time_once(fn) for _ in range(reps)]
            best[name] = 2 * n ** 3 / statistics.median(times) / 1e12
        source = max(best, key=best.get)
        detail = ", ".join(f"{k} {v:.1f}" for k, v in best.items())
        return best[source], f"{n}x{n}x{n}, {detail}"

    def case(self, cell: str, B: int, H: int, mode: str, target_s: float, max_reps: int):
        """Median seconds of fastrnn and torch for one size, and their outputs' difference."""
        cp, torch, fastrnn = self.cp, self.torch, self.fastrnn
        import numpy as np
        from fastrnn import convert
        spec = fastrnn.get_cell(cell)
        I, T = H, T_STEPS
        rng = np.random.default_rng(B * 7919 + H)
        params_np = spec.init_params(I, H, "float32", seed=B + H)
        x_np = rng.standard_normal((T, B, I)).astype(np.float32)
        dh_np = rng.standard_normal((T, B, H)).astype(np.float32)
        params = {k: cp.asarray(v) for k, v in params_np.items()}
        x, dh = cp.asarray(x_np), cp.asarray(dh_np)
        name, kwargs = TORCH_MODULES[cell]
        module = getattr(torch.nn, name)(I, H, **kwargs).to("cuda", torch.float32)
        convert.to_torch(cell, params_np, module)
        xt = torch.tensor(x_np, device="cuda", requires_grad=(mode == "train"))
        dht = torch.tensor(dh_np, device="cuda")
        training = mode == "train"

        from fastrnn.backends.cupy import persistent as cb

        def ours(path: str):
            def run():
                fastrnn.config.cupy_persistent = path   # "0": per-step kernels, "1": persistent
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

        impls = {"step": ours("0"), "torch": theirs}
        if all(cb.persistent_plan(spec, B, H, np.dtype("float32"), backward=bw) is not None
               for bw in ((False, True) if training else (False,))):
            impls["persistent"] = ours("1")
        ref = theirs().detach()
        rel, persistent_error = {}, None

        def attempt(name, call):
            """call(impls[name]); a failure of the persistent path drops that path and is
            recorded (None returned), any other failure is the whole size's."""
            nonlocal persistent_error
            try:
                return call(impls[name])
            except Exception as exc:  # noqa: BLE001 - persistent: record, keep the rest
                if name != "persistent":
                    raise
                persistent_error = f"{type(exc).__name__}: {exc}"[:200]
                impls.pop(name)
                fastrnn.config.cupy_persistent = "0"
                return None

        for name in ("step", "persistent"):       # the same function? (also a warm-up)
            if name in impls:
                res = attempt(name, lambda fn: fn())
                if res is not None:
                    h = res.h
                    rel[name] = float(cp.linalg.norm(h - cp.asarray(ref)) / cp.linalg.norm(h))
        for _ in range(2):
            for name in list(impls):
                attempt(name, lambda fn: fn())
        times = {name: [] for name in impls}
        spent, rep = 0.0, 0
        while rep < max_reps and (rep < 5 or spent < target_s * len(impls)):
            order = list(impls)
            for name in order[rep % len(order):] + order[:rep % len(order)]:   # rotate
                dt = attempt(name, self.time_once)
                if dt is None:
                    times.pop(name, None)
                    continue
                times[name].append(dt)
                spent += dt
            rep += 1
        flops = spec.forward_flops(T, B, I, H)
        if training:
            flops += spec.backward_flops(T, B, I, H)
        med = {name: statistics.median(ts) for name, ts in times.items()}
        best = min((n for n in med if n != "torch"), key=med.get)
        mo, mt = med[best], med["torch"]
        return {"cell": cell, "mode": mode, "B": B, "H": H, "T": T, "reps": rep,
                "step_ms": 1e3 * med["step"],
                "persistent_ms": 1e3 * med["persistent"] if "persistent" in med else None,
                "path": best, "fastrnn_ms": 1e3 * mo, "torch_ms": 1e3 * mt, "speedup": mt / mo,
                "fastrnn_tflops": flops / mo / 1e12, "torch_tflops": flops / mt / 1e12,
                "flops": flops, "goal": goal(mode, B, H), "rel_diff": max(rel.values()),
                "persistent_error": persistent_error,
                "times_ms": {n: [1e3 * t for t in ts] for n, ts in times.items()}}

    def cooperative_launch(self) -> dict:
        """Whether the persistent kernels' cooperative launch works here: an lstm training
        step (T = 8, B = 4, H = 128) under FASTRNN_CUPY_PERSISTENT=1 against the per-step
        path. Always a result: the device attribute, ok, the error or the difference."""
        cp, fastrnn = self.cp, self.fastrnn
        import numpy as np
        from fastrnn.core.tolerances import TOLERANCES
        from fastrnn.backends.cupy import persistent as cb
        out = {"device_attribute": None, "ok": False, "error": None, "rel_diff": None}
        try:
            out["device_attribute"] = bool(cb._device_limits()[2])
            spec = fastrnn.get_cell("lstm")
            params = {k: cp.asarray(v) for k, v in spec.init_params(128, 128, "float32",
                                                                    seed=3).items()}
            rng = np.random.default_rng(3)
            x = cp.asarray(rng.standard_normal((8, 4, 128)).astype(np.float32))
            dh = cp.ones((8, 4, 128), dtype=cp.float32)
            got = {}
            for path in ("0", "1"):
                fastrnn.config.cupy_persistent = path
                if path == "1" and cb.plan_for_call(spec, 4, 128, np.dtype("float32"),
                                                    backward=False) is None:
                    raise RuntimeError("no persistent plan for this size on this device "
                                       "(cooperative launch attribute or shared memory)")
                res = fastrnn.forward("lstm", x, params, backend="cupy")
                g = fastrnn.backward(res.tape, dh=dh)
                got[path] = cp.concatenate([res.h.ravel(), g.dx.ravel(), g.params["U"].ravel()])
            self.sync()
            diff = got["1"] - got["0"]
            out["rel_diff"] = float(cp.linalg.norm(diff) / cp.linalg.norm(got["0"]))
            out["ok"] = bool(out["rel_diff"] <= TOLERANCES["float32"]["grad"])
            if not out["ok"]:
                out["error"] = f"persistent and per-step results differ by {out['rel_diff']:.1e}"
        except Exception as exc:  # noqa: BLE001 - the outcome is the result
            out["error"] = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            fastrnn.config.cupy_persistent = "0"
        out["summary"] = (f"worked (lstm T=8 B=4 H=128, training; persistent vs per-step "
                          f"{out['rel_diff']:.1e})" if out["ok"] else
                          f"FAILED: {out['error']} (device attribute "
                          f"cudaDevAttrCooperativeLaunch = {out['device_attribute']})")
        return out

    def single_step(self) -> dict:
        """Fixed cost of one call: lstm, T = 1, B = 1, H = 128, inference."""
        cp, torch, fastrnn = self.cp, self.torch, self.fastrnn
        params = {k: cp.asarray(v) for k, v in
                  fastrnn.get_cell("lstm").init_params(128, 128, "float32").items()}
        x = cp.ones((1, 1, 128), dtype=cp.float32)
        module = torch.nn.LSTM(128, 128).to("cuda")
        xt = torch.ones(1, 1, 128, device="cuda")

        def ours():
            fastrnn.forward("lstm", x, params, backend="cupy", training=False)

        fastrnn.config.cupy_persistent = "0"

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
    ap.add_argument("--tf32", action="store_true", help="allow TF32 on both sides")
    ap.add_argument("--budget-s", type=float, default=300.0,
                    help="stop starting new sizes after this many seconds")
    ap.add_argument("--target-s", type=float, default=0.2,
                    help="timed seconds per size and implementation (at least 5 repetitions)")
    ap.add_argument("--max-reps", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="only the sizes with a goal")
    ap.add_argument("--print-slug", action="store_true", help="print the device slug and exit")
    args = ap.parse_args(argv)

    # Decide TF32 for cupy before it first computes a float32 matmul.
    os.environ["CUPY_TF32"] = "1" if args.tf32 else "0"
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
    bench = Bench(args.tf32)
    peak, peak_source = bench.gemm_peak()
    precision = "TF32 allowed" if args.tf32 else "strict float32 (TF32 off)"
    print(f"{name}: GEMM peak {peak:.1f} TFLOP/s ({peak_source}); {precision}", flush=True)
    coop = bench.cooperative_launch()
    print(f"cooperative launch (persistent kernels): {coop['summary']}", flush=True)

    sizes = [(c, B, H, m) for m in MODES for c in CELLS for B in BATCHES for H in HIDDENS]
    sizes.sort(key=lambda s: goal(s[3], s[1], s[2]) is None)      # goal sizes first
    if args.quick:
        sizes = [s for s in sizes if goal(s[3], s[1], s[2]) is not None]
    rows, not_run = [], 0
    for cell, B, H, mode in sizes:
        if time.perf_counter() - started > args.budget_s:
            not_run += 1
            continue
        try:
            row = bench.case(cell, B, H, mode, args.target_s, args.max_reps)
        except Exception as exc:  # noqa: BLE001 - record, go on with the other sizes
            row = {"cell": cell, "mode": mode, "B": B, "H": H, "goal": goal(mode, B, H),
                   "error": f"{type(exc).__name__}: {exc}"[:200]}
        rows.append(row)
        if row.get("error"):
            print(f"{cell:9s} {mode:5s} B={B:<4d} H={H:<5d} {row['error']}", flush=True)
        else:
            pers = (" persistent failed" if row["persistent_error"] else
                    "" if row["persistent_ms"] is None
                    else f" persistent {row['persistent_ms']:8.3f}")
            print(f"{cell:9s} {mode:5s} B={B:<4d} H={H:<5d} per-step {row['step_ms']:8.3f}{pers}"
                  f"  cuDNN {row['torch_ms']:8.3f} ms  x{row['speedup']:.2f}  "
                  f"{row['fastrnn_tflops']:.2f} TFLOP/s", flush=True)
        bench.cp.get_default_memory_pool().free_all_blocks()
        torch.cuda.empty_cache()
    rows.sort(key=lambda r: (CELLS.index(r["cell"]), MODES.index(r["mode"]), r["B"], r["H"]))

    meta = {"device": name, "slug": slug(name), "precision": precision, "tf32": args.tf32,
            "T": T_STEPS, "gemm_peak_tflops": peak, "gemm_peak_source": peak_source,
            "versions": versions(), "not_run": not_run, "seconds": time.perf_counter() - started,
            "cooperative_launch": coop,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    try:
        meta["single_step"] = bench.single_step()
    except Exception as exc:  # noqa: BLE001
        meta["single_step_error"] = f"{type(exc).__name__}: {exc}"
    base = f"gpu-{slug(name)}" + ("-tf32" if args.tf32 else "")
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
