"""``fastrnn.torch``: drop-in ``torch.nn.LSTM``, ``GRU`` and ``RNN`` running on fastrnn.

::

    import fastrnn.torch as frt
    rnn = frt.LSTM(32, 128, num_layers=2, batch_first=True, bidirectional=True)
    rnn.load_state_dict(torch_lstm.state_dict())     # same names and shapes as torch.nn.LSTM
    out, (h_n, c_n) = rnn(x)                         # same shapes; PackedSequence in -> out

The modules have the constructor, parameter names, shapes and init of their ``torch.nn``
twins, so a ``state_dict`` moves between the two unchanged. Each layer and direction is
one :class:`torch.autograd.Function` whose forward converts the torch weights to fastrnn
parameters (``W = weight_ih.T``, ``U = weight_hh.T``, ``b = bias_ih + bias_hh``; for GRU
``b = bias_ih + [bias_hh_r, bias_hh_z, 0]`` and ``bn = bias_hh_n``) and calls
:func:`fastrnn.forward`; its backward calls :func:`fastrnn.backward` and maps the
gradients back. CPU tensors are shared with NumPy without copies and run on the numba
backend (numpy when numba cannot run, or whichever ``backend=`` names); CUDA tensors are
shared with CuPy through DLPack, zero-copy, on torch's current stream, and run on the
cupy backend. Dropout between layers is ``torch.nn.functional.dropout`` (torch's RNG, so
``torch.manual_seed`` makes it reproducible), applied to the outputs of every layer but
the last while the module is training.

Not supported: ``proj_size > 0`` (LSTM projections), double backward, dtypes other than
float32/float64 (and those a GPU backend adds).

PyTorch is imported only here: ``import fastrnn`` never imports it.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence

from .. import backends as _backends
from ..core import api as _api
from ..core.cells import get_cell
from .biases import fold_biases, fold_gradients
from .convert import TORCH_MODES

__all__ = ["LSTM", "GRU", "RNN", "RNNBase"]


# ------------------------------------------------------------------- tensor <-> array

class _NumpyBridge:
    """CPU tensors as NumPy arrays and back, sharing memory."""

    xp = np
    device_type = "cpu"

    def scope(self, tensor):
        return contextlib.nullcontext()

    @staticmethod
    def array(t):
        return t.detach().numpy()

    @staticmethod
    def tensor(a, avoid=None):
        """A tensor on ``a``'s memory; a copy if ``a`` is read-only or overlaps ``avoid``."""
        if not a.flags.writeable or (avoid is not None and np.may_share_memory(a, avoid)):
            a = a.copy()
        return torch.from_numpy(a)

    @staticmethod
    def output_tensor(a):
        """A tensor on the memory of an output that the tape also reads.

        fastrnn marks such an output read-only so a NumPy user cannot corrupt the tape. Here
        the Function saves the returned tensor for backward, so torch's version counter
        guards it instead (an in-place change raises at backward time) and the flag can be
        lifted; where NumPy refuses (a read-only base), the output is copied.
        """
        if not a.flags.writeable:
            try:
                a.flags.writeable = True
            except ValueError:
                a = a.copy()
        return torch.from_numpy(a)


class _CupyBridge:
    """CUDA tensors as CuPy arrays and back through DLPack, zero-copy.

    Every conversion and every fastrnn call runs inside :meth:`scope`: on the tensor's
    device and on torch's current CUDA stream (wrapped as a CuPy ExternalStream), so CuPy
    work is ordered with torch's work without extra synchronisation.
    """

    device_type = "cuda"

    def __init__(self):
        import cupy                                          # noqa: PLC0415 - optional
        self.cp = self.xp = cupy

    def scope(self, tensor):
        stack = contextlib.ExitStack()
        stack.enter_context(self.cp.cuda.Device(tensor.device.index))
        stream = torch.cuda.current_stream(tensor.device)
        stack.enter_context(self.cp.cuda.ExternalStream(stream.cuda_stream))
        return stack

    def array(self, t):
        # Contiguous first: fastrnn would copy a strided array anyway, and DLPack importers
        # differ on zero strides (expanded gradients).
        return self.cp.from_dlpack(t.detach().contiguous())

    def tensor(self, a, avoid=None):
        if avoid is not None and self.cp.may_share_memory(a, avoid):
            a = a.copy()
        return torch.from_dlpack(a)

    def output_tensor(self, a):
        return torch.from_dlpack(a)


