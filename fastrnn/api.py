"""The public API: ``forward``, ``backward``, ``readout``, ``readout_backward``, ``prepare``.

This layer validates every argument, brings inputs into the canonical form backends take
(time-major ``(T, B, I)``, contiguous, one float dtype, on the backend's device), picks the
backend and turns the backend's arrays back into the caller's layout (``batch_first``,
unbatched). Backends never see unchecked input. It sits above ``fastrnn.backends``; the
contract it enforces (cells, checks, result objects) is ``fastrnn.core``, which imports
no backend.

Where arrays live: every array argument is of the library of ``x`` — all NumPy (host) or
all CuPy (device). A NumPy array beside a CuPy ``x``, or the reverse, is a TypeError that
names both, never a silent copy in every call of a loop. ``backend="cupy"`` with only
host arrays is the one explicit request to copy them to the device (results are CuPy
arrays); prepared weights live where they were prepared. ``lengths`` may be on either
side: it is read on the host.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from . import backends as _backends
from .backends.readout import READOUT_ACTIVATIONS
from .core import config
from .core.cells import get_cell
from .core.prepared import PreparedWeights, read_only_views
from .core.results import ForwardResult, Gradients, Layout, ReadoutTape, Tape
from .core.validation import (as_array, check_float, check_lengths, check_params,
                              check_same_dtype, check_same_place, check_sequence_input,
                              check_shape, describe, place)

__all__ = ["forward", "backward", "readout", "readout_backward", "prepare", "ForwardResult",
           "Gradients", "Tape", "ReadoutTape"]


def _arrays_of(params):
    """(name, array) of a params mapping or of prepared weights, for the one-device check."""
    if isinstance(params, PreparedWeights):
        params = params.params
    if isinstance(params, Mapping):
        return [(f"params[{k!r}]", v) for k, v in params.items()]
    return []


def _tf32(allow_tf32) -> bool:
    return bool(config.allow_tf32 if allow_tf32 is None else allow_tf32)


def _check_state(xp, name, a, layout: Layout, width=None):
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
            batch_first=False, backend="auto", training=True, guard=True,
            allow_tf32=None) -> ForwardResult:
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
        allow_tf32: let float32 products on the GPU use TF32 tensor cores (10-bit
            mantissas: about 1e-3 relative error, see fastrnn.core.tolerances), forward and
            this tape's backward; None takes ``config.allow_tf32`` (``FASTRNN_ALLOW_TF32``,
            off by default: strict float32). CPU backends always compute in float32.
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
    x_place = place(x)
    check_same_place("x", x_place, _arrays_of(params) + [("h0", h0), ("c0", c0)])
    be, p, weights, mutable = _weights_for(spec, params, backend, x)
    xp = be.xp
    x, unbatched = check_sequence_input(xp, x, be.dtypes, lengths, be.name)
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
            if not a.flags.c_contiguous and not getattr(be, "strided_params", False):
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
    layout = Layout(unbatched, bool(batch_first) and not unbatched, T, B, I, H, x.dtype,
                    spec.sizes_of(p)[0])
    return _run_forward(spec, be, layout.seq_from_user(xp, x), p, weights, h0, c0, lengths,
                        bool(reverse), bool(training), layout, bool(guard), mutable,
                        _tf32(allow_tf32), x_place)


def _run_forward(spec, be, x3, params, weights, h0, c0, lengths, reverse, training, layout,
                 guard, params_mutable, tf32=False, x_place=None):
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
    return _execute(spec, be, x3, params, weights, h0c, c0c, check_lengths(lengths, layout.T, B),
                    reverse, training, layout, guard, params_mutable, tf32, x_place)


def _execute(spec, be, x3, params, weights, h0, c0, lens, reverse, training, layout, guard,
             params_mutable, tf32, x_place):
    """The backend's forward on checked, canonical arrays; the tape; the caller's layout."""
    extra = {"tf32": True} if tf32 else {}          # backends registered by others may not take it
    out = be.forward(spec, x3, weights, h0, c0, lens, reverse, training, **extra)
    tape = None
    h = out.h
    if training:
        tape = Tape(spec, be, x3, params, weights, h0, c0, lens, reverse, out.saved, layout,
                    guard=guard, params_mutable=params_mutable, tf32=tf32, x_place=x_place)
        if isinstance(h, np.ndarray):
            h.flags.writeable = False
    return ForwardResult(layout.seq_to_user(h), layout.state_to_user(out.h_n),
                         layout.state_to_user(out.c_n), tape)


def forward_unchecked(spec, be, x, params, h0, c0, lengths=None, reverse=False,
                      training=True, tf32=False) -> ForwardResult:
    """:func:`forward` with ``guard=False`` for a caller that has checked every argument
    already (``fastrnn.torch`` checks them the way torch.nn does, with its exceptions), so
    that a cell step in a loop does not pay for the checks twice.

    spec: a CellSpec; be: the backend object; x (T, B, I) C-contiguous, time-major; params:
    a dict of arrays of x's dtype on x's device (any strides if ``be.strided_params``, else
    C-contiguous) or :class:`PreparedWeights` of ``be``; h0 (B, P) and c0 (B, H) (lstm)
    C-contiguous, or None for zeros; lengths None or (B,) integers in 1..T.
    """
    T, B, I = x.shape
    if isinstance(params, PreparedWeights):
        p, weights, mutable = params.params, params.packed, False
    else:
        p, weights, mutable = params, be.prepare(spec, params), True
    layout = Layout(False, False, T, B, I, p["U"].shape[0], x.dtype, spec.sizes_of(p)[0])
    xp = be.xp
    if h0 is None:
        h0 = xp.zeros((B, layout.H), dtype=x.dtype)
    if spec.has_cell_state and c0 is None:
        c0 = xp.zeros((B, layout.C), dtype=x.dtype)
    return _execute(spec, be, x, p, weights, h0, c0, check_lengths(lengths, T, B),
                    bool(reverse), bool(training), layout, False, mutable, tf32, None)


def backward_unchecked(tape, dh=None, dh_n=None, dc_n=None) -> Gradients:
    """:func:`backward` of a :func:`forward_unchecked` tape, for the same callers: dh
    (T, B, P), dh_n (B, P), dc_n (B, H) or None, of the tape's dtype and device, any
    strides (made contiguous here where the backend needs it)."""
    xp = tape.backend.xp
    if dh is not None:
        dh = xp.ascontiguousarray(dh)
    if dh_n is not None:
        dh_n = xp.ascontiguousarray(dh_n)
    if dc_n is not None:
        dc_n = xp.ascontiguousarray(dc_n)
    return _execute_backward(tape, dh, dh_n, dc_n)


def _execute_backward(tape, dh, dh_n, dc_n) -> Gradients:
    """The backend's backward on checked, canonical upstream gradients; the caller's layout."""
    g = tape.backend.backward(tape.cell, tape.saved, tape.x, tape.weights, tape.h0, tape.c0,
                              tape.lengths, tape.reverse, dh, dh_n, dc_n,
                              **({"tf32": True} if tape.tf32 else {}))
    lay = tape.layout
    return Gradients(lay.seq_to_user(g.dx), lay.state_to_user(g.dh0),
                     lay.state_to_user(g.dc0), g.params)


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
    verified = tape.verify_start()
    if not getattr(be, "checks_later", False):
        verified()                                   # host arrays: refuse before computing
    check_same_place("the forward's x", tape.x_place or place(tape.x),
                     [("dh", dh), ("dh_n", dh_n), ("dc_n", dc_n)])
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
    grads = _execute_backward(tape, dh, dh_n, dc_n)
    verified()          # device arrays: the comparison ran before the backward's kernels
    return grads


# ------------------------------------------------------------------------------ readout

def readout(h, Wy, by, activation="softmax", *, backend="auto"):
    """Per-step prediction ``y = activation(h @ Wy + by)`` as one GEMM over all steps.

    Args:
        h: (..., H) hidden states, e.g. ``res.h`` (T, B, H).
        Wy: (H, n_y). by: (n_y,).
        activation: ``"softmax"`` (over the last axis), ``"sigmoid"`` or ``"linear"``.

    Returns:
        (y, rtape): y (..., n_y) and the tape for :func:`readout_backward`.
    """
    h_place = place(h)
    check_same_place("h", h_place, [("Wy", Wy), ("by", by)])
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
    return y2.reshape(lead + (Wy.shape[1],)), ReadoutTape(be, h2, Wy, y2, activation, lead,
                                                          h_place)


def readout_backward(rtape, dy):
    """Gradients (dh, dWy, dby) of the readout given dy = dL/dy, same shape as y."""
    if not isinstance(rtape, ReadoutTape):
        raise TypeError(f"rtape: expected the tape returned by readout, got "
                        f"{type(rtape).__name__}")
    rtape.verify()
    check_same_place("the readout's h", rtape.h_place or place(rtape.h2), [("dy", dy)])
    be, xp = rtape.backend, rtape.backend.xp
    n_y = rtape.Wy.shape[1]
    dy = as_array(xp, "dy", dy)
    check_shape("dy", dy, rtape.lead_shape + (n_y,), "the shape of y")
    check_same_dtype("dy", dy, rtape.h2.dtype)
    dh2, dWy, dby = be.readout_backward(rtape.h2, rtape.Wy, rtape.y2, rtape.activation,
                                        xp.ascontiguousarray(dy.reshape(-1, n_y)))
    return dh2.reshape(rtape.lead_shape + (rtape.h2.shape[1],)), dWy, dby


# ------------------------------------------------------------------------ prepared weights

def prepare(cell, params, backend="auto") -> PreparedWeights:
    """Check, copy and pack ``params`` of ``cell`` once, for ``backend``.

    Args:
        cell: cell name (see :mod:`fastrnn.core.cells`) or spec.
        params: mapping name -> array with the shapes of the cell (W (I, G*H), U (H, G*H),
            b (G*H,), bn (H,) for gru), one float dtype, all on one device.
        backend: ``"auto"`` (chosen from the type of ``params["W"]``, as for inputs), a
            backend name or object.

    Returns:
        :class:`~fastrnn.core.prepared.PreparedWeights`, accepted by :func:`forward`,
        :class:`fastrnn.Stepper` and the layers wherever ``params`` is; :func:`backward` of
        such a forward returns gradients with the keys of ``params``.
    """
    spec = get_cell(cell)
    if isinstance(params, PreparedWeights):
        raise TypeError(f"params: already a PreparedWeights ({params!r}); pass it to forward "
                        f"as it is, or prepare its .params again for another backend")
    W = params.get("W") if isinstance(params, Mapping) else None
    check_same_place("params['W']", W, _arrays_of(params))
    be = _backends.resolve(backend, W)
    if W is not None and getattr(W, "ndim", None) != 2:
        raise ValueError(f"params['W']: expected a 2-d array (I, {spec.num_gates}*H), got "
                         f"{describe(W)}")
    checked, _ = check_params(be.xp, spec, params, 0 if W is None else int(W.shape[0]),
                              be.dtypes)
    snapshot = {k: be.xp.array(a, copy=True, order="C") for k, a in checked.items()}
    return PreparedWeights(spec, be, read_only_views(snapshot), be.prepare(spec, snapshot))
