"""A small run of every GPU kernel for compute-sanitizer: bad accesses and races show there.

    compute-sanitizer --tool memcheck python bench/gpu_sanitize.py
    compute-sanitizer --tool racecheck python bench/gpu_sanitize.py --cells lstm

Each cell runs forward (training and inference) and backward on the per-step path and
on the persistent kernels with several batch groups and blocks (a forced split), with
lengths and reverse, at sizes that are not multiples of the tile (B = 5, H = 33), and the
results are compared with the per-step path's. Exit status 0 when every comparison holds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", default="rnn_tanh,lstm,gru,gru_reset_before,lstmp")
    args = ap.parse_args(argv)
    import cupy as cp
    import numpy as np
    import fastrnn
    from fastrnn.core.tolerances import rel_err
    from fastrnn.tools.problems import random_problem

    bad = 0
    for cell in args.cells.split(","):
        p = random_problem(np.random.default_rng(1), cell, 6, 5, 7, 33, "float32",
                           lengths=True, states=True)
        dev = lambda a: None if a is None else (cp.asarray(a) if isinstance(a, np.ndarray)  # noqa: E731
                                                else {k: cp.asarray(v) for k, v in a.items()})
        x, params, h0, c0 = dev(p.x), dev(p.params), dev(p.h0), dev(p.c0)
        up = [dev(a) for a in p.upstream]
        out = {}
        for mode, split in (("0", None), ("1", (2, 3))):
            fastrnn.config.cupy_persistent = mode
            fastrnn.config.cupy_persistent_split = split
            res = fastrnn.forward(cell, x, params, h0, c0, lengths=p.lengths, reverse=True,
                                  backend="cupy")
            g = fastrnn.backward(res.tape, *up)
            inf = fastrnn.forward(cell, x, params, h0, c0, lengths=p.lengths, backend="cupy",
                                  training=False)
            out[mode] = [res.h, res.h_n, g.dx, g.dh0, inf.h, *g.params.values()]
        cp.cuda.runtime.deviceSynchronize()
        worst = max(rel_err(a, b) for a, b in zip(out["1"], out["0"]))
        ok = worst <= 1e-5
        bad += not ok
        print(f"{cell}: persistent (split 2x3) vs per-step {worst:.1e} {'ok' if ok else 'DIFFERS'}",
              flush=True)
    fastrnn.config.cupy_persistent, fastrnn.config.cupy_persistent_split = "auto", None
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
