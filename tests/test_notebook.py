"""fastrnn.notebook against the course notebook's own code.

The specification is ``../shared/user-code/rnn_lstm_course_notebook.txt`` (beside the
repository, as in CI): its function definitions are cut out of the file at test time and
run, never retyped. The notebook imports ``softmax`` and ``sigmoid`` from the course's
``rnn_utils``, which the file does not contain; :data:`RNN_UTILS` gives them. The file
stops at "## Backpro of LSTM": for the LSTM backward the oracle is the course's
``lstm_cell_backward`` equations (:func:`course_lstm_cell_backward`), run on caches of the
notebook's own ``lstm_cell_forward`` and checked against finite differences of its
``lstm_forward``.
"""

import os
import re
from pathlib import Path

import numpy as np
import pytest

import fastrnn
import fastrnn.notebook as fnb
from assertions import assert_close
from conftest import record_error
from fastrnn.core.tolerances import (FD_EPS, FD_TOLERANCE, NOTEBOOK_TOLERANCES, TOLERANCES,
                                     rel_err)

# The shared folder beside the repository (CI checks it out there), or where
# FASTRNN_SHARED points (a copy on a GPU machine carries it inside the checkout).
SHARED = Path(os.environ.get("FASTRNN_SHARED") or
              Path(__file__).resolve().parents[1].parent / "shared")
NOTEBOOK = SHARED / "user-code" / "rnn_lstm_course_notebook.txt"
NOTEBOOK_FUNCTIONS = ("rnn_cell_forward", "rnn_forward", "rnn_cell_backward", "rnn_backward",
                      "lstm_cell_forward", "lstm_forward")
LSTM_GATES = ("f", "i", "c", "o")
LSTM_GRAD_KEYS = ("dx", "da0", "dWf", "dbf", "dWi", "dbi", "dWc", "dbc", "dWo", "dbo")

# (n_x, m, T_x, n_a, n_y): the notebook's own test sizes first (RNN, then LSTM), then
# every size at 1, one example, one step, one hidden unit, and a larger one.
SIZES = [pytest.param((3, 10, 4, 5, 2), id="notebook-rnn"),
         pytest.param((3, 10, 7, 5, 2), id="notebook-lstm"),
         pytest.param((1, 1, 1, 1, 1), id="all-1"),
         pytest.param((2, 1, 5, 3, 4), id="m=1"),
         pytest.param((3, 4, 1, 2, 3), id="T_x=1"),
         pytest.param((4, 3, 6, 1, 2), id="n_a=1"),
         pytest.param((5, 7, 9, 6, 3), id="larger")]


def _softmax(x):
    e_x = np.exp(x - np.max(x))
    return e_x / e_x.sum(axis=0)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


# The course's rnn_utils, which the notebook's first cell imports.
RNN_UTILS = {"softmax": _softmax, "sigmoid": _sigmoid}


def notebook_sources(text: str) -> dict:
    """name -> source of every top-level ``def`` in the notebook text (body: the indented
    and blank lines that follow it)."""
    lines = text.splitlines()
    sources = {}
    for i, line in enumerate(lines):
        match = re.match(r"def (\w+)\(", line)
        if match:
            end = i + 1
            while end < len(lines) and (not lines[end].strip() or lines[end][0] in " \t"):
                end += 1
            sources[match.group(1)] = "\n".join(lines[i:end])
    return sources


def load_notebook(**overrides) -> dict:
    """The notebook's functions run in one namespace, as in the notebook; ``overrides``
    replace names after (the notebook's loops then call the replacements)."""
    if not SHARED.is_dir():
        pytest.skip(f"no shared folder at {SHARED} (a copy of the repository without "
                    f"../shared beside it; set FASTRNN_SHARED): the course notebook that "
                    f"specifies fastrnn.notebook is not here")
    if not NOTEBOOK.is_file():
        raise FileNotFoundError(f"{NOTEBOOK}: the course notebook that specifies "
                                f"fastrnn.notebook; CI checks out ../shared beside the repository")
    ns = {"np": np, **RNN_UTILS}
    for name, source in notebook_sources(NOTEBOOK.read_text()).items():
        exec(compile(source, f"{NOTEBOOK.name}:{name}", "exec"), ns)
    ns.update(overrides)
    return ns