_NUMPY_BRIDGE = _NumpyBridge()
_GPU_BACKENDS = {"cupy"}
_CUPY_BRIDGE = None


def _cupy_bridge():
    global _CUPY_BRIDGE
    if _CUPY_BRIDGE is None:
        try:
            _CUPY_BRIDGE = _CupyBridge()
        except ImportError as exc:
            raise _backends.BackendUnavailableError(
                f"backend 'cupy' cannot run here: importing cupy failed ({exc}); CUDA tensors "
                f"need CuPy") from exc
    return _CUPY_BRIDGE


def _resolve(backend, device: torch.device):
    """(backend object, bridge) for tensors on ``device``."""
    if device.type == "cpu":
        bridge = _NUMPY_BRIDGE
        name = (_backends.auto_backend_name(np.empty(0)) if backend in (None, "auto")
                else backend)
    elif device.type == "cuda":
        bridge = _cupy_bridge()
        name = "cupy" if backend in (None, "auto") else backend
    else:
        raise ValueError(f"input: tensors on device {device} are not supported; fastrnn.torch "
                         f"runs CPU tensors (numba or numpy backend) and CUDA tensors (cupy)")

    def wrong_device():
        return ValueError(f"backend: {name!r} cannot compute on {device.type} tensors; use "
                          f"backend='auto' or one for {device.type} "
                          f"({'numba or numpy' if device.type == 'cpu' else 'cupy'})")

    if (name in _GPU_BACKENDS) != (device.type == "cuda") and name in _backends.backend_names():
        raise wrong_device()                        # before loading it: the clearer reason
    be = _backends.get_backend(name)
    if be.xp is not bridge.xp:                      # a registered backend of another device
        raise wrong_device()
    return be, bridge


# ---------------------------------------------------------------------- the Function

class _Run:
    """What one layer-direction call needs besides its tensors."""

    __slots__ = ("cell", "backend", "bridge", "lengths", "reverse", "grad_enabled")

    def __init__(self, cell, backend, bridge, lengths, reverse, grad_enabled):
        self.cell, self.backend, self.bridge = cell, backend, bridge
        self.lengths, self.reverse, self.grad_enabled = lengths, reverse, grad_enabled


def _fastrnn_params(spec, br, w_ih, w_hh, b_ih, b_hh):
    """torch weights -> fastrnn params; W and U are transposed views (the API makes them
    contiguous), only the folded biases are new memory."""
    W, U = br.array(w_ih).T, br.array(w_hh).T
    biases = fold_biases(spec, None if b_ih is None else br.array(b_ih),
                         None if b_hh is None else br.array(b_hh), U.shape[0], W.dtype, br.xp)
    return {"W": W, "U": U, **biases}


def _graph_kept() -> bool:
    """Whether the running backward keeps the graph (retain_graph=True); True if unknown."""
    probe = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    if probe is None:
        return True
    try:
        return bool(probe())
    except RuntimeError:
        return True


