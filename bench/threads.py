"""How many batch rows a thread of the numba kernels needs before a second thread pays.

Times one training step (forward + backward, float32, T=100, I=H) of an LSTM and a GRU at
several (B, H) with the batch in one chunk and split over two threads, and prints the
ratio. ``fastrnn.config.rows_per_thread`` is set from what this prints.

    python bench/threads.py
"""

from __future__ import annotations

import time

import numpy as np

import fastrnn
from fastrnn.backends.numba.gemm import MR, padded


def median_time(fn, repeat=9):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def step_time(cell, B, H, chunks):
    fastrnn.config.chunk_rows = padded(-(-padded(B, MR) // chunks), MR)
    p = fastrnn.get_cell(cell).init_params(H, H, "float32")
    x = np.random.default_rng(0).standard_normal((100, B, H)).astype(np.float32)
    dh = np.ones((100, B, H), np.float32)

    def run():
        res = fastrnn.forward(cell, x, p, backend="numba")
        fastrnn.backward(res.tape, dh)
    return median_time(run)


def main():
    saved = fastrnn.config.chunk_rows
    print(f"{'cell':6s} {'B':>4s} {'H':>5s} {'1 chunk ms':>11s} {'2 chunks ms':>12s}  ratio")
    try:
        for cell in ("lstm", "gru"):
            for B in (4, 8, 16, 32):
                for H in (32, 128, 256):
                    one = step_time(cell, B, H, 1)
                    two = step_time(cell, B, H, 2)
                    print(f"{cell:6s} {B:4d} {H:5d} {one * 1e3:11.3f} {two * 1e3:12.3f}  "
                          f"{two / one:5.2f}", flush=True)
    finally:
        fastrnn.config.chunk_rows = saved


if __name__ == "__main__":
    main()
