"""The RNN/LSTM course notebook's functions, computed by fastrnn (``fastrnn.notebook``).

``from fastrnn.notebook import rnn_forward, rnn_backward, lstm_forward, lstm_backward``
replaces the hand-written functions of the course notebook
(``shared/user-code/rnn_lstm_course_notebook.txt``) without changing the code around them:
the same names, arguments, shapes, return values and dict keys, and the same numbers
(float64 to ~1e-12).

Conventions, the notebook's own: column vectors; ``x (n_x, m, T_x)``, states ``(n_a, m)``,
sequences of states ``(n_a, m, T_x)``, predictions ``(n_y, m, T_x)``.

* RNN, ``parameters`` ``Wax (n_a, n_x)``, ``Waa (n_a, n_a)``, ``ba (n_a, 1)``, ``Wya (n_y,
  n_a)``, ``by (n_y, 1)``: ``a' = tanh(Waa a + Wax x + ba)``, ``y = softmax(Wya a' + by)``
  over the n_y rows, at every step.
* LSTM, ``Wf, Wi, Wc, Wo (n_a, n_a + n_x)`` acting on ``[a_prev; x]``, ``bf, bi, bc, bo
  (n_a, 1)``, ``Wy (n_y, n_a)``, ``by (n_y, 1)``. ``lstm_forward`` starts from ``c0 = 0``.
* Backward functions take ``da``, the gradient of the loss with respect to every hidden
  state, and return the notebook's dicts: ``dx, da0, dWax, dWaa, dba`` (RNN) and, for
  the LSTM, whose backward the notebook file stops short of, the course's ``dx, da0, dWf,
  dbf, dWi, dbi, dWc, dbc, dWo, dbo``; the cell versions ``dxt, da_prev`` (and
  ``dc_prev`` for the LSTM) and the weight gradients. Keys of ``parameters`` other than
  those above are ignored, as the notebook ignores them.
* One addition: ``rnn_backward`` / ``lstm_backward`` take an optional keyword ``dy``, the
  gradient with respect to the predictions; it then adds its path through the softmax
  readout to ``da`` and the readout's gradients ``dWya`` / ``dWy`` and ``dby`` to the dict.

Under the hood, per call: :func:`fastrnn.convert.from_notebook` and
:func:`~fastrnn.convert.readout_from_notebook` bring the weights into fastrnn's layout, one
:func:`fastrnn.forward` runs the whole sequence (no Python loop over time) and one
:func:`fastrnn.readout` makes every step's prediction; backward is one
:func:`fastrnn.backward` (plus :func:`fastrnn.readout_backward` with ``dy``) and
:func:`fastrnn.convert.to_notebook` of the gradients. Weights are converted on every call:
nothing is cached between calls.

**caches.** ``rnn_forward`` and ``lstm_forward`` return ``caches = (steps, x)``, a 2-tuple
like the notebook's, whose ``x`` is the caller's ``x``. ``steps`` is a read-only
sequence (:class:`StepCaches`), not a list: it holds the forward's tape, which
``rnn_backward`` / ``lstm_backward`` need, so these accept only caches from this module.
``steps[t]`` builds the notebook's cache of step t when read — ``(a_next, a_prev, xt,
parameters)`` for the RNN, ``(a_next, c_next, a_prev, c_prev, ft, it, cct, ot, xt,
parameters)`` for the LSTM — as fresh arrays (``xt`` a view of ``x`` and ``parameters``
the caller's dict, as in the notebook), so the notebook's own backward functions, or
anything else that reads them, run unchanged on these caches. The cell functions return
the notebook's cache tuple itself (a :class:`CellCache`, which carries that step's tape);
``rnn_cell_backward`` / ``lstm_cell_backward`` also take a plain tuple of that form, from
any forward, and recompute the step from it.

Where this differs from the notebook:

* ``lstm_forward``'s ``steps[0]`` holds the true ``a_prev = a0`` and ``c_prev = 0``; the
  notebook's holds views of ``a[:, :, 0]`` and ``c[:, :, 0]``, which its loop then
  overwrites with step 0's outputs.
* dtypes promote as NumPy's do; all-float32 inputs compute and return float32 (the
  notebook returns float64 arrays), anything else float64.
* ``(n, m, T_x)`` results are Fortran-ordered, the memory layout of fastrnn's time-major
  arrays (the notebook's are C-ordered): the same values, shapes and indexing, and no
  strided transpose to pay for.
* Backward differentiates the forward that was run: parameters changed in place after it
  do not enter (the notebook's backward would mix old states with new weights).
* Runs on the backend fastrnn picks for NumPy arrays: numba, or the reference with
  ``FASTRNN_BACKEND=numpy``. A GPU backend named there is not used: these functions take
  and return NumPy arrays.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..backends import auto_backend_name
from ..api import backward, forward, readout, readout_backward
from ..core.cells import get_cell
from ..core.validation import describe
from . import convert

__all__ = ["rnn_cell_forward", "rnn_forward", "rnn_cell_backward", "rnn_backward",
           "lstm_cell_forward", "lstm_forward", "lstm_cell_backward", "lstm_backward",
           "StepCaches", "CellCache"]


# ------------------------------------------------------------------------------ layouts

@dataclass(frozen=True)
class _Layout:
    """One notebook's parameters: the keys its code reads and their shapes in symbols."""

    name: str                       # "RNN" or "LSTM", for messages
    shapes: dict                    # key -> shape, each size an int or a symbol of _size
    cell_keys: tuple                # the keys fastrnn.convert.from_notebook reads
    readout_key: str                # "Wya" or "Wy"
    cache_fields: tuple             # names of the items of one step's cache
    has_cell_state: bool = False


