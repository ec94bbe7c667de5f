"""Multi-layer and bidirectional recurrent stacks over the core API (forward / backward).

A stack composes single layers exactly as ``torch.nn.LSTM/GRU/RNN`` do with
``num_layers`` and ``bidirectional``:

* layer ``l`` reads the output of layer ``l - 1`` (layer 0 reads ``x``);
* with two directions, a layer runs the forward direction and the ``reverse=True``
  direction over the same input and concatenates their outputs on the feature axis,
  forward first: the output is ``(T, B, D*H)`` with ``D = 2``. With ``lengths``, the
  reverse direction starts at each sequence's last valid step, as for PyTorch's packed
  sequences, and padded positions of the output are zero;
* final states are stacked layer-major, direction-minor: ``h_n[l*D + d]``, shape
  ``(L*D, B, H)``, and initial states ``h0``/``c0`` use the same order;
* dropout with probability ``p`` is applied to the output of every layer except the last,
  only when training, with inverted scaling (kept entries are multiplied by ``1/(1-p)``).
  The masks come from an explicit seed or ``numpy.random.Generator`` so a run can be
  repeated, and they are kept on the tape for the backward pass.

Parameters are a sequence over layers; entry ``l`` is a tuple of ``D`` parameter mappings
(forward direction, then reverse), each a mapping as :func:`fastrnn.forward` takes it with
input size ``I`` for layer 0 and ``D*H`` for the layers above. For one direction an entry
may also be a bare mapping. Gradients come back in the same structure.

No PyTorch here: this is plain array code over the core API, on any backend.
"""

from __future__ import annotations

import numbers
from typing import Mapping, Sequence

import numpy as np

from .. import backends as _backends
from .. import api as _api
from ..core.cells import get_cell
from ..core.validation import (as_array, check_lengths, check_params, check_same_dtype,
                         check_sequence_input, check_shape, describe)

__all__ = ["stack_forward", "stack_backward", "init_stack_params", "dropout_mask", "Stack",
           "StackResult", "StackTape", "StackGradients"]


class StackResult(_api.ForwardResult):
    """Result of :func:`stack_forward`.

    h: outputs of the last layer, (T, B, D*H); (B, T, D*H) with batch_first; (T, D*H)
       unbatched. Zero at padded positions.
    h_n: final hidden states of every layer and direction, (L*D, B, H) ((L*D, H) unbatched),
       index ``l*D + d``.
    c_n: final cell states, same shape, for lstm; else None.
    tape: what :func:`stack_backward` needs; None when ``training=False``.
    """

    __slots__ = ()


class StackGradients:
    """Result of :func:`stack_backward`.

    dx: same shape as x. dh0, dc0: (L*D, B, H) ((L*D, H) unbatched); dc0 None unless lstm.
    params: the gradients in the structure of the forward's params (a list over layers of
    tuples over directions, or of bare mappings where the forward got bare mappings).
    """

    __slots__ = ("dx", "dh0", "dc0", "params")

    def __init__(self, dx, dh0, dc0, params):
        self.dx, self.dh0, self.dc0, self.params = dx, dh0, dc0, params

    def __repr__(self):
        return (f"StackGradients(dx={describe(self.dx)}, dh0={describe(self.dh0)}, "
                f"layers={len(self.params)})")


class StackTape:
    """Everything :func:`stack_backward` needs from one :func:`stack_forward` call.

    tapes: the per-layer-direction :class:`fastrnn.Tape` objects, index ``l*D + d``.
    masks: for each of the ``L - 1`` layers below the top, the scaled dropout mask
        (T, B, D*H) (time-major) that multiplied its output, or None without dropout.
    """

    __slots__ = ("cell", "backend", "num_layers", "num_directions", "hidden_size", "cell_size",
                 "tapes", "masks", "unbatched", "batch_first", "shape", "bare")

    def __init__(self, cell, backend, num_layers, num_directions, hidden_size, cell_size,
                 tapes, masks, unbatched, batch_first, shape, bare):
        self.cell, self.backend = cell, backend
        self.num_layers, self.num_directions = num_layers, num_directions
        self.hidden_size, self.tapes, self.masks = hidden_size, tapes, masks
        self.cell_size = cell_size            # the width of c (the hidden size of lstmp)
        self.unbatched, self.batch_first = unbatched, batch_first
        self.shape, self.bare = shape, bare      # (T, B, I, dtype); which layers had bare mappings

    def __repr__(self):
        T, B, I, dtype = self.shape
        return (f"StackTape(cell={self.cell.name!r}, backend={self.backend.name!r}, "
                f"layers={self.num_layers}, directions={self.num_directions}, T={T}, B={B}, "
                f"I={I}, H={self.hidden_size}, dtype={dtype})")


