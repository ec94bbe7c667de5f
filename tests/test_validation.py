"""Bad input is refused with an error naming the argument; odd but valid input just works.

The first half is the catalogue of issue 2, item 7: one test per case, each asserting the
exception type and that the message names the offending argument. The second half checks
the promises about valid input on every backend: user arrays are never written, read-only,
strided and Fortran-ordered arrays give the same numbers, NaN stays in its own sequence
(and padded positions are never read), the sigmoid cannot overflow, unbatched input is
the batched computation with B = 1.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import fastrnn
from fastrnn import backends as backends_mod
from fastrnn.backends import Backend, BackendUnavailableError
from fastrnn.core.cells import CELLS, sigmoid
from conftest import make_problem, make_upstream, run_both, to_backend
from fastrnn.core.tolerances import TOLERANCES
from assertions import assert_close

T, B, I, H = 4, 3, 2, 5


def _problem(cell="lstm", dtype="float64", seed=0, states=True):
    rng = np.random.default_rng(seed)
    return make_problem(rng, cell, T, B, I, H, dtype=dtype, states=states)


def _fwd(cell="lstm", **kw):
    x, params, h0, c0, _ = _problem(cell)
    args = dict(x=x, params=params, h0=h0, c0=c0)
    args.update(kw)
    return fastrnn.forward(cell, args.pop("x"), args.pop("params"), args.pop("h0"),
                           args.pop("c0"), backend="numpy", **args)


# ====================================================================== the catalogue

# ---- x

@pytest.mark.parametrize("shape", [(T,), (1, T, B, I)], ids=["1d", "4d"])
def test_x_wrong_ndim(shape):
    with pytest.raises(ValueError, match=r"^x: expected a 3-d array"):
        _fwd(x=np.zeros(shape))


def test_x_empty():
    with pytest.raises(ValueError, match=r"^x: expected at least one time step"):
        _fwd(x=np.zeros((0, B, I)))


@pytest.mark.parametrize("dtype", ["int64", "bool", "complex128", "float16"])
def test_x_not_float(dtype):
    with pytest.raises(TypeError, match=rf"^x: expected a floating dtype .*got {dtype}"):
        _fwd(x=np.zeros((T, B, I), dtype=dtype))


def test_x_not_an_array():
    with pytest.raises(TypeError, match=r"^x: expected"):
        _fwd(x=object())


def test_x_disagrees_with_W():
    with pytest.raises(ValueError, match=r"^params\['W'\]: expected shape \(3, 20\)"):
        _fwd(x=np.zeros((T, B, 3)))


# ---- params

def test_params_not_a_mapping():
    x, params, *_ = _problem()
    with pytest.raises(TypeError, match=r"^params: expected a mapping"):
        _fwd(params=list(params.values()))


@pytest.mark.parametrize("cell, name", [("lstm", "W"), ("lstm", "U"), ("lstm", "b"), ("gru", "bn")])
def test_params_missing(cell, name):
    x, params, h0, c0, _ = _problem(cell)
    del params[name]
    with pytest.raises(ValueError, match=rf"^params: cell '{cell}' needs .*missing {name}$"):
        fastrnn.forward(cell, x, params, h0, c0, backend="numpy")


@pytest.mark.parametrize("cell, extra", [("lstm", "bn"), ("gru_reset_before", "bn"),
                                         ("rnn_tanh", "W_hh")])
def test_params_extra(cell, extra):
    x, params, h0, c0, _ = _problem(cell)
    params[extra] = np.zeros(H)
    with pytest.raises(ValueError, match=rf"^params: unexpected parameter\(s\) '{extra}'"):
        fastrnn.forward(cell, x, params, h0, c0, backend="numpy")


@pytest.mark.parametrize("name, shape", [("U", (H,)), ("U", (H, 3 * H)), ("W", (I, 4 * H + 1)),
                                         ("W", (4 * H, I)), ("b", (4 * H, 1)), ("b", (H,))])
def test_params_misshapen(name, shape):
    x, params, h0, c0, _ = _problem("lstm")
    params[name] = np.zeros(shape)
    with pytest.raises(ValueError, match=rf"^params\['{name}'\]: expected"):
        fastrnn.forward("lstm", x, params, h0, c0, backend="numpy")


def test_params_bn_misshapen():
    x, params, h0, c0, _ = _problem("gru")
    params["bn"] = np.zeros(3 * H)
    with pytest.raises(ValueError, match=r"^params\['bn'\]: expected shape \(5,\)"):
        fastrnn.forward("gru", x, params, h0, backend="numpy")


@pytest.mark.parametrize("name", ["W", "U", "b"])
def test_params_int(name):
    x, params, h0, c0, _ = _problem("lstm")
    params[name] = params[name].astype(np.int64)
    with pytest.raises(TypeError, match=rf"^params\['{name}'\]: expected a floating dtype"):
        fastrnn.forward("lstm", x, params, h0, c0, backend="numpy")


# ---- mixed dtypes

def test_x_float32_params_float64():
    x, params, h0, c0, _ = _problem("lstm")
    with pytest.raises(TypeError, match=r"^params\['W'\]: expected dtype float32 .*got float64"):
        fastrnn.forward("lstm", x.astype(np.float32), params, backend="numpy")


def test_params_of_two_dtypes():
    x, params, h0, c0, _ = _problem("gru")
    params["U"] = params["U"].astype(np.float32)
    with pytest.raises(TypeError, match=r"^params\['U'\]: expected dtype float64"):
        fastrnn.forward("gru", x, params, backend="numpy")


@pytest.mark.parametrize("name", ["h0", "c0"])
def test_state_other_dtype(name):
    x, params, h0, c0, _ = _problem("lstm")
    states = {"h0": h0, "c0": c0}
    states[name] = states[name].astype(np.float32)
    with pytest.raises(TypeError, match=rf"^{name}: expected dtype float64 .*got float32"):
        fastrnn.forward("lstm", x, params, states["h0"], states["c0"], backend="numpy")


# ---- states

@pytest.mark.parametrize("name", ["h0", "c0"])
@pytest.mark.parametrize("shape", [(B, H + 1), (B + 1, H), (H,), (1, B, H)])
def test_state_wrong_shape(name, shape):
    x, params, h0, c0, _ = _problem("lstm")
    states = {"h0": h0, "c0": c0}
    states[name] = np.zeros(shape)
    with pytest.raises(ValueError, match=rf"^{name}: expected shape \({B}, {H}\)"):
        fastrnn.forward("lstm", x, params, states["h0"], states["c0"], backend="numpy")


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "gru", "gru_reset_before"])
def test_c0_for_cell_without_cell_state(cell):
    x, params, h0, _, _ = _problem(cell)
    with pytest.raises(ValueError, match=rf"^c0: cell '{cell}' has no cell state"):
        fastrnn.forward(cell, x, params, h0, np.zeros((B, H)), backend="numpy")


# ---- lengths

@pytest.mark.parametrize("lengths", [[0, 1, 2], [T + 1, 1, 2], [-1, T, T]],
                         ids=["zero", "T+1", "negative"])
def test_lengths_out_of_range(lengths):
    with pytest.raises(ValueError, match=rf"^lengths: expected values in 1\.\.{T}"):
        _fwd(lengths=lengths)


@pytest.mark.parametrize("lengths", [[1, 2], [1, 2, 3, 4], [[1, 2, 3]], 2],
                         ids=["too_few", "too_many", "2d", "scalar"])
def test_lengths_wrong_count(lengths):
    with pytest.raises(ValueError, match=rf"^lengths: expected shape \({B},\)"):
        _fwd(lengths=lengths)


@pytest.mark.parametrize("lengths", [np.array([1.0, 2.0, 3.0]), np.array([True, True, True])],
                         ids=["float", "bool"])
def test_lengths_not_integer(lengths):
    with pytest.raises(TypeError, match=r"^lengths: expected integers"):
        _fwd(lengths=lengths)


def test_lengths_with_unbatched_input():
    x, params, *_ = _problem("gru")
    with pytest.raises(ValueError, match=r"^lengths: unbatched input"):
        fastrnn.forward("gru", x[:, 0], params, lengths=[T], backend="numpy")


# ---- cell and backend names

@pytest.mark.parametrize("cell", ["lsmt", "GRU_after", ""])
def test_unknown_cell(cell):
    x, params, *_ = _problem("lstm")
    with pytest.raises(ValueError, match=rf"^cell: unknown cell {cell!r}"):
        fastrnn.forward(cell, x, params, backend="numpy")


def test_cell_not_a_string():
    x, params, *_ = _problem("lstm")
    with pytest.raises(TypeError, match=r"^cell: expected a cell name"):
        fastrnn.forward(3, x, params, backend="numpy")


def test_unknown_backend():
    x, params, *_ = _problem("lstm")
    with pytest.raises(ValueError, match=r"^backend: unknown backend 'numpyy'"):
        fastrnn.forward("lstm", x, params, backend="numpyy")


def test_backend_not_a_string():
    x, params, *_ = _problem("lstm")
    with pytest.raises(TypeError, match=r"^backend: expected a backend name"):
        fastrnn.forward("lstm", x, params, backend=1)


def test_unknown_backend_from_config(monkeypatch):
    monkeypatch.setattr(fastrnn.config, "backend", "tpu")
    x, params, *_ = _problem("lstm")
    with pytest.raises(ValueError, match=r"^backend: unknown backend 'tpu'"):
        fastrnn.forward("lstm", x, params)


def test_unavailable_backend_says_why(monkeypatch):
    class Broken(Backend):
        name = "broken"

        @classmethod
        def unavailable_reason(cls):
            return "the frobnicator is not plugged in"

    monkeypatch.setitem(backends_mod._REGISTRY, "broken", Broken)
    monkeypatch.setattr(backends_mod, "_reasons", {})
    x, params, *_ = _problem("lstm")
    with pytest.raises(BackendUnavailableError,
                       match=r"backend 'broken' cannot run here: the frobnicator is not "
                             r"plugged in"):
        fastrnn.forward("lstm", x, params, backend="broken")
    assert "broken" not in fastrnn.available_backends()
    assert "frobnicator" in fastrnn.unavailable_reasons()["broken"]


# ---- backward: upstream gradients

def _res(cell="lstm", **kw):
    return _fwd(cell, **kw)


@pytest.mark.parametrize("name, shape", [("dh", (T, B, H + 1)), ("dh", (B, T, H)),
                                         ("dh", (T, B)), ("dh_n", (B, H + 1)),
                                         ("dh_n", (T, B, H)), ("dc_n", (B + 1, H))])
def test_upstream_wrong_shape(name, shape):
    res = _res()
    with pytest.raises(ValueError, match=rf"^{name}: expected shape"):
        fastrnn.backward(res.tape, **{name: np.zeros(shape)})


@pytest.mark.parametrize("name, shape", [("dh", (T, B, H)), ("dh_n", (B, H)), ("dc_n", (B, H))])
@pytest.mark.parametrize("dtype", ["float32", "int64"])
def test_upstream_wrong_dtype(name, shape, dtype):
    res = _res()
    with pytest.raises(TypeError, match=rf"^{name}: expected dtype float64 .*got {dtype}"):
        fastrnn.backward(res.tape, **{name: np.zeros(shape, dtype=dtype)})


@pytest.mark.parametrize("cell", ["rnn_tanh", "gru"])
def test_dc_n_for_cell_without_cell_state(cell):
    res = _fwd(cell, c0=None)
    with pytest.raises(ValueError, match=rf"^dc_n: cell '{cell}' has no cell state"):
        fastrnn.backward(res.tape, dc_n=np.zeros((B, H)))


# ---- backward: the tape

def test_backward_without_tape():
    res = _res(training=False)
    assert res.tape is None
    with pytest.raises(ValueError, match=r"^tape: got None; a forward run with training=False"):
        fastrnn.backward(res.tape, dh_n=np.ones((B, H)))
    with pytest.raises(ValueError, match=r"^tape: this result was made with training=False"):
        fastrnn.backward(res, dh_n=np.ones((B, H)))


def test_backward_of_something_else():
    with pytest.raises(TypeError, match=r"^tape: expected the \.tape of a forward result"):
        fastrnn.backward({"x": 1})


def test_backward_accepts_the_result_itself():
    res = _res()
    dh_n = np.ones((B, H))
    a, b = fastrnn.backward(res, dh_n=dh_n), fastrnn.backward(res.tape, dh_n=dh_n)
    assert np.array_equal(a.dx, b.dx)


@pytest.mark.parametrize("name", ["x", "h0", "c0", "W", "U", "b"])
def test_tape_inputs_modified_in_place(name):
    x, params, h0, c0, _ = _problem("lstm")
    res = fastrnn.forward("lstm", x, params, h0, c0, backend="numpy")
    arr = {"x": x, "h0": h0, "c0": c0, **params}[name]
    arr.reshape(-1)[0] += 1.0
    label = name if name in ("x", "h0", "c0") else rf"params\['{name}'\]"
    with pytest.raises(ValueError, match=rf"^tape: {label} changed in place after the forward"):
        fastrnn.backward(res.tape, dh_n=np.ones((B, H)))


def test_unguarded_tape_skips_the_check():
    """guard=False (what fastrnn.torch passes; torch's version counters guard there) keeps
    no checksum: backward runs on the changed arrays instead of refusing."""
    x, params, h0, c0, _ = _problem("lstm")
    res = fastrnn.forward("lstm", x, params, h0, c0, backend="numpy", guard=False)
    params["U"].reshape(-1)[0] += 1.0
    g = fastrnn.backward(res.tape, dh_n=np.ones((B, H)))
    assert np.isfinite(g.params["U"]).all()


def test_tape_of_strided_input_is_a_private_copy():
    """A non-contiguous x is copied into the tape: changing the user's array later is harmless."""
    x, params, h0, c0, _ = _problem("lstm")
    xs = np.repeat(x, 2, axis=2)[:, :, ::2]
    res = fastrnn.forward("lstm", xs, params, h0, c0, backend="numpy")
    before = fastrnn.backward(res.tape, dh_n=np.ones((B, H))).dx
    xs[...] = 7.0
    after = fastrnn.backward(res.tape, dh_n=np.ones((B, H))).dx
    assert np.array_equal(before, after)


@pytest.mark.parametrize("other", ["numba", "cupy"])
def test_tape_handed_to_another_backend(other):
    res = _res()
    with pytest.raises(ValueError,
                       match=rf"^backend: this tape was made by backend 'numpy'.*{other!r}"):
        fastrnn.backward(res.tape, dh_n=np.ones((B, H)), backend=other)


# ---- readout

def test_readout_bad_activation():
    with pytest.raises(ValueError, match=r"^activation: expected one of softmax, sigmoid, linear"):
        fastrnn.readout(np.zeros((T, B, H)), np.zeros((H, 2)), np.zeros(2), "tanh",
                        backend="numpy")


@pytest.mark.parametrize("name, Wy, by", [("Wy", (H + 1, 2), (2,)), ("Wy", (H,), (2,)),
                                          ("by", (H, 2), (3,))])
def test_readout_misshapen(name, Wy, by):
    with pytest.raises(ValueError, match=rf"^{name}: expected shape"):
        fastrnn.readout(np.zeros((T, B, H)), np.zeros(Wy), np.zeros(by), backend="numpy")


def test_readout_mixed_dtypes_and_int_h():
    h = np.zeros((T, B, H))
    with pytest.raises(TypeError, match=r"^Wy: expected dtype float64"):
        fastrnn.readout(h, np.zeros((H, 2), np.float32), np.zeros(2), backend="numpy")
    with pytest.raises(TypeError, match=r"^h: expected a floating dtype"):
        fastrnn.readout(h.astype(int), np.zeros((H, 2)), np.zeros(2), backend="numpy")


def test_readout_backward_bad_dy_and_modified_tape():
    h, Wy = np.ones((T, B, H)), np.ones((H, 2))
    _, rtape = fastrnn.readout(h, Wy, np.zeros(2), backend="numpy")
    with pytest.raises(ValueError, match=r"^dy: expected shape \(4, 3, 2\)"):
        fastrnn.readout_backward(rtape, np.zeros((T, B, 3)))
    with pytest.raises(TypeError, match=r"^rtape: expected the tape returned by readout"):
        fastrnn.readout_backward(None, np.zeros((T, B, 2)))
    Wy[0, 0] = 2.0
    with pytest.raises(ValueError, match=r"^rtape: h or Wy changed in place"):
        fastrnn.readout_backward(rtape, np.zeros((T, B, 2)))


# ====================================================================== valid input

MODE_IDS = ["plain", "lengths+reverse"]


def _np(a):
    """A backend's result as a NumPy array (device arrays are copied to the host)."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _full_run(backend, cell, x, params, h0, c0, lengths, reverse, dh, dh_n, dc_n):
    return run_both(cell, x, params, h0, c0, lengths, reverse, dh, dh_n, dc_n, backend)


def _assert_same_run(a, b, dtype, what):
    (ra, ga), (rb, gb) = a, b
    pairs = [("h", ra.h, rb.h, "forward"), ("h_n", ra.h_n, rb.h_n, "forward"),
             ("dx", ga.dx, gb.dx, "grad"), ("dh0", ga.dh0, gb.dh0, "grad")]
    if ra.c_n is not None:
        pairs += [("c_n", ra.c_n, rb.c_n, "forward"), ("dc0", ga.dc0, gb.dc0, "grad")]
    pairs += [(f"d{k}", ga.params[k], gb.params[k], "grad") for k in gb.params]
    for name, x, y, kind in pairs:
        assert_close(x, y, dtype, kind, f"{what}: {name}")


def _problem_with_upstream(rng, cell, dtype, lengths=True):
    x, params, h0, c0, lens = make_problem(rng, cell, T, B, I, H, dtype, lengths=lengths,
                                           states=True)
    return (x, params, h0, c0, lens) + make_upstream(rng, cell, T, B, H, dtype)


@pytest.mark.parametrize("cell", list(CELLS))
def test_user_arrays_never_modified(any_backend, rng, cell):
    x, params, h0, c0, lens, dh, dh_n, dc_n = _problem_with_upstream(rng, cell, "float64")
    originals = [x, h0, c0, lens, dh, dh_n, dc_n, *params.values()]
    copies = [None if a is None else a.copy() for a in originals]
    res, g = _full_run(any_backend, cell, x, params, h0, c0, lens, True, dh, dh_n, dc_n)
    p = to_backend(any_backend, {k: v.copy() for k, v in params.items()})
    y, rtape = fastrnn.readout(res.h, p["U"][:, :2], p["b"][:2], backend=any_backend)
    fastrnn.readout_backward(rtape, y * 0 + 1)
    for a, c in zip(originals, copies):
        assert (a is None and c is None) or np.array_equal(a, c)
    # and nothing handed back aliases an input (device results cannot)
    for out in [res.h, res.h_n, res.c_n, g.dx, g.dh0, g.dc0, *g.params.values()]:
        for a in originals:
            if isinstance(out, np.ndarray) and a is not None:
                assert not np.shares_memory(out, a)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layout", ["readonly", "strided", "fortran"])
def test_readonly_strided_fortran_inputs(any_backend, rng, cell, dtype, layout):
    x, params, h0, c0, lens, dh, dh_n, dc_n = _problem_with_upstream(rng, cell, dtype)
    ref = _full_run(any_backend, cell, x, params, h0, c0, lens, True, dh, dh_n, dc_n)

    def convert(a):
        if a is None:
            return None
        if layout == "readonly":
            a = a.copy()
            a.flags.writeable = False
            return a
        if layout == "fortran":
            return np.asfortranarray(a)
        big = np.zeros(tuple(3 * s for s in a.shape), a.dtype)   # every axis strided
        view = big[tuple(slice(1, None, 3) for _ in a.shape)]
        view[...] = a
        return view

    args = [convert(a) for a in (x, h0, c0, lens, dh, dh_n, dc_n)]
    p = {k: convert(v) for k, v in params.items()}
    if layout == "strided":
        assert not args[0].flags.c_contiguous and not p["U"].flags.c_contiguous
    got = _full_run(any_backend, cell, args[0], p, *args[1:4], True, *args[4:])
    _assert_same_run(got, ref, dtype, layout)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("lengths, reverse", [(False, False), (True, True)], ids=MODE_IDS)
def test_nan_stays_in_its_sequence(any_backend, rng, cell, lengths, reverse):
    """x[:, 0] = NaN poisons sequence 0 only: the others equal a run without it."""
    x, params, h0, c0, lens, dh, dh_n, dc_n = _problem_with_upstream(rng, cell, "float64",
                                                                    lengths)
    x[:, 0] = np.nan
    res, g = _full_run(any_backend, cell, x, params, h0, c0, lens, reverse, dh, dh_n, dc_n)
    rest = slice(1, None)
    sub = _full_run(any_backend, cell, x[:, rest], params, h0[rest],
                    None if c0 is None else c0[rest], None if lens is None else lens[rest],
                    reverse, dh[:, rest], dh_n[rest], None if dc_n is None else dc_n[rest])
    pairs = [("h", res.h[:, rest], sub[0].h), ("h_n", res.h_n[rest], sub[0].h_n),
             ("dx", g.dx[:, rest], sub[1].dx), ("dh0", g.dh0[rest], sub[1].dh0)]
    if res.c_n is not None:
        pairs += [("c_n", res.c_n[rest], sub[0].c_n), ("dc0", g.dc0[rest], sub[1].dc0)]
    for name, a, b in pairs:
        assert np.isfinite(_np(a)).all(), f"NaN of sequence 0 leaked into {name}"
        assert_close(a, b, "float64", "grad", name)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("reverse", [False, True])
def test_nan_in_padding_is_never_read(any_backend, rng, cell, reverse):
    """x beyond each sequence's length may hold anything: NaN there leaks nowhere."""
    x, params, h0, c0, lens, dh, dh_n, dc_n = _problem_with_upstream(rng, cell, "float64")
    lens = np.array([T, 1, 2])
    pad = np.arange(T)[:, None] >= lens[None, :]
    x[pad] = 0.0
    clean = _full_run(any_backend, cell, x, params, h0, c0, lens, reverse, dh, dh_n, dc_n)
    x[pad] = np.nan
    dh[pad] = np.nan          # upstream gradients at padded positions are not read either
    dirty = _full_run(any_backend, cell, x, params, h0, c0, lens, reverse, dh, dh_n, dc_n)
    res, g = dirty
    for name, a in [("h", res.h), ("h_n", res.h_n), ("c_n", res.c_n), ("dx", g.dx),
                    ("dh0", g.dh0), ("dc0", g.dc0), *g.params.items()]:
        assert a is None or np.isfinite(_np(a)).all(), f"NaN in padding leaked into {name}"
    _assert_same_run(dirty, clean, "float64", "NaN padding")
    assert np.all(_np(g.dx)[pad] == 0) and np.all(_np(res.h)[pad] == 0)


# Overflow, invalid operations (inf - inf, 0 * inf) and division by zero raise; underflow
# to 0 (exp(-1e4)) is the correct result of a saturated gate and stays allowed, as in
# NumPy's defaults.
RAISE_ON_ERROR = dict(over="raise", invalid="raise", divide="raise", under="ignore")


def test_sigmoid_overflow_safe():
    for dtype in ("float32", "float64"):
        a = np.array([-1e4, -800.0, -50.0, 0.0, 50.0, 800.0, 1e4], dtype=dtype)
        with np.errstate(**RAISE_ON_ERROR):
            s = sigmoid(a)
        assert s.dtype == dtype
        assert np.isfinite(s).all()
        assert s[0] == 0.0 and s[-1] == 1.0 and s[3] == 0.5
        np.testing.assert_allclose(s + sigmoid(-a), 1.0, rtol=1e-6)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_huge_preactivations_no_overflow(any_backend, rng, cell, dtype):
    """|x| ~ 1e4 saturates every gate: no floating-point warning, no NaN, forward or backward."""
    x, params, h0, c0, lens, dh, dh_n, dc_n = _problem_with_upstream(rng, cell, dtype)
    x = (np.sign(x) * 1e4).astype(dtype)
    with warnings.catch_warnings(), np.errstate(**RAISE_ON_ERROR):
        warnings.simplefilter("error")
        res, g = _full_run(any_backend, cell, x, params, h0, c0, lens, False, dh, dh_n, dc_n)
        p = to_backend(any_backend, params)          # beside res.h, on the backend's device
        for act in ("softmax", "sigmoid", "linear"):
            y, rt = fastrnn.readout(res.h * 1e4, p["U"][:, :3] * 1e2, p["b"][:3],
                                    act, backend=any_backend)
            dh_r, dWy, dby = fastrnn.readout_backward(rt, y * 0 + 1)
            for a in (y, dh_r, dWy, dby):
                assert np.isfinite(_np(a)).all(), f"readout {act}: non-finite values"
    for a in [res.h, res.h_n, res.c_n, g.dx, g.dh0, g.dc0, *g.params.values()]:
        assert a is None or np.isfinite(_np(a)).all()
    if cell != "rnn_relu":     # bounded gates: |h| <= 1, or |h0| for a GRU that keeps it
        assert np.abs(_np(res.h)).max() <= max(1.0, np.abs(h0).max())


@pytest.mark.parametrize("batch_first", [False, True])
def test_h_read_only_in_training_mode(batch_first):
    x, params, h0, c0, _ = _problem("lstm")
    if batch_first:
        x = x.transpose(1, 0, 2).copy()
    res = fastrnn.forward("lstm", x, params, h0, c0, batch_first=batch_first, backend="numpy")
    assert not res.h.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        res.h[0, 0, 0] = 1.0
    res2 = fastrnn.forward("lstm", x, params, h0, c0, batch_first=batch_first, backend="numpy",
                           training=False)
    assert res2.h.flags.writeable
    res2.h[0, 0, 0] = 1.0
    assert res2.tape is None


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("reverse", [False, True])
def test_unbatched_equals_batch_of_one(any_backend, rng, cell, reverse):
    x, params, h0, c0, _, dh, dh_n, dc_n = _problem_with_upstream(rng, cell, "float64", False)
    x1, h01, dh1, dhn1 = x[:, 0], h0[0], dh[:, 0], dh_n[0]
    c01, dcn1 = (None, None) if c0 is None else (c0[0], dc_n[0])
    res, g = _full_run(any_backend, cell, x1, params, h01, c01, None, reverse, dh1, dhn1, dcn1)
    assert res.h.shape == (T, H) and res.h_n.shape == (H,)
    assert g.dx.shape == (T, I) and g.dh0.shape == (H,)
    ref_r, ref_g = _full_run(any_backend, cell, x1[:, None], params, h01[None],
                             None if c01 is None else c01[None], None, reverse, dh1[:, None],
                             dhn1[None], None if dcn1 is None else dcn1[None])
    for name, a, b in [("h", res.h, ref_r.h[:, 0]), ("h_n", res.h_n, ref_r.h_n[0]),
                       ("dx", g.dx, ref_g.dx[:, 0]), ("dh0", g.dh0, ref_g.dh0[0])]:
        assert_close(a, b, "float64", "grad", name)
    if c0 is not None:
        assert res.c_n.shape == (H,) and g.dc0.shape == (H,)
        assert_close(res.c_n, ref_r.c_n[0], "float64", "forward", "c_n")
        assert_close(g.dc0, ref_g.dc0[0], "float64", "grad", "dc0")
    for k in params:
        assert_close(g.params[k], ref_g.params[k], "float64", "grad", f"d{k}")


def test_unbatched_state_shape_checked():
    x, params, h0, c0, _ = _problem("rnn_tanh")
    with pytest.raises(ValueError, match=rf"^h0: expected shape \({H},\)"):
        fastrnn.forward("rnn_tanh", x[:, 0], params, h0, backend="numpy")


def test_tolerance_table_is_the_one_used():
    """Self-check of the harness: assert_close fails above and passes below the tolerance."""
    a = np.ones(10)
    tol = TOLERANCES["float64"]["grad"]
    assert_close(a * (1 + tol / 2), a, "float64", "grad")
    with pytest.raises(AssertionError, match="relative error"):
        assert_close(a * (1 + 4 * tol), a, "float64", "grad")
