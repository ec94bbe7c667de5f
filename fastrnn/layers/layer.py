"""Layer objects that hold their parameters: ``fastrnn.LSTM``, ``fastrnn.GRU``, ``fastrnn.RNN``.

A layer keeps its weights prepared (:func:`fastrnn.prepare`) between calls and prepares
them again only after a parameter was replaced. That is why its arrays are read-only: an
in-place change would go unseen by the prepared copy, so it raises instead, and a change
is an assignment (``layer.params["W"] = W - lr * dW``) that the layer sees.
"""

from __future__ import annotations

from collections.abc import MutableMapping

import numpy as np

from ..api import backward, forward, prepare
from ..core.results import ForwardResult, Gradients
from ..core.arrays import is_cupy_array
from ..core.cells import get_cell

__all__ = ["Layer", "LayerParams", "LSTM", "GRU", "RNN"]


class LayerParams(MutableMapping):
    """A layer's parameters, name -> read-only array. Assigning an array stores a read-only
    copy and makes the layer prepare its weights again at its next call."""

    def __init__(self, cell, arrays: dict):
        self._cell = cell
        self._arrays = {}
        self.version = 0
        for k, a in arrays.items():
            self[k] = a

    def __getitem__(self, key):
        return self._arrays[key]

    def __setitem__(self, key, value):
        if key not in self._cell.param_names:
            raise KeyError(f"params: cell {self._cell.name!r} has no parameter {key!r}; it "
                           f"takes {', '.join(self._cell.param_names)}")
        if is_cupy_array(value):
            a = value.copy()
        else:
            a = np.array(value, copy=True)
            a.flags.writeable = False
        self._arrays[key] = a
        self.version += 1

    def __delitem__(self, key):
        raise TypeError(f"params: a layer's parameters cannot be deleted (tried {key!r})")

    def __iter__(self):
        return iter(self._arrays)

    def __len__(self):
        return len(self._arrays)

    def __repr__(self):
        shapes = ", ".join(f"{k!r}: {tuple(a.shape)}" for k, a in self._arrays.items())
        return f"LayerParams({{{shapes}}})"


class Layer:
    """One recurrent layer: a cell, its parameters and a backend choice.

    Args:
        cell: cell name (see :mod:`fastrnn.core.cells`).
        input_size: I. hidden_size: H.
        backend: ``"auto"`` or a backend name, used by every call.
        dtype: ``"float32"`` or ``"float64"``.
        seed: seed of the PyTorch-style uniform(-1/sqrt(H), 1/sqrt(H)) init.

    ``layer.params`` maps name -> read-only array; replace an array to change it
    (``layer.params["W"] = W - lr * dW``, an optimiser step, say). The layer prepares its
    weights once and again after each replacement.
    """

    def __init__(self, cell, input_size: int, hidden_size: int, *, backend="auto",
                 dtype="float32", seed: int | None = 0, proj_size: int | None = None):
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if str(dtype) not in ("float32", "float64"):
            raise TypeError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
        self.cell = get_cell(cell)
        self.input_size, self.hidden_size = input_size, hidden_size
        self.backend = backend
        self._params = LayerParams(self.cell, self.cell.init_params(
            input_size, hidden_size, dtype, seed, proj_size=proj_size))
        self._prepared, self._prepared_version = None, None

    @property
    def params(self) -> LayerParams:
        return self._params

    @params.setter
    def params(self, value):
        self._params = LayerParams(self.cell, value)
        self._prepared = None

    @property
    def prepared(self):
        """The weights as prepared for the next call (prepared again if params changed)."""
        p = self._params
        if self._prepared is None or self._prepared_version != p.version:
            self._prepared = prepare(self.cell, p, self.backend)
            self._prepared_version = p.version
        return self._prepared

    def forward(self, x, h0=None, c0=None, *, lengths=None, reverse=False, batch_first=False,
                training=True) -> ForwardResult:
        """``fastrnn.forward`` with this layer's cell, prepared params and backend."""
        return forward(self.cell, x, self.prepared, h0, c0, lengths=lengths, reverse=reverse,
                       batch_first=batch_first, backend=self.backend, training=training)

    __call__ = forward

    def backward(self, result, dh=None, dh_n=None, dc_n=None) -> Gradients:
        """``fastrnn.backward`` of a result (or its tape) from this layer's forward."""
        return backward(result, dh, dh_n, dc_n)

    def __repr__(self):
        return (f"{type(self).__name__}(cell={self.cell.name!r}, input_size={self.input_size}, "
                f"hidden_size={self.hidden_size}, backend={self.backend!r}, "
                f"dtype={self.params['W'].dtype})")


class LSTM(Layer):
    """LSTM layer, gates i, f, g, o; ``layer(x, h0, c0)``. With ``proj_size=P`` > 0 the cell
    is ``lstmp``: h = (o * tanh(c)) @ Wr is P wide, c stays ``hidden_size`` wide."""

    def __init__(self, input_size, hidden_size, *, proj_size=0, backend="auto",
                 dtype="float32", seed=0):
        if isinstance(proj_size, bool) or not isinstance(proj_size, int) or proj_size < 0:
            raise ValueError(f"proj_size: expected an int >= 0, got {proj_size!r}")
        super().__init__("lstmp" if proj_size else "lstm", input_size, hidden_size,
                         backend=backend, dtype=dtype, seed=seed, proj_size=proj_size or None)


class GRU(Layer):
    """GRU layer, gates r, z, n. ``reset_after=True`` is cuDNN/PyTorch (cell ``gru``), False the
    original formulation (cell ``gru_reset_before``)."""

    def __init__(self, input_size, hidden_size, *, reset_after=True, backend="auto",
                 dtype="float32", seed=0):
        cell = "gru" if reset_after else "gru_reset_before"
        super().__init__(cell, input_size, hidden_size, backend=backend, dtype=dtype, seed=seed)


class RNN(Layer):
    """Elman RNN layer, ``nonlinearity="tanh"`` or ``"relu"``."""

    def __init__(self, input_size, hidden_size, *, nonlinearity="tanh", backend="auto",
                 dtype="float32", seed=0):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(f"rnn_{nonlinearity}", input_size, hidden_size, backend=backend,
                         dtype=dtype, seed=seed)