_RNN = _Layout("RNN", {"Wax": ("n_a", "n_x"), "Waa": ("n_a", "n_a"), "Wya": ("n_y", "n_a"),
                       "ba": ("n_a", 1), "by": ("n_y", 1)},
               ("Wax", "Waa", "ba"), "Wya", ("a_next", "a_prev", "xt", "parameters"))
_LSTM_GATE_KEYS = tuple(f"{w}{g}" for g in convert.NOTEBOOK_LSTM_GATES for w in "Wb")
_LSTM = _Layout("LSTM", {**{k: ("n_a", "n_a + n_x") if k[0] == "W" else ("n_a", 1)
                            for k in _LSTM_GATE_KEYS},
                         "Wy": ("n_y", "n_a"), "by": ("n_y", 1)},
                _LSTM_GATE_KEYS, "Wy",
                ("a_next", "c_next", "a_prev", "c_prev", "ft", "it", "cct", "ot", "xt",
                 "parameters"), has_cell_state=True)


def _size(symbol, dims: dict) -> int:
    """The value of one size of a symbolic shape: an int, a name in dims, or 'a + b'."""
    if isinstance(symbol, int):
        return symbol
    return sum(dims[s.strip()] for s in symbol.split("+"))


def _symbols(shape: tuple) -> str:
    return f"({', '.join(map(str, shape))})"


# --------------------------------------------------------------------------- validation

@dataclass
class _Inputs:
    """Checked inputs of one forward call, cast to one float dtype.

    x: (n_x, m, T_x) or (n_x, m); a (n_a, m); c (n_a, m) or None; arrays: key -> array of
    the keys the layout reads; dims: n_x, m, n_a, n_y.
    """

    x: np.ndarray
    a: np.ndarray
    c: np.ndarray | None
    arrays: dict
    dims: dict


def _real_array(name: str, a) -> np.ndarray:
    """``a`` as a NumPy array of a real number dtype, or a TypeError naming it."""
    try:
        arr = np.asarray(a)
    except Exception as exc:  # noqa: BLE001 - any conversion failure is the caller's input
        raise TypeError(f"{name}: expected a NumPy array, got {describe(a)} ({exc})") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected a real-valued array, got {describe(arr)}")
    return arr


