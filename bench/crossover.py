"""Measure where the Numba kernels should switch from their own product loop to BLAS.

For each (B, H) on a grid this times one training step (forward + backward, float32,
T=50, I=H) of an LSTM and a GRU twice, once with every per-step product ``h @ U`` in the
kernel's own loop and once through BLAS, and prints the ratio with the product size
B*H*G*H in multiply-adds. ``fastrnn.backends.numba_backend.use_blas_for`` encodes
what this prints on the development machine.

    python bench/crossover.py
"""

from __future__ import annotations

import time

import numpy as np

import fastrnn
from fastrnn.backends import numba_backend
from fastrnn.backends._blas import gemm_address


def median_time(fn, repeat=7):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def step_time(cell, T, B, H, blas):
    numba_backend.use_blas_for = lambda B, H, G, dtype: (gemm_address(dtype), blas)
    p = fastrnn.get_cell(cell).init_params(H, H, "float32")
    x = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
    dh = np.ones((T, B, H), np.float32)

    def run():
        res = fastrnn.forward(cell, x, p, backend="numba")
        fastrnn.backward(res.tape, dh)
    return median_time(run)


def main():
    saved = numba_backend.use_blas_for
    print(f"{'cell':6s} {'B':>4s} {'H':>5s} {'MACs':>10s} {'own ms':>9s} {'BLAS ms':>9s}  BLAS/own")
    try:
        for cell in ("lstm", "gru"):
            G = fastrnn.get_cell(cell).num_gates
            for B in (1, 4, 16, 64):
                for H in (16, 32, 64, 128, 256):
                    own = step_time(cell, 50, B, H, False)
                    blas = step_time(cell, 50, B, H, True)
                    print(f"{cell:6s} {B:4d} {H:5d} {B * H * G * H:10d} {own * 1e3:9.3f} "
                          f"{blas * 1e3:9.3f}  {blas / own:6.2f}", flush=True)
    finally:
        numba_backend.use_blas_for = saved


if __name__ == "__main__":
    main()
