"""Every fast backend computes the reference's function.

Each test runs once per fast backend (the ``backend`` fixture of conftest: numba, and cupy
where a GPU works) on fresh random inputs and compares with ``backend="numpy"`` through
:func:`assertions.assert_close`: forward outputs and states, and every gradient, for all
cells, both float dtypes, with and without lengths, reverse and initial states; upstream
gradients given in every combination; inference mode; odd sizes; batch_first, strided
and unbatched input; the readout; a chain of single steps (autoregressive decoding)
against the whole sequence; and how ``backend="auto"`` chooses.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import fastrnn
from fastrnn.backends import auto_backend_name
from fastrnn.core.cells import CELLS
from conftest import make_problem, make_upstream, record_error, require_backend, to_backend
from assertions import assert_close

MODES = {"plain": (False, False), "lengths": (True, False), "reverse": (False, True),
         "lengths+reverse": (True, True)}


def _np(a):
    """A backend's result as a NumPy array (device arrays are copied to the host)."""
    return None if a is None else (a.get() if hasattr(a, "get") else np.asarray(a))


def _problem(rng, cell, T, B, I, H, dtype, lengths, states):
    x, params, h0, c0, lens = make_problem(rng, cell, T, B, I, H, dtype, lengths=lengths,
                                           states=states)
    if lengths and B > 2:
        lens[-1] = 1          # always one sequence of a single step beside a full one
    return x, params, h0, c0, lens


def _run(backend, cell, x, params, h0, c0, lens, reverse, dh, dh_n, dc_n, **kw):
    res = fastrnn.forward(cell, x, params, h0, c0, lengths=lens, reverse=reverse,
                          backend=backend, **kw)
    assert res.tape is not None and res.tape.backend.name == backend
    return res, fastrnn.backward(res.tape, dh, dh_n, dc_n)


def assert_same(got, ref, dtype, backend, what=""):
    """Forward outputs, states and every gradient of two (ForwardResult, Gradients) pairs."""
    (r, g), (rr, gr) = got, ref
    pairs = [("h", r.h, rr.h, "forward"), ("h_n", r.h_n, rr.h_n, "forward"),
             ("dx", g.dx, gr.dx, "grad"), ("dh0", g.dh0, gr.dh0, "grad")]
    if rr.c_n is not None:
        pairs += [("c_n", r.c_n, rr.c_n, "forward"), ("dc0", g.dc0, gr.dc0, "grad")]
    else:
        assert r.c_n is None and g.dc0 is None
    assert set(g.params) == set(gr.params)
    pairs += [(f"d{k}", g.params[k], gr.params[k], "grad") for k in gr.params]
    for name, a, b in ((n, a, b) for n, a, b, _ in pairs):
        assert tuple(a.shape) == tuple(b.shape), f"{what} {name}: shape {a.shape} vs {b.shape}"
        assert a.dtype == b.dtype, f"{what} {name}: dtype {a.dtype} vs {b.dtype}"
    for name, a, b, kind in pairs:
        err = assert_close(a, b, dtype, kind, f"{what} {name}".strip())
        record_error(f"{backend} vs reference {np.dtype(dtype).name} {kind}", err)


# ------------------------------------------------------------------ the main grid