def _parameter_arrays(layout: _Layout, parameters) -> dict:
    """{key: array} of the keys the layout reads; an error names a missing key and its shape."""
    if not isinstance(parameters, Mapping):
        raise TypeError(f"parameters: expected the notebook's dict of {layout.name} weights "
                        f"({', '.join(layout.shapes)}), got {type(parameters).__name__}")
    missing = [k for k in layout.shapes if k not in parameters]
    if missing:
        need = ", ".join(f"{k!r} of shape {_symbols(layout.shapes[k])}" for k in missing)
        raise ValueError(f"parameters: missing {need}; the {layout.name} functions read "
                         f"{', '.join(layout.shapes)}")
    return {k: _real_array(f"parameters[{k!r}]", parameters[k]) for k in layout.shapes}


def _check_dims(layout, x, x_name, x_shape, a, a_name, arrays) -> dict:
    """n_x and m from x, n_a from the state, n_y from the readout; every parameter checked."""
    if x.ndim != len(x_shape) or min(x.shape) < 1:
        raise ValueError(f"{x_name}: expected shape {_symbols(x_shape)}, every size at least "
                         f"1, got {x.shape}")
    n_x, m = x.shape[:2]
    if a.ndim != 2 or a.shape[1] != m or a.shape[0] < 1:
        raise ValueError(f"{a_name}: expected shape (n_a, m) with m={m} from {x_name}, got "
                         f"{a.shape}")
    n_a = a.shape[0]
    key = layout.readout_key
    Wy = arrays[key]
    if Wy.ndim != 2 or Wy.shape[0] < 1:
        raise ValueError(f"parameters[{key!r}]: expected shape (n_y, n_a) = (n_y, {n_a}), got "
                         f"{Wy.shape}")
    dims = {"n_x": n_x, "m": m, "n_a": n_a, "n_y": Wy.shape[0]}
    source = (f"n_x={n_x} and m={m} from {x_name}, n_a={n_a} from {a_name}, "
              f"n_y={dims['n_y']} from parameters[{key!r}]")
    for k, shape in layout.shapes.items():
        expected = tuple(_size(s, dims) for s in shape)
        if arrays[k].shape != expected:
            raise ValueError(f"parameters[{k!r}]: expected shape {_symbols(shape)} = "
                             f"{expected} ({source}), got {arrays[k].shape}")
    return dims


def _float_dtype(*arrays) -> np.dtype:
    """float32 when every input is float32, else float64 (NumPy's promotion, floats only)."""
    return np.dtype(np.float32 if np.result_type(*arrays) == np.float32 else np.float64)


def _inputs(layout, x, x_name, x_shape, a, a_name, parameters, c=None, c_name=None):
    """Validate one forward call's arguments and cast them to one float dtype."""
    arrays = _parameter_arrays(layout, parameters)
    x, a = _real_array(x_name, x), _real_array(a_name, a)
    dims = _check_dims(layout, x, x_name, x_shape, a, a_name, arrays)
    states = [a]
    if c_name is not None:
        c = _real_array(c_name, c)
        if c.shape != a.shape:
            raise ValueError(f"{c_name}: expected shape (n_a, m) = {a.shape}, like {a_name}, "
                             f"got {c.shape}")
        states.append(c)
    dt = _float_dtype(x, *states, *arrays.values())
    return _Inputs(x.astype(dt, copy=False), a.astype(dt, copy=False),
                   None if c is None else c.astype(dt, copy=False),
                   {k: v.astype(dt, copy=False) for k, v in arrays.items()}, dims)


def _gradient(name: str, g, shape: tuple, symbols: str, dtype) -> np.ndarray:
    """An upstream gradient checked against its shape and cast to the forward's dtype."""
    g = _real_array(name, g)
    if g.shape != shape:
        raise ValueError(f"{name}: expected shape {symbols} = {shape}, got {g.shape}")
    return g.astype(dtype, copy=False)


# ------------------------------------------------------------------------ the fastrnn side

def _backend() -> str:
    """The backend fastrnn picks for NumPy arrays, if it keeps a tape this module reads."""
    name = auto_backend_name(None)
    return name if name in _LSTM_TAPE_READERS else "numba"


