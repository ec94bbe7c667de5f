"""First use on a fresh install: the JIT compile of one training step, and the cached start.

For each cell (float32), a fresh Python process with its own empty Numba cache folder
runs the first training step a user meets: a layer's forward + backward (T=64, B=32,
I=32, H=128, as bench/train_loop.py's char-LM) and, separately, a cell step through
fastrnn.torch (T=1); then a second process on the same cache runs them again. Each line
gives import, forward and backward seconds, and whether the compile notice reached stderr
(fastrnn/backends/numba/first_use.py).

    python bench/compile_time.py                 # prints the table
    python bench/compile_time.py --json bench/results/cpu-avx2-compile.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import fastrnn
t_import = time.perf_counter() - t0
cell, T = sys.argv[1], int(sys.argv[2])
p = fastrnn.get_cell(cell).init_params(32, 128, "float32")
x = np.zeros((T, 32, 32), np.float32)
t = time.perf_counter()
res = fastrnn.forward(cell, x, p, backend="numba")
t_fwd = time.perf_counter() - t
t = time.perf_counter()
fastrnn.backward(res.tape, np.ones_like(res.h))
t_bwd = time.perf_counter() - t
print(json.dumps({"import_s": t_import, "forward_s": t_fwd, "backward_s": t_bwd}))
"""


def run(cell, T, cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir,
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", CHILD, cell, str(T)], env=env,
                          capture_output=True, text=True, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["notice_on_stderr"] = "fastrnn: compiling" in proc.stderr
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", nargs="+", default=["rnn_tanh", "gru", "lstm"])
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    rows = []
    print(f"{'cell':<9s} {'T':>3s} {'process':<8s} {'import':>7s} {'forward':>8s} "
          f"{'backward':>9s} {'total':>7s}  notice")
    for cell in args.cells:
        for T, what in ((64, "layer"), (1, "step")):
            with tempfile.TemporaryDirectory() as cache:
                for proc in ("first", "cached"):
                    r = run(cell, T, cache)
                    r.update(cell=cell, T=T, what=what, process=proc,
                             total_s=r["forward_s"] + r["backward_s"])
                    rows.append(r)
                    print(f"{cell:<9s} {T:>3d} {proc:<8s} {r['import_s']:7.2f} "
                          f"{r['forward_s']:8.2f} {r['backward_s']:9.2f} {r['total_s']:7.2f}  "
                          f"{'yes' if r['notice_on_stderr'] else 'no'}", flush=True)
    print("(seconds; first: an empty Numba cache, compiles; cached: the second process; "
          "goal: the first training step within 3 s, with a line on stderr while it compiles)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"benchmark": "compile_time", "results": rows},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
