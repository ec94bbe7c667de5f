"""``fastrnn.torch``: drop-in ``torch.nn`` recurrent modules running on fastrnn.

::

    import fastrnn.torch as frt
    rnn = frt.LSTM(32, 128, num_layers=2, batch_first=True, bidirectional=True)
    rnn.load_state_dict(torch_lstm.state_dict())     # same names and shapes as torch.nn.LSTM
    out, (h_n, c_n) = rnn(x)                         # same shapes; PackedSequence in -> out
    cell = frt.GRUCell(32, 128)                      # and RNNCell, LSTMCell
    h = cell(x_t, h)

The modules have the constructor, parameter names, shapes and init of their ``torch.nn``
twins, so a ``state_dict`` moves between the two unchanged, and they fail where those fail,
with exceptions of the same type. Each layer and direction is one
:class:`~fastrnn.interop.torch_function.RecurrentFunction`: fastrnn's forward and backward
on the tensors' memory, with the weights prepared once per version of the parameters
(``flatten_parameters()`` prepares them again after a change made through ``.data``).
CPU tensors run on the numba backend (numpy when numba cannot run, or whichever
``backend=`` names); CUDA tensors on the cupy backend, on torch's current stream. Dropout
between layers is ``torch.nn.functional.dropout`` (torch's RNG, so ``torch.manual_seed``
makes it reproducible), applied to the outputs of every layer but the last while the
module is training.

``LSTM(proj_size=P)`` runs fastrnn's ``lstmp`` cell (h = (o * tanh(c)) @ W_hr^T, P wide).
Not supported: double backward, dtypes other than float32/float64 (and those a GPU backend
adds).

PyTorch is imported only here: ``import fastrnn`` never imports it.
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence

from .. import backends as _backends
from ..core.cells import get_cell
from .convert import TORCH_MODES
from .torch_bridge import resolve
from .torch_function import CellStepFunction, RecurrentFunction, Run, WeightCache, cell_step

__all__ = ["LSTM", "GRU", "RNN", "RNNBase", "RNNCellBase", "RNNCell", "GRUCell", "LSTMCell",
           "SAFE_GLOBALS"]


# ------------------------------------------------------------------------------- checks
# Each raises the exception type its torch.nn twin raises for the same mistake, with a
# message that names the argument, what was expected and what came.

def _check_sizes(**sizes) -> None:
    for name, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
        if v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v}")


def _check_flags(**flags) -> None:
    for name, v in flags.items():
        if not isinstance(v, bool):
            raise TypeError(f"{name}: expected a bool, got {type(v).__name__}")


def _check_proj_size(proj_size, hidden_size, mode) -> None:
    """torch.nn's rules: an int, 0 or more, below hidden_size, only for LSTM."""
    if isinstance(proj_size, bool) or not isinstance(proj_size, numbers.Integral):
        raise TypeError(f"proj_size: expected an int, got {type(proj_size).__name__}")
    if proj_size < 0:
        raise ValueError(f"proj_size: expected 0 (no projection) or a positive int, got "
                         f"{proj_size}")
    if proj_size and mode != "LSTM":
        raise ValueError(f"proj_size: only LSTM has a projection; got proj_size={proj_size} "
                         f"for {mode}")
    if proj_size >= hidden_size:
        raise ValueError(f"proj_size: has to be smaller than hidden_size ({hidden_size}), got "
                         f"{proj_size}")


def _check_backend(backend) -> None:
    if backend not in (None, "auto") and backend not in _backends.backend_names():
        raise ValueError(f"backend: unknown backend {backend!r}; expected 'auto' or one of "
                         f"{', '.join(_backends.backend_names())}")


def _torch_init(module) -> None:
    """torch's init: every parameter uniform(-1/sqrt(H), 1/sqrt(H)), in registration order,
    so under one ``torch.manual_seed`` it draws what ``torch.nn`` draws."""
    stdv = 1.0 / math.sqrt(module.hidden_size)
    for weight in module.parameters():
        nn.init.uniform_(weight, -stdv, stdv)