def _run(layout, inputs: _Inputs, x3):
    """One fastrnn.forward and one readout over x3 (T, m, n_x): (cell, result, y, rtape).

    y is (T, m, n_y), time-major like result.h.
    """
    arrays = inputs.arrays
    cell, params = convert.from_notebook({k: arrays[k] for k in layout.cell_keys})
    Wy, by = convert.readout_from_notebook({layout.readout_key: arrays[layout.readout_key],
                                            "by": arrays["by"]})
    be = _backend()
    c0 = None if inputs.c is None else inputs.c.T
    # guard=False: the tape's arrays are this module's copies, or the caller's x and
    # a0 exactly where the notebook's caches read them too.
    res = forward(cell, x3, params, inputs.a.T, c0, backend=be, guard=False)
    y, rtape = readout(res.h, Wy, by, "softmax", backend=be)
    return cell, res, y, rtape


def _column(a: np.ndarray) -> np.ndarray:
    """A fresh C-ordered (n, m) of a (m, n) row block (never a view: tapes own theirs)."""
    return np.array(a.T, order="C")


def _to_notebook_seq(a: np.ndarray) -> np.ndarray:
    """A fresh (n, m, T) of a time-major (T, m, n) array, Fortran-ordered: the same memory
    layout, so the copy is a plain one, not a strided transpose. Values, shape and
    indexing are the notebook's; ``a[:, :, t]`` is contiguous."""
    return np.array(a.transpose(2, 1, 0), order="F")


def _weight_gradients(cell: str, params: dict) -> dict:
    """fastrnn parameter gradients as the notebook's ``dW..``/``db..`` entries.

    The layouts differ by transposes and reordering only, so gradients convert as weights do.
    """
    return {f"d{k}": v for k, v in convert.to_notebook(cell, params).items()}


# fastrnn.forward returns only the last c, but lstm_forward returns every step's c and
# its caches every step's gates: both are read from the tape, whose layout is private to
# each backend (numba: backends/numba/backend.py; numpy: backends/numpy/reference.py).
# _backend() never picks a backend that is not listed here.

def _numba_lstm_states(saved):
    """The numba tape keeps c_prev (T, B, H) and the gates (T, B, 4H) as arrays."""
    return saved["cprev"], saved["gates"]


def _reference_lstm_states(saved):
    """The reference keeps one (x_t, h, c, i, f, g, o, tanh_c) per step (it loops over time
    itself); stacked here."""
    return (np.stack([step[2] for step in saved]),
            np.stack([np.concatenate(step[3:7], axis=-1) for step in saved]))


_LSTM_TAPE_READERS = {"numba": _numba_lstm_states, "numpy": _reference_lstm_states}


def _lstm_tape_states(tape):
    """(c_prev (T, m, n_a), gates (T, m, 4 n_a) in fastrnn's gate order) of an LSTM tape,
    views into it where the backend keeps arrays."""
    return _LSTM_TAPE_READERS[tape.backend.name](tape.saved)


def _gate_columns(gates: np.ndarray, n_a: int) -> tuple:
    """(ft, it, cct, ot), each (n_a, m), of one step's activated gates (m, 4 n_a)."""
    spec = get_cell("lstm")
    return tuple(_column(gates[:, spec.gate_slice(gate, n_a)])
                 for gate in convert.NOTEBOOK_LSTM_GATES.values())


# ------------------------------------------------------------------------------- caches

class CellCache(tuple):
    """The notebook's cache tuple of one cell step, carrying that step's fastrnn tape.

    RNN: ``(a_next, a_prev, xt, parameters)``; LSTM: ``(a_next, c_next, a_prev, c_prev, ft,
    it, cct, ot, xt, parameters)``. ``tape`` lets the cell backward skip recomputing the step.
    """

    def __new__(cls, values, tape=None, cell=None):
        self = super().__new__(cls, values)
        self.tape, self.cell = tape, cell
        return self