@pytest.fixture(scope="module")
def nb():
    return load_notebook()


# ---------------------------------------------------------------------------- problems

def rnn_parameters(rng, n_x, n_a, n_y, dtype=np.float64):
    shapes = {"Wax": (n_a, n_x), "Waa": (n_a, n_a), "Wya": (n_y, n_a), "ba": (n_a, 1),
              "by": (n_y, 1)}
    return {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}


def lstm_parameters(rng, n_x, n_a, n_y, dtype=np.float64):
    p = {}
    for g in LSTM_GATES:
        p[f"W{g}"] = rng.standard_normal((n_a, n_a + n_x)).astype(dtype)
        p[f"b{g}"] = rng.standard_normal((n_a, 1)).astype(dtype)
    p["Wy"] = rng.standard_normal((n_y, n_a)).astype(dtype)
    p["by"] = rng.standard_normal((n_y, 1)).astype(dtype)
    return p


def problem(rng, kind, size, dtype=np.float64):
    """(x (n_x, m, T_x), a0 (n_a, m), parameters) in the notebook's layout."""
    n_x, m, T_x, n_a, n_y = size
    make = rnn_parameters if kind == "rnn" else lstm_parameters
    return (rng.standard_normal((n_x, m, T_x)).astype(dtype),
            rng.standard_normal((n_a, m)).astype(dtype), make(rng, n_x, n_a, n_y, dtype))


def check(got, want, kind, what, table=NOTEBOOK_TOLERANCES, dtype="float64"):
    err = assert_close(got, want, dtype, kind, what, table=table)
    if table is NOTEBOOK_TOLERANCES:
        record_error(f"fastrnn.notebook vs the course notebook {kind}", err)
    return err


def check_dicts(got: dict, want: dict, what, **kwargs):
    """Same keys in the same order, every value close."""
    assert list(got) == list(want), f"{what}: keys {list(got)} != {list(want)}"
    for k in want:
        assert got[k].shape == np.shape(want[k]), f"{what}[{k!r}]"
        check(got[k], want[k], "grad", f"{what}[{k!r}]", **kwargs)


def check_step_cache(got, want, what):
    """One step's cache: the arrays close, the parameters the same dict."""
    assert isinstance(got, tuple) and len(got) == len(want), what
    for k, (g, w) in enumerate(zip(got[:-1], want[:-1])):
        assert np.shape(g) == np.shape(w), f"{what}[{k}]"
        check(g, w, "forward", f"{what}[{k}]")
    assert got[-1] is want[-1], f"{what}: parameters are not the caller's dict"


# ------------------------------------------------ the course's LSTM backward (the oracle)

def course_lstm_cell_backward(da_next, dc_next, cache):
    """The course's lstm_cell_backward, from its equations (the notebook file lacks it)."""
    (a_next, c_next, a_prev, c_prev, ft, it, cct, ot, xt, parameters) = cache
    n_a = a_next.shape[0]
    tanh_c = np.tanh(c_next)
    dc = dc_next + da_next * ot * (1 - tanh_c ** 2)
    dgate = {"o": da_next * tanh_c * ot * (1 - ot), "c": dc * it * (1 - cct ** 2),
             "i": dc * cct * it * (1 - it), "f": dc * c_prev * ft * (1 - ft)}
    concat = np.concatenate((a_prev, xt), axis=0)
    dconcat = sum(parameters[f"W{g}"].T @ dgate[g] for g in LSTM_GATES)
    grads = {"dxt": dconcat[n_a:], "da_prev": dconcat[:n_a], "dc_prev": dc * ft}
    for g in LSTM_GATES:
        grads[f"dW{g}"] = dgate[g] @ concat.T
        grads[f"db{g}"] = dgate[g].sum(axis=1, keepdims=True)
    return grads