class _LayerFunction(torch.autograd.Function):
    """One layer, one direction: fastrnn.forward in forward, fastrnn.backward in backward.

    Inputs: run (:class:`_Run`), x (T, B, I), h0 (B, H) or None, c0 (B, H) or None (lstm),
    weight_ih (G*H, I), weight_hh (G*H, H), bias_ih and bias_hh (G*H,) or None.
    Outputs: h (T, B, H) and h_n (B, H), plus c_n (B, H) for lstm.
    """

    @staticmethod
    def forward(ctx, run, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        spec, br = run.cell, run.bridge
        training = run.grad_enabled and any(ctx.needs_input_grad[1:])
        with br.scope(x):
            params = _fastrnn_params(spec, br, w_ih, w_hh, b_ih, b_hh)
            res = _api.forward(spec, br.array(x), params,
                               None if h0 is None else br.array(h0),
                               None if c0 is None else br.array(c0),
                               lengths=run.lengths, reverse=run.reverse, backend=run.backend,
                               training=training, guard=False)
            h = br.output_tensor(res.h) if training else br.tensor(res.h)
            outs = [h, br.tensor(res.h_n, avoid=res.h)]
            if spec.has_cell_state:
                outs.append(br.tensor(res.c_n, avoid=res.h))
        ctx.set_materialize_grads(False)
        if training:
            ctx.run, ctx.tape = run, res.tape
            # Saved only so torch's version counters refuse a backward after any of them
            # changed in place (the tape holds x and h themselves, and copies of the weights).
            ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, h)
        return tuple(outs)

    @staticmethod
    @once_differentiable
    def backward(ctx, dh, dh_n, dc_n=None):
        x = ctx.saved_tensors[0]                    # raises if a saved tensor was modified
        run, tape = ctx.run, ctx.tape
        if tape is None:
            raise RuntimeError("fastrnn.torch: backward through this layer a second time; "
                               "pass retain_graph=True to the first backward to allow it")
        spec, br = run.cell, run.bridge
        need = ctx.needs_input_grad
        with br.scope(x):
            g = _api.backward(tape, *(None if t is None else br.array(t)
                                      for t in (dh, dh_n, dc_n)))
            if not _graph_kept():
                ctx.tape = None                     # free the saved activations now, like torch
            xp = br.xp
            dx = br.tensor(g.dx) if need[1] else None
            dh0 = br.tensor(g.dh0) if need[2] else None
            dc0 = br.tensor(g.dc0) if need[3] else None
            dw_ih = br.tensor(xp.ascontiguousarray(g.params["W"].T)) if need[4] else None
            dw_hh = br.tensor(xp.ascontiguousarray(g.params["U"].T)) if need[5] else None
            db_ih, db_hh = fold_gradients(spec, g.params["b"], g.params.get("bn"), xp)
            db_ih = br.tensor(db_ih) if need[6] else None
            db_hh = br.tensor(db_hh) if need[7] else None
        return None, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh


# ------------------------------------------------------------------------ the modules

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
                 *, backend="auto"):
        super().__init__()
        if mode not in TORCH_MODES:
            raise ValueError(f"mode: expected one of {', '.join(TORCH_MODES)}, got {mode!r}")
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size),
                        ("num_layers", num_layers)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
            if v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v}")
        for name, v in (("bias", bias), ("batch_first", batch_first),
                        ("bidirectional", bidirectional)):
            if not isinstance(v, bool):
                raise TypeError(f"{name}: expected a bool, got {type(v).__name__}")
        if (isinstance(dropout, bool) or not isinstance(dropout, numbers.Real)
                or not 0 <= dropout <= 1):
            raise ValueError(f"dropout: expected a probability in [0, 1] (of zeroing an "
                             f"element), got {dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(f"dropout option adds dropout after all but last recurrent layer, "
                          f"so non-zero dropout expects num_layers greater than 1, but got "
                          f"dropout={dropout} and num_layers={num_layers}", stacklevel=3)
        if backend not in (None, "auto") and backend not in _backends.backend_names():
            raise ValueError(f"backend: unknown backend {backend!r}; expected 'auto' or one of "
                             f"{', '.join(_backends.backend_names())}")
        self.mode = mode
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.num_layers = int(num_layers)
        self.bias, self.batch_first = bias, batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = 0
        self.backend = backend
        self._cell = get_cell(TORCH_MODES[mode])
        gh = self._cell.num_gates * hidden_size
        D = 2 if bidirectional else 1
        factory = {"device": device, "dtype": dtype}
        self._all_weights = []
        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else hidden_size * D
            for direction in range(D):
                sfx = "_reverse" if direction else ""
                shapes = {f"weight_ih_l{layer}{sfx}": (gh, layer_in),
                          f"weight_hh_l{layer}{sfx}": (gh, hidden_size)}
                if bias:
                    shapes[f"bias_ih_l{layer}{sfx}"] = (gh,)
                    shapes[f"bias_hh_l{layer}{sfx}"] = (gh,)
                for name, shape in shapes.items():
                    self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
                self._all_weights.append(list(shapes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch's init: every parameter uniform(-1/sqrt(H), 1/sqrt(H)), in registration
        order, so under one ``torch.manual_seed`` it draws what ``torch.nn`` draws."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def flatten_parameters(self) -> None:
        """No-op, for code written for ``torch.nn`` modules on cuDNN: fastrnn reads the
        parameters where they are."""

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """Parameters per layer-direction, in torch's order (weight_ih, weight_hh, biases)."""
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
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
        w = self.weight_ih_l0
        if x.dtype != w.dtype:
            raise TypeError(f"{name}: dtype {x.dtype} does not match the parameters' dtype "
                            f"{w.dtype}; convert the input with .to({w.dtype}) or the module "
                            f"with .to({x.dtype})")
        if x.device != w.device:
            raise ValueError(f"{name}: on device {x.device} but the parameters are on "
                             f"{w.device}; move one of them")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"{name}: expected {self.input_size} features (input_size) in the "
                             f"last dimension, got shape {tuple(x.shape)}")

    def _check_state(self, name, s, shape, like):
        if not isinstance(s, torch.Tensor):
            raise TypeError(f"{name}: expected a tensor, got {type(s).__name__}")
        if tuple(s.shape) != shape:
            raise ValueError(f"{name}: expected shape {shape} (num_layers*num_directions, "
                             f"batch, hidden_size), got {tuple(s.shape)}")
        if s.dtype != like.dtype or s.device != like.device:
            raise TypeError(f"{name}: expected a {like.dtype} tensor on {like.device} like "
                            f"the input, got {s.dtype} on {s.device}")

    def _initial_states(self, hx, x, batch, unbatched, sorted_indices):
        """(h0, c0) as (L*D, B, H) tensors in the batch order of x, or None."""
        if hx is None:
            return None, None
        is_lstm = self._cell.has_cell_state
        if is_lstm:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"hx: expected a tuple (h_0, c_0) for LSTM, got "
                                f"{type(hx).__name__}")
            states, names = list(hx), ["hx[0] (h_0)", "hx[1] (c_0)"]
        else:
            states, names = [hx], ["hx"]
        LD = self.num_layers * (2 if self.bidirectional else 1)
        shape = (LD, self.hidden_size) if unbatched else (LD, batch, self.hidden_size)
        out = []
        for name, s in zip(names, states):
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
        be, bridge = _resolve(self.backend, x.device)
        grad_enabled = torch.is_grad_enabled()
        D = 2 if self.bidirectional else 1
        runs = [_Run(self._cell, be, bridge, lengths, d == 1, grad_enabled) for d in range(D)]
        h_n, c_n = [], []
        inp = x
        for layer in range(self.num_layers):
            outs = []
            for d in range(D):
                k = layer * D + d
                res = _LayerFunction.apply(runs[d], inp, None if h0 is None else h0[k],
                                           None if c0 is None else c0[k],
                                           *self._layer_weights(k))
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
        names = self._all_weights[k]
        w = [getattr(self, n) for n in names]
        return (w[0], w[1], w[2], w[3]) if self.bias else (w[0], w[1], None, None)


class LSTM(RNNBase):
    """Drop-in ``torch.nn.LSTM`` (gates i, f, g, o) running on fastrnn.

    ``LSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, proj_size=0, device=None, dtype=None, *, backend="auto")``;
    ``forward(input, (h_0, c_0)=None) -> output, (h_n, c_n)``. ``proj_size`` must be 0.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None, *,
                 backend="auto"):
        if proj_size != 0:
            raise NotImplementedError(f"proj_size: LSTM with projections (proj_size="
                                      f"{proj_size}) is not supported by fastrnn.torch.LSTM; "
                                      f"use torch.nn.LSTM, or proj_size=0")
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, device, dtype, backend=backend)


class GRU(RNNBase):
    """Drop-in ``torch.nn.GRU`` (gates r, z, n; reset applied after the recurrent product,
    fastrnn cell ``gru``) running on fastrnn.

    ``GRU(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, device=None, dtype=None, *, backend="auto")``;
    ``forward(input, h_0=None) -> output, h_n``.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, *,
                 backend="auto"):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, device, dtype, backend=backend)


class RNN(RNNBase):
    """Drop-in ``torch.nn.RNN`` (Elman, ``nonlinearity`` ``"tanh"`` or ``"relu"``) on fastrnn.

    ``RNN(input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None, *,
    backend="auto")``; ``forward(input, h_0=None) -> output, h_n``.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None,
                 *, backend="auto"):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size,
                         hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device, dtype, backend=backend)