# ----------------------------------------------------------------------------- helpers

def _normalise_params(params):
    """(list over layers of lists over directions of mappings, which layers were bare)."""
    if isinstance(params, Mapping) or not isinstance(params, Sequence) or isinstance(params, str):
        raise TypeError(f"params: expected a sequence over layers (a list with one entry per "
                        f"layer, each a tuple of per-direction parameter mappings), got "
                        f"{type(params).__name__}")
    if len(params) == 0:
        raise ValueError("params: expected at least one layer, got an empty sequence")
    layers, bare = [], []
    for l, entry in enumerate(params):
        if isinstance(entry, Mapping):
            layers.append([entry])
            bare.append(True)
            continue
        if (not isinstance(entry, Sequence) or isinstance(entry, str) or len(entry) not in (1, 2)
                or not all(isinstance(p, Mapping) for p in entry)):
            raise TypeError(f"params[{l}]: expected a tuple of 1 or 2 parameter mappings "
                            f"(forward direction, then reverse) or one mapping, got "
                            f"{type(entry).__name__}"
                            + (f" of length {len(entry)}" if isinstance(entry, Sequence) else ""))
        layers.append(list(entry))
        bare.append(False)
    D = len(layers[0])
    for l, entry in enumerate(layers):
        if len(entry) != D:
            raise ValueError(f"params[{l}]: layer 0 has {D} direction(s) but layer {l} has "
                             f"{len(entry)}; every layer of a stack has the same directions")
    return layers, bare


def _check_layer_params(xp, spec, layers, input_size, dtypes):
    """Validated params and H; errors name the layer and direction."""
    H = None
    D = len(layers[0])
    out = []
    for l, entry in enumerate(layers):
        row = []
        for d, p in enumerate(entry):
            in_size = input_size if l == 0 else D * H
            try:
                checked, h = check_params(xp, spec, p, in_size, dtypes)
            except (ValueError, TypeError) as exc:
                where = f"params[{l}][{d}] (layer {l}, {'reverse' if d else 'forward'} direction)"
                raise type(exc)(f"{where}: {exc}") from None
            if H is None:
                H = h
            elif h != H:
                raise ValueError(f"params[{l}][{d}]['U']: hidden size {h} differs from the "
                                 f"hidden size {H} of layer 0; every layer of a stack has the "
                                 f"same hidden size")
            row.append(checked)
        out.append(row)
    return out, H


def _check_dropout(dropout) -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout <= 1:
        raise ValueError(f"dropout: expected a probability in [0, 1], got {dropout!r}")
    return float(dropout)


def _as_generator(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (numbers.Integral, np.random.SeedSequence)) and not isinstance(rng, bool):
        return np.random.default_rng(rng)
    raise TypeError(f"rng: expected an int seed or a numpy.random.Generator for the dropout "
                    f"masks, got {type(rng).__name__}")


def dropout_mask(rng: np.random.Generator, xp, shape, p: float, dtype):
    """Inverted-dropout mask: each entry 0 with probability p, else 1/(1-p), in ``dtype``.

    Drawn on the host from ``rng`` (so a seed gives the same mask on every backend) and
    moved to ``xp``'s device.
    """
    if p >= 1.0:
        return xp.zeros(shape, dtype=dtype)
    keep = rng.random(shape) >= p
    mask = keep.astype(dtype) * np.asarray(1.0 / (1.0 - p), dtype=dtype)
    return mask if xp is np else xp.asarray(mask)