def course_lstm_backward(da, caches):
    """The course's lstm_backward over a list of step caches (c0 = 0 is a constant)."""
    n_a, m, T_x = da.shape
    grads = {k: 0 for k in LSTM_GRAD_KEYS}
    grads["dx"] = np.zeros((caches[0][8].shape[0], m, T_x))
    da_prev, dc_prev = np.zeros((n_a, m)), np.zeros((n_a, m))
    for t in reversed(range(T_x)):
        g = course_lstm_cell_backward(da[:, :, t] + da_prev, dc_prev, caches[t])
        da_prev, dc_prev = g["da_prev"], g["dc_prev"]
        grads["dx"][:, :, t] = g["dxt"]
        for k in LSTM_GRAD_KEYS[2:]:
            grads[k] = grads[k] + g[k]
    grads["da0"] = da_prev
    return grads


def notebook_lstm_steps(nb, x, a0, parameters):
    """Step caches of the notebook's lstm_cell_forward chained from c0 = 0 (its
    lstm_forward's own caches hold a[:, :, 0] and c[:, :, 0] as step 0's a_prev and c_prev,
    which it overwrites with step 0's outputs)."""
    a, c, caches = a0, np.zeros_like(a0), []
    for t in range(x.shape[2]):
        a, c, _, cache = nb["lstm_cell_forward"](x[:, :, t], a, c, parameters)
        caches.append(cache)
    return caches


def readout_backward_oracle(dy, y, a, Wy):
    """The softmax readout's (da, dWy, dby) of dy for y = softmax(Wy a + by) per column."""
    dz = y * (dy - (dy * y).sum(axis=0, keepdims=True))
    return (np.einsum("ya,ymt->amt", Wy, dz), np.einsum("ymt,amt->ya", dz, a),
            dz.sum(axis=(1, 2))[:, None])


def finite_difference_gradients(loss, arrays: dict) -> dict:
    """Central differences of loss() in every entry of every array (changed in place)."""
    grads = {}
    for key, a in arrays.items():
        g = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            orig = a[idx]
            a[idx] = orig + FD_EPS
            up = loss()
            a[idx] = orig - FD_EPS
            g[idx] = (up - loss()) / (2 * FD_EPS)
            a[idx] = orig
        grads[key] = g
    return grads


# ------------------------------------------------------------------------- the file itself

def test_notebook_defines_the_functions_it_specifies():
    """If the notebook gains functions (its LSTM backward, say), they become oracles here."""
    assert tuple(notebook_sources(NOTEBOOK.read_text())) == NOTEBOOK_FUNCTIONS


def test_public_path_is_the_interop_module():
    import fastrnn.interop.notebook as implementation
    assert fnb is implementation
    from fastrnn.notebook import lstm_backward, lstm_forward, rnn_backward, rnn_forward
    assert (rnn_forward, rnn_backward, lstm_forward, lstm_backward) == (
        implementation.rnn_forward, implementation.rnn_backward, implementation.lstm_forward,
        implementation.lstm_backward)


# ----------------------------------------------------------------------------------- RNN

@pytest.mark.parametrize("size", SIZES)
def test_rnn_forward_matches_notebook(nb, rng, size):
    x, a0, p = problem(rng, "rnn", size)
    a, y_pred, caches = fnb.rnn_forward(x, a0, p)
    a_nb, y_nb, caches_nb = nb["rnn_forward"](x, a0, p)
    for got, want, what in ((a, a_nb, "a"), (y_pred, y_nb, "y_pred")):
        assert got.shape == want.shape and got.dtype == np.float64, what
        check(got, want, "forward", what)
    steps, x_back = caches
    assert x_back is x and len(steps) == x.shape[2]
    for t in range(x.shape[2]):
        check_step_cache(steps[t], caches_nb[0][t], f"caches[0][{t}]")
    assert steps[0][1] is a0


@pytest.mark.parametrize("size", SIZES)
def test_rnn_backward_matches_notebook(nb, rng, size):
    x, a0, p = problem(rng, "rnn", size)
    da = rng.standard_normal((size[3], size[1], size[2]))
    _, _, caches = fnb.rnn_forward(x, a0, p)
    want = nb["rnn_backward"](da, nb["rnn_forward"](x, a0, p)[2])
    check_dicts(fnb.rnn_backward(da, caches), want, "rnn_backward")
    # the notebook's own backward reads fastrnn's caches
    check_dicts(nb["rnn_backward"](da, caches), want, "notebook rnn_backward on our caches")


