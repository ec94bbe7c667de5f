"""The public API: ``forward``, ``backward``, ``readout``, ``readout_backward``.

This layer validates every argument, brings inputs into the canonical form backends take
(time-major ``(T, B, I)``, contiguous, one float dtype, on the backend's device), picks the
backend and turns the backend's arrays back into the caller's layout (``batch_first``,
unbatched). Backends never see unchecked input.
"""

from __future__ import annotations

import zlib

import numpy as np

from .. import backends as _backends
from ..backends.readout import READOUT_ACTIVATIONS
from . import config
from .arrays import is_cupy_array
from .cells import get_cell
from .prepared import PreparedWeights
from .validation import (as_array, check_float, check_lengths, check_params, check_same_dtype,
                         check_sequence_input, check_shape, describe)

__all__ = ["forward", "backward", "readout", "readout_backward", "ForwardResult", "Gradients",
           "Tape", "ReadoutTape"]


class ForwardResult:
    """Result of :func:`forward`.

    h: all hidden states, (T, B, H); (B, T, H) with batch_first; (T, H) unbatched. Zero
       at padded positions. Read-only when a tape was kept (backward reads it).
    h_n: final hidden state (B, H) (the last valid one of each sequence).
    c_n: final cell state (B, H) for lstm, else None.
    tape: what :func:`backward` needs; None when ``training=False``.
    """

    __slots__ = ("h", "h_n", "c_n", "tape")

    def __init__(self, h, h_n, c_n, tape):
        self.h, self.h_n, self.c_n, self.tape = h, h_n, c_n, tape

    def __iter__(self):
        """Unpack as ``h, h_n, c_n = res`` (the tape stays on the object)."""
        return iter((self.h, self.h_n, self.c_n))

    def __repr__(self):
        return (f"{type(self).__name__}(h={describe(self.h)}, h_n={describe(self.h_n)}, "
                f"c_n={None if self.c_n is None else describe(self.c_n)}, "
                f"tape={'kept' if self.tape is not None else None})")


class Gradients:
    """Result of :func:`backward`: dx (same shape as x), dh0, dc0 (lstm, else None) and
    params, a dict with the same keys and shapes as the forward's params."""

    __slots__ = ("dx", "dh0", "dc0", "params")

    def __init__(self, dx, dh0, dc0, params):
        self.dx, self.dh0, self.dc0, self.params = dx, dh0, dc0, params

    def __repr__(self):
        keys = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in self.params.items())
        return f"Gradients(dx={describe(self.dx)}, dh0={describe(self.dh0)}, params={{{keys}}})"


class Tape:
    """Everything :func:`backward` needs from one :func:`forward` call.

    Holds the canonical (time-major, contiguous) inputs, the backend that ran the forward
    and that backend's saved intermediates. A checksum of the inputs taken at forward
    time is checked again at backward time, so a tape whose arrays were changed in place
    in between (an optimiser step before backward, say) is refused instead of giving
    silently wrong gradients. Large arrays are checksummed through evenly spaced elements
    (``config.tape_digest_full`` / ``tape_digest_samples``), which catches any change that
    touches more than a sliver.
    """

    __slots__ = ("cell", "backend", "x", "params", "weights", "h0", "c0", "lengths", "reverse",
                 "saved", "layout", "_params_mutable", "_digest")

    def __init__(self, cell, backend, x, params, weights, h0, c0, lengths, reverse, saved,
                 layout, guard=True, params_mutable=True):
        self.cell, self.backend = cell, backend
        self.x, self.params, self.weights, self.h0, self.c0 = x, params, weights, h0, c0
        self.lengths, self.reverse, self.saved, self.layout = lengths, reverse, saved, layout
        self._params_mutable = params_mutable      # False for prepared weights: a snapshot
        self._digest = self._compute_digest() if guard else None

    def _arrays(self):
        yield "x", self.x
        yield "h0", self.h0
        if self.c0 is not None:
            yield "c0", self.c0
        if self._params_mutable:
            for k, v in self.params.items():
                yield f"params[{k!r}]", v

    def _compute_digest(self):
        return tuple(_digest(a) for _, a in self._arrays())

    def verify(self) -> None:
        """Raise ValueError if an array the tape depends on changed since the forward
        (nothing is checked for a tape made with ``guard=False``)."""
        if self._digest is None:
            return
        now = self._compute_digest()
        if now != self._digest:
            changed = [name for (name, _), a, b in zip(self._arrays(), now, self._digest) if a != b]
            raise ValueError(f"tape: {', '.join(changed)} changed in place after the forward "
                             f"that made this tape; its gradients would be wrong. Run forward "
                             f"again on the current arrays, or pass copies to forward")

    def __repr__(self):
        T, B, I = self.x.shape
        return (f"Tape(cell={self.cell.name!r}, backend={self.backend.name!r}, T={T}, B={B}, "
                f"I={I}, H={self.h0.shape[1]}, dtype={self.x.dtype})")