class _SequenceRun:
    """One sequence forward: the tapes backward needs and what step caches are built from.

    h: (T, m, n_a) all hidden states (the tape's, read-only); c_n: (m, n_a) last cell
    state (LSTM); x, a0, parameters: the caller's objects, as the notebook keeps them.
    """

    def __init__(self, layout, cell, res, rtape, dims, x, a0, parameters):
        self.layout, self.cell, self.tape, self.rtape = layout, cell, res.tape, rtape
        self.h, self.c_n, self.dims = res.h, res.c_n, dims
        self.x, self.a0, self.parameters = x, a0, parameters
        self._lstm_states = None

    @property
    def T(self) -> int:
        return self.h.shape[0]

    def step_cache(self, t: int) -> tuple:
        """The notebook's cache of step t, as fresh arrays."""
        h = self.h
        a_next = _column(h[t])
        a_prev = self.a0 if t == 0 else _column(h[t - 1])
        xt = self.x[:, :, t]
        if not self.layout.has_cell_state:
            return a_next, a_prev, xt, self.parameters
        if self._lstm_states is None:
            self._lstm_states = _lstm_tape_states(self.tape)
        c_prev, gates = self._lstm_states
        c_next = self.c_n if t == self.T - 1 else c_prev[t + 1]
        return (a_next, _column(c_next), a_prev, _column(c_prev[t]),
                *_gate_columns(gates[t], self.dims["n_a"]), xt, self.parameters)


class StepCaches(Sequence):
    """``caches[0]`` of ``rnn_forward`` / ``lstm_forward``: the notebook's per-step caches.

    ``len()`` is T_x; ``steps[t]`` (negative t and slices too) builds step t's cache when
    read. It keeps the forward's tape for ``rnn_backward`` / ``lstm_backward``.
    """

    def __init__(self, run: _SequenceRun):
        self._run = run

    def __len__(self) -> int:
        return self._run.T

    def __getitem__(self, t):
        if isinstance(t, slice):
            return [self[i] for i in range(*t.indices(len(self)))]
        t = operator.index(t)
        T = len(self)
        if not -T <= t < T:
            raise IndexError(f"caches[0][{t}]: step out of range for T_x={T}")
        return self._run.step_cache(t % T)

    def __repr__(self) -> str:
        return (f"StepCaches({self._run.layout.name}, T_x={len(self)}; steps[t] is step t's "
                f"cache ({', '.join(self._run.layout.cache_fields)}))")


def _sequence_run(layout: _Layout, caches, forward_name: str) -> _SequenceRun:
    """The run behind ``caches`` of this module's forward, or an error saying what came."""
    steps = caches[0] if isinstance(caches, tuple) and len(caches) == 2 else None
    if not isinstance(steps, StepCaches):
        got = (f"a pair whose caches[0] is a {type(steps).__name__}, as another "
               f"{forward_name} (the notebook's own, say) returns"
               if isinstance(caches, tuple) and len(caches) == 2 else describe(caches))
        raise TypeError(f"caches: expected the (caches, x) that fastrnn.notebook."
                        f"{forward_name} returns, which keeps the tape this backward runs "
                        f"on; got {got}")
    run = steps._run
    if run.layout is not layout:
        raise ValueError(f"caches: these come from the {run.layout.name} forward; this is the "
                         f"{layout.name} backward, which needs {forward_name}'s")
    return run


def _cell_tape(layout: _Layout, cache, cell_forward):
    """(tape, cell, dims) of a cell cache: its own tape, or the step recomputed from it."""
    n = len(layout.cache_fields)
    if not isinstance(cache, Sequence) or isinstance(cache, str) or len(cache) != n:
        raise TypeError(f"cache: expected the cache of the {layout.name} cell forward, a tuple "
                        f"({', '.join(layout.cache_fields)}), got {describe(cache)}"
                        + (f" of length {len(cache)}" if isinstance(cache, Sequence) else ""))
    if not (isinstance(cache, CellCache) and cache.tape is not None):
        fields = dict(zip(layout.cache_fields, cache))
        args = [fields["xt"], fields["a_prev"]]
        if layout.has_cell_state:
            args.append(fields["c_prev"])
        cache = cell_forward(*args, fields["parameters"])[-1]
    return cache.tape, cache.cell


