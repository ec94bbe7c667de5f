"""``fastrnn.Stepper``: streaming inference, one frame (or a chunk of frames) at a time.

Speech enhancement, voice activity and keyword detection run a recurrent cell one frame at
a time at batch 1; samplers generate one token at a time. There the fixed cost of a call
decides, so a Stepper prepares the weights once, keeps the state and the work buffers
between calls, and makes one compiled call per step.

::

    st = fastrnn.Stepper("gru", params, batch_size=1)
    for frame in stream:              # frame (1, I), or (I,) unbatched
        h = st(frame)                 # (1, H): a fresh array, the state advanced
    st.reset()                        # back to zeros (or reset(h0=...))
"""

from __future__ import annotations

import numbers

from ..core.cells import get_cell
from ..api import prepare
from ..core.prepared import PreparedWeights
from ..core.validation import (as_array, check_float, check_same_dtype, check_same_place,
                               check_shape, place)

__all__ = ["Stepper"]


class Stepper:
    """A cell advanced one input at a time, the state kept inside.

    Args:
        cell: cell name (see :mod:`fastrnn.core.cells`).
        params: mapping name -> array, or :class:`~fastrnn.core.prepared.PreparedWeights`;
            a mapping is prepared here, once (a snapshot: later changes to its arrays are
            not seen).
        batch_size: B, the number of streams advanced together.
        h0, c0: initial states (B, H) ((H,) for B = 1 too); zeros when None.
        backend: ``"auto"`` or a backend name, as for :func:`fastrnn.forward`.

    Calling it with x_t (B, I) returns h_t (B, H); with (I,) (B = 1) returns (H,); with a
    chunk (T, B, I) returns all its outputs (T, B, H). Each result is a fresh array the
    Stepper never touches again. Bad input raises the errors :func:`fastrnn.forward` raises.

    Where arrays live: the state lives with the backend (on the GPU for "cupy"); h0 and c0
    given here are where params are (host arrays with ``backend="cupy"`` are copied there
    once). Every later input, and the states given to :meth:`reset`, must be arrays of the
    state's library: a host frame for a GPU Stepper is a TypeError, not a copy per step.
    """

    def __init__(self, cell, params, batch_size: int = 1, h0=None, c0=None, *,
                 backend="auto"):
        spec = get_cell(cell)
        if (isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral)
                or batch_size < 1):
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        if isinstance(params, PreparedWeights):
            if params.cell is not spec:
                raise ValueError(f"params: prepared for cell {params.cell.name!r}, not "
                                 f"{spec.name!r}; prepare the weights of {spec.name!r}")
            if backend not in (None, "auto") and params.backend.name != backend:
                raise ValueError(f"backend: the params were prepared for backend "
                                 f"{params.backend.name!r}, not {backend!r}; prepare them for "
                                 f"{backend!r}")
            weights = params
        else:
            weights = prepare(spec, params, backend)
        given = place(weights.params["W"] if isinstance(params, PreparedWeights)
                      else params.get("W") if hasattr(params, "get") else None)
        check_same_place("params['W']", given, [("h0", h0), ("c0", c0)])
        self.cell, self.weights = spec, weights
        self.batch_size = int(batch_size)
        self._xp = weights.backend.xp
        self._runner = weights.backend.stepper(spec, weights.packed, self.batch_size,
                                               weights.dtype)
        self._step_shape = (self.batch_size, weights.input_size)
        self._state_place = place(self._runner.h)
        self._reset(h0, c0)

    @property
    def input_size(self) -> int:
        return self.weights.input_size

    @property
    def hidden_size(self) -> int:
        return self.weights.hidden_size

    @property
    def dtype(self):
        return self.weights.dtype

    @property
    def h(self):
        """The hidden state now, (B, H): a copy."""
        return self._runner.h.copy()

    @property
    def c(self):
        """The cell state now, (B, H), for lstm (a copy); else None."""
        return None if self._runner.c is None else self._runner.c.copy()

    def reset(self, h0=None, c0=None) -> None:
        """Set the state to h0 (and c0 for lstm), or to zeros where None."""
        check_same_place("the Stepper's state", self._state_place, [("h0", h0), ("c0", c0)])
        self._reset(h0, c0)

    def _reset(self, h0, c0) -> None:
        self._set("h0", self._runner.h, h0)
        if self._runner.c is not None:
            self._set("c0", self._runner.c, c0)
        elif c0 is not None:
            raise ValueError(f"c0: cell {self.cell.name!r} has no cell state; c0 is only for "
                             f"'lstm'")

    def _set(self, name, state, value):
        if value is None:
            state[...] = 0
            return
        a = as_array(self._xp, name, value)
        B, H = state.shape
        if B == 1 and a.ndim == 1:
            a = a[None, :]
        check_shape(name, a, (B, H), "(B, H): batch size and hidden size")
        check_same_dtype(name, a, self.dtype)
        state[...] = a

    def __call__(self, x):
        """Advance the state by one input (B, I) or (I,), or by a chunk (T, B, I)."""
        xp = self._xp
        if (type(x) is xp.ndarray and x.dtype == self.weights.dtype
                and x.shape == self._step_shape and x.flags.c_contiguous):
            return self._runner.run(x[None])[0]            # the common case, checked
        check_same_place("the Stepper's state", self._state_place, [("x", x)])
        x = as_array(xp, "x", x)
        check_float("x", x, self.weights.backend.dtypes)
        check_same_dtype("x", x, self.weights.dtype)
        B, I = self._step_shape
        if x.ndim == 1:
            if B != 1:
                raise ValueError(f"x: unbatched input (I,) needs batch_size 1; this Stepper "
                                 f"has batch_size {B}, so expected shape ({B}, {I})")
            check_shape("x", x, (I,), "I, the input size")
            return self._runner.run(xp.ascontiguousarray(x.reshape(1, 1, I)))[0, 0]
        if x.ndim == 2:
            check_shape("x", x, (B, I), "(B, I): batch size of the Stepper and input size")
            return self._runner.run(xp.ascontiguousarray(x)[None])[0]
        if x.ndim == 3:
            if x.shape[0] < 1 or tuple(x.shape[1:]) != (B, I):
                raise ValueError(f"x: expected a chunk of shape (T, {B}, {I}) (T >= 1 steps, "
                                 f"batch size of the Stepper, input size), got "
                                 f"{tuple(x.shape)}")
            return self._runner.run(xp.ascontiguousarray(x))
        raise ValueError(f"x: expected (B, I) = ({B}, {I}), (I,) or a chunk (T, B, I), got "
                         f"{x.ndim}-d of shape {tuple(x.shape)}")

    def __repr__(self):
        return (f"Stepper(cell={self.cell.name!r}, batch_size={self.batch_size}, "
                f"input_size={self.input_size}, hidden_size={self.hidden_size}, "
                f"backend={self.weights.backend.name!r}, dtype={self.dtype})")