def _digest(a) -> int:
    if a.size > config.tape_digest_full:
        a = a.reshape(-1)[:: a.size // config.tape_digest_samples]
    if is_cupy_array(a):                            # device arrays: fetch the small sample
        a = a.get()
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    return zlib.crc32(a)


class _Layout:
    """How the caller's arrays map onto the canonical (T, B, ·) form."""

    __slots__ = ("unbatched", "batch_first", "T", "B", "I", "H", "C", "dtype")

    def __init__(self, unbatched, batch_first, T, B, I, H, dtype, C=None):
        """H: the width of h (P for lstmp); C: the width of the cell state c (H)."""
        self.unbatched, self.batch_first = unbatched, batch_first
        self.T, self.B, self.I, self.H, self.dtype = T, B, I, H, dtype
        self.C = H if C is None else C

    def seq_shape(self, width: int) -> tuple:
        if self.unbatched:
            return (self.T, width)
        return (self.B, self.T, width) if self.batch_first else (self.T, self.B, width)

    def state_shape(self, width: int | None = None) -> tuple:
        width = self.H if width is None else width
        return (width,) if self.unbatched else (self.B, width)

    def seq_to_user(self, a):
        if self.unbatched:
            return a[:, 0, :]
        return a.transpose(1, 0, 2) if self.batch_first else a

    def seq_from_user(self, xp, a):
        if self.unbatched:
            a = a[:, None, :]
        elif self.batch_first:
            a = a.transpose(1, 0, 2)
        return xp.ascontiguousarray(a)

    def state_to_user(self, a):
        return None if a is None else (a[0] if self.unbatched else a)

    def state_from_user(self, xp, a):
        return xp.ascontiguousarray(a[None, :] if self.unbatched else a)


def _check_state(xp, name, a, layout: _Layout, width=None):
    a = as_array(xp, name, a)
    check_shape(name, a, layout.state_shape(width),
                "H" if layout.unbatched else "(B, H): batch size and hidden size")
    check_same_dtype(name, a, layout.dtype)
    return layout.state_from_user(xp, a)


def _weights_for(spec, params, backend, x):
    """(backend, params dict, backend-prepared weights, whether params are a snapshot)."""
    if isinstance(params, PreparedWeights):
        if params.cell is not spec:
            raise ValueError(f"params: prepared for cell {params.cell.name!r}, not "
                             f"{spec.name!r}; prepare the weights of {spec.name!r}")
        be = params.backend
        if backend is not None and backend != "auto":
            asked = _backends.resolve(backend, x)
            if asked is not be:
                raise ValueError(f"backend: the params were prepared for backend {be.name!r}, "
                                 f"not {asked.name!r}; prepare them for {asked.name!r}")
        return be, params.params, params.packed, False
    be = _backends.resolve(backend, x)
    return be, params, None, True


def forward(cell, x, params, h0=None, c0=None, *, lengths=None, reverse=False,
            batch_first=False, backend="auto", training=True, guard=True) -> ForwardResult:
    """Run a recurrent cell over a whole sequence.

    Args:
        cell: ``"rnn_tanh"`` (alias ``"rnn"``), ``"rnn_relu"``, ``"lstm"``, ``"gru"`` or
            ``"gru_reset_before"``.
        x: (T, B, I) input; (B, T, I) with ``batch_first``; (T, I) unbatched. float32 or float64.
        params: mapping name -> array, shapes as in :mod:`fastrnn.core.cells`, dtype of x;
            or :class:`~fastrnn.core.prepared.PreparedWeights` from :func:`fastrnn.prepare`
            (checked and packed once; they choose the backend when ``backend="auto"``).
        h0, c0: initial states (B, H) ((H,) unbatched); zeros when None. c0 only for lstm
            and lstmp (whose h0 is (B, P)).
        lengths: (B,) integers in 1..T; sequence b is valid for t < lengths[b].
        reverse: run each sequence from its last valid step back to its first.
        batch_first: x and the returned h are (B, T, ·).
        backend: ``"auto"``, ``"numpy"``, ``"numba"`` or ``"cupy"``.
        training: keep a tape for :func:`backward`; False keeps nothing.
        guard: checksum the inputs, so that :func:`backward` refuses the tape once one of
            them was changed in place (prepared weights are a snapshot and need none).
            ``fastrnn.torch`` passes False: torch's version counters refuse the in-place
            changes that autograd tracks, as for ``torch.nn`` (changes through ``.data``
            or a NumPy alias go unseen there, as they do for ``torch.nn``), and the
            checksums cost time on every call.

    Returns:
        :class:`ForwardResult` with ``h``, ``h_n``, ``c_n`` and ``tape``.
    """
    spec = get_cell(cell)
    be, p, weights, mutable = _weights_for(spec, params, backend, x)
    xp = be.xp
    x, unbatched = check_sequence_input(xp, x, be.dtypes, lengths)
    if unbatched:
        T, I = x.shape
        B = 1
    else:
        T, B, I = (x.shape[1], x.shape[0], x.shape[2]) if batch_first else x.shape
    if T < 1 or B < 1 or I < 1:
        raise ValueError(f"x: expected at least one time step, sequence and feature, got "
                         f"shape {tuple(x.shape)}")
    if weights is None:
        p, H = check_params(xp, spec, p, I, be.dtypes)      # H: the width of h (P for lstmp)
        for k, a in p.items():
            check_same_dtype(f"params[{k!r}]", a, x.dtype)
            if not a.flags.c_contiguous:
                p[k] = xp.ascontiguousarray(a)
        weights = be.prepare(spec, p)
    else:
        H = p["U"].shape[0]                                  # the width of h (P for lstmp)
        if p["W"].shape[0] != I:
            raise ValueError(f"x: expected {p['W'].shape[0]} features (the input size of the "
                             f"prepared params), got shape {tuple(x.shape)}")
        if x.dtype != p["W"].dtype:
            raise TypeError(f"x: expected dtype {p['W'].dtype} (the dtype of the prepared "
                            f"params), got {x.dtype}; mixed dtypes are not converted silently")
    layout = _Layout(unbatched, bool(batch_first) and not unbatched, T, B, I, H, x.dtype,
                     spec.sizes_of(p)[0])
    return _run_forward(spec, be, layout.seq_from_user(xp, x), p, weights, h0, c0, lengths,
                        bool(reverse), bool(training), layout, bool(guard), mutable)


def _run_forward(spec, be, x3, params, weights, h0, c0, lengths, reverse, training, layout,
                 guard, params_mutable):
    """The rest of :func:`forward` once x (time-major x3) and the weights are checked."""
    xp = be.xp
    B, H = layout.B, layout.H
    h0c = (xp.zeros((B, H), dtype=layout.dtype) if h0 is None
           else _check_state(xp, "h0", h0, layout))
    if spec.has_cell_state:
        c0c = (xp.zeros((B, layout.C), dtype=layout.dtype) if c0 is None
               else _check_state(xp, "c0", c0, layout, layout.C))
    elif c0 is not None:
        raise ValueError(f"c0: cell {spec.name!r} has no cell state; c0 is only for 'lstm' "
                         f"and 'lstmp'")
    else:
        c0c = None
    lens = check_lengths(lengths, layout.T, B)
    out = be.forward(spec, x3, weights, h0c, c0c, lens, reverse, training)
    tape = None
    h = out.h
    if training:
        tape = Tape(spec, be, x3, params, weights, h0c, c0c, lens, reverse, out.saved, layout,
                    guard=guard, params_mutable=params_mutable)
        if isinstance(h, np.ndarray):
            h.flags.writeable = False
    return ForwardResult(layout.seq_to_user(h), layout.state_to_user(out.h_n),
                         layout.state_to_user(out.c_n), tape)


def _check_grad(xp, name, a, shape, layout, what):
    a = as_array(xp, name, a)
    check_shape(name, a, shape, what)
    check_same_dtype(name, a, layout.dtype)
    return a


def backward(tape, dh=None, dh_n=None, dc_n=None, *, backend=None) -> Gradients:
    """Backpropagation through time for one :func:`forward` call.

    Args:
        tape: ``res.tape`` of a forward run with ``training=True``.
        dh: gradient of the loss with respect to ``res.h`` (same shape), or None.
        dh_n: gradient with respect to ``res.h_n``, or None.
        dc_n: gradient with respect to ``res.c_n`` (lstm only), or None.
        backend: if given, must name the backend that made the tape.

    Returns:
        :class:`Gradients` with dx, dh0, dc0 and params.
    """
    if tape is None:
        raise ValueError("tape: got None; a forward run with training=False keeps no tape. "
                         "Run forward with training=True to get gradients")
    if isinstance(tape, ForwardResult):
        tape = tape.tape
        if tape is None:
            raise ValueError("tape: this result was made with training=False and has no tape")
    if not isinstance(tape, Tape):
        raise TypeError(f"tape: expected the .tape of a forward result, got {type(tape).__name__}")
    be = tape.backend
    if backend is not None and backend != "auto":
        name = backend if isinstance(backend, str) else getattr(backend, "name", backend)
        if name != be.name:
            raise ValueError(f"backend: this tape was made by backend {be.name!r}; its saved "
                             f"arrays cannot be read by backend {name!r}. Run forward on "
                             f"{name!r} to differentiate there")
    tape.verify()
    lay, xp = tape.layout, be.xp
    if dh is not None:
        dh = _check_grad(xp, "dh", dh, lay.seq_shape(lay.H), lay, "the shape of res.h")
        dh = lay.seq_from_user(xp, dh)
    if dh_n is not None:
        dh_n = lay.state_from_user(xp, _check_grad(xp, "dh_n", dh_n, lay.state_shape(), lay,
                                                   "the shape of res.h_n"))
    if dc_n is not None:
        if not tape.cell.has_cell_state:
            raise ValueError(f"dc_n: cell {tape.cell.name!r} has no cell state; dc_n is only "
                             f"for 'lstm' and 'lstmp'")
        dc_n = lay.state_from_user(xp, _check_grad(xp, "dc_n", dc_n, lay.state_shape(lay.C),
                                                   lay, "the shape of res.c_n"))
    g = be.backward(tape.cell, tape.saved, tape.x, tape.weights, tape.h0, tape.c0,
                    tape.lengths, tape.reverse, dh, dh_n, dc_n)
    return Gradients(lay.seq_to_user(g.dx), lay.state_to_user(g.dh0),
                     lay.state_to_user(g.dc0), g.params)


# ------------------------------------------------------------------------------ readout

class ReadoutTape:
    """What :func:`readout_backward` needs: h (N, H), Wy, y (N, n_y), activation, shape."""

    __slots__ = ("backend", "h2", "Wy", "y2", "activation", "lead_shape", "_digest")

    def __init__(self, backend, h2, Wy, y2, activation, lead_shape):
        self.backend, self.h2, self.Wy, self.y2 = backend, h2, Wy, y2
        self.activation, self.lead_shape = activation, lead_shape
        self._digest = (_digest(h2), _digest(Wy))

    def verify(self):
        if (_digest(self.h2), _digest(self.Wy)) != self._digest:
            raise ValueError("rtape: h or Wy changed in place after the readout that made this "
                             "tape; run readout again on the current arrays")


def readout(h, Wy, by, activation="softmax", *, backend="auto"):
    """Per-step prediction ``y = activation(h @ Wy + by)`` as one GEMM over all steps.

    Args:
        h: (..., H) hidden states, e.g. ``res.h`` (T, B, H).
        Wy: (H, n_y). by: (n_y,).
        activation: ``"softmax"`` (over the last axis), ``"sigmoid"`` or ``"linear"``.

    Returns:
        (y, rtape): y (..., n_y) and the tape for :func:`readout_backward`.
    """
    be = _backends.resolve(backend, h)
    xp = be.xp
    if activation not in READOUT_ACTIVATIONS:
        raise ValueError(f"activation: expected one of {', '.join(READOUT_ACTIVATIONS)}, "
                         f"got {activation!r}")
    h = as_array(xp, "h", h)
    check_float("h", h, be.dtypes)
    if h.ndim < 1:
        raise ValueError("h: expected an array (..., H), got a scalar")
    Wy = as_array(xp, "Wy", Wy)
    by = as_array(xp, "by", by)
    H = h.shape[-1]
    if Wy.ndim != 2 or Wy.shape[0] != H:
        raise ValueError(f"Wy: expected shape ({H}, n_y) (H rows to match h), got "
                         f"{tuple(Wy.shape)}")
    check_shape("by", by, (Wy.shape[1],), "n_y, the columns of Wy")
    check_same_dtype("Wy", Wy, h.dtype)
    check_same_dtype("by", by, h.dtype)
    lead = tuple(h.shape[:-1])
    h2 = xp.ascontiguousarray(h.reshape(-1, H))
    y2 = be.readout(h2, xp.ascontiguousarray(Wy), by, activation)
    return y2.reshape(lead + (Wy.shape[1],)), ReadoutTape(be, h2, Wy, y2, activation, lead)


def readout_backward(rtape, dy):
    """Gradients (dh, dWy, dby) of the readout given dy = dL/dy, same shape as y."""
    if not isinstance(rtape, ReadoutTape):
        raise TypeError(f"rtape: expected the tape returned by readout, got "
                        f"{type(rtape).__name__}")
    rtape.verify()
    be, xp = rtape.backend, rtape.backend.xp
    n_y = rtape.Wy.shape[1]
    dy = as_array(xp, "dy", dy)
    check_shape("dy", dy, rtape.lead_shape + (n_y,), "the shape of y")
    check_same_dtype("dy", dy, rtape.h2.dtype)
    dh2, dWy, dby = be.readout_backward(rtape.h2, rtape.Wy, rtape.y2, rtape.activation,
                                        xp.ascontiguousarray(dy.reshape(-1, n_y)))
    return dh2.reshape(rtape.lead_shape + (rtape.h2.shape[1],)), dWy, dby
