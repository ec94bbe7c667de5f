"""The small protocol every backend implements.

A backend receives arrays that the API layer has already validated: time-major
``x (T, B, I)``, ``h0``/``c0`` ``(B, H)`` (``c0`` only for LSTM, else None), all
contiguous, of one float dtype, on the backend's device; ``lengths`` is None (every
sequence runs all T steps) or an int64 ``(B,)`` array with values in 1..T of which at least
one is below T. The weights come as what its own :meth:`Backend.prepare` made of params
of the shapes in :mod:`fastrnn.core.cells` (checked, contiguous, one dtype). It returns
arrays of the same kind and never validates user input itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..core.cells import CellSpec
from ..core.results import digest
from .readout import readout_backward, readout_forward


@dataclass
class ForwardOut:
    """What a backend's forward returns.

    h: (T, B, H) outputs, zero at padded positions. h_n: (B, H). c_n: (B, H) or None.
    saved: backend-private state that its backward needs; None when not training.
    """

    h: Any
    h_n: Any
    c_n: Any
    saved: Any


@dataclass
class BackwardOut:
    """Gradients: dx (T, B, I), dh0 (B, H), dc0 (B, H) or None, params name -> array."""

    dx: Any
    dh0: Any
    dc0: Any
    params: dict


class Backend:
    """Base class. Subclasses set ``name`` and ``xp`` (their array module) and implement
    :meth:`forward` and :meth:`backward`. The readout is the shared array code of
    :mod:`fastrnn.backends.readout` run on ``xp``; a backend may override it."""

    name: str = "?"
    xp: Any = None
    dtypes: tuple[str, ...] = ("float32", "float64")
    #: Whether :meth:`changed` answers only later (a GPU backend compares on the device):
    #: the API then enqueues the backward before it waits for the answer.
    checks_later: bool = False
    #: Whether :meth:`prepare` and the passes take params of any strides (transposed views
    #: such as torch's ``weight_ih.T``); else the API hands them C-contiguous copies.
    strided_params: bool = False

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None if this backend can run here, else a sentence saying why it cannot."""
        return None

    def owns(self, array) -> bool:
        """True if ``array`` lives where this backend computes (its array type)."""
        return isinstance(array, self.xp.ndarray)

    def prepare(self, cell: CellSpec, params: Mapping[str, Any]) -> Any:
        """The weights in the form :meth:`forward` and :meth:`backward` read, made once per
        :func:`fastrnn.prepare` (and once per call for plain params). ``params`` are
        checked, contiguous arrays of this backend that the result may keep; the default
        keeps them as they are."""
        return params

    def forward(self, cell: CellSpec, x, weights, h0, c0, lengths, reverse: bool,
                training: bool, *, tf32: bool = False) -> ForwardOut:
        """One pass over the sequence; ``weights`` is what :meth:`prepare` returned.
        ``tf32``: float32 products may use TF32 tensor cores (a GPU backend's choice; the
        CPU backends compute in float32 whatever it says)."""
        raise NotImplementedError

    def backward(self, cell: CellSpec, saved, x, weights, h0, c0, lengths, reverse: bool,
                 dh, dh_n, dc_n, *, tf32: bool = False) -> BackwardOut:
        """Gradients of all inputs given the upstream gradients.

        dh (T, B, H) or None, dh_n (B, H) or None, dc_n (B, H) or None (LSTM only). The
        parameter gradients have the keys and shapes of the params ``weights`` came from.
        """
        raise NotImplementedError

    def checksum(self, arrays) -> Any:
        """A value that changes when any of ``arrays`` (this backend's, contiguous) changes:
        the tape's guard against inputs changed in place between forward and backward. The
        default: a checksum of each (of a sample of each large one) on the host."""
        return tuple(digest(a) for a in arrays)

    def changed(self, then, arrays):
        """Compare ``arrays`` with ``then`` (a :meth:`checksum` of them); returns a function
        that gives the indices of the arrays that changed."""
        now = self.checksum(arrays)
        diff = [i for i, (a, b) in enumerate(zip(then, now)) if a != b]
        return lambda: diff

    def stepper(self, cell: CellSpec, weights, batch_size: int, dtype) -> "StepRunner":
        """A :class:`StepRunner` for streaming inference with these weights; the default
        calls :meth:`forward` once per chunk."""
        return StepRunner(self, cell, weights, batch_size, dtype)

    def readout(self, h2, Wy, by, activation: str):
        """y (N, n_y) = activation(h2 @ Wy + by) for h2 (N, H)."""
        return readout_forward(self.xp, h2, Wy, by, activation)

    def readout_backward(self, h2, Wy, y2, activation: str, dy2):
        """(dh2, dWy, dby) for dy2 = dL/dy (N, n_y)."""
        return readout_backward(self.xp, h2, Wy, y2, activation, dy2)


class StepRunner:
    """Streaming inference with state kept between calls: what :class:`fastrnn.Stepper`
    drives. ``h`` and ``c`` (B, H) are the state (``c`` None unless lstm); callers write
    them in place to reset. :meth:`run` takes a validated, contiguous (T, B, I) chunk and
    returns its outputs (T, B, H), a fresh array. This default runs the backend's forward
    on each chunk; a backend overrides it to keep its buffers from call to call."""

    def __init__(self, backend: Backend, cell: CellSpec, weights, batch_size: int, dtype):
        self.backend, self.cell, self.weights = backend, cell, weights
        xp = backend.xp
        H, P = cell.sizes_of(weights)
        self.h = xp.zeros((batch_size, P), dtype=dtype)
        self.c = xp.zeros((batch_size, H), dtype=dtype) if cell.has_cell_state else None

    def run(self, x):
        out = self.backend.forward(self.cell, x, self.weights, self.h, self.c, None, False,
                                   False)
        self.h[...] = out.h_n
        if self.c is not None:
            self.c[...] = out.c_n
        return out.h
