"""``fastrnn.dask``: the forward pass and one data-parallel training step over dask arrays.

::

    import dask.array as da
    import fastrnn.dask as frd
    x = da.from_zarr(...)                               # (T, N, I), chunked along N only
    res = frd.forward("lstm", x, params)                # lazy res.h, res.h_n, res.c_n
    g = frd.gradients("lstm", x, params, dh_n=dh_n)     # g.params: NumPy, summed over blocks

The batch axis is the one that may be split: sequences are independent, so each block of
sequences runs :func:`fastrnn.forward` (and :func:`fastrnn.backward`) where it lives, on
the fast backend, and the results are those of one call on the whole batch. The time
and feature axes must each be one chunk (a sequence's steps depend on each other); other
chunkings are refused with the ``rechunk`` call that fixes them rather than rechunked
silently, because moving a whole array between workers is the user's decision.

**Weights** are copied at the call (a snapshot: later in-place changes are not seen) and
enter the graph once, as one key that every block task reads; a scheduler ships that key
to each worker once per call, not once per block.

**Threads.** Each block task sets numba's thread count for its own thread while it runs
(``numba.set_num_threads`` is per thread) and restores it after, by
:func:`threads_per_task`: where dask runs several tasks at once in one process, the cores
are divided among them — on a ``distributed`` worker each task gets one numba thread, so
a worker started with ``nthreads=N`` uses N cores running N blocks; in the threaded
scheduler's pool of n threads each gets ``cores // n`` (at least 1); in the processes
scheduler's worker processes, one. Where dask runs one task at a time in the calling
thread (the synchronous scheduler) numba keeps its own count. ``threads=k`` overrides the
rule (a worker with one thread and few large blocks, say). Give the batch at least as
many chunks as the cluster has threads, or some of them idle.

**Schedulers**: any. :func:`forward` is lazy and runs where the result is computed;
:func:`gradients` runs the step at once on dask's current scheduler (an active
``distributed.Client``, or ``dask.config.set(scheduler=...)``), keeping ``dx``, ``dh0``
and ``dc0`` persisted there.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import threading

import numba
import numpy as np

try:
    import dask
    import dask.array as da
except ImportError as exc:                                    # pragma: no cover - the extra
    raise ImportError("fastrnn.dask needs dask[array] (and distributed for a cluster): "
                      "pip install 'fastrnn[dask]'") from exc

from .. import api as _api
from ..core.cells import get_cell
from ..core.validation import (check_float, check_lengths, check_params, check_same_dtype,
                               describe)

__all__ = ["forward", "gradients", "threads_per_task"]

_FLOATS = ("float32", "float64")


# ------------------------------------------------------------------------ the layout

class _Layout:
    """How x is sharded: sizes, the batch axis and the batch chunks every argument shares."""

    def __init__(self, x, batch_first: bool):
        self.batch_first = batch_first
        self.batch_axis, self.time_axis = (0, 1) if batch_first else (1, 0)
        self.T, self.B, self.I = (x.shape[self.time_axis], x.shape[self.batch_axis],
                                  x.shape[2])
        self.bchunks = x.chunks[self.batch_axis]
        self.dtype = x.dtype
        self.H = None

    def seq_chunks(self, width: int) -> tuple:
        """Chunks of a (T, B, width) array ((B, T, width) batch-first) sharded like x."""
        t, w = (self.T,), (width,)
        return (self.bchunks, t, w) if self.batch_first else (t, self.bchunks, w)

    def state_chunks(self) -> tuple:
        return (self.bchunks, (self.H,))

    def seq_block_shape(self, b: int, width: int) -> tuple:
        return (b, self.T, width) if self.batch_first else (self.T, b, width)


def _check_x(x, batch_first: bool) -> _Layout:
    """x must be a 3-d float dask array, split along the batch axis only."""
    if not isinstance(x, da.Array):
        raise TypeError(f"x: expected a dask array (T, B, I) ((B, T, I) with batch_first) "
                        f"sharded along the batch, got {describe(x)}; wrap a NumPy array with "
                        f"dask.array.from_array(x, chunks=...), or call fastrnn.forward on it")
    if x.ndim != 3:
        raise ValueError(f"x: expected a 3-d dask array (T, B, I) ((B, T, I) with batch_first), "
                         f"got {x.ndim}-d of shape {x.shape}; unbatched (T, I) input has no "
                         f"batch to shard, call fastrnn.forward on it")
    check_float("x", x, _FLOATS)
    if any(math.isnan(s) for s in x.shape):
        raise ValueError(f"x: unknown chunk sizes {x.chunks}; call x.compute_chunk_sizes() first")
    lay = _Layout(x, batch_first)
    if 0 in lay.bchunks:
        raise ValueError(f"x: empty chunks along the batch axis {lay.bchunks}; every block "
                         f"needs at least one sequence. Rechunk it first: "
                         f"x = x.rechunk({{{lay.batch_axis}: 'auto'}})")
    for axis, what in ((lay.time_axis, "time"), (2, "feature")):
        if len(x.chunks[axis]) != 1:
            raise ValueError(f"x: the {what} axis (axis {axis}) is split into chunks "
                             f"{x.chunks[axis]}; fastrnn.dask shards along the batch axis only "
                             f"(axis {lay.batch_axis}). Rechunk it first: "
                             f"x = x.rechunk({{{axis}: -1}})")
    return lay


def _check_weights(spec, params, lay: _Layout) -> dict:
    """Validated params as contiguous NumPy copies (the snapshot the graph holds); sets lay.H."""
    p, lay.H = check_params(np, spec, params, lay.I, _FLOATS)
    for k, a in p.items():
        check_same_dtype(f"params[{k!r}]", a, lay.dtype)
    return {k: np.array(a, order="C", copy=True) for k, a in p.items()}


# ------------------------------------------------------------ arguments sharded like x

def _sharded(name: str, a, shape: tuple, chunks: tuple, dtype=None):
    """``a`` (NumPy or dask, or None) as a dask array of ``shape`` with ``chunks``.

    dtype: the dtype it must have (that of x), or None for integers (lengths). NumPy input
    is copied (the call's snapshot) and split like x; a dask array must already be.
    """
    if a is None:
        return None
    if not isinstance(a, da.Array):
        a = np.array(a, copy=True)
    if tuple(a.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape} (x's batch size and hidden size "
                         f"where they apply), got {tuple(a.shape)}")
    if dtype is not None:
        check_same_dtype(name, a, dtype)
    elif a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name}: expected integers, got {describe(a)}")
    if not isinstance(a, da.Array):
        return da.from_array(a, chunks=chunks)
    if a.chunks != chunks:
        raise ValueError(f"{name}: chunks {a.chunks} do not match x's batch chunks; expected "
                         f"{chunks} (the batch axis split as x's, every other axis one "
                         f"chunk). Rechunk it first: {name} = {name}.rechunk({chunks})")
    return a


def _inputs(spec, lay: _Layout, h0, c0, lengths) -> list:
    """[h0, c0, lengths] sharded like x (None where not given)."""
    if c0 is not None and not spec.has_cell_state:
        raise ValueError(f"c0: cell {spec.name!r} has no cell state; c0 is only for 'lstm'")
    if lengths is not None and not isinstance(lengths, da.Array):
        check_lengths(lengths, lay.T, lay.B)          # NumPy values: refused now, not on a worker
    state = (lay.B, lay.H)
    return [_sharded("h0", h0, state, lay.state_chunks(), lay.dtype),
            _sharded("c0", c0, state, lay.state_chunks(), lay.dtype),
            _sharded("lengths", lengths, (lay.B,), (lay.bchunks,))]


def _upstream(spec, lay: _Layout, dh, dh_n, dc_n) -> list:
    """[dh, dh_n, dc_n] sharded like x (None where not given)."""
    if dc_n is not None and not spec.has_cell_state:
        raise ValueError(f"dc_n: cell {spec.name!r} has no cell state; dc_n is only for 'lstm'")
    seq = (lay.B, lay.T, lay.H) if lay.batch_first else (lay.T, lay.B, lay.H)
    state = (lay.B, lay.H)
    return [_sharded("dh", dh, seq, lay.seq_chunks(lay.H), lay.dtype),
            _sharded("dh_n", dh_n, state, lay.state_chunks(), lay.dtype),
            _sharded("dc_n", dc_n, state, lay.state_chunks(), lay.dtype)]


# ------------------------------------------------------------------- numba's threads

_WORKQUEUE_LOCK = threading.Lock()


def _cores() -> int:
    """Cores this process may run on, at most numba's pool size."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:                                    # pragma: no cover - macOS
        n = os.cpu_count() or 1
    return max(1, min(n, numba.config.NUMBA_NUM_THREADS))


def _on_distributed_worker() -> bool:
    try:
        from distributed import get_worker
        get_worker()
    except (ImportError, ValueError):
        return False
    return True


def _threaded_pool_size():
    """Threads of the dask threaded-scheduler pool running this thread, or None.

    A pool's threads are named ``<its prefix>_<n>``; the prefix is known from the pool's
    creation, where its set of threads is filled only after a thread has started.
    """
    import dask.threaded as dt
    prefix = threading.current_thread().name.rpartition("_")[0]
    pools = [dt.default_pool] + [p for by_n in list(dt.pools.values()) for p in by_n.values()]
    for pool in pools:
        if pool is not None and prefix and getattr(pool, "_thread_name_prefix", None) == prefix:
            return pool._max_workers
    return None


def threads_per_task(threads=None) -> int:
    """Numba threads for one block task in the thread that calls this (see the module doc).

    threads: an explicit count, or None for the rule: 1 on a distributed worker (its
    ``nthreads`` task slots are its cores), cores // pool size in the threaded scheduler,
    1 in a worker process of another pool, numba's current count in the main thread.
    """
    if threads is not None:
        return max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
    if _on_distributed_worker():
        return 1
    pool = _threaded_pool_size()
    if pool is not None:
        return max(1, _cores() // pool)
    if threading.current_thread() is not threading.main_thread() or \
            multiprocessing.parent_process() is not None:
        return 1
    return numba.get_num_threads()


@contextlib.contextmanager
def _numba_threads(threads):
    """Run the body with :func:`threads_per_task` numba threads in this thread, then restore.

    Numba's workqueue threading layer must not be entered from two threads at once (it
    aborts the process); where it is the layer, block tasks of one process take turns.
    """
    before = numba.get_num_threads()                # also starts numba's threading layer
    numba.set_num_threads(threads_per_task(threads))
    workqueue = numba.threading_layer() == "workqueue"
    try:
        with _WORKQUEUE_LOCK if workqueue else contextlib.nullcontext():
            yield
    finally:
        numba.set_num_threads(before)


# ------------------------------------------------------------------------ block tasks

class _Weights:
    """The cell's name and its parameters: the one graph value every block task reads."""

    __slots__ = ("cell", "params")

    def __init__(self, cell: str, params: dict):
        self.cell, self.params = cell, params


def _weights_key(spec, params: dict):
    """One Delayed holding the weights, named by their content (equal weights, one key)."""
    w = _Weights(spec.name, params)
    name = "fastrnn-weights-" + dask.base.tokenize(spec.name, params)
    return dask.delayed(w, name=name, traverse=False)


def _forward_block(weights, x, h0, c0, lengths, *, reverse, batch_first, backend, threads):
    """Inference on one block of sequences: (h, h_n, c_n) of fastrnn.forward."""
    with _numba_threads(threads):
        res = _api.forward(weights.cell, x, weights.params, h0, c0, lengths=lengths,
                           reverse=reverse, batch_first=batch_first, backend=backend,
                           training=False)
    return res.h, res.h_n, res.c_n


def _gradient_block(weights, x, h0, c0, lengths, dh, dh_n, dc_n, *, reverse, batch_first,
                    backend, threads):
    """Forward and backward on one block: (dx, dh0, dc0, param gradients of this block)."""
    with _numba_threads(threads):
        res = _api.forward(weights.cell, x, weights.params, h0, c0, lengths=lengths,
                           reverse=reverse, batch_first=batch_first, backend=backend,
                           guard=False)
        g = _api.backward(res.tape, dh, dh_n, dc_n)
    return g.dx, g.dh0, g.dc0, g.params


def _per_block(arr, nblocks: int) -> list:
    """The blocks of a dask array split along the batch only, in batch order (Delayed)."""
    if arr is None:
        return [None] * nblocks
    return list(arr.to_delayed().reshape(-1))


def _block_tasks(func, weights, arrays, lay: _Layout, **kwargs) -> list:
    """One delayed ``func(weights, *blocks, **kwargs)`` per batch block of x."""
    n = len(lay.bchunks)
    columns = [_per_block(a, n) for a in arrays]
    call = dask.delayed(func, pure=True)
    return [call(weights, *[c[i] for c in columns], **kwargs) for i in range(n)]


def _assemble(blocks, index: int, shapes, dtype, axis: int):
    """Element ``index`` of every block's result, joined along ``axis`` into one dask array."""
    parts = [da.from_delayed(blk[index], shape=shape, dtype=dtype,
                             meta=np.empty((0,) * len(shape), dtype))
             for blk, shape in zip(blocks, shapes)]
    return parts[0] if len(parts) == 1 else da.concatenate(parts, axis=axis)


def _sum_grads(*parts: dict) -> dict:
    """Elementwise sum of several blocks' parameter-gradient dicts."""
    out = {k: np.array(a, copy=True) for k, a in parts[0].items()}
    for p in parts[1:]:
        for k, a in p.items():
            out[k] += a
    return out


def _tree_sum(parts: list, split_every: int):
    """Sum Delayed gradient dicts in a tree of fan-in ``split_every``: depth log(blocks),
    so no one task receives every block's gradients."""
    if split_every < 2:
        raise ValueError(f"split_every: expected an integer >= 2, got {split_every!r}")
    combine = dask.delayed(_sum_grads, pure=True)
    while len(parts) > 1:
        parts = [combine(*parts[i:i + split_every]) if len(parts[i:i + split_every]) > 1
                 else parts[i] for i in range(0, len(parts), split_every)]
    return parts[0]


# ------------------------------------------------------------------------- the API

def forward(cell, x, params, h0=None, c0=None, *, lengths=None, reverse=False,
            batch_first=False, backend="auto", threads=None) -> _api.ForwardResult:
    """Inference over a dask array of sequences, block by block where the blocks live.

    Args:
        cell: as :func:`fastrnn.forward`.
        x: dask array (T, B, I) ((B, T, I) with ``batch_first``), float32/float64, split
            along the batch axis only.
        params: mapping name -> NumPy array (copied: the call's snapshot).
        h0, c0: (B, H) NumPy arrays or dask arrays chunked like x's batch; zeros when None.
        lengths: (B,) integers, NumPy or dask chunked like x's batch.
        reverse, batch_first, backend: as :func:`fastrnn.forward` (``backend`` is resolved
            on the worker).
        threads: numba threads per block task; None: :func:`threads_per_task`'s rule.

    Returns:
        :class:`fastrnn.ForwardResult` of lazy dask arrays: ``h`` (like x, width H),
        ``h_n`` and ``c_n`` (B, H) (``c_n`` None unless lstm), chunked like x's batch;
        ``tape`` None. Compute them together (``dask.compute(res.h, res.h_n)``): each
        compute runs the blocks it needs.
    """
    spec = get_cell(cell)
    lay = _check_x(x, bool(batch_first))
    weights = _weights_key(spec, _check_weights(spec, params, lay))
    blocks = _block_tasks(_forward_block, weights, [x] + _inputs(spec, lay, h0, c0, lengths),
                          lay, reverse=bool(reverse), batch_first=lay.batch_first,
                          backend=backend, threads=threads)
    h = _assemble(blocks, 0, [lay.seq_block_shape(b, lay.H) for b in lay.bchunks], lay.dtype,
                  lay.batch_axis)
    states = [(b, lay.H) for b in lay.bchunks]
    h_n = _assemble(blocks, 1, states, lay.dtype, 0)
    c_n = _assemble(blocks, 2, states, lay.dtype, 0) if spec.has_cell_state else None
    return _api.ForwardResult(h, h_n, c_n, None)


def gradients(cell, x, params, h0=None, c0=None, *, dh=None, dh_n=None, dc_n=None,
              lengths=None, reverse=False, batch_first=False, backend="auto", threads=None,
              input_grads=True, split_every=8) -> _api.Gradients:
    """One data-parallel training step: forward and backward on each block where it lives.

    The loss is ``sum(dh * h) + sum(dh_n * h_n) + sum(dc_n * c_n)`` as for
    :func:`fastrnn.backward`; its parameter gradients are the sum over blocks, added in a
    tree of fan-in ``split_every``. Runs now, on dask's current scheduler.

    Args:
        cell, x, params, h0, c0, lengths, reverse, batch_first, backend, threads: as
            :func:`forward`.
        dh: upstream gradient of h, shaped and chunked like h (NumPy or dask), or None.
        dh_n, dc_n: (B, H), NumPy or dask chunked like x's batch, or None.
        input_grads: keep dx, dh0, dc0 (persisted where they were computed); False drops
            them (a training step on data needs only the parameter gradients).
        split_every: fan-in of the reduction tree (>= 2).

    Returns:
        :class:`fastrnn.Gradients`: ``params`` a dict of NumPy arrays with the keys of
        ``params``; ``dx`` (like x), ``dh0``, ``dc0`` ((B, H), ``dc0`` None unless lstm)
        persisted dask arrays chunked like their inputs, or None without ``input_grads``.
    """
    spec = get_cell(cell)
    lay = _check_x(x, bool(batch_first))
    weights = _weights_key(spec, _check_weights(spec, params, lay))
    arrays = [x] + _inputs(spec, lay, h0, c0, lengths) + _upstream(spec, lay, dh, dh_n, dc_n)
    blocks = _block_tasks(_gradient_block, weights, arrays, lay, reverse=bool(reverse),
                          batch_first=lay.batch_first, backend=backend, threads=threads)
    total = _tree_sum([blk[3] for blk in blocks], int(split_every))
    if not input_grads:
        return _api.Gradients(None, None, None, total.compute())
    dx = _assemble(blocks, 0, [lay.seq_block_shape(b, lay.I) for b in lay.bchunks], lay.dtype,
                   lay.batch_axis)
    states = [(b, lay.H) for b in lay.bchunks]
    dh0 = _assemble(blocks, 1, states, lay.dtype, 0)
    dc0 = _assemble(blocks, 2, states, lay.dtype, 0) if spec.has_cell_state else None
    dx, dh0, dc0, total = dask.persist(dx, dh0, dc0, total)      # one graph: blocks run once
    return _api.Gradients(dx, dh0, dc0, total.compute())
