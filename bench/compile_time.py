"""First-call (JIT compile) and cached start-up time of the numba backend.

Runs a fresh Python process per measurement, with its own Numba cache folder: the first
process compiles every kernel a forward + backward of each cell needs (float32) and writes
the cache; the second loads it.

    python bench/compile_time.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

CHILD = r"""
import time
t0 = time.perf_counter()
import numpy as np
import fastrnn
t_import = time.perf_counter() - t0
out = {}
for cell in fastrnn.CELLS:
    p = fastrnn.get_cell(cell).init_params(8, 16, "float32")
    x = np.zeros((5, 4, 8), np.float32)
    t = time.perf_counter()
    res = fastrnn.forward(cell, x, p, backend="numba")
    fastrnn.backward(res.tape, np.ones_like(res.h))
    out[cell] = time.perf_counter() - t
print(f"{t_import:.3f} " + " ".join(f"{cell}={s:.3f}" for cell, s in out.items()))
"""


def run(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                          text=True, check=True)
    return proc.stdout.strip()


def main():
    with tempfile.TemporaryDirectory() as cache:
        print("first process (compiles, fills the cache):", run(cache))
        print("second process (loads the cache):         ", run(cache))
    print("(first number: seconds to import fastrnn; then seconds of the first forward + "
          "backward per cell)")


if __name__ == "__main__":
    main()
