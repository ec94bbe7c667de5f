"""The workspace pool of the CPU kernels: reuse without aliasing anything a caller holds."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import fastrnn
from fastrnn.backends.numba import workspace
from fastrnn.core import config

from conftest import make_problem

BIG = (64, 32, 128)                      # float32: 1 MiB, above workspace.MIN_BYTES


@pytest.fixture(autouse=True)
def empty_pool():
    workspace.release()
    yield
    workspace.release()


def test_take_gives_fresh_arrays_of_the_asked_shape():
    a = workspace.take(BIG, np.float32)
    assert a.shape == BIG and a.dtype == np.float32 and a.flags.c_contiguous
    z = workspace.take((7, 5), np.float64, zero=True)
    assert z.shape == (7, 5) and not z.any()


def test_given_buffer_is_reused_and_zeroed_when_asked():
    a = workspace.take(BIG, np.float32)
    a.fill(3.0)
    workspace.give(a)
    assert workspace.idle_bytes() == a.nbytes
    b = workspace.take(BIG, np.float32, zero=True)
    assert np.shares_memory(a, b)
    assert not b.any()
    assert workspace.idle_bytes() == 0
    c = workspace.take(BIG, np.float32)              # pool empty again: new memory
    assert not np.shares_memory(b, c)


def test_reuse_across_dtypes_of_the_same_size():
    a = workspace.take((64, 32, 64), np.float64)
    workspace.give(a)
    b = workspace.take(BIG, np.float32)
    assert np.shares_memory(a, b) and b.dtype == np.float32 and b.shape == BIG


def test_small_and_foreign_arrays_are_not_pooled():
    workspace.give(np.empty(10), None, np.empty((512, 512))[:, ::2])
    assert workspace.idle_bytes() == 0


def test_limit_evicts_the_longest_idle_and_release_empties(monkeypatch):
    a, b = workspace.take(BIG, np.float32), workspace.take(BIG, np.float32)
    c = workspace.take((2,) + BIG, np.float32)
    monkeypatch.setattr(config, "workspace_mb", 2 * a.nbytes / (1 << 20))
    workspace.give(a, b)
    assert workspace.idle_bytes() == 2 * a.nbytes
    workspace.give(c)                                  # needs the room of both: they go
    assert workspace.idle_bytes() == c.nbytes
    assert np.shares_memory(workspace.take(c.shape, np.float32), c)
    workspace.give(np.empty((3,) + BIG, np.float32))   # larger than the whole pool: dropped
    assert workspace.idle_bytes() == 0
    workspace.give(a)
    workspace.release()
    assert workspace.idle_bytes() == 0


def test_changing_shapes_keep_the_recent_sizes(monkeypatch):
    """With shapes that change (bucketed lengths), the pool ends up holding what the latest
    passes use, within its limit."""
    monkeypatch.setattr(config, "workspace_mb", 16)
    for T in range(40, 120):
        small, big = workspace.take((T, 32, 128), np.float32), workspace.take((T, 32, 512),
                                                                             np.float32)
        workspace.give(small, big)
        assert workspace.idle_bytes() <= 16 << 20
    assert np.shares_memory(workspace.take(big.shape, np.float32), big)
    assert np.shares_memory(workspace.take(small.shape, np.float32), small)


def test_finaliser_only_queues():
    """A tape freed while the pool's lock is held (a finaliser runs inside any allocation)
    must not block: its buffers are queued and collected by the next call."""
    class Owner:
        pass

    owner, a = Owner(), workspace.take(BIG, np.float32)
    workspace.give_when_freed(owner, a)
    del a
    with workspace._lock:
        del owner                                      # finaliser runs here, lock held
        gc.collect()
    assert workspace.idle_bytes() == BIG[0] * BIG[1] * BIG[2] * 4


def test_tape_buffers_return_to_the_pool_when_the_tape_is_freed():
    rng = np.random.default_rng(0)
    x, params, h0, c0, _ = make_problem(rng, "lstm", 64, 32, 16, 128, dtype="float32", states=True)
    res = fastrnn.forward("lstm", x, params, h0, c0, backend="numba", training=True)
    fastrnn.backward(res.tape, np.ones_like(res.h))
    during = workspace.idle_bytes()                    # the backward's temporaries
    del res
    gc.collect()
    assert workspace.idle_bytes() > during


@pytest.mark.parametrize("cell", ["lstm", "gru", "gru_reset_before", "rnn_tanh"])
@pytest.mark.parametrize("masked", [False, True])
def test_results_never_alias_reused_memory(cell, masked):
    """Outputs and gradients of one pass stay as they were while later passes reuse the
    pool, and a tape kept alive keeps its buffers."""
    rng = np.random.default_rng(1)
    T, B, I, H = 64, 32, 96, 96      # dx, h the size of the (T, B, H) tape buffers
    lengths = rng.integers(1, T + 1, size=B) if masked else None
    if masked:
        lengths[0] = T

    def run(seed, keep_tape=False):
        r = np.random.default_rng(seed)
        x, params, h0, c0, _ = make_problem(r, cell, T, B, I, H, dtype="float32", states=True)
        res = fastrnn.forward(cell, x, params, h0, c0, lengths=lengths, backend="numba",
                              training=True)
        dh = r.standard_normal(res.h.shape).astype(np.float32)
        g = fastrnn.backward(res.tape, dh)
        arrays = [res.h, res.h_n, g.dx, g.dh0, *g.params.values()]
        return (res if keep_tape else None), dh, arrays, [a.copy() for a in arrays]

    kept, dh_kept, _, _ = run(10, keep_tape=True)
    first_grads = fastrnn.backward(kept.tape, dh_kept)
    _, _, arrays, copies = run(11)
    for _ in range(3):                                 # churn the pool
        run(12)
    for a, c in zip(arrays, copies):
        np.testing.assert_array_equal(a, c)
    again = fastrnn.backward(kept.tape, dh_kept)       # the kept tape's buffers are intact
    for k, v in first_grads.params.items():
        np.testing.assert_array_equal(again.params[k], v)
    np.testing.assert_array_equal(again.dx, first_grads.dx)