def _grads_flow(tensors) -> bool:
    """Whether this call's autograd graph reaches any of the weight tensors."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def autocast_dtype(x, weight):
    """The dtype torch.autocast runs this call in, or None: on CUDA, with autocast enabled
    there, when the parameters are 32- or 16-bit floats (autocast leaves float64 alone).
    torch.nn's RNNs then run in that dtype (inputs, weights and outputs), and so do these:
    16-bit storage with float32 arithmetic on the cupy backend. CPU autocast is not
    followed: the CPU backends compute in float32 or float64 only."""
    if x.device.type != "cuda" or weight.dtype == torch.float64:
        return None
    try:
        enabled = torch.is_autocast_enabled("cuda")
    except TypeError:                                      # torch < 2.4
        enabled = torch.is_autocast_enabled()
    if not enabled:
        return None
    try:
        return torch.get_autocast_dtype("cuda")
    except AttributeError:                                 # torch < 2.4
        return torch.get_autocast_gpu_dtype()


def tf32_allowed(x) -> bool:
    """Whether torch lets its cuDNN RNNs use TF32 for float32 on this device, which these
    modules then follow: ``torch.backends.cudnn.rnn.fp32_precision`` ("tf32" / "ieee")
    where torch has it, else ``torch.backends.cudnn.allow_tf32`` (True by default)."""
    if x.device.type != "cuda":
        return False
    precision = getattr(getattr(torch.backends.cudnn, "rnn", None), "fp32_precision", None)
    if precision in ("tf32", "ieee"):
        return precision == "tf32"
    try:
        return bool(torch.backends.cudnn.allow_tf32)
    except RuntimeError:               # torch refuses the old getter once the new API is used
        return False


def _castable(dtype) -> bool:
    return dtype in (torch.float32, torch.float16, torch.bfloat16)


def _check_input_tensor(x, name, weight, input_size, dtype_error) -> None:
    """x's dtype (``dtype_error``: ValueError for the layers, RuntimeError for the cells,
    as torch.nn), device and feature count against the parameters. Under autocast, as for
    torch.nn, any 32- or 16-bit float input goes with such parameters."""
    if x.dtype != weight.dtype and not (autocast_dtype(x, weight) is not None
                                        and _castable(x.dtype)):
        raise dtype_error(f"{name}: dtype {x.dtype} does not match the parameters' dtype "
                          f"{weight.dtype}; convert the input with .to({weight.dtype}) or the "
                          f"module with .to({x.dtype})")
    if x.device != weight.device:
        raise RuntimeError(f"{name}: on device {x.device} but the parameters are on "
                           f"{weight.device}; move one of them")
    if x.shape[-1] != input_size:
        raise RuntimeError(f"{name}: expected {input_size} features (input_size) in the last "
                           f"dimension, got shape {tuple(x.shape)}")


def _check_state_tensor(name, s, shape, like, what) -> None:
    if not isinstance(s, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(s).__name__}")
    if tuple(s.shape) != tuple(shape):
        raise RuntimeError(f"{name}: expected shape {tuple(shape)} {what}, got "
                           f"{tuple(s.shape)}")
    same_dtype = s.dtype == like.dtype or (autocast_dtype(like, like) is not None
                                           and _castable(s.dtype) and _castable(like.dtype))
    if not same_dtype or s.device != like.device:
        raise RuntimeError(f"{name}: expected a {like.dtype} tensor on {like.device} like "
                           f"the input, got {s.dtype} on {s.device}")


# ---------------------------------------------------------------------- multi-step layers

def _packed_to_padded(data, batch_sizes):
    """Packed data (N, I) -> time-major padded (T, B, I) in the packed (sorted) batch order,
    the flat positions of the valid entries, and the lengths (B,) as int64 NumPy."""
    bs = batch_sizes.detach().cpu().numpy().astype(np.int64)
    T, B = bs.shape[0], int(bs[0])
    valid = np.arange(B)[None, :] < bs[:, None]                   # (T, B), True where valid
    lengths = valid.sum(axis=0)
    pos = torch.from_numpy(np.flatnonzero(valid)).to(data.device)  # t-major like packed data
    padded = data.new_zeros((T * B, data.shape[1])).index_copy(0, pos, data)
    return padded.view(T, B, data.shape[1]), pos, lengths


class RNNBase(nn.Module):
    """Shared body of :class:`LSTM`, :class:`GRU` and :class:`RNN`; see the module docstring.

    Args (as ``torch.nn.RNNBase``): mode (``"LSTM"``, ``"GRU"``, ``"RNN_TANH"``,
    ``"RNN_RELU"``), input_size, hidden_size, num_layers, bias, batch_first, dropout,
    bidirectional, device, dtype; plus ``backend``: ``"auto"`` (numba for CPU tensors,
    numpy where numba cannot run; cupy for CUDA tensors) or a backend name.
    """

    def __init__(self, mode, input_size, hidden_size, num_layers=1, bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None,
                 *, backend="auto", proj_size=0):
        super().__init__()
        if mode not in TORCH_MODES:
            raise ValueError(f"mode: expected one of {', '.join(TORCH_MODES)}, got {mode!r}")
        _check_sizes(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers)
        _check_proj_size(proj_size, hidden_size, mode)
        _check_flags(bias=bias, batch_first=batch_first, bidirectional=bidirectional)
        if (isinstance(dropout, bool) or not isinstance(dropout, numbers.Real)
                or not 0 <= dropout <= 1):
            raise ValueError(f"dropout: expected a probability in [0, 1] (of zeroing an "
                             f"element), got {dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(f"dropout option adds dropout after all but last recurrent layer, "
                          f"so non-zero dropout expects num_layers greater than 1, but got "
                          f"dropout={dropout} and num_layers={num_layers}", stacklevel=3)
        _check_backend(backend)
        self.mode = mode
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.num_layers = int(num_layers)
        self.bias, self.batch_first = bias, batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = int(proj_size)
        self.backend = backend
        self._cell = get_cell("lstmp" if proj_size else TORCH_MODES[mode])
        gh = self._cell.num_gates * hidden_size
        out = self.proj_size or hidden_size                  # the width of h
        D = 2 if bidirectional else 1
        factory = {"device": device, "dtype": dtype}
        self._all_weights = []
        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else out * D
            for direction in range(D):
                sfx = "_reverse" if direction else ""
                shapes = {f"weight_ih_l{layer}{sfx}": (gh, layer_in),
                          f"weight_hh_l{layer}{sfx}": (gh, out)}
                if bias:
                    shapes[f"bias_ih_l{layer}{sfx}"] = (gh,)
                    shapes[f"bias_hh_l{layer}{sfx}"] = (gh,)
                if self.proj_size:
                    shapes[f"weight_hr_l{layer}{sfx}"] = (self.proj_size, hidden_size)
                for name, shape in shapes.items():
                    self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
                self._all_weights.append(list(shapes))
        self._weight_caches = [WeightCache() for _ in self._all_weights]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _torch_init(self)

    def flatten_parameters(self) -> None:
        """Prepare the weights again at the next call. Needed only after a change that
        bypasses torch's version counters (through ``.data`` or a NumPy alias); code written
        for ``torch.nn`` on cuDNN calls it anyway."""
        for cache in self._weight_caches:
            cache.clear()

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """Parameters per layer-direction, in torch's order (weight_ih, weight_hh, biases)."""
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size != 0:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first is not False:
            s += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            s += f", bidirectional={self.bidirectional}"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s

    # -- forward ----------------------------------------------------------------------

    def _check_input(self, x, name):
        _check_input_tensor(x, name, self.weight_ih_l0, self.input_size, ValueError)

    def _check_state(self, name, s, shape, like):
        _check_state_tensor(name, s, shape, like, "(num_layers*num_directions, batch, "
                                                  "hidden_size)")

    def _initial_states(self, hx, x, batch, unbatched, sorted_indices):
        """(h0, c0) as (L*D, B, H) tensors in the batch order of x, or None."""
        if hx is None:
            return None, None
        is_lstm = self._cell.has_cell_state
        if is_lstm:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise RuntimeError(f"hx: expected a tuple (h_0, c_0) for LSTM, got "
                                   f"{type(hx).__name__}")
            states, names = list(hx), ["hx[0] (h_0)", "hx[1] (c_0)"]
        else:
            states, names = [hx], ["hx"]
        LD = self.num_layers * (2 if self.bidirectional else 1)
        widths = (self.proj_size or self.hidden_size, self.hidden_size)      # h, c
        out = []
        for name, s, width in zip(names, states, widths):
            shape = (LD, width) if unbatched else (LD, batch, width)
            self._check_state(name, s, shape, x)
            if unbatched:
                s = s.unsqueeze(1)
            elif sorted_indices is not None:
                s = s.index_select(1, sorted_indices)
            out.append(s)
        return out[0], (out[1] if is_lstm else None)

    def forward(self, input, hx=None):
        """Run the stack over a sequence.

        Args:
            input: (T, B, input_size) ((B, T, input_size) with batch_first), unbatched
                (T, input_size), or a PackedSequence.
            hx: initial state (num_layers*num_directions, B, hidden_size) ((L*D, H)
                unbatched); for LSTM a tuple (h_0, c_0). Zeros when None.

        Returns:
            (output, h_n) — (output, (h_n, c_n)) for LSTM — with torch's shapes: output
            (T, B, D*H) (batch_first: (B, T, D*H); a PackedSequence for packed input),
            h_n and c_n (L*D, B, H).
        """
        packed = isinstance(input, PackedSequence)
        sorted_indices = unsorted_indices = None
        lengths = None
        unbatched = False
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            if data.dim() != 2:
                raise ValueError(f"input: a PackedSequence's data must be 2-d (N, input_size), "
                                 f"got shape {tuple(data.shape)}")
            self._check_input(data, "input")
            x, pos, lengths = _packed_to_padded(data, batch_sizes)
        else:
            if not isinstance(input, torch.Tensor):
                raise TypeError(f"input: expected a tensor or a PackedSequence, got "
                                f"{type(input).__name__}")
            if input.dim() not in (2, 3):
                raise ValueError(f"input: expected a 3-d (T, B, I) ((B, T, I) with batch_first) "
                                 f"or 2-d unbatched (T, I) tensor, got {input.dim()}-d of shape "
                                 f"{tuple(input.shape)}")
            self._check_input(input, "input")
            unbatched = input.dim() == 2
            if unbatched:
                x = input.unsqueeze(1)
            else:
                x = input.transpose(0, 1) if self.batch_first else input
        B = x.shape[1]
        h0, c0 = self._initial_states(hx, x, B, unbatched, sorted_indices)
        be, bridge = resolve(self.backend, x.device)
        grad_enabled = torch.is_grad_enabled()
        amp = autocast_dtype(x, self.weight_ih_l0)
        tf32 = tf32_allowed(x)
        if amp is not None:                   # autocast: inputs cast here, weights when prepared
            x, h0, c0 = (None if t is None else t.to(amp) for t in (x, h0, c0))
        D = 2 if self.bidirectional else 1
        h_n, c_n = [], []
        inp = x
        for layer in range(self.num_layers):
            outs = []
            for d in range(D):
                k = layer * D + d
                tensors = self._layer_weights(k)
                weights = self._weight_caches[k].get(self._cell, be, bridge, tensors,
                                                     _grads_flow(tensors), amp)
                run = Run(self._cell, be, bridge, weights, lengths, d == 1, grad_enabled, tf32)
                res = RecurrentFunction.apply(run, inp, None if h0 is None else h0[k],
                                              None if c0 is None else c0[k], *tensors)
                outs.append(res[0])
                h_n.append(res[1])
                if self._cell.has_cell_state:
                    c_n.append(res[2])
            out = outs[0] if D == 1 else torch.cat(outs, dim=-1)
            if layer < self.num_layers - 1 and self.dropout > 0 and self.training:
                out = F.dropout(out, p=self.dropout, training=True)
            inp = out
        output = inp
        h_n = torch.stack(h_n)
        c_n = torch.stack(c_n) if c_n else None
        if packed:
            output = PackedSequence(output.reshape(-1, output.shape[-1]).index_select(0, pos),
                                    batch_sizes, sorted_indices, unsorted_indices)
            if unsorted_indices is not None:
                h_n = h_n.index_select(1, unsorted_indices)
                c_n = None if c_n is None else c_n.index_select(1, unsorted_indices)
        elif unbatched:
            output, h_n = output.squeeze(1), h_n.squeeze(1)
            c_n = None if c_n is None else c_n.squeeze(1)
        elif self.batch_first:
            output = output.transpose(0, 1)
        return output, ((h_n, c_n) if self._cell.has_cell_state else h_n)

    def _layer_weights(self, k):
        """(weight_ih, weight_hh, bias_ih, bias_hh, weight_hr) of layer-direction k, None
        for those the module does not have."""
        w = {n.rsplit("_l", 1)[0]: getattr(self, n) for n in self._all_weights[k]}
        return tuple(w.get(n) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh",
                                        "weight_hr"))