def _check_states(xp, name, a, shape, dtype, unbatched):
    a = as_array(xp, name, a)
    check_shape(name, a, shape, "(L*D, H): layers times directions, hidden size" if unbatched
                else "(L*D, B, H): layers times directions, batch size, hidden size")
    check_same_dtype(name, a, dtype)
    return a[:, None, :] if unbatched else a


def _seq_from_user(xp, a, unbatched, batch_first):
    if unbatched:
        return a[:, None, :]
    return a.transpose(1, 0, 2) if batch_first else a


def _seq_to_user(a, unbatched, batch_first):
    if unbatched:
        return a[:, 0, :]
    return a.transpose(1, 0, 2) if batch_first else a


# ------------------------------------------------------------------------------ forward

def stack_forward(cell, x, params, h0=None, c0=None, *, lengths=None, batch_first=False,
                  dropout=0.0, rng=None, backend="auto", training=True) -> StackResult:
    """Run a stack of recurrent layers (optionally bidirectional) over a whole sequence.

    Args:
        cell: cell name, as for :func:`fastrnn.forward`.
        x: (T, B, I) input; (B, T, I) with ``batch_first``; (T, I) unbatched. float32/float64.
        params: sequence over the L layers; entry l is a tuple of D mappings (forward
            direction, then reverse; D = 1 or 2, the same for every layer), or a bare mapping
            when D = 1. Layer 0 takes input size I, the others D*H.
        h0, c0: initial states (L*D, B, H) ((L*D, H) unbatched), index ``l*D + d``; zeros
            when None. c0 only for lstm.
        lengths: (B,) integers in 1..T, as for :func:`fastrnn.forward`; every layer and
            direction uses them (the reverse direction starts at each last valid step).
        batch_first: x and the returned h are (B, T, ·).
        dropout: probability of zeroing an output entry of every layer but the last while
            training (scaled by 1/(1-p) otherwise). Ignored when ``training=False``.
        rng: int seed or ``numpy.random.Generator`` for the dropout masks; required when
            dropout is applied (training, dropout > 0 and more than one layer).
        backend: ``"auto"``, a backend name or a backend object; one backend runs every layer.
        training: keep a tape for :func:`stack_backward` and apply dropout.

    Returns:
        :class:`StackResult` with ``h`` (…, D*H), ``h_n``, ``c_n`` (L*D, B, H) and ``tape``.
    """
    spec = get_cell(cell)
    be = _backends.resolve(backend, x)
    xp = be.xp
    x, unbatched = check_sequence_input(xp, x, be.dtypes, lengths)
    batch_first = bool(batch_first) and not unbatched
    x3 = _seq_from_user(xp, x, unbatched, batch_first)
    T, B, I = x3.shape
    layers, bare = _normalise_params(params)
    plist, H = _check_layer_params(xp, spec, layers, I, be.dtypes)
    for l, row in enumerate(plist):
        for d, p in enumerate(row):
            for k, a in p.items():
                check_same_dtype(f"params[{l}][{d}][{k!r}]", a, x.dtype)
    L, D = len(plist), len(plist[0])
    state_shape = (L * D, H) if unbatched else (L * D, B, H)
    C = spec.sizes_of(plist[0][0])[0]                    # the width of c: H, even for lstmp
    c_shape = state_shape[:-1] + (C,)
    h0s = None if h0 is None else _check_states(xp, "h0", h0, state_shape, x.dtype, unbatched)
    if c0 is not None and not spec.has_cell_state:
        raise ValueError(f"c0: cell {spec.name!r} has no cell state; c0 is only for 'lstm'")
    c0s = None if c0 is None else _check_states(xp, "c0", c0, c_shape, x.dtype, unbatched)
    lens = check_lengths(lengths, T, B)
    p_drop = _check_dropout(dropout)
    use_dropout = bool(training) and p_drop > 0 and L > 1
    gen = None
    if use_dropout:
        if rng is None:
            raise ValueError("rng: dropout > 0 in training needs an int seed or a "
                             "numpy.random.Generator so the dropout masks are reproducible")
        gen = _as_generator(rng)

    results, masks = [], []
    inp = x3
    for l in range(L):
        outs = []
        for d in range(D):
            k = l * D + d
            res = _api.forward(spec, inp, plist[l][d], None if h0s is None else h0s[k],
                               None if c0s is None else c0s[k], lengths=lens, reverse=d == 1,
                               backend=be, training=training)
            outs.append(res)
            results.append(res)
        out = outs[0].h if D == 1 else xp.concatenate([r.h for r in outs], axis=-1)
        if l < L - 1:
            mask = None
            if use_dropout:
                mask = dropout_mask(gen, xp, out.shape, p_drop, x.dtype)
                out = out * mask
            masks.append(mask)
        inp = out

    h_n = xp.stack([r.h_n for r in results])
    c_n = xp.stack([r.c_n for r in results]) if spec.has_cell_state else None
    if unbatched:
        h_n = h_n[:, 0, :]
        c_n = None if c_n is None else c_n[:, 0, :]
    tape = None
    if training:
        tape = StackTape(spec, be, L, D, H, C, tuple(r.tape for r in results), tuple(masks),
                         unbatched, batch_first, (T, B, I, x.dtype), tuple(bare))
    return StackResult(_seq_to_user(inp, unbatched, batch_first), h_n, c_n, tape)