@pytest.mark.parametrize("states", [False, True], ids=["nostates", "states"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_matches_reference(backend, rng, cell, dtype, mode, states):
    T, B, I, H = 6, 4, 3, 5
    use_lengths, reverse = MODES[mode]
    x, params, h0, c0, lens = _problem(rng, cell, T, B, I, H, dtype, use_lengths, states)
    up = make_upstream(rng, cell, T, B, H, dtype)
    ref = _run("numpy", cell, x, params, h0, c0, lens, reverse, *up)
    got = _run(backend, cell, x, params, h0, c0, lens, reverse, *up)
    assert_same(got, ref, dtype, backend)


def _upstream_cases():
    for cell, spec in CELLS.items():
        subsets = [(), ("dh",), ("dh_n",), ("dh", "dh_n")]
        if spec.has_cell_state:
            subsets += [("dc_n",), ("dh", "dc_n"), ("dh_n", "dc_n")]
        for given in subsets:
            yield pytest.param(cell, given, id=f"{cell}-{'+'.join(given) or 'none'}")


@pytest.mark.parametrize("cell, given", list(_upstream_cases()))
def test_upstream_gradients_may_be_omitted(backend, rng, cell, given):
    T, B, I, H = 5, 3, 4, 3
    x, params, h0, c0, lens = _problem(rng, cell, T, B, I, H, "float64", True, True)
    dh, dh_n, dc_n = make_upstream(rng, cell, T, B, H, "float64")
    up = [a if name in given else None for name, a in zip(("dh", "dh_n", "dc_n"), (dh, dh_n, dc_n))]
    ref = _run("numpy", cell, x, params, h0, c0, lens, True, *up)
    got = _run(backend, cell, x, params, h0, c0, lens, True, *up)
    assert_same(got, ref, "float64", backend)
    if not given:                       # no upstream gradient: every gradient is exactly 0
        g = got[1]
        assert not np.any(_np(g.dx)) and not any(np.any(_np(v)) for v in g.params.values())


@pytest.mark.parametrize("mode", ["plain", "lengths+reverse"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_inference_mode(backend, rng, cell, dtype, mode):
    """training=False: the same forward, and no tape."""
    use_lengths, reverse = MODES[mode]
    x, params, h0, c0, lens = _problem(rng, cell, 5, 3, 2, 4, dtype, use_lengths, True)
    ref = fastrnn.forward(cell, x, params, h0, c0, lengths=lens, reverse=reverse,
                          backend="numpy")
    got = fastrnn.forward(cell, x, params, h0, c0, lengths=lens, reverse=reverse,
                          backend=backend, training=False)
    assert got.tape is None
    for name in ("h", "h_n", "c_n"):
        a, b = getattr(got, name), getattr(ref, name)
        if b is None:
            assert a is None
        else:
            assert a.dtype == b.dtype
            record_error(f"{backend} vs reference {dtype} forward",
                         assert_close(a, b, dtype, "forward", name))


ODD_SIZES = [(1, 1, 1, 1), (1, 3, 2, 5), (4, 1, 5, 1), (3, 2, 7, 2), (2, 5, 1, 3), (7, 2, 3, 8)]


@pytest.mark.parametrize("T, B, I, H", ODD_SIZES, ids=["x".join(map(str, s)) for s in ODD_SIZES])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_odd_sizes(backend, rng, cell, dtype, T, B, I, H):
    x, params, h0, c0, lens = _problem(rng, cell, T, B, I, H, dtype, True, True)
    up = make_upstream(rng, cell, T, B, H, dtype)
    reverse = bool(rng.integers(2))
    ref = _run("numpy", cell, x, params, h0, c0, lens, reverse, *up)
    got = _run(backend, cell, x, params, h0, c0, lens, reverse, *up)
    assert_same(got, ref, dtype, backend, f"T={T} B={B} I={I} H={H} reverse={reverse}")


# ------------------------------------------------------------------ layouts

def _strided(a):
    if a is None:
        return None
    big = np.zeros(tuple(2 * s for s in a.shape), a.dtype)
    view = big[tuple(slice(None, None, 2) for _ in a.shape)]
    view[...] = a
    return view


@pytest.mark.parametrize("layout", ["batch_first", "strided", "fortran", "unbatched"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_layouts(backend, rng, cell, layout):
    """The backend on each input layout equals the reference on plain time-major arrays."""
    dtype = "float64"
    T, B, I, H = 4, 3, 2, 5
    if layout == "unbatched":
        B = 1
    x, params, h0, c0, lens = _problem(rng, cell, T, B, I, H, dtype, layout != "unbatched", True)
    up = make_upstream(rng, cell, T, B, H, dtype)
    ref = _run("numpy", cell, x, params, h0, c0, lens, True, *up)
    dh, dh_n, dc_n = up
    if layout == "batch_first":
        tr = lambda a: a.transpose(1, 0, 2).copy()  # noqa: E731
        res, g = _run(backend, cell, tr(x), params, h0, c0, lens, True, tr(dh), dh_n, dc_n,
                      batch_first=True)
        got = (fastrnn.ForwardResult(tr(_np(res.h)), res.h_n, res.c_n, None),
               fastrnn.Gradients(tr(_np(g.dx)), g.dh0, g.dc0, g.params))
    elif layout == "unbatched":
        c = (lambda a: None if a is None else a[0])  # noqa: E731
        res, g = _run(backend, cell, x[:, 0], params, h0[0], c(c0), None, True, dh[:, 0],
                      dh_n[0], c(dc_n))
        e = (lambda a: None if a is None else _np(a)[None])  # noqa: E731
        got = (fastrnn.ForwardResult(_np(res.h)[:, None], e(res.h_n), e(res.c_n), None),
               fastrnn.Gradients(_np(g.dx)[:, None], e(g.dh0), e(g.dc0), g.params))
    else:
        conv = _strided if layout == "strided" else (
            lambda a: None if a is None else np.asfortranarray(a))
        got = _run(backend, cell, conv(x), {k: conv(v) for k, v in params.items()}, conv(h0),
                   conv(c0), conv(lens), True, conv(dh), conv(dh_n), conv(dc_n))
    assert_same(got, ref, dtype, backend, layout)


# ------------------------------------------------------------------ readout

@pytest.mark.parametrize("shape", [(5, 3, 4), (1, 1, 1), (7, 4)], ids=["TBH", "111", "NH"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", ["softmax", "sigmoid", "linear"])
def test_readout(backend, rng, activation, dtype, shape):
    H, n_y = shape[-1], 3
    h = rng.standard_normal(shape).astype(dtype)
    Wy = rng.standard_normal((H, n_y)).astype(dtype)
    by = rng.standard_normal(n_y).astype(dtype)
    dy = rng.standard_normal(shape[:-1] + (n_y,)).astype(dtype)
    y_ref, t_ref = fastrnn.readout(h, Wy, by, activation, backend="numpy")
    y, t = fastrnn.readout(h, Wy, by, activation, backend=backend)
    assert tuple(y.shape) == y_ref.shape and y.dtype == y_ref.dtype
    record_error(f"{backend} vs reference {dtype} readout",
                 assert_close(y, y_ref, dtype, "forward", "y"))
    for name, a, b in zip(("dh", "dWy", "dby"), fastrnn.readout_backward(t, dy),
                          fastrnn.readout_backward(t_ref, dy)):
        assert tuple(a.shape) == b.shape
        record_error(f"{backend} vs reference {dtype} readout",
                     assert_close(a, b, dtype, "grad", name))


# ------------------------------------------------------------------ single-step chain

def _single_step_chain(backend, cell, x, params, h0, c0, reverse, dh, dh_n, dc_n):
    """forward one step at a time (feeding h_n, c_n back in), then backward chained by hand."""
    T = x.shape[0]
    order = range(T - 1, -1, -1) if reverse else range(T)
    on = lambda a: to_backend(backend, a)              # noqa: E731 - results feed back in
    h, c, tapes = on(h0), on(c0), []
    xb, pb, dhb = on(x), on(params), on(dh)
    outs = np.zeros((T,) + h0.shape, dtype=x.dtype)
    for t in order:
        r = fastrnn.forward(cell, xb[t:t + 1], pb, h, c, backend=backend)
        outs[t] = _np(r.h)[0]
        h, c = r.h_n, r.c_n
        tapes.append((t, r.tape))
    dx = np.zeros_like(x)
    dparams = {k: np.zeros_like(v) for k, v in params.items()}
    dh_c, dc_c = on(dh_n), on(dc_n)
    for t, tape in reversed(tapes):
        g = fastrnn.backward(tape, dhb[t:t + 1], dh_c, dc_c)
        dx[t] = _np(g.dx)[0]
        dh_c, dc_c = g.dh0, g.dc0
        for k in dparams:
            dparams[k] += _np(g.params[k])
    res = fastrnn.ForwardResult(outs, _np(h), _np(c), None)
    return res, fastrnn.Gradients(dx, _np(dh_c), _np(dc_c), dparams)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell", list(CELLS))
def test_single_step_chain_equals_whole_sequence(any_backend, rng, cell, reverse):
    """On the reference and on each fast backend (``any_backend``)."""
    T, B, I, H = 5, 3, 2, 4
    x, params, h0, c0, _ = _problem(rng, cell, T, B, I, H, "float64", False, True)
    up = make_upstream(rng, cell, T, B, H, "float64")
    ref = _run("numpy", cell, x, params, h0, c0, None, reverse, *up)
    got = _single_step_chain(any_backend, cell, x, params, h0, c0, reverse, *up)
    assert_same(got, ref, "float64", f"{any_backend} (T=1 chain)", "chain of T=1 calls")


# ------------------------------------------------------------------ backend choice

def test_auto_picks_numba_for_numpy_arrays(monkeypatch):
    require_backend("numba")          # a hard dependency: missing numba fails here
    monkeypatch.setattr(fastrnn.config, "backend", "auto")
    rng = np.random.default_rng(0)
    x, params, h0, c0, _ = make_problem(rng, "gru", 3, 2, 2, 3)
    assert auto_backend_name(x) == "numba"
    assert fastrnn.forward("gru", x, params, h0).tape.backend.name == "numba"
    assert fastrnn.forward("gru", x, params, h0, backend="auto").tape.backend.name == "numba"
    assert "numba" in fastrnn.available_backends()


def test_environment_variable_overrides_auto(backend, monkeypatch):
    rng = np.random.default_rng(1)
    x, params, h0, c0, _ = make_problem(rng, "lstm", 3, 2, 2, 3)
    monkeypatch.setattr(fastrnn.config, "backend", "numpy")
    assert fastrnn.forward("lstm", x, params, backend="auto").tape.backend.name == "numpy"
    # an explicit name is not a default: it wins over the variable
    res = fastrnn.forward("lstm", x, params, backend=backend)
    assert res.tape.backend.name == backend
    monkeypatch.setattr(fastrnn.config, "backend", backend)
    assert fastrnn.forward("lstm", x, params).tape.backend.name == backend
    layer = fastrnn.LSTM(2, 3, dtype="float64")
    assert layer(to_backend(backend, x)).tape.backend.name == backend


def test_environment_variables_set_the_config_at_import():
    import subprocess
    import sys
    code = ("import fastrnn; c = fastrnn.config; "
            "print(c.backend, c.workspace_mb, c.cupy_persistent)")
    env = dict(os.environ, FASTRNN_BACKEND="numpy", FASTRNN_WORKSPACE_MB="12.5",
               FASTRNN_CUPY_PERSISTENT="Auto")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    assert out == ["numpy", "12.5", "auto"]


def test_tape_refused_by_another_backend(backend):
    rng = np.random.default_rng(2)
    x, params, h0, c0, _ = make_problem(rng, "rnn_tanh", 3, 2, 2, 3)
    res = fastrnn.forward("rnn_tanh", x, params, backend=backend)
    with pytest.raises(ValueError, match=rf"^backend: this tape was made by backend '{backend}'"):
        fastrnn.backward(res.tape, dh_n=np.ones((2, 3)), backend="numpy")
    g = fastrnn.backward(res.tape, dh_n=np.ones((2, 3)), backend=backend)
    assert tuple(g.dx.shape) == x.shape


@pytest.mark.parametrize("cls, kw", [(fastrnn.LSTM, {}), (fastrnn.GRU, {"reset_after": False}),
                                     (fastrnn.RNN, {"nonlinearity": "relu"})])
def test_layers_on_backend(backend, rng, cls, kw):
    ref_layer = cls(3, 4, backend="numpy", dtype="float64", seed=3, **kw)
    layer = cls(3, 4, backend=backend, dtype="float64", seed=3, **kw)
    x = rng.standard_normal((5, 2, 3))
    dh = rng.standard_normal((5, 2, 4))
    ref = ref_layer(x, lengths=[5, 2])
    got = layer(to_backend(backend, x), lengths=[5, 2])       # the layer's arrays are there
    assert_close(got.h, ref.h, "float64", "forward", "h")
    gr, gg = ref_layer.backward(ref, dh), layer.backward(got, to_backend(backend, dh))
    assert_close(gg.dx, gr.dx, "float64", "grad", "dx")
    for k in gr.params:
        assert_close(gg.params[k], gr.params[k], "float64", "grad", f"d{k}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", list(fastrnn.CELLS))
def test_batch_split_over_threads(backend, cell, dtype, rng, monkeypatch):
    """A batch split into several thread chunks (5 of 8 rows here, whatever the number of
    cores), not a multiple of the tile height, with lengths and reverse: the chunks must
    not see each other's rows."""
    monkeypatch.setattr(fastrnn.config, "chunk_rows", 8)
    T, B, I, H = 5, 37, 6, 9
    x, params, h0, c0, lens = make_problem(rng, cell, T, B, I, H, dtype, lengths=True,
                                           states=True)
    dh, dh_n, dc_n = make_upstream(rng, cell, T, B, H, dtype)
    for reverse in (False, True):
        ref = fastrnn.forward(cell, x, params, h0, c0, lengths=lens, reverse=reverse,
                              backend="numpy")
        res = fastrnn.forward(cell, x, params, h0, c0, lengths=lens, reverse=reverse,
                              backend=backend)
        assert_close(res.h, ref.h, dtype, "forward", "h")
        assert_close(res.h_n, ref.h_n, dtype, "forward", "h_n")
        g_ref = fastrnn.backward(ref.tape, dh, dh_n, dc_n)
        g = fastrnn.backward(res.tape, dh, dh_n, dc_n)
        assert_close(g.dx, g_ref.dx, dtype, "grad", "dx")
        assert_close(g.dh0, g_ref.dh0, dtype, "grad", "dh0")
        if ref.c_n is not None:                 # the LSTM cell state must not leak either
            assert_close(res.c_n, ref.c_n, dtype, "forward", "c_n")
            assert_close(g.dc0, g_ref.dc0, dtype, "grad", "dc0")
        else:
            assert res.c_n is None and g.dc0 is None
        for k in g_ref.params:
            assert_close(g.params[k], g_ref.params[k], dtype, "grad", f"d{k}")
