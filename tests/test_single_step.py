"""The numba backend's one-step path (T = 1 on weights as given) against the reference.

``fastrnn/backends/numba/single_step.py`` runs a step without packing the weights, its
products reading them in place (``unpacked.py``): row-contiguous and column-contiguous
operands, one row (BLAS's gemv), a few rows and many rows (products split over
threads). Each is checked against NumPy in float64, and whole steps against the
reference backend in float32 and float64 for every cell it serves, with C-ordered and
transposed (torch's) weights, states given or not, and batch sizes that take each route.
"""

import numpy as np
import pytest

import fastrnn
from assertions import assert_close
from conftest import require_backend
from fastrnn.backends.numba import single_step
from fastrnn.backends.numba.unpacked import product
from fastrnn.core.tolerances import PRIMITIVE_TOLERANCES, rel_err

pytestmark = pytest.mark.usefixtures("numba_available")


@pytest.fixture
def numba_available():
    require_backend("numba")


SHAPES = [(1, 5, 7), (1, 256, 1024), (3, 17, 50), (8, 256, 1024), (13, 300, 29),
          (64, 128, 600), (1024, 8, 256)]
LAYOUTS = {"C": lambda a: a, "F": np.asfortranarray}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("a_order", list(LAYOUTS))
@pytest.mark.parametrize("b_order", list(LAYOUTS))
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_product_of_operands_read_in_place(M, K, N, a_order, b_order, dtype, rng):
    A = LAYOUTS[a_order](rng.standard_normal((M, K)).astype(dtype))
    B = LAYOUTS[b_order](rng.standard_normal((K, N)).astype(dtype))
    want = A.astype(np.float64) @ B.astype(np.float64)
    got = product(A, B)
    assert got.shape == (M, N) and got.flags.c_contiguous and got.dtype == dtype
    assert rel_err(got, want) <= PRIMITIVE_TOLERANCES[dtype]


def test_product_of_a_strided_view(rng):
    A = rng.standard_normal((6, 40))[:, ::2]
    B = rng.standard_normal((40, 30))[::2, 1:]
    assert rel_err(product(A, B), A @ B) <= PRIMITIVE_TOLERANCES["float64"]


CELLS = sorted(single_step.CELLS)


def _params(cell, I, H, dtype, order, rng):
    p = fastrnn.get_cell(cell).init_params(I, H, dtype, seed=int(rng.integers(1 << 30)))
    if order == "torch":                         # W, U as transposed views, as torch hands them
        p = {k: (np.ascontiguousarray(v.T).T if v.ndim == 2 else v) for k, v in p.items()}
    return p


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("order", ["C", "torch"])
@pytest.mark.parametrize("B,I,H", [(1, 3, 5), (1, 64, 256), (4, 17, 13), (8, 64, 64),
                                   (96, 128, 160)])
@pytest.mark.parametrize("cell", CELLS)
def test_a_step_matches_the_reference(cell, B, I, H, order, dtype, rng):
    p = _params(cell, I, H, dtype, order, rng)
    x = rng.standard_normal((1, B, I)).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype)
    c0 = rng.standard_normal((B, H)).astype(dtype) if cell == "lstm" else None
    dh = rng.standard_normal((1, B, H)).astype(dtype)
    dh_n = rng.standard_normal((B, H)).astype(dtype)
    dc_n = rng.standard_normal((B, H)).astype(dtype) if cell == "lstm" else None
    res = fastrnn.forward(cell, x, p, h0, c0, backend="numba")
    assert res.tape.saved.get("single_step"), "T = 1 took the sequence path"
    assert not res.tape.weights.packed, "a single step packed its weights"
    g = fastrnn.backward(res.tape, dh, dh_n, dc_n)
    ref = fastrnn.forward(cell, x.astype(np.float64), {k: v.astype(np.float64)
                                                       for k, v in p.items()},
                          h0.astype(np.float64), None if c0 is None else c0.astype(np.float64),
                          backend="numpy")
    gr = fastrnn.backward(ref.tape, dh.astype(np.float64), dh_n.astype(np.float64),
                          None if dc_n is None else dc_n.astype(np.float64))
    for name, a, b in [("h", res.h, ref.h), ("h_n", res.h_n, ref.h_n)] + (
            [("c_n", res.c_n, ref.c_n)] if cell == "lstm" else []):
        assert_close(a, b, dtype, "forward", name)
    for name, a, b in [("dx", g.dx, gr.dx), ("dh0", g.dh0, gr.dh0)] + (
            [("dc0", g.dc0, gr.dc0)] if cell == "lstm" else []) + [
            (f"d{k}", g.params[k], gr.params[k]) for k in gr.params]:
        assert a.dtype == dtype and a.shape == b.shape, name
        assert_close(a, b, dtype, "grad", name)


def test_weight_gradients_come_in_torchs_layout(rng):
    """dW, dU are (I, G*H) views of C-contiguous (G*H, I) arrays: ``.T`` needs no copy."""
    p = _params("lstm", 6, 5, "float64", "C", rng)
    res = fastrnn.forward("lstm", rng.standard_normal((1, 3, 6)), p, backend="numba")
    g = fastrnn.backward(res.tape, np.ones((1, 3, 5)))
    for k in ("W", "U"):
        assert g.params[k].shape == p[k].shape and g.params[k].T.flags.c_contiguous


def test_a_step_does_not_change_its_inputs(rng):
    p = _params("lstm", 4, 3, "float64", "torch", rng)
    x, h0, c0 = (rng.standard_normal(s) for s in [(1, 2, 4), (2, 3), (2, 3)])
    before = [a.copy() for a in (x, h0, c0, *p.values())]
    res = fastrnn.forward("lstm", x, p, h0, c0, backend="numba")
    fastrnn.backward(res.tape, np.ones((1, 2, 3)), np.ones((2, 3)), np.ones((2, 3)))
    for a, b in zip((x, h0, c0, *p.values()), before):
        np.testing.assert_array_equal(a, b)


def test_prepared_weights_keep_the_sequence_path(rng):
    """Weights packed already (prepared and used for a sequence) serve T = 1 from the packs."""
    p = _params("gru", 4, 6, "float32", "C", rng)
    w = fastrnn.prepare("gru", p, backend="numba")
    fastrnn.forward("gru", rng.standard_normal((3, 2, 4)).astype("float32"), w)
    res = fastrnn.forward("gru", rng.standard_normal((1, 2, 4)).astype("float32"), w)
    assert "single_step" not in res.tape.saved
    ref = fastrnn.forward("gru", res.tape.x, p, backend="numpy")
    assert_close(res.h, ref.h, "float32", "forward", "h")
