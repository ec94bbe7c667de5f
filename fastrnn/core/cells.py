"""The cell math in one place: names, gate layouts, parameter shapes, init and FLOP counts.

Row-vector convention throughout: ``x_t`` is ``(B, I)``, ``h`` is ``(B, H)`` and the
pre-activations of all gates are ``x_t @ W + h @ U + b``, shape ``(B, G*H)`` with the
gates side by side in the order given by :attr:`CellSpec.gates`.

| cell               | params                                   | update |
|--------------------|------------------------------------------|--------|
| rnn_tanh (rnn)     | W (I,H), U (H,H), b (H,)                 | h' = tanh(xW + hU + b) |
| rnn_relu           | same                                     | h' = relu(xW + hU + b) |
| lstm               | W (I,4H), U (H,4H), b (4H,)  [i,f,g,o]   | c' = f*c + i*g ; h' = o*tanh(c') |
| gru                | W (I,3H), U (H,3H), b (3H,), bn (H,) [r,z,n] | n = tanh(xW_n + b_n + r*(hU_n + bn)) ; h' = (1-z)*n + z*h |
| gru_reset_before   | W (I,3H), U (H,3H), b (3H,)  [r,z,n]     | n = tanh(xW_n + b_n + (r*h)U_n) |
| lstmp              | W (I,4H), U (P,4H), b (4H,), Wr (H,P) [i,f,g,o] | as lstm, then h' = (o*tanh(c')) Wr |

``lstmp`` is the LSTM with a projection (PyTorch's ``LSTM(proj_size=P)``): the recurrent
input and the output ``h`` are P wide, the cell state ``c`` stays H wide. For every other
cell the output is H wide (P = H).

Nothing else in the package re-derives these facts; every backend, the converters, the
layers and the benchmark ask this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CellSpec", "CELLS", "ALIASES", "get_cell", "cell_names", "sigmoid"]


@dataclass(frozen=True)
class CellSpec:
    """Static description of one recurrent cell.

    Attributes:
        name: canonical name (``"lstm"``, ``"gru"``, ...).
        gates: gate names in the order of their column blocks in W, U and b.
        has_cell_state: True for LSTM (it carries ``c`` beside ``h``).
        has_recurrent_bias: True for ``gru``: the extra bias ``bn`` (H,) inside ``r * (hU_n + bn)``.
        nonlinearity: ``"tanh"`` or ``"relu"`` for the Elman cells, else None.
        has_projection: True for ``lstmp``: h' = (o * tanh(c')) @ Wr, P wide.
    """

    name: str
    gates: tuple[str, ...]
    has_cell_state: bool = False
    has_recurrent_bias: bool = False
    nonlinearity: str | None = None
    has_projection: bool = False

    def __reduce__(self):
        # A pickle names the cell: unpickling gives the registry's own spec (code compares
        # specs by identity), and torch.load(weights_only=True) needs only get_cell allowed.
        return get_cell, (self.name,)

    @property
    def num_gates(self) -> int:
        """G: the number of H-wide column blocks in W, U and b."""
        return len(self.gates)

    @property
    def param_names(self) -> tuple[str, ...]:
        if self.has_recurrent_bias:
            return ("W", "U", "b", "bn")
        return ("W", "U", "b", "Wr") if self.has_projection else ("W", "U", "b")

    @property
    def is_gru(self) -> bool:
        return self.name in ("gru", "gru_reset_before")

    def output_size(self, hidden_size: int, proj_size: int | None = None) -> int:
        """The width of h (outputs and hidden state): P for lstmp, else H."""
        if not self.has_projection:
            return hidden_size
        if proj_size is None:
            raise ValueError(f"proj_size: cell {self.name!r} needs the projection size P")
        return proj_size

    def param_shapes(self, input_size: int, hidden_size: int,
                     proj_size: int | None = None) -> dict[str, tuple[int, ...]]:
        """Shapes of the parameters for input size I, hidden size H (and P for lstmp)."""
        gh = self.num_gates * hidden_size
        out = self.output_size(hidden_size, proj_size)
        shapes = {"W": (input_size, gh), "U": (out, gh), "b": (gh,)}
        if self.has_recurrent_bias:
            shapes["bn"] = (hidden_size,)
        if self.has_projection:
            shapes["Wr"] = (hidden_size, out)
        return shapes

    def sizes_of(self, params) -> tuple[int, int]:
        """(H, P) read off the shapes of U (and Wr): U is (P, G*H) for lstmp, (H, G*H)
        otherwise (P = H). Assumes U is 2-d."""
        P, gh = params["U"].shape
        return (gh // self.num_gates if self.has_projection else P), P

    def gate_slice(self, gate: str, hidden_size: int) -> slice:
        """Columns of gate ``gate`` in W, U or b."""
        k = self.gates.index(gate)
        return slice(k * hidden_size, (k + 1) * hidden_size)

    def init_params(self, input_size: int, hidden_size: int, dtype="float32",
                    seed: int | None = 0, proj_size: int | None = None) -> dict[str, np.ndarray]:
        """PyTorch-style init: every entry uniform(-1/sqrt(H), 1/sqrt(H)), reproducible by seed."""
        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(hidden_size)
        dtype = np.dtype(dtype)
        return {name: rng.uniform(-bound, bound, size=shape).astype(dtype)
                for name, shape in self.param_shapes(input_size, hidden_size,
                                                     proj_size).items()}

    def forward_flops(self, T: int, B: int, I: int, H: int, P: int | None = None) -> int:
        """Matmul FLOPs of a forward pass: input projection plus recurrent product (plus
        the output projection of lstmp).

        Pointwise work (a few dozen FLOPs per (t, b, h)) is left out, as is usual
        for GFLOP/s figures of RNNs; it is a few percent of the total from H = 64 on.
        """
        out = self.output_size(H, P)
        flops = 2 * T * B * (I + out) * self.num_gates * H
        return flops + (2 * T * B * H * out if self.has_projection else 0)

    def backward_flops(self, T: int, B: int, I: int, H: int, P: int | None = None) -> int:
        """Matmul FLOPs of a backward pass: each product of the forward twice (2x forward)."""
        return 2 * self.forward_flops(T, B, I, H, P)


CELLS: dict[str, CellSpec] = {
    "rnn_tanh": CellSpec("rnn_tanh", ("h",), nonlinearity="tanh"),
    "rnn_relu": CellSpec("rnn_relu", ("h",), nonlinearity="relu"),
    "lstm": CellSpec("lstm", ("i", "f", "g", "o"), has_cell_state=True),
    "gru": CellSpec("gru", ("r", "z", "n"), has_recurrent_bias=True),
    "gru_reset_before": CellSpec("gru_reset_before", ("r", "z", "n")),
    "lstmp": CellSpec("lstmp", ("i", "f", "g", "o"), has_cell_state=True, has_projection=True),
}

ALIASES: dict[str, str] = {"rnn": "rnn_tanh"}


def cell_names() -> list[str]:
    """Canonical cell names."""
    return list(CELLS)


def get_cell(cell) -> CellSpec:
    """The :class:`CellSpec` for a name (aliases accepted) or a spec itself."""
    if isinstance(cell, CellSpec):
        return cell
    if not isinstance(cell, str):
        raise TypeError(f"cell: expected a cell name (str), got {type(cell).__name__}")
    key = ALIASES.get(cell.lower(), cell.lower())
    try:
        return CELLS[key]
    except KeyError:
        names = ", ".join(list(CELLS) + list(ALIASES))
        raise ValueError(f"cell: unknown cell {cell!r}; expected one of {names}") from None


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function without overflow: exp is only ever taken of -|x|."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)