@pytest.mark.parametrize("size", SIZES)
def test_rnn_cell_functions_match_notebook(nb, rng, size):
    x, a_prev, p = problem(rng, "rnn", size)
    xt = x[:, :, 0]
    a_next, yt_pred, cache = fnb.rnn_cell_forward(xt, a_prev, p)
    a_nb, y_nb, cache_nb = nb["rnn_cell_forward"](xt, a_prev, p)
    check(a_next, a_nb, "forward", "a_next")
    check(yt_pred, y_nb, "forward", "yt_pred")
    check_step_cache(cache, cache_nb, "cache")
    assert cache[0] is a_next and cache[1] is a_prev and cache[2] is xt
    da_next = rng.standard_normal(a_next.shape)
    want = nb["rnn_cell_backward"](da_next, cache_nb)
    check_dicts(fnb.rnn_cell_backward(da_next, cache), want, "rnn_cell_backward")
    check_dicts(fnb.rnn_cell_backward(da_next, cache_nb), want,
                "rnn_cell_backward of the notebook's cache")


def test_notebook_loops_run_on_fastrnn_cells(nb, rng):
    """The notebook's rnn_forward/rnn_backward/lstm_forward calling fastrnn's cell functions."""
    mixed = load_notebook(rnn_cell_forward=fnb.rnn_cell_forward,
                          rnn_cell_backward=fnb.rnn_cell_backward,
                          lstm_cell_forward=fnb.lstm_cell_forward)
    size = (3, 4, 5, 2, 3)
    x, a0, p = problem(rng, "rnn", size)
    da = rng.standard_normal((size[3], size[1], size[2]))
    a, y, caches = mixed["rnn_forward"](x, a0, p)
    a_nb, y_nb, caches_nb = nb["rnn_forward"](x, a0, p)
    check(a, a_nb, "forward", "a")
    check(y, y_nb, "forward", "y_pred")
    check_dicts(mixed["rnn_backward"](da, caches), nb["rnn_backward"](da, caches_nb),
                "notebook rnn_backward on fastrnn cells")
    x, a0, p = problem(rng, "lstm", size)
    for got, want, what in zip(mixed["lstm_forward"](x, a0, p)[:3],
                               nb["lstm_forward"](x, a0, p)[:3], ("a", "y", "c")):
        check(got, want, "forward", what)


# ---------------------------------------------------------------------------------- LSTM

@pytest.mark.parametrize("size", SIZES)
def test_lstm_forward_matches_notebook(nb, rng, size):
    x, a0, p = problem(rng, "lstm", size)
    a, y, c, caches = fnb.lstm_forward(x, a0, p)
    a_nb, y_nb, c_nb, caches_nb = nb["lstm_forward"](x, a0, p)
    for got, want, what in ((a, a_nb, "a"), (y, y_nb, "y"), (c, c_nb, "c")):
        assert got.shape == want.shape and got.dtype == np.float64, what
        check(got, want, "forward", what)
    steps, x_back = caches
    assert x_back is x and len(steps) == x.shape[2]
    correct = notebook_lstm_steps(nb, x, a0, p)
    for t in range(x.shape[2]):
        check_step_cache(steps[t], correct[t], f"caches[0][{t}]")
        if t:       # from step 1 on, the notebook's lstm_forward keeps the same caches
            check_step_cache(steps[t], caches_nb[0][t], f"caches[0][{t}]")
    assert steps[0][2] is a0 and not steps[0][3].any()


@pytest.mark.parametrize("size", SIZES)
def test_lstm_cell_functions_match_notebook(nb, rng, size):
    x, a_prev, p = problem(rng, "lstm", size)
    xt, c_prev = x[:, :, 0], rng.standard_normal(a_prev.shape)
    a_next, c_next, yt, cache = fnb.lstm_cell_forward(xt, a_prev, c_prev, p)
    want = nb["lstm_cell_forward"](xt, a_prev, c_prev, p)
    for got, w, what in zip((a_next, c_next, yt), want[:3], ("a_next", "c_next", "yt_pred")):
        check(got, w, "forward", what)
    check_step_cache(cache, want[3], "cache")
    da_next, dc_next = rng.standard_normal(a_next.shape), rng.standard_normal(a_next.shape)
    oracle = course_lstm_cell_backward(da_next, dc_next, want[3])
    check_dicts(fnb.lstm_cell_backward(da_next, dc_next, cache), oracle, "lstm_cell_backward")
    check_dicts(fnb.lstm_cell_backward(da_next, dc_next, want[3]), oracle,
                "lstm_cell_backward of the notebook's cache")