class LSTM(RNNBase):
    """Drop-in ``torch.nn.LSTM`` (gates i, f, g, o) running on fastrnn.

    ``LSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, proj_size=0, device=None, dtype=None, *, backend="auto")``;
    ``forward(input, (h_0, c_0)=None) -> output, (h_n, c_n)``. With ``proj_size=P`` > 0,
    output and h_n are P wide and c_n stays ``hidden_size`` wide, as in ``torch.nn.LSTM``.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None, *,
                 backend="auto"):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, device, dtype, backend=backend,
                         proj_size=proj_size)


class GRU(RNNBase):
    """Drop-in ``torch.nn.GRU`` (gates r, z, n; reset applied after the recurrent product,
    fastrnn cell ``gru``) running on fastrnn.

    ``GRU(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, device=None, dtype=None, *, backend="auto")``;
    ``forward(input, h_0=None) -> output, h_n``.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, *,
                 backend="auto", proj_size=0):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, device, dtype, backend=backend,
                         proj_size=proj_size)


class RNN(RNNBase):
    """Drop-in ``torch.nn.RNN`` (Elman, ``nonlinearity`` ``"tanh"`` or ``"relu"``) on fastrnn.

    ``RNN(input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None, *,
    backend="auto")``; ``forward(input, h_0=None) -> output, h_n``.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None,
                 *, backend="auto", proj_size=0):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size,
                         hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device, dtype, backend=backend, proj_size=proj_size)


# ------------------------------------------------------------------------ one-step cells

class RNNCellBase(nn.Module):
    """Shared body of :class:`RNNCell`, :class:`GRUCell` and :class:`LSTMCell`: one step of
    a cell, a :class:`RecurrentFunction` over a sequence of length 1 whose weights are
    prepared once per version of the parameters (a decoding loop does not re-pack them).

    Args (as ``torch.nn.RNNCellBase``): cell (fastrnn cell name), input_size, hidden_size,
    bias, device, dtype; plus ``backend`` as for the layers.
    """

    def __init__(self, cell, input_size, hidden_size, bias=True, device=None, dtype=None, *,
                 backend="auto"):
        super().__init__()
        _check_sizes(input_size=input_size, hidden_size=hidden_size)
        _check_backend(backend)
        self._cell = get_cell(cell)
        bias = bool(bias)                      # torch.nn's cells take any truthy value
        self.input_size, self.hidden_size, self.bias = int(input_size), int(hidden_size), bias
        self.backend = backend
        gh = self._cell.num_gates * self.hidden_size
        factory = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty((gh, self.input_size), **factory))
        self.weight_hh = nn.Parameter(torch.empty((gh, self.hidden_size), **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(gh, **factory))
            self.bias_hh = nn.Parameter(torch.empty(gh, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self._weight_cache = WeightCache()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _torch_init(self)

    def flatten_parameters(self) -> None:
        """Prepare the weights again at the next call (after a change through ``.data``)."""
        self._weight_cache.clear()

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += f", nonlinearity={self.nonlinearity}"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s

    def _step(self, input, states, names):
        """(h', c') of one step: input (B, I) or (I,), states (B, H) or (H,) (None: zeros)."""
        kind = type(self).__name__
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input: expected a tensor, got {type(input).__name__}")
        if input.dim() not in (1, 2):
            raise ValueError(f"{kind}: Expected input to be 1D or 2D, got {input.dim()}D "
                             f"instead (input: (batch, input_size) or (input_size,))")
        for name, s in zip(names, states):
            if isinstance(s, torch.Tensor) and s.dim() not in (1, 2):
                raise ValueError(f"{kind}: Expected {name} to be 1D or 2D, got {s.dim()}D "
                                 f"instead ((batch, hidden_size) or (hidden_size,))")
        _check_input_tensor(input, "input", self.weight_ih, self.input_size, RuntimeError)
        batched = input.dim() == 2
        x = input.unsqueeze(0) if batched else input.view(1, 1, -1)
        B, H = x.shape[1], self.hidden_size
        shape = (B, H) if batched else (H,)
        h0c0 = []
        for name, s in zip(names, states):
            if s is not None:
                _check_state_tensor(name, s, shape, input,
                                    "(batch, hidden_size)" if batched else "(hidden_size,)")
                s = s if batched else s.unsqueeze(0)
            h0c0.append(s)
        if len(h0c0) == 1:
            h0c0.append(None)
        be, bridge = resolve(self.backend, x.device)
        amp = autocast_dtype(x, self.weight_ih)
        if amp is not None:                   # autocast: inputs cast here, weights when prepared
            x = x.to(amp)
            h0c0 = [None if s is None else s.to(amp) for s in h0c0]
        tensors = (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, None)
        if (amp is None and hasattr(be, "step_rows_forward")
                and x.dtype in (torch.float32, torch.float64)):
            # The CPU path: the step reads the parameters' memory as it is now (nothing
            # prepared, nothing to compare or go stale; see CellStepFunction).
            args = ((self._cell, be), x[0], *h0c0, *tensors[:4])
            if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                               for t in args[1:]):
                out = CellStepFunction.apply(*args)
            else:                             # no graph to record: no autograd Function
                out = cell_step(*args)[0]
            return out if batched else tuple(t.squeeze(0) for t in out)
        weights = self._weight_cache.get(self._cell, be, bridge, tensors, _grads_flow(tensors),
                                         amp)
        run = Run(self._cell, be, bridge, weights, None, False, torch.is_grad_enabled(),
                  tf32_allowed(x))
        res = RecurrentFunction.apply(run, x, *h0c0, *tensors)
        out = res[1:]
        return out if batched else tuple(t.squeeze(0) for t in out)


class RNNCell(RNNCellBase):
    """Drop-in ``torch.nn.RNNCell`` (``nonlinearity`` ``"tanh"`` or ``"relu"``) on fastrnn.

    ``RNNCell(input_size, hidden_size, bias=True, nonlinearity="tanh", device=None,
    dtype=None, *, backend="auto")``; ``forward(input, hx=None) -> h'``.
    """

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None,
                 dtype=None, *, backend="auto"):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(f"rnn_{nonlinearity}", input_size, hidden_size, bias, device, dtype,
                         backend=backend)

    def forward(self, input, hx=None):
        return self._step(input, [hx], ["hidden"])[0]


class GRUCell(RNNCellBase):
    """Drop-in ``torch.nn.GRUCell`` (gates r, z, n, reset after U_n: fastrnn's ``gru``).

    ``GRUCell(input_size, hidden_size, bias=True, device=None, dtype=None, *,
    backend="auto")``; ``forward(input, hx=None) -> h'``.
    """

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *,
                 backend="auto"):
        super().__init__("gru", input_size, hidden_size, bias, device, dtype, backend=backend)

    def forward(self, input, hx=None):
        return self._step(input, [hx], ["hidden"])[0]


class LSTMCell(RNNCellBase):
    """Drop-in ``torch.nn.LSTMCell`` (gates i, f, g, o).

    ``LSTMCell(input_size, hidden_size, bias=True, device=None, dtype=None, *,
    backend="auto")``; ``forward(input, (h, c)=None) -> (h', c')``.
    """

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *,
                 backend="auto"):
        super().__init__("lstm", input_size, hidden_size, bias, device, dtype, backend=backend)

    def forward(self, input, hx=None):
        if hx is None:
            states = [None, None]
        elif isinstance(hx, (tuple, list)) and len(hx) == 2:
            states = list(hx)
        elif isinstance(hx, (tuple, list)):
            raise RuntimeError(f"hx: expected two states (h, c) for LSTMCell, got {len(hx)}")
        else:
            raise TypeError(f"hx: expected a tuple (h, c) for LSTMCell, got "
                            f"{type(hx).__name__}")
        h, c = self._step(input, states, ["hx[0]", "hx[1]"])
        return h, c


#: What ``torch.load(..., weights_only=True)`` must be allowed to build for a saved module
#: of this package (a whole model, not only its state_dict): the module classes, the empty
#: weight cache they carry and ``get_cell``, which a pickled cell spec names. One line::
#:
#:     torch.serialization.add_safe_globals(fastrnn.torch.SAFE_GLOBALS)
#:
#: (or ``with torch.serialization.safe_globals(fastrnn.torch.SAFE_GLOBALS): ...``).
SAFE_GLOBALS = [LSTM, GRU, RNN, RNNCell, GRUCell, LSTMCell, WeightCache, get_cell]
