"""The objects the API returns and keeps: results, gradients, tapes, and how the caller's
arrays map onto the canonical (T, B, ·) form backends compute on.

Pure data and bookkeeping: nothing here chooses or imports a backend (fastrnn.api does).
"""

from __future__ import annotations

import zlib

import numpy as np

from . import config
from .arrays import is_cupy_array
from .validation import describe

__all__ = ["ForwardResult", "Gradients", "Tape", "ReadoutTape", "Layout", "digest",
           "digest_sampling"]


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
                 "saved", "layout", "tf32", "x_place", "_params_mutable", "_digest")

    def __init__(self, cell, backend, x, params, weights, h0, c0, lengths, reverse, saved,
                 layout, guard=True, params_mutable=True, tf32=False, x_place=None):
        """x_place: (library, where) of the caller's own x (see validation.place): the
        upstream gradients of backward must be where it was."""
        self.cell, self.backend, self.tf32, self.x_place = cell, backend, tf32, x_place
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
        return self.backend.checksum([a for _, a in self._arrays()])

    def verify_start(self):
        """Start comparing the arrays the tape depends on with their checksums from the
        forward; returns a function that raises ValueError if any changed (it waits for the
        comparison where a GPU backend runs it on the device: call it after enqueuing the
        backward, which then needs no pause of the device). Nothing is checked for a tape
        made with ``guard=False``."""
        if self._digest is None:
            return lambda: None
        names = [name for name, _ in self._arrays()]
        pending = self.backend.changed(self._digest, [a for _, a in self._arrays()])

        def finish():
            changed = [names[i] for i in pending()]
            if changed:
                raise ValueError(f"tape: {', '.join(changed)} changed in place after the "
                                 f"forward that made this tape; its gradients would be wrong. "
                                 f"Run forward again on the current arrays, or pass copies to "
                                 f"forward")
        return finish

    def verify(self) -> None:
        """Raise ValueError if an array the tape depends on changed since the forward
        (nothing is checked for a tape made with ``guard=False``)."""
        self.verify_start()()

    def __repr__(self):
        T, B, I = self.x.shape
        return (f"Tape(cell={self.cell.name!r}, backend={self.backend.name!r}, T={T}, B={B}, "
                f"I={I}, H={self.h0.shape[1]}, dtype={self.x.dtype})")


def digest_sampling(size: int) -> tuple[int, int]:
    """(stride, count): the elements of an array of ``size`` elements that its checksum
    reads (the host's :func:`digest`, the GPU's on the device): every one up to
    ``config.tape_digest_full``, else about ``config.tape_digest_samples`` evenly spaced."""
    if size <= config.tape_digest_full:
        return 1, size
    step = size // config.tape_digest_samples
    return step, -(-size // step)


def digest(a) -> int:
    """A checksum of an array (a sample of it past config.tape_digest_full elements)."""
    stride, _ = digest_sampling(a.size)
    if stride > 1:
        a = a.reshape(-1)[::stride]
    if is_cupy_array(a):                            # device arrays: fetch the small sample
        a = a.get()
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    return zlib.crc32(a)


class Layout:
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


class ReadoutTape:
    """What :func:`readout_backward` needs: h (N, H), Wy, y (N, n_y), activation, shape."""

    __slots__ = ("backend", "h2", "Wy", "y2", "activation", "lead_shape", "h_place", "_digest")

    def __init__(self, backend, h2, Wy, y2, activation, lead_shape, h_place=None):
        self.backend, self.h2, self.Wy, self.y2 = backend, h2, Wy, y2
        self.h_place = h_place                 # where the caller's h was: dy must be there
        self.activation, self.lead_shape = activation, lead_shape
        self._digest = (digest(h2), digest(Wy))

    def verify(self):
        if (digest(self.h2), digest(self.Wy)) != self._digest:
            raise ValueError("rtape: h or Wy changed in place after the readout that made this "
                             "tape; run readout again on the current arrays")