def _sequence_backward(layout, forward_name, da, caches, dy) -> dict:
    """dx, da0 and the weight gradients (and the readout's with dy) of one sequence run."""
    run = _sequence_run(layout, caches, forward_name)
    d, T = run.dims, run.T
    dtype = run.h.dtype
    dh = _gradient("da", da, (d["n_a"], d["m"], T), "(n_a, m, T_x)", dtype).transpose(2, 1, 0)
    readout_grads = {}
    if dy is not None:
        dy = _gradient("dy", dy, (d["n_y"], d["m"], T), "(n_y, m, T_x)", dtype)
        dh_y, dWy, dby = readout_backward(run.rtape, dy.transpose(2, 1, 0))
        dh = dh + dh_y
        readout_grads = {f"d{k}": v for k, v in
                         convert.readout_to_notebook(dWy, dby, name=layout.readout_key).items()}
    g = backward(run.tape, dh=dh)
    return {"dx": _to_notebook_seq(g.dx), "da0": _column(g.dh0),
            **_weight_gradients(run.cell, g.params), **readout_grads}


# ----------------------------------------------------------------------------------- RNN

def rnn_cell_forward(xt, a_prev, parameters):
    """One RNN step: xt (n_x, m), a_prev (n_a, m) -> (a_next (n_a, m), yt_pred (n_y, m), cache).

    cache: ``(a_next, a_prev, xt, parameters)`` (a :class:`CellCache`).
    """
    inp = _inputs(_RNN, xt, "xt", ("n_x", "m"), a_prev, "a_prev", parameters)
    cell, res, y, _ = _run(_RNN, inp, inp.x.T[None])
    a_next = _column(res.h[0])
    return a_next, _column(y[0]), CellCache((a_next, a_prev, xt, parameters), res.tape, cell)


def rnn_forward(x, a0, parameters):
    """The RNN over a sequence: x (n_x, m, T_x), a0 (n_a, m) -> (a, y_pred, caches).

    a (n_a, m, T_x): every hidden state; y_pred (n_y, m, T_x): every step's softmax
    prediction; caches ``(steps, x)`` (see the module docstring).
    """
    inp = _inputs(_RNN, x, "x", ("n_x", "m", "T_x"), a0, "a0", parameters)
    cell, res, y, rtape = _run(_RNN, inp, inp.x.transpose(2, 1, 0))
    x = np.asarray(x)
    run = _SequenceRun(_RNN, cell, res, rtape, inp.dims, x, a0, parameters)
    return _to_notebook_seq(res.h), _to_notebook_seq(y), (StepCaches(run), x)


def rnn_cell_backward(da_next, cache):
    """Gradients of one RNN step given da_next (n_a, m), the gradient of a_next.

    Returns ``{"dxt" (n_x, m), "da_prev" (n_a, m), "dWax", "dWaa", "dba"}``.
    """
    tape, cell = _cell_tape(_RNN, cache, rnn_cell_forward)
    m, n_a = tape.h0.shape
    da = _gradient("da_next", da_next, (n_a, m), "(n_a, m)", tape.h0.dtype)
    g = backward(tape, dh_n=da.T)
    return {"dxt": _column(g.dx[0]), "da_prev": _column(g.dh0),
            **_weight_gradients(cell, g.params)}


def rnn_backward(da, caches, *, dy=None):
    """Backpropagation through time of ``rnn_forward``.

    da (n_a, m, T_x): gradient of the loss with respect to every hidden state.
    dy (n_y, m, T_x), optional (not in the notebook): gradient with respect to y_pred; adds
    ``dWya`` and ``dby`` to the result and the readout's share to every state's gradient.
    Returns ``{"dx" (n_x, m, T_x), "da0" (n_a, m), "dWax", "dWaa", "dba"}``.
    """
    return _sequence_backward(_RNN, "rnn_forward", da, caches, dy)