# ----------------------------------------------------------------------------- backward

def _check_grad(xp, name, a, shape, dtype, what):
    a = as_array(xp, name, a)
    check_shape(name, a, shape, what)
    check_same_dtype(name, a, dtype)
    return a


def stack_backward(tape, dh=None, dh_n=None, dc_n=None) -> StackGradients:
    """Backpropagation through a whole stack for one :func:`stack_forward` call.

    Args:
        tape: ``res.tape`` (or ``res``) of a stack_forward run with ``training=True``.
        dh: gradient with respect to ``res.h`` (same shape), or None.
        dh_n, dc_n: gradients with respect to ``res.h_n`` / ``res.c_n`` (L*D, B, H), or None.

    Returns:
        :class:`StackGradients`: dx, dh0, dc0 and the params' gradients in their structure.
    """
    if isinstance(tape, StackResult):
        tape = tape.tape
        if tape is None:
            raise ValueError("tape: this result was made with training=False and has no tape")
    if tape is None:
        raise ValueError("tape: got None; a stack_forward run with training=False keeps no "
                         "tape. Run it with training=True to get gradients")
    if not isinstance(tape, StackTape):
        raise TypeError(f"tape: expected the .tape of a stack_forward result, got "
                        f"{type(tape).__name__}")
    xp = tape.backend.xp
    T, B, I, dtype = tape.shape
    L, D, H = tape.num_layers, tape.num_directions, tape.hidden_size
    ub, bf = tape.unbatched, tape.batch_first
    state_shape = (L * D, H) if ub else (L * D, B, H)
    if dh is not None:
        seq_shape = (T, D * H) if ub else ((B, T, D * H) if bf else (T, B, D * H))
        dh = _seq_from_user(xp, _check_grad(xp, "dh", dh, seq_shape, dtype, "the shape of res.h"),
                            ub, bf)
    if dh_n is not None:
        dh_n = _check_grad(xp, "dh_n", dh_n, state_shape, dtype, "the shape of res.h_n")
        dh_n = dh_n[:, None, :] if ub else dh_n
    if dc_n is not None:
        if not tape.cell.has_cell_state:
            raise ValueError(f"dc_n: cell {tape.cell.name!r} has no cell state; dc_n is only "
                             f"for 'lstm'")
        dc_n = _check_grad(xp, "dc_n", dc_n, state_shape[:-1] + (tape.cell_size,), dtype,
                           "the shape of res.c_n")
        dc_n = dc_n[:, None, :] if ub else dc_n

    grads = [None] * (L * D)
    g_out = dh                                     # gradient of the current layer's output
    for l in reversed(range(L)):
        dx = None
        for d in range(D):
            k = l * D + d
            dh_d = None if g_out is None else (g_out if D == 1 else g_out[..., d * H:(d + 1) * H])
            g = _api.backward(tape.tapes[k], dh_d, None if dh_n is None else dh_n[k],
                              None if dc_n is None else dc_n[k])
            grads[k] = g
            dx = g.dx if dx is None else dx + g.dx
        if l > 0:
            mask = tape.masks[l - 1]
            g_out = dx if mask is None else dx * mask
        else:
            g_out = dx

    dh0 = xp.stack([g.dh0 for g in grads])
    dc0 = xp.stack([g.dc0 for g in grads]) if tape.cell.has_cell_state else None
    if ub:
        dh0 = dh0[:, 0, :]
        dc0 = None if dc0 is None else dc0[:, 0, :]
    params = []
    for l in range(L):
        row = tuple(grads[l * D + d].params for d in range(D))
        params.append(row[0] if tape.bare[l] else row)
    return StackGradients(_seq_to_user(g_out, ub, bf), dh0, dc0, params)