@pytest.mark.parametrize("size", SIZES)
def test_lstm_backward_matches_course_equations(nb, rng, size):
    x, a0, p = problem(rng, "lstm", size)
    da = rng.standard_normal((size[3], size[1], size[2]))
    _, _, _, caches = fnb.lstm_forward(x, a0, p)
    want = course_lstm_backward(da, notebook_lstm_steps(nb, x, a0, p))
    check_dicts(fnb.lstm_backward(da, caches), want, "lstm_backward")
    check_dicts(course_lstm_backward(da, caches[0]), want, "course lstm_backward on our caches")


def test_course_lstm_equations_match_finite_differences(nb, rng):
    """The oracle itself, against the notebook's lstm_forward: L = sum(da * a)."""
    size = (2, 3, 4, 3, 2)
    x, a0, p = problem(rng, "lstm", size)
    da = rng.standard_normal((size[3], size[1], size[2]))
    want = course_lstm_backward(da, notebook_lstm_steps(nb, x, a0, p))
    wrt = {"dx": x, "da0": a0, **{f"d{k}": p[k] for k in p if k not in ("Wy", "by")}}
    fd = finite_difference_gradients(lambda: (da * nb["lstm_forward"](x, a0, p)[0]).sum(), wrt)
    for k in fd:
        assert rel_err(want[k], fd[k]) <= FD_TOLERANCE, k


# ------------------------------------------------------------------------ dy (an addition)

@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_backward_with_dy_adds_the_readout(nb, rng, kind):
    size = (3, 4, 5, 2, 3)
    x, a0, p = problem(rng, kind, size)
    da = rng.standard_normal((size[3], size[1], size[2]))
    dy = rng.standard_normal((size[4], size[1], size[2]))
    Wy = "Wya" if kind == "rnn" else "Wy"
    if kind == "rnn":
        a, y, caches_nb = nb["rnn_forward"](x, a0, p)
        da_y, dWy, dby = readout_backward_oracle(dy, y, a, p[Wy])
        want = nb["rnn_backward"](da + da_y, caches_nb)
        got = fnb.rnn_backward(da, fnb.rnn_forward(x, a0, p)[2], dy=dy)
    else:
        a, y, _, _ = nb["lstm_forward"](x, a0, p)
        da_y, dWy, dby = readout_backward_oracle(dy, y, a, p[Wy])
        want = course_lstm_backward(da + da_y, notebook_lstm_steps(nb, x, a0, p))
        got = fnb.lstm_backward(da, fnb.lstm_forward(x, a0, p)[3], dy=dy)
    check_dicts(got, {**want, f"d{Wy}": dWy, "dby": dby}, f"{kind}_backward with dy")


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_backward_with_dy_matches_finite_differences(nb, rng, kind):
    """L = sum(da * a) + sum(dy * y) through the notebook's own forward."""
    size = (2, 2, 3, 2, 3)
    x, a0, p = problem(rng, kind, size)
    da = rng.standard_normal((size[3], size[1], size[2]))
    dy = rng.standard_normal((size[4], size[1], size[2]))
    nb_forward = nb[f"{kind}_forward"]

    def loss():
        out = nb_forward(x, a0, p)
        return (da * out[0]).sum() + (dy * out[1]).sum()

    ours = getattr(fnb, f"{kind}_backward")(da, getattr(fnb, f"{kind}_forward")(x, a0, p)[-1],
                                            dy=dy)
    fd = finite_difference_gradients(loss, {"dx": x, "da0": a0, **{f"d{k}": v
                                                                    for k, v in p.items()}})
    assert sorted(ours) == sorted(fd)
    for k in fd:
        assert rel_err(ours[k], fd[k]) <= FD_TOLERANCE, k