# ---------------------------------------------------------------------------------- LSTM

def lstm_cell_forward(xt, a_prev, c_prev, parameters):
    """One LSTM step: xt (n_x, m), a_prev, c_prev (n_a, m) -> (a_next, c_next, yt_pred, cache).

    cache: ``(a_next, c_next, a_prev, c_prev, ft, it, cct, ot, xt, parameters)`` (a
    :class:`CellCache`); the gates ft, it, cct, ot are (n_a, m).
    """
    inp = _inputs(_LSTM, xt, "xt", ("n_x", "m"), a_prev, "a_prev", parameters, c_prev,
                  "c_prev")
    cell, res, y, _ = _run(_LSTM, inp, inp.x.T[None])
    a_next, c_next = _column(res.h[0]), _column(res.c_n)
    gates = _gate_columns(_lstm_tape_states(res.tape)[1][0], inp.dims["n_a"])
    cache = CellCache((a_next, c_next, a_prev, c_prev, *gates, xt, parameters), res.tape, cell)
    return a_next, c_next, _column(y[0]), cache


def lstm_forward(x, a0, parameters):
    """The LSTM over a sequence from c0 = 0: x (n_x, m, T_x), a0 (n_a, m) -> (a, y, c, caches).

    a, c (n_a, m, T_x): every hidden and cell state; y (n_y, m, T_x): every step's softmax
    prediction; caches ``(steps, x)`` (see the module docstring).
    """
    inp = _inputs(_LSTM, x, "x", ("n_x", "m", "T_x"), a0, "a0", parameters)
    cell, res, y, rtape = _run(_LSTM, inp, inp.x.transpose(2, 1, 0))
    c_prev = _lstm_tape_states(res.tape)[0]
    c = np.empty(res.h.shape[::-1], dtype=res.h.dtype, order="F")   # as _to_notebook_seq
    c[:, :, :-1] = c_prev[1:].transpose(2, 1, 0)          # step t's c is step t+1's c_prev
    c[:, :, -1] = res.c_n.T
    x = np.asarray(x)
    run = _SequenceRun(_LSTM, cell, res, rtape, inp.dims, x, a0, parameters)
    return _to_notebook_seq(res.h), _to_notebook_seq(y), c, (StepCaches(run), x)


def lstm_cell_backward(da_next, dc_next, cache):
    """Gradients of one LSTM step given da_next and dc_next (n_a, m), the gradients of
    a_next and (from later steps) of c_next.

    Returns ``{"dxt" (n_x, m), "da_prev", "dc_prev" (n_a, m), "dWf", "dbf", "dWi", "dbi",
    "dWc", "dbc", "dWo", "dbo"}``.
    """
    tape, cell = _cell_tape(_LSTM, cache, lstm_cell_forward)
    m, n_a = tape.h0.shape
    da = _gradient("da_next", da_next, (n_a, m), "(n_a, m)", tape.h0.dtype)
    dc = _gradient("dc_next", dc_next, (n_a, m), "(n_a, m)", tape.h0.dtype)
    g = backward(tape, dh_n=da.T, dc_n=dc.T)
    return {"dxt": _column(g.dx[0]), "da_prev": _column(g.dh0), "dc_prev": _column(g.dc0),
            **_weight_gradients(cell, g.params)}


def lstm_backward(da, caches, *, dy=None):
    """Backpropagation through time of ``lstm_forward`` (whose c0 = 0 is a constant).

    da (n_a, m, T_x): gradient of the loss with respect to every hidden state.
    dy (n_y, m, T_x), optional (not in the notebook): gradient with respect to y; adds
    ``dWy`` and ``dby`` to the result and the readout's share to every state's gradient.
    Returns ``{"dx" (n_x, m, T_x), "da0" (n_a, m), "dWf", "dbf", "dWi", "dbi", "dWc",
    "dbc", "dWo", "dbo"}``.
    """
    return _sequence_backward(_LSTM, "lstm_forward", da, caches, dy)
