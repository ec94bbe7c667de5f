"""Property-based tests (hypothesis) over shapes, cells, dtypes, lengths and direction.

* Every fast backend computes the reference's function on any small problem, T, B, I, H
  from 1 up, I != H included.
* The reference's backward is the derivative of its forward: the directional derivative
  along a random direction v through every input at once,
  ``(L(p + eps v) - L(p - eps v)) / (2 eps)``, equals ``<grad L, v>``.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastrnn
from fastrnn.core.cells import CELLS
from fastrnn.tools.problems import random_params
from conftest import make_upstream, record_error
from fastrnn.core.tolerances import FD_EPS, FD_TOLERANCE
from assertions import assert_matches_reference

SIZES = st.integers(1, 5)


@st.composite
def problems(draw, dtypes=("float32", "float64")):
    """(cell, dtype, x, params, h0, c0, lengths, reverse, dh, dh_n, dc_n) of a small problem."""
    cell = draw(st.sampled_from(list(CELLS)))
    dtype = draw(st.sampled_from(dtypes))
    T, B, I, H = draw(SIZES), draw(SIZES), draw(SIZES), draw(SIZES)
    lengths = draw(st.none() | st.lists(st.integers(1, T), min_size=B, max_size=B))
    reverse = draw(st.booleans())
    states = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    spec = CELLS[cell]
    scale = draw(st.sampled_from([0.3, 1.0, 3.0]))      # mild to saturating gates
    params = random_params(rng, spec, I, H, dtype, scale)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = (rng.standard_normal((B, H)) * 0.5).astype(dtype) if states else None
    c0 = ((rng.standard_normal((B, H)) * 0.5).astype(dtype)
          if states and spec.has_cell_state else None)
    dh, dh_n, dc_n = make_upstream(rng, cell, T, B, H, dtype)
    lens = None if lengths is None else np.array(lengths)
    return cell, dtype, x, params, h0, c0, lens, reverse, dh, dh_n, dc_n


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=problems())
def test_fast_backend_agrees_with_reference(backend, problem):
    # `backend` only names the backend under test: nothing to reset between examples.
    cell, dtype, x, params, h0, c0, lens, reverse, dh, dh_n, dc_n = problem
    out = {}
    for name in ("numpy", backend):
        res = fastrnn.forward(cell, x, params, h0, c0, lengths=lens, reverse=reverse,
                              backend=name)
        out[name] = res, fastrnn.backward(res.tape, dh, dh_n, dc_n)
    # The same inputs in float64: the yardstick for float32 (see assert_matches_reference),
    # and the float32 reference on inputs moved by one ulp: how much float32 rounding alone
    # can move the result of this problem.
    up = (lambda a: None if a is None else np.asarray(a, dtype=np.float64))
    res64 = fastrnn.forward(cell, up(x), {k: up(v) for k, v in params.items()}, up(h0), up(c0),
                            lengths=lens, reverse=reverse, backend="numpy")
    out["float64"] = res64, fastrnn.backward(res64.tape, up(dh), up(dh_n), up(dc_n))
    eps = np.finfo(dtype).eps
    nudge = (lambda a: None if a is None else
             (a * (1 + eps * np.where(np.arange(a.size).reshape(a.shape) % 2, 1, -1))
              ).astype(dtype))
    resp = fastrnn.forward(cell, nudge(x), {k: nudge(v) for k, v in params.items()}, nudge(h0),
                           nudge(c0), lengths=lens, reverse=reverse, backend="numpy")
    out["perturbed"] = resp, fastrnn.backward(resp.tape, dh, dh_n, dc_n)

    def results(name):
        r, g = out[name]
        vals = {"h": r.h, "h_n": r.h_n, "dx": g.dx, "dh0": g.dh0,
                **{f"d{k}": v for k, v in g.params.items()}}
        if r.c_n is not None:
            vals.update(c_n=r.c_n, dc0=g.dc0)
        return vals

    fast, ref, ref64 = results(backend), results("numpy"), results("float64")
    pert = results("perturbed")
    for name in ref:
        kind = "forward" if name in ("h", "h_n", "c_n") else "grad"
        err = assert_matches_reference(fast[name], ref[name], ref64[name], dtype, kind, name,
                                       perturbed=pert[name])
        record_error(f"{backend} vs reference {dtype} {kind} (hypothesis)", err)


def _loss(cell, inputs, lens, reverse, dh, dh_n, dc_n):
    spec = CELLS[cell]
    res = fastrnn.forward(cell, inputs["x"], {k: inputs[k] for k in spec.param_names},
                          inputs["h0"], inputs.get("c0"), lengths=lens, reverse=reverse,
                          backend="numpy", training=False)
    L = np.sum(dh * res.h) + np.sum(dh_n * res.h_n)
    if dc_n is not None:
        L += np.sum(dc_n * res.c_n)
    return L, res.h


@settings(max_examples=300, deadline=None)
@given(problem=problems(dtypes=("float64",)), seed=st.integers(0, 2**32 - 1))
def test_reference_backward_is_the_directional_derivative(problem, seed):
    cell, dtype, x, params, h0, c0, lens, reverse, dh, dh_n, dc_n = problem
    spec = CELLS[cell]
    B, H = x.shape[1], params["U"].shape[0]
    res = fastrnn.forward(cell, x, params, h0, c0, lengths=lens, reverse=reverse,
                          backend="numpy")
    g = fastrnn.backward(res.tape, dh, dh_n, dc_n)
    grads = {"x": g.dx, "h0": g.dh0, **g.params}
    inputs = {"x": x, "h0": np.zeros((B, H)) if h0 is None else h0, **params}
    if spec.has_cell_state:
        grads["c0"] = g.dc0
        inputs["c0"] = np.zeros((B, H)) if c0 is None else c0

    rng = np.random.default_rng(seed)
    v = {k: rng.standard_normal(a.shape) for k, a in inputs.items()}
    plus = {k: a + FD_EPS * v[k] for k, a in inputs.items()}
    minus = {k: a - FD_EPS * v[k] for k, a in inputs.items()}
    L_plus, h_plus = _loss(cell, plus, lens, reverse, dh, dh_n, dc_n)
    L_minus, h_minus = _loss(cell, minus, lens, reverse, dh, dh_n, dc_n)
    if spec.nonlinearity == "relu":   # both ends on the same linear piece, else FD is invalid
        assume(np.array_equal(h_plus > 0, res.h > 0) and np.array_equal(h_minus > 0, res.h > 0))
    numeric = (L_plus - L_minus) / (2 * FD_EPS)
    analytic = sum(float(np.vdot(grads[k], v[k])) for k in inputs)
    # Error relative to the Cauchy-Schwarz scale ||grad|| ||v||, which stays meaningful
    # when <grad, v> happens to be near 0, beyond what rounding L+ and L- alone leaves in
    # the difference quotient (it dominates where saturated gates make every gradient tiny
    # beside L: hypothesis found rnn_tanh at a pre-activation of -7 so, 2e-11 of rounding
    # against gradients of 1e-6).
    scale = np.sqrt(sum(np.vdot(grads[k], grads[k]) for k in inputs)
                    * sum(np.vdot(v[k], v[k]) for k in inputs))
    rounding = 8 * np.finfo(np.float64).eps * (abs(L_plus) + abs(L_minus)) / (2 * FD_EPS)
    beyond = max(abs(numeric - analytic) - rounding, 0.0)
    err = record_error("reference vs directional FD (hypothesis)", beyond / max(scale, 1e-300))
    assert err <= FD_TOLERANCE, (f"{cell}: directional derivative {numeric!r} vs "
                                 f"<grad, v> {analytic!r}, relative error {err:.3e} beyond "
                                 f"rounding {rounding:.1e}")