# ------------------------------------------------------------------------------- caches

@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_caches_behave_as_the_notebooks(rng, kind):
    size = (3, 2, 5, 4, 2)
    x, a0, p = problem(rng, kind, size)
    out = getattr(fnb, f"{kind}_forward")(x, a0, p)
    backward = getattr(fnb, f"{kind}_backward")
    caches = out[-1]
    steps, x_back = caches
    assert isinstance(caches, tuple) and caches[1] is x_back is x
    T = x.shape[2]
    assert len(steps) == len(list(steps)) == len(list(reversed(steps))) == T
    for t in (-1, -T):
        for got, want in zip(steps[t][:-1], steps[t % T][:-1]):
            assert np.array_equal(got, want)
    assert len(steps[1:3]) == 2 and np.array_equal(steps[1:3][0][0], steps[1][0])
    for bad in (T, -T - 1):
        with pytest.raises(IndexError, match="T_x=5"):
            steps[bad]
    assert all(o.flags.writeable for o in out[:-1])
    da = rng.standard_normal((size[3], size[1], T))
    first = backward(da, caches)
    # what the caller gets are its own arrays: writing them changes neither caches nor tape
    before = steps[2][0].copy()
    out[0][...] = 0
    steps[2][0][...] = 7
    assert np.array_equal(steps[2][0], before)
    second = backward(da, caches)
    for k in first:
        assert np.array_equal(first[k], second[k]), k


def test_lstm_caches_outlive_later_runs(nb, rng):
    """The tape's buffers stay this forward's while its caches live, whatever runs next."""
    size = (3, 8, 6, 5, 2)
    x, a0, p = problem(rng, "lstm", size)
    da = rng.standard_normal((size[3], size[1], size[2]))
    caches = fnb.lstm_forward(x, a0, p)[3]
    for _ in range(3):
        other = problem(rng, "lstm", size)
        fnb.lstm_backward(da, fnb.lstm_forward(*other)[3])
    correct = notebook_lstm_steps(nb, x, a0, p)
    for t in range(size[2]):
        check_step_cache(caches[0][t], correct[t], f"caches[0][{t}]")
    check_dicts(fnb.lstm_backward(da, caches), course_lstm_backward(da, correct),
                "lstm_backward after other runs")


def test_backward_refuses_caches_it_cannot_run_on(nb, rng):
    size = (3, 2, 4, 5, 2)
    x, a0, p = problem(rng, "rnn", size)
    da = rng.standard_normal((5, 2, 4))
    with pytest.raises(TypeError, match="fastrnn.notebook.rnn_forward.*list"):
        fnb.rnn_backward(da, nb["rnn_forward"](x, a0, p)[2])
    with pytest.raises(TypeError, match="caches"):
        fnb.rnn_backward(da, None)
    lx, la0, lp = problem(rng, "lstm", size)
    with pytest.raises(ValueError, match="LSTM forward"):
        fnb.rnn_backward(da, fnb.lstm_forward(lx, la0, lp)[3])
    with pytest.raises(ValueError, match="RNN forward"):
        fnb.lstm_backward(da, fnb.rnn_forward(x, a0, p)[2])
    with pytest.raises(TypeError, match=r"cache: expected .*\(a_next, a_prev, xt, parameters\)"):
        fnb.rnn_cell_backward(da[:, :, 0], (x, a0))


# ------------------------------------------------------------------------------- errors

def test_missing_keys_name_the_key_and_its_shape(rng):
    x, a0, p = problem(rng, "rnn", (3, 2, 4, 5, 2))
    with pytest.raises(ValueError, match=r"missing 'Wya' of shape \(n_y, n_a\)"):
        fnb.rnn_forward(x, a0, {k: v for k, v in p.items() if k != "Wya"})
    with pytest.raises(ValueError, match=r"missing 'ba' of shape \(n_a, 1\)"):
        fnb.rnn_cell_forward(x[:, :, 0], a0, {k: v for k, v in p.items() if k != "ba"})
    lx, la0, lp = problem(rng, "lstm", (3, 2, 4, 5, 2))
    with pytest.raises(ValueError, match=r"missing 'Wo' of shape \(n_a, n_a \+ n_x\)"):
        fnb.lstm_forward(lx, la0, {k: v for k, v in lp.items() if k != "Wo"})
    with pytest.raises(ValueError, match="missing 'Wf'"):
        fnb.lstm_forward(x, a0, p)                           # RNN weights into the LSTM
    with pytest.raises(TypeError, match="parameters: expected the notebook's dict"):
        fnb.rnn_forward(x, a0, list(p.values()))


