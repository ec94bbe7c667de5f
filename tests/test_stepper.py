"""fastrnn.Stepper: streaming inference, the state kept inside.

A chain of steps (one input at a time, or chunks) equals fastrnn.forward over the whole
sequence on every backend; results are fresh arrays; reset sets the state; bad input gets
forward's errors.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from conftest import make_problem, to_backend
from fastrnn.core.arrays import to_numpy
from assertions import assert_close

CELLS = list(fastrnn.CELLS)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("B", [1, 5])
@pytest.mark.parametrize("cell", CELLS)
def test_steps_equal_forward_over_the_sequence(any_backend, rng, cell, B, dtype):
    T, I, H = 7, 4, 6
    x, params, h0, c0, _ = make_problem(rng, cell, T, B, I, H, dtype, states=True)
    ref = fastrnn.forward(cell, x, params, h0, c0, backend=any_backend, training=False)
    st = fastrnn.Stepper(cell, params, batch_size=B, h0=h0, c0=c0, backend=any_backend)
    x, h0, c0 = (to_backend(any_backend, a) for a in (x, h0, c0))   # where the state lives
    steps = np.stack([to_numpy(st(x[t])) for t in range(T)])
    assert steps.dtype == np.dtype(dtype)
    assert_close(steps, ref.h, dtype, "forward", "steps")
    assert_close(st.h, ref.h_n, dtype, "forward", "h")
    if ref.c_n is None:
        assert st.c is None
    else:
        assert_close(st.c, ref.c_n, dtype, "forward", "c")
    # chunks of frames from the same start: 3 + 4 steps
    st.reset(h0, c0)
    chunked = np.concatenate([to_numpy(st(x[:3])), to_numpy(st(x[3:]))])
    assert_close(chunked, ref.h, dtype, "forward", "chunks")


def test_numba_steps_are_bitwise_the_forward(rng):
    for cell in CELLS:
        x, params, h0, c0, _ = make_problem(rng, cell, 6, 3, 5, 8, "float32", states=True)
        ref = fastrnn.forward(cell, x, params, h0, c0, backend="numba", training=False)
        st = fastrnn.Stepper(cell, params, 3, h0, c0, backend="numba")
        assert np.array_equal(np.stack([st(x[t]) for t in range(6)]), ref.h), cell


def test_unbatched_input_and_state(rng):
    x, params, h0, c0, _ = make_problem(rng, "lstm", 5, 1, 3, 4, states=True)
    ref = fastrnn.forward("lstm", x[:, 0], params, h0[0], c0[0], backend="numpy")
    st = fastrnn.Stepper("lstm", params, h0=h0[0], c0=c0[0])
    outs = [st(x[t, 0]) for t in range(5)]
    assert outs[0].shape == (4,)
    assert_close(np.stack(outs), ref.h, "float64", "forward", "unbatched steps")


def test_results_are_fresh_and_state_is_copied(rng):
    x, params, *_ = make_problem(rng, "gru", 3, 2, 3, 4)
    st = fastrnn.Stepper("gru", params, batch_size=2)
    y = st(x[0])
    y[...] = 100.0                                  # the caller's array, not the state
    h = st.h
    h[...] = -100.0
    ref = fastrnn.forward("gru", x[:2], params, backend="numpy")
    assert_close(st(x[1]), ref.h[1], "float64", "forward", "after writing results")


def test_reset_and_prepared_weights(rng):
    x, params, h0, c0, _ = make_problem(rng, "lstm", 4, 2, 3, 5, states=True)
    w = fastrnn.prepare("lstm", params)
    st = fastrnn.Stepper("lstm", w, batch_size=2)
    first = st(x[0])
    st(x[1])
    st.reset()
    assert np.array_equal(st(x[0]), first)
    st.reset(h0=h0, c0=c0)
    assert np.array_equal(st.h, h0) and np.array_equal(st.c, c0)
    ref = fastrnn.forward("lstm", x, params, h0, c0, backend="numpy")
    assert_close(np.stack([st(x[t]) for t in range(4)]), ref.h, "float64", "forward", "h0")
    assert "Stepper(cell='lstm', batch_size=2" in repr(st)


def test_errors_are_forwards(rng):
    x, params, *_ = make_problem(rng, "gru", 3, 2, 3, 4)
    st = fastrnn.Stepper("gru", params, batch_size=2)
    with pytest.raises(ValueError, match=r"x: expected shape \(2, 3\) \(\(B, I\): batch size "
                                         r"of the Stepper and input size\), got \(3, 3\)"):
        st(np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"x: expected shape \(2, 3\)"):
        st(np.zeros((2, 4)))
    with pytest.raises(TypeError, match="x: expected dtype float64"):
        st(np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match="x: expected a floating dtype"):
        st(np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match="x: unbatched input .* needs batch_size 1"):
        st(np.zeros(3))
    with pytest.raises(ValueError, match=r"x: expected a chunk of shape \(T, 2, 3\)"):
        st(np.zeros((4, 1, 3)))
    with pytest.raises(ValueError, match="x: expected .* got 4-d"):
        st(np.zeros((1, 1, 2, 3)))
    with pytest.raises(ValueError, match=r"h0: expected shape \(2, 4\)"):
        st.reset(h0=np.zeros((3, 4)))
    with pytest.raises(ValueError, match="c0: cell 'gru' has no cell state"):
        st.reset(c0=np.zeros((2, 4)))
    with pytest.raises(ValueError, match="batch_size: expected a positive int"):
        fastrnn.Stepper("gru", params, batch_size=0)
    with pytest.raises(ValueError, match="params: prepared for cell 'gru', not 'lstm'"):
        fastrnn.Stepper("lstm", fastrnn.prepare("gru", params))
    with pytest.raises(ValueError, match="backend: the params were prepared for backend"):
        fastrnn.Stepper("gru", fastrnn.prepare("gru", params, backend="numba"),
                        backend="numpy")
    assert np.all(np.isfinite(st(np.zeros((2, 3)))))   # still usable after the errors