# ------------------------------------------------------------------------ params, Stack

def init_stack_params(cell, input_size: int, hidden_size: int, num_layers: int = 1, *,
                      bidirectional: bool = False, dtype="float32", seed=0,
                      proj_size: int | None = None) -> list:
    """PyTorch-style init for a stack: a list over layers of tuples over directions.

    Every entry is uniform(-1/sqrt(H), 1/sqrt(H)); each layer-direction draws from its own
    stream derived from ``seed`` (an int, a ``numpy.random.SeedSequence``, or None for
    fresh entropy). ``proj_size`` is P of ``lstmp`` (whose layers above the first read D*P
    features).
    """
    spec = get_cell(cell)
    for name, v in (("input_size", input_size), ("hidden_size", hidden_size),
                    ("num_layers", num_layers)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    if str(dtype) not in ("float32", "float64"):
        raise TypeError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
    D = 2 if bidirectional else 1
    root = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    streams = root.spawn(num_layers * D)
    out = spec.output_size(hidden_size, proj_size)
    return [tuple(spec.init_params(input_size if l == 0 else D * out, hidden_size, dtype,
                                   seed=np.random.default_rng(streams[l * D + d]),
                                   proj_size=proj_size)
                  for d in range(D))
            for l in range(num_layers)]


class Stack:
    """A stack of recurrent layers that holds its parameters and its dropout generator.

    Args:
        cell: cell name (see :mod:`fastrnn.core.cells`).
        input_size: I. hidden_size: H. num_layers: L.
        bidirectional: two directions per layer (outputs D*H wide).
        dropout: probability for the outputs of every layer but the last, in training.
        backend: ``"auto"`` or a backend name, used by every call.
        dtype: ``"float32"`` or ``"float64"``.
        seed: seeds the init and, independently, the dropout generator.

    ``stack.params`` is a list over layers of tuples over directions of plain dicts
    name -> array, which you may read or update in place between calls.
    """

    def __init__(self, cell, input_size: int, hidden_size: int, num_layers: int = 1, *,
                 bidirectional: bool = False, dropout: float = 0.0, backend="auto",
                 dtype="float32", seed=0):
        self.cell = get_cell(cell)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bidirectional = bool(bidirectional)
        self.dropout = _check_dropout(dropout)
        self.backend = backend
        init_seq, drop_seq = np.random.SeedSequence(seed).spawn(2)
        self.params = init_stack_params(self.cell, input_size, hidden_size, num_layers,
                                        bidirectional=bidirectional, dtype=dtype,
                                        seed=init_seq)
        self.rng = np.random.default_rng(drop_seq)

    def forward(self, x, h0=None, c0=None, *, lengths=None, batch_first=False,
                training=True) -> StackResult:
        """:func:`stack_forward` with this stack's params, dropout, generator and backend."""
        return stack_forward(self.cell, x, self.params, h0, c0, lengths=lengths,
                             batch_first=batch_first, dropout=self.dropout, rng=self.rng,
                             backend=self.backend, training=training)

    __call__ = forward

    def backward(self, result, dh=None, dh_n=None, dc_n=None) -> StackGradients:
        """:func:`stack_backward` of a result (or its tape) from this stack's forward."""
        return stack_backward(result, dh, dh_n, dc_n)

    def __repr__(self):
        return (f"Stack(cell={self.cell.name!r}, input_size={self.input_size}, "
                f"hidden_size={self.hidden_size}, num_layers={self.num_layers}, "
                f"bidirectional={self.bidirectional}, dropout={self.dropout}, "
                f"backend={self.backend!r}, dtype={self.params[0][0]['W'].dtype})")
