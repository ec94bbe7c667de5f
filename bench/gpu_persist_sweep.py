"""The persistent kernels' splits, measured: what the planner's cost model is calibrated on.

For a few sizes, every split (batch groups x blocks per group) the planner could choose on
this GPU is forced (``config.cupy_persistent_split``) and one forward (inference), one
forward with a tape and one backward are timed (T = 100, float32, CUDA events around one
call, median of repetitions), beside the model's estimate of a step and the split the
planner picks. Tiny sizes show the barrier's own cost against the number of blocks.

    python bench/gpu_persist_sweep.py [--out bench/results] [--budget-s 60]

Writes ``gpu-<device-slug>-persist-sweep.json`` (and into ``$OUT`` when set).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = [("rnn_tanh", 1, 128), ("gru", 1, 256), ("lstm", 16, 256), ("lstm", 64, 512),
         ("gru", 64, 512), ("lstm", 16, 1024), ("lstm", 64, 1024), ("rnn_tanh", 64, 512),
         ("lstm", 256, 256)]
T = 100


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--budget-s", type=float, default=60.0)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args(argv)
    import cupy as cp
    import numpy as np
    import fastrnn
    from fastrnn.backends.cupy import device, persistent as P
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_bench import device_name, slug

    limits = device.limits()
    sms = limits.multiprocessors
    started = time.perf_counter()
    records = []

    def timed(fn, reps):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        fn()
        out = []
        for _ in range(reps):
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            out.append(cp.cuda.get_elapsed_time(start, stop))
        return statistics.median(out)

    for cell, B, H in SIZES:
        spec = fastrnn.get_cell(cell)
        rng = np.random.default_rng(B + H)
        params = {k: cp.asarray(v) for k, v in spec.init_params(H, H, "float32").items()}
        x = cp.asarray(rng.standard_normal((T, B, H)).astype(np.float32))
        dh = cp.asarray(rng.standard_normal((T, B, H)).astype(np.float32))
        chosen = {bw: P.plan(spec, B, H, np.dtype("float32"), bw) for bw in (False, True)}
        pow2 = [1 << i for i in range(9)]
        splits = sorted({(g, n) for g in pow2 if g <= B for n in pow2 + [sms // g]
                         if 1 <= n and g * n <= sms})
        for groups, blocks in splits:
            if time.perf_counter() - started > args.budget_s:
                break
            fastrnn.config.cupy_persistent = "1"
            fastrnn.config.cupy_persistent_split = (groups, blocks)
            plans = {bw: P.plan(spec, B, H, np.dtype("float32"), bw, split=(groups, blocks))
                     for bw in (False, True)}
            rec = {"cell": cell, "B": B, "H": H, "split": [groups, blocks]}
            for bw, p in plans.items():
                key = "backward" if bw else "forward"
                rec[f"{key}_plan"] = None if p is None else {
                    "groups": p.groups, "group_blocks": p.group_blocks, "rows": p.rows,
                    "nj": p.nj, "kt": p.kt, "smem": p.smem, "model_step_us": p.step_us,
                    "chosen": chosen[bw] is not None and (chosen[bw].groups, chosen[bw].group_blocks) == (p.groups, p.group_blocks)}
            try:
                if plans[False] is not None:
                    rec["infer_ms"] = timed(lambda: fastrnn.forward(
                        cell, x, params, backend="cupy", training=False), args.reps)
                    res = fastrnn.forward(cell, x, params, backend="cupy")
                    rec["train_forward_ms"] = timed(lambda: fastrnn.forward(
                        cell, x, params, backend="cupy"), args.reps)
                    if plans[True] is not None:
                        rec["backward_ms"] = timed(lambda: fastrnn.backward(res.tape, dh=dh),
                                                   args.reps)
            except Exception as exc:  # noqa: BLE001 - record it, go on
                rec["error"] = f"{type(exc).__name__}: {exc}"[:300]
            records.append(rec)
            print(json.dumps({k: v for k, v in rec.items() if not k.endswith("_plan")}),
                  flush=True)
        fastrnn.config.cupy_persistent_split = None
        fastrnn.config.cupy_persistent = "auto"
        cp.get_default_memory_pool().free_all_blocks()

    name = device_name()
    doc = {"device": name, "multiprocessors": sms, "smem_per_block": limits.smem_per_block,
           "T": T, "costs": vars(P.COSTS), "records": records,
           "seconds": time.perf_counter() - started}
    targets = [Path(args.out)] + ([Path(os.environ["OUT"])] if os.environ.get("OUT") else [])
    for folder in targets:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"gpu-{slug(name)}-persist-sweep.json").write_text(json.dumps(doc, indent=1))
    print(f"{len(records)} splits in {doc['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
