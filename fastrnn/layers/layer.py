"""Layer objects that hold their parameters: ``fastrnn.LSTM``, ``fastrnn.GRU``, ``fastrnn.RNN``."""

from __future__ import annotations

from ..core.api import ForwardResult, Gradients, backward, forward
from ..core.cells import get_cell

__all__ = ["Layer", "LSTM", "GRU", "RNN"]


class Layer:
    """One recurrent layer: a cell, its parameters and a backend choice.

    Args:
        cell: cell name (see :mod:`fastrnn.core.cells`).
        input_size: I. hidden_size: H.
        backend: ``"auto"`` or a backend name, used by every call.
        dtype: ``"float32"`` or ``"float64"``.
        seed: seed of the PyTorch-style uniform(-1/sqrt(H), 1/sqrt(H)) init.

    ``layer.params`` is a plain dict name -> array that you may read, replace or update
    in place between calls (an optimiser step, say).
    """

    def __init__(self, cell, input_size: int, hidden_size: int, *, backend="auto",
                 dtype="float32", seed: int | None = 0):
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if str(dtype) not in ("float32", "float64"):
            raise TypeError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
        self.cell = get_cell(cell)
        self.input_size, self.hidden_size = input_size, hidden_size
        self.backend = backend
        self.params = self.cell.init_params(input_size, hidden_size, dtype, seed)

    def forward(self, x, h0=None, c0=None, *, lengths=None, reverse=False, batch_first=False,
                training=True) -> ForwardResult:
        """``fastrnn.forward`` with this layer's cell, params and backend."""
        return forward(self.cell, x, self.params, h0, c0, lengths=lengths, reverse=reverse,
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
    """LSTM layer, gates i, f, g, o; ``layer(x, h0, c0)``."""

    def __init__(self, input_size, hidden_size, *, backend="auto", dtype="float32", seed=0):
        super().__init__("lstm", input_size, hidden_size, backend=backend, dtype=dtype, seed=seed)


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