def test_wrong_shapes_name_the_key_and_the_shape_expected(rng):
    x, a0, p = problem(rng, "rnn", (3, 2, 4, 5, 2))
    cases = [("Waa", np.zeros((5, 4)), r"parameters\['Waa'\]: expected shape \(n_a, n_a\) = "
                                       r"\(5, 5\) \(n_x=3 and m=2 from x, n_a=5 from a0"),
             ("Wax", np.zeros((3, 5)), r"parameters\['Wax'\]: expected shape \(n_a, n_x\) = "
                                       r"\(5, 3\)"),
             ("ba", np.zeros(5), r"parameters\['ba'\]: expected shape \(n_a, 1\) = \(5, 1\)"),
             ("by", np.zeros((3, 1)), r"parameters\['by'\]: expected shape \(n_y, 1\) = \(2, 1\)"),
             ("Wya", np.zeros(5), r"parameters\['Wya'\]: expected shape \(n_y, n_a\)")]
    for key, value, message in cases:
        with pytest.raises(ValueError, match=message):
            fnb.rnn_forward(x, a0, dict(p, **{key: value}))
    lx, la0, lp = problem(rng, "lstm", (3, 2, 4, 5, 2))
    with pytest.raises(ValueError, match=r"parameters\['Wc'\]: expected shape "
                                         r"\(n_a, n_a \+ n_x\) = \(5, 8\)"):
        fnb.lstm_forward(lx, la0, dict(lp, Wc=lp["Wc"][:, :5]))


def test_argument_errors_name_the_argument(rng):
    size = (3, 2, 4, 5, 2)
    x, a0, p = problem(rng, "rnn", size)
    lx, la0, lp = problem(rng, "lstm", size)
    with pytest.raises(ValueError, match=r"x: expected shape \(n_x, m, T_x\)"):
        fnb.rnn_forward(x[:, :, 0], a0, p)
    with pytest.raises(ValueError, match=r"xt: expected shape \(n_x, m\)"):
        fnb.lstm_cell_forward(lx, la0, la0, lp)
    with pytest.raises(ValueError, match=r"x: expected shape .*every size at least 1"):
        fnb.rnn_forward(x[:, :, :0], a0, p)
    with pytest.raises(ValueError, match=r"a0: expected shape \(n_a, m\) with m=2 from x"):
        fnb.lstm_forward(lx, la0[:, :1], lp)
    with pytest.raises(ValueError, match=r"c_prev: expected shape \(n_a, m\) = \(5, 2\)"):
        fnb.lstm_cell_forward(lx[:, :, 0], la0, la0[:4], lp)
    with pytest.raises(TypeError, match="x: expected a real-valued array"):
        fnb.rnn_forward(x + 1j, a0, p)
    caches = fnb.rnn_forward(x, a0, p)[2]
    with pytest.raises(ValueError, match=r"da: expected shape \(n_a, m, T_x\) = \(5, 2, 4\)"):
        fnb.rnn_backward(np.zeros((5, 2, 3)), caches)
    with pytest.raises(ValueError, match=r"dy: expected shape \(n_y, m, T_x\) = \(2, 2, 4\)"):
        fnb.rnn_backward(np.zeros((5, 2, 4)), caches, dy=np.zeros((5, 2, 4)))
    cache = fnb.lstm_cell_forward(lx[:, :, 0], la0, la0, lp)[3]
    with pytest.raises(ValueError, match=r"dc_next: expected shape \(n_a, m\) = \(5, 2\)"):
        fnb.lstm_cell_backward(la0, la0.T, cache)


