"""The numba backend's building blocks on their own: packed GEMMs and float32 sigmoid."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from fastrnn.backends.numba.gemm import (MR, NR, matmul, matmul_packed, pack_panels,
                                         panel_column_sums, panel_matmul)
from fastrnn.backends.numba.math import JIT, sigm, tanh_

from fastrnn.core.tolerances import (FLOAT32_SIGMOID_ULPS, FLOAT32_TANH_ULPS,
                                     PRIMITIVE_TOLERANCES as RTOL)

DTYPES = ["float32", "float64"]


def _rel(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (3, 5, 7), (8, 33, 65), (37, 100, 128),
                                   (64, 257, 200)])
def test_matmul_and_matmul_packed(dtype, M, K, N):
    rng = np.random.default_rng(M * 1000 + K + N)
    A = rng.standard_normal((M, K)).astype(dtype)
    B = rng.standard_normal((K, N)).astype(dtype)
    want = A.astype(np.float64) @ B.astype(np.float64)
    assert _rel(matmul(A, B), want) < RTOL[dtype]
    got = matmul_packed(A.T.copy().T, pack_panels(B), N)      # a strided A
    assert got.shape == (M, N)
    assert _rel(got, want) < RTOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (5, 70, 3), (8, 64, 32), (13, 130, 65),
                                   (40, 512, 32)])
def test_panel_matmul_and_column_sums(dtype, M, K, N):
    """A kept as panels (what the LSTM backward writes) times a plain B; its column sums."""
    rng = np.random.default_rng(M + K * 7 + N)
    A = rng.standard_normal((M, K)).astype(dtype)
    B = rng.standard_normal((K, N)).astype(dtype)
    Ap = pack_panels(A)
    assert Ap.shape == (-(-K // NR[A.itemsize]), M, NR[A.itemsize])
    got = panel_matmul(Ap, K, B)
    assert got.shape == (M, N)
    assert _rel(got, A.astype(np.float64) @ B) < RTOL[dtype]
    sums = panel_column_sums(Ap, K)
    assert sums.shape == (K,) and sums.dtype == A.dtype
    assert _rel(sums, A.astype(np.float64).sum(axis=0)) < RTOL[dtype]


def test_panel_matmul_rejects_a_mismatched_depth():
    Ap = pack_panels(np.ones((MR, 10)))
    with pytest.raises(ValueError, match="panel_matmul"):
        panel_matmul(Ap, 10, np.ones((9, 3)))


@njit(**JIT)
def _sigm_all(x, out):
    for i in range(x.shape[0]):
        out[i] = sigm(x[i])


@njit(**JIT)
def _tanh_all(x, out):
    for i in range(x.shape[0]):
        out[i] = tanh_(x[i])


def _ulps(got, want):
    """|got - want| in units of the float32 spacing at want (0 where want rounds to 0)."""
    spacing = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    return np.abs(got.astype(np.float64) - want) / spacing


def test_float32_sigmoid_and_tanh_are_within_a_few_ulp():
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-110, 110, 400_001), rng.standard_normal(200_000) * 6,
                        -np.logspace(-30, 2, 10_000), np.logspace(-30, 2, 10_000)])
    x = x.astype(np.float32)
    want_s = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    got_s = np.empty_like(x)
    _sigm_all(x, got_s)
    normal = want_s >= np.finfo(np.float32).tiny
    assert _ulps(got_s[normal], want_s[normal]).max() <= FLOAT32_SIGMOID_ULPS
    # subnormal results: right to within one subnormal step
    assert np.abs(got_s[~normal] - want_s[~normal]).max() <= 1.5e-45
    got_t = np.empty_like(x)
    _tanh_all(x, got_t)
    assert _ulps(got_t, np.tanh(x.astype(np.float64))).max() <= FLOAT32_TANH_ULPS


@pytest.mark.parametrize("dtype", DTYPES)
def test_special_values(dtype):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, -1e4, 1e4], dtype=dtype)
    s, t = np.empty_like(x), np.empty_like(x)
    _sigm_all(x, s)
    _tanh_all(x, t)
    assert np.isnan(s[0]) and np.isnan(t[0])
    # float64 exp clamps its argument at -708: "0" comes out as 3.3e-308
    np.testing.assert_allclose(s[1:], np.array([1, 0, 0.5, 0.5, 0, 1], dtype=dtype),
                               rtol=0, atol=1e-300)
    np.testing.assert_array_equal(t[1:], np.array([1, -1, 0, 0, -1, 1], dtype=dtype))
