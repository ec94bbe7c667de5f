"""Prepared weights (fastrnn.prepare) and the layers that keep theirs.

Prepared and plain params give bit-identical results on every backend; a prepared object
is a snapshot (later changes to the source arrays are not seen); errors name what does
not fit; layers prepare once and again after a parameter is replaced.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from conftest import make_problem, make_upstream, to_backend
from fastrnn.core.arrays import to_numpy

CELLS = list(fastrnn.CELLS)


def _same(a, b):
    return a is None and b is None or np.array_equal(to_numpy(a), to_numpy(b))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", CELLS)
def test_prepared_and_plain_params_give_identical_results(any_backend, rng, cell, dtype):
    x, params, h0, c0, lens = make_problem(rng, cell, 6, 5, 4, 7, dtype, lengths=True,
                                           states=True)
    dh, dh_n, dc_n = make_upstream(rng, cell, 6, 5, 7, dtype)
    w = fastrnn.prepare(cell, params, backend=any_backend)
    on = lambda a: to_backend(any_backend, a)               # noqa: E731 - where w lives
    for reverse in (False, True):
        plain = fastrnn.forward(cell, x, params, h0, c0, lengths=lens, reverse=reverse,
                                backend=any_backend)
        prep = fastrnn.forward(cell, on(x), w, on(h0), on(c0), lengths=lens, reverse=reverse)
        assert prep.tape.backend.name == any_backend
        for a, b in zip(plain, prep):
            assert _same(a, b)
        g1 = fastrnn.backward(plain.tape, dh, dh_n, dc_n)
        g2 = fastrnn.backward(prep.tape, on(dh), on(dh_n), on(dc_n))
        assert list(g2.params) == list(params)
        for k in params:
            assert _same(g1.params[k], g2.params[k]), k
        for a, b in ((g1.dx, g2.dx), (g1.dh0, g2.dh0), (g1.dc0, g2.dc0)):
            assert _same(a, b)


def test_prepared_weights_are_a_snapshot(rng):
    x, params, *_ = make_problem(rng, "lstm", 4, 2, 3, 5)
    before = fastrnn.forward("lstm", x, params).h.copy()
    w = fastrnn.prepare("lstm", params)
    params["U"] += 1.0                              # after prepare: not seen
    params["b"][:] = 0
    assert np.array_equal(fastrnn.forward("lstm", x, w).h, before)
    assert not np.array_equal(fastrnn.forward("lstm", x, params).h, before)
    assert all(not a.flags.writeable for a in w.params.values())
    with pytest.raises(ValueError, match="read-only"):
        w.params["W"][0, 0] = 1.0
    assert w.input_size == 3 and w.hidden_size == 5 and w.dtype == np.float64
    assert "PreparedWeights(cell='lstm'" in repr(w)


def test_a_tape_of_prepared_weights_checks_only_the_inputs(rng):
    x, params, h0, *_ = make_problem(rng, "gru", 4, 2, 3, 5, states=True)
    w = fastrnn.prepare("gru", params)
    res = fastrnn.forward("gru", x, w, h0)
    params["W"] += 1.0                              # the source, not the snapshot
    fastrnn.backward(res.tape, dh_n=np.ones((2, 5)))
    x += 1.0
    with pytest.raises(ValueError, match="x changed in place"):
        fastrnn.backward(res.tape, dh_n=np.ones((2, 5)))


def test_prepared_weights_errors(rng):
    x, params, *_ = make_problem(rng, "gru", 4, 2, 3, 5)
    w = fastrnn.prepare("gru", params, backend="numba")
    with pytest.raises(ValueError, match="params: prepared for cell 'gru', not 'lstm'"):
        fastrnn.forward("lstm", x, w)
    with pytest.raises(ValueError, match="backend: the params were prepared for backend "
                                         "'numba', not 'numpy'"):
        fastrnn.forward("gru", x, w, backend="numpy")
    with pytest.raises(ValueError, match=r"x: expected 3 features \(the input size of the "
                                         r"prepared params\), got shape \(4, 2, 6\)"):
        fastrnn.forward("gru", np.zeros((4, 2, 6)), w)
    with pytest.raises(TypeError, match="x: expected dtype float64 .* got float32"):
        fastrnn.forward("gru", x.astype(np.float32), w)
    with pytest.raises(ValueError, match=r"h0: expected shape \(2, 5\)"):
        fastrnn.forward("gru", x, w, np.zeros((3, 5)))
    with pytest.raises(TypeError, match="params: already a PreparedWeights"):
        fastrnn.prepare("gru", w)
    with pytest.raises(ValueError, match="params: cell 'gru' needs W, U, b, bn; missing bn"):
        fastrnn.prepare("gru", {k: v for k, v in params.items() if k != "bn"})
    with pytest.raises(ValueError, match=r"params\['W'\]: expected a 2-d array"):
        fastrnn.prepare("gru", dict(params, W=np.zeros(3)))
    with pytest.raises(ValueError, match=r"params\['b'\]: expected shape \(15,\)"):
        fastrnn.prepare("gru", dict(params, b=np.zeros(14)))
    with pytest.raises(TypeError, match=r"params\['U'\]: expected dtype float64"):
        fastrnn.prepare("gru", dict(params, U=params["U"].astype(np.float32)))
    with pytest.raises(TypeError, match="params: expected a mapping"):
        fastrnn.prepare("gru", [1, 2])


# ------------------------------------------------------------------------------ layers

def test_layer_prepares_once_and_again_after_a_replacement(rng, monkeypatch):
    from fastrnn.layers import layer as layer_module
    calls = []
    real = layer_module.prepare
    monkeypatch.setattr(layer_module, "prepare",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    lstm = fastrnn.LSTM(3, 5, dtype="float64", seed=2)
    x = rng.standard_normal((4, 2, 3))
    first = lstm(x).h.copy()
    lstm(x)
    assert len(calls) == 1
    with pytest.raises(ValueError, match="read-only"):
        lstm.params["U"] += 1.0                     # in place: refused, never silent
    lstm.params["U"] = lstm.params["U"] + 1.0       # a replacement: seen
    changed = lstm(x).h
    assert len(calls) == 2 and not np.array_equal(changed, first)
    ref = fastrnn.forward("lstm", x, dict(lstm.params), backend="numpy")
    assert np.allclose(changed, ref.h, rtol=0, atol=1e-12)
    lstm.params = fastrnn.get_cell("lstm").init_params(3, 5, "float64", seed=2)
    assert np.array_equal(lstm(x).h, first) and len(calls) == 3
    with pytest.raises(KeyError, match="cell 'lstm' has no parameter 'bn'"):
        lstm.params["bn"] = np.zeros(5)
    assert "LayerParams({'W': (3, 20)" in repr(lstm.params)