# ------------------------------------------------------------------------------- dtypes

@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_float32_inputs_compute_in_float32(nb, rng, kind):
    size = (3, 4, 6, 5, 2)
    x, a0, p = problem(rng, kind, size, np.float32)
    da = rng.standard_normal((size[3], size[1], size[2])).astype(np.float32)
    out = getattr(fnb, f"{kind}_forward")(x, a0, p)
    grads = getattr(fnb, f"{kind}_backward")(da, out[-1])
    p64 = {k: v.astype(np.float64) for k, v in p.items()}
    x64, a064, da64 = x.astype(np.float64), a0.astype(np.float64), da.astype(np.float64)
    want = nb[f"{kind}_forward"](x64, a064, p64)
    for got, w in zip(out[:-1], want[:-1]):
        assert got.dtype == np.float32
        check(got, w, "forward", f"{kind} float32", table=TOLERANCES,
              dtype="float32")
    want_grads = (nb["rnn_backward"](da64, want[2]) if kind == "rnn"
                  else course_lstm_backward(da64, notebook_lstm_steps(nb, x64, a064, p64)))
    for k in want_grads:
        assert grads[k].dtype == np.float32, k
        check(grads[k], want_grads[k], "grad", f"{kind} float32 {k}",
              table=TOLERANCES, dtype="float32")


def test_mixed_and_integer_inputs_promote_to_float64(nb, rng):
    size = (3, 4, 6, 5, 2)
    x, a0, p = problem(rng, "lstm", size)
    x_int = np.rint(3 * x).astype(np.int64)
    p32 = dict(p, Wy=p["Wy"].astype(np.float32))
    a, y, c, _ = fnb.lstm_forward(x_int, a0.astype(np.float32), p32)
    want = nb["lstm_forward"](x_int, a0.astype(np.float32), p32)
    for got, w, what in zip((a, y, c), want[:3], ("a", "y", "c")):
        assert got.dtype == np.float64, what
        check(got, w, "forward", what)


# ----------------------------------------------------------------- backends and structure

@pytest.mark.parametrize("setting, runs_on", [("numpy", "numpy"), ("numba", "numba"),
                                              ("cupy", "numba")])
def test_backend_setting(nb, rng, monkeypatch, setting, runs_on):
    """FASTRNN_BACKEND picks the CPU backend; a GPU one is not followed (NumPy in and out)."""
    monkeypatch.setattr(fastrnn.config, "backend", setting)
    size = (3, 4, 5, 2, 3)
    x, a0, p = problem(rng, "lstm", size)
    da = rng.standard_normal((size[3], size[1], size[2]))
    a, y, c, caches = fnb.lstm_forward(x, a0, p)
    assert caches[0]._run.tape.backend.name == runs_on
    want = nb["lstm_forward"](x, a0, p)
    for got, w, what in zip((a, y, c), want[:3], ("a", "y", "c")):
        assert type(got) is np.ndarray
        check(got, w, "forward", what)
    correct = notebook_lstm_steps(nb, x, a0, p)
    check_step_cache(caches[0][2], correct[2], "caches[0][2]")
    check_dicts(fnb.lstm_backward(da, caches), course_lstm_backward(da, correct),
                "lstm_backward")


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_one_fastrnn_call_per_sequence(rng, monkeypatch, kind):
    """No loop over time: one forward and one readout per forward, one backward (and one
    readout_backward with dy) per backward, whatever T_x."""
    calls = []
    for name in ("forward", "backward", "readout", "readout_backward"):
        def counted(*args, _name=name, _f=getattr(fnb, name), **kwargs):
            calls.append(_name)
            return _f(*args, **kwargs)
        monkeypatch.setattr(fnb, name, counted)
    size = (3, 2, 12, 4, 2)
    x, a0, p = problem(rng, kind, size)
    caches = getattr(fnb, f"{kind}_forward")(x, a0, p)[-1]
    assert calls == ["forward", "readout"]
    getattr(fnb, f"{kind}_backward")(rng.standard_normal((4, 2, 12)), caches,
                                     dy=rng.standard_normal((2, 2, 12)))
    assert calls == ["forward", "readout", "readout_backward", "backward"]
