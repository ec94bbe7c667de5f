"""Weight conversions between fastrnn and the layouts other code uses.

fastrnn's layout (see :mod:`fastrnn.core.cells`): ``W (I, G*H)``, ``U (H, G*H)``, ``b (G*H,)`` and,
for ``gru``, ``bn (H,)``; the gates side by side in the order ``CellSpec.gates``.

Every ``from_*`` function returns a :class:`CellWeights` ``(cell, params)``, ready for
``fastrnn.forward(cell, x, params)``; every ``to_*`` function takes ``(cell, params)``.
Arrays keep their dtype and never share memory with the source.

**PyTorch** ``nn.RNN / nn.LSTM / nn.GRU`` (and ``nn.RNNCell / LSTMCell / GRUCell``):
``weight_ih_l{k}{_reverse} (G*H, I)``, ``weight_hh_l{k}{_reverse} (G*H, H)``, two biases
``bias_ih``, ``bias_hh`` (G*H,). Gate orders are fastrnn's (LSTM i,f,g,o; GRU r,z,n).

* into fastrnn: ``b = bias_ih + bias_hh`` (rnn, lstm); for gru
  ``b = bias_ih + [bias_hh_r, bias_hh_z, 0]`` and ``bn = bias_hh_n``.
* out of fastrnn (the split this module chooses): ``bias_ih = b``; ``bias_hh = 0``, except
  for gru, whose ``bias_hh = [0, 0, bn]``. fastrnn -> torch -> fastrnn is exact; torch ->
  fastrnn -> torch gives the same function with the bias moved into ``bias_ih``.
* a module built with ``bias=False`` reads as zero biases, and accepts only zero biases.

**Keras 3** ``SimpleRNN / LSTM / GRU``: ``get_weights() == [kernel (I, G*H),
recurrent_kernel (H, G*H), bias]`` (no bias with ``use_bias=False``). LSTM gates i,f,c,o
(= fastrnn i,f,g,o); GRU gates z,r,h (reordered to fastrnn r,z,n).

* ``GRU(reset_after=True)`` <-> ``gru``: bias ``(2, 3H)``, rows (input, recurrent);
  ``b = bias[0] + [bias[1]_r, bias[1]_z, 0]``, ``bn = bias[1]_h``; back: ``bias[1] = [0, 0, bn]``.
* ``GRU(reset_after=False)`` <-> ``gru_reset_before``: bias ``(3H,)``.

**Course notebooks** (the RNN/LSTM course notebook and the NumPy GRU notebook):

* RNN: ``Wax (n_a, n_x)``, ``Waa (n_a, n_a)``, ``ba (n_a, 1)``, acting on column vectors:
  ``a' = tanh(Waa a + Wax x + ba)``.
* LSTM: one matrix per gate acting on the stacked ``[a_prev; x]``: ``Wf, Wi, Wc, Wo
  (n_a, n_a + n_x)``, ``bf, bi, bc, bo (n_a, 1)``.
* GRU (reset before): ``Uz, Ur, Uh (n_x, n_a)`` on the input, ``Wz, Wr, Wh (n_a, n_a)`` on
  the state, ``bz, br, bh (1, n_a)``, acting on row vectors, and the update
  ``h' = (1 - z) h + z n``: its ``z`` is fastrnn's ``1 - z``. Since ``1 - sigmoid(a) =
  sigmoid(-a)``, the z block is negated on the way in and out (exact both ways).

Both orientations are read and written: ``"column"`` (matrices multiply column vectors
from the left, biases ``(n_a, 1)``) and ``"row"`` (the transposes, biases ``(1, n_a)``).
The defaults are each notebook's own: column for RNN and LSTM, row for GRU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from ..core.arrays import is_cupy_array, is_torch_tensor
from ..core.cells import CellSpec, get_cell
from ..core.validation import check_params, describe
from .biases import fold_biases, split_biases

__all__ = ["CellWeights", "from_torch", "to_torch", "from_keras", "to_keras", "from_notebook",
           "to_notebook", "readout_from_notebook", "readout_to_notebook", "TORCH_GATES",
           "KERAS_GATES", "TORCH_MODES"]

DTYPES = ("float16", "float32", "float64")

# Gate order of each foreign layout, written with fastrnn's gate names (CellSpec.gates).
# Single-gate cells (rnn_tanh, rnn_relu) need no entry.
TORCH_GATES = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}
KERAS_GATES = {"lstm": ("i", "f", "g", "o"),               # Keras i, f, c, o
               "gru": ("z", "r", "n"),                     # Keras z, r, h
               "gru_reset_before": ("z", "r", "n")}
# The course notebooks name their gates by letter: notebook letter -> fastrnn gate.
NOTEBOOK_LSTM_GATES = {"f": "f", "i": "i", "c": "g", "o": "o"}
NOTEBOOK_GRU_GATES = {"z": "z", "r": "r", "h": "n"}
# Gates whose pre-activation a notebook defines with the opposite sign (its z = 1 - ours).
NOTEBOOK_GRU_NEGATED = ("z",)
NOTEBOOK_READOUT_KEYS = ("Wy", "Wya", "by")
ORIENTATIONS = ("column", "row")


class CellWeights(NamedTuple):
    """A fastrnn cell name and its params (name -> ndarray), as ``fastrnn.forward`` takes them."""

    cell: str
    params: dict


# ------------------------------------------------------------------------------ helpers

def _to_numpy(name: str, a) -> np.ndarray:
    """A float NumPy copy of ``a`` (NumPy array, torch tensor, list)."""
    if is_torch_tensor(a):
        a = a.detach().cpu()
        if not a.dtype.is_floating_point:
            raise TypeError(f"{name}: expected a floating tensor, got dtype {a.dtype}")
        if str(a.dtype) == "torch.bfloat16":
            raise TypeError(f"{name}: bfloat16 has no NumPy dtype; call .float() first")
        a = a.numpy()
    elif is_cupy_array(a):
        a = a.get()
    try:
        out = np.array(a, copy=True, order="C")
    except Exception as exc:  # noqa: BLE001 - any conversion failure is the caller's input
        raise TypeError(f"{name}: expected an array, got {describe(a)} ({exc})") from None
    if out.dtype.name not in DTYPES:
        raise TypeError(f"{name}: expected a floating array ({', '.join(DTYPES)}), got dtype "
                        f"{out.dtype}")
    return out


def _same_dtype(arrays: Mapping) -> None:
    dtypes = {a.dtype for a in arrays.values()}
    if len(dtypes) > 1:
        found = ", ".join(f"{k}: {a.dtype}" for k, a in arrays.items())
        raise TypeError(f"weights: expected one dtype for all arrays, got {found}")


def _check_shape(name: str, a: np.ndarray, shape: tuple, hint: str) -> None:
    if a.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} ({hint}), got {a.shape}")


def _permute_gates(a: np.ndarray, src: tuple, dst: tuple, axis: int = -1) -> np.ndarray:
    """Reorder the equal-width gate blocks of ``a`` along ``axis`` from order ``src`` to ``dst``."""
    if src == dst:
        return a
    blocks = dict(zip(src, np.split(a, len(src), axis=axis)))
    return np.concatenate([blocks[g] for g in dst], axis=axis)


def _check_cell_params(cell, params) -> tuple[CellSpec, dict, int, int]:
    """(spec, params as NumPy copies, I, H) of fastrnn-layout weights, or a clear error."""
    spec = get_cell(cell)
    if not isinstance(params, Mapping):
        raise TypeError(f"params: expected a mapping of parameter name to array "
                        f"({', '.join(spec.param_names)}), got {type(params).__name__}")
    arrays = {k: _to_numpy(f"params[{k!r}]", v) for k, v in params.items()}
    W = arrays.get("W")
    if W is None or W.ndim != 2:
        shape = None if W is None else W.shape
        raise ValueError(f"params['W']: expected a 2-d array (I, {spec.num_gates}*H), got "
                         f"{'nothing' if W is None else f'shape {shape}'}")
    p, H = check_params(np, spec, arrays, W.shape[0], DTYPES)
    return spec, p, W.shape[0], H


def _check_index(name: str, value, limit: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < 0 or (limit is not None and value >= limit):
        bound = f"0..{limit - 1}" if limit is not None else ">= 0"
        raise ValueError(f"{name}: expected a value in {bound}, got {value}")
    return int(value)


def _check_orientation(orientation) -> str:
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation: expected 'column' or 'row', got {orientation!r}")
    return orientation


# ----------------------------------------------------------------------------- PyTorch

#: ``torch.nn.RNNBase.mode`` -> fastrnn cell name.
TORCH_MODES = {"RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu", "LSTM": "lstm", "GRU": "gru"}
_TORCH_MODULES = {"rnn_tanh": "RNN", "rnn_relu": "RNN", "lstm": "LSTM", "gru": "GRU",
                  "lstmp": "LSTM"}


def _torch_gates(spec: CellSpec) -> tuple:
    return TORCH_GATES.get(spec.name, spec.gates)


def _torch_module_cell(module) -> tuple[str, bool]:
    """(fastrnn cell, whether it is a one-step *Cell module) of a torch recurrent module."""
    import torch
    nn = torch.nn
    if isinstance(module, nn.RNNBase):
        if module.mode not in TORCH_MODES:
            raise TypeError(f"module: unsupported recurrent mode {module.mode!r}")
        if getattr(module, "proj_size", 0):
            return "lstmp", False
        return TORCH_MODES[module.mode], False
    if isinstance(module, nn.LSTMCell):
        return "lstm", True
    if isinstance(module, nn.GRUCell):
        return "gru", True
    if isinstance(module, nn.RNNCell):
        return f"rnn_{module.nonlinearity}", True
    raise TypeError(f"module: expected torch.nn.RNN, LSTM, GRU (or RNNCell, LSTMCell, GRUCell), "
                    f"got {type(module).__name__}")


def _torch_source(source, cell, layer, reverse):
    """(cell, state dict, key suffix) of a torch module or a state dict."""
    if isinstance(source, Mapping):
        if cell is None:
            raise ValueError("cell: a state dict does not say which cell it holds; pass "
                             "cell='rnn_tanh', 'rnn_relu', 'lstm', 'lstmp' or 'gru'")
        suffix = f"_l{layer}" + ("_reverse" if reverse else "")
        return get_cell(cell).name, source, suffix
    if not hasattr(source, "state_dict"):
        raise TypeError(f"source: expected a torch recurrent module or a state dict, got "
                        f"{type(source).__name__}")
    module_cell, one_step = _torch_module_cell(source)
    if cell is not None and get_cell(cell).name != module_cell:
        raise ValueError(f"cell: {cell!r} does not match the module, a "
                         f"{type(source).__name__} computing {module_cell!r}")
    if one_step:
        if layer != 0 or reverse:
            raise ValueError(f"layer, reverse: a {type(source).__name__} has one layer and one "
                             f"direction; got layer={layer}, reverse={reverse}")
        return module_cell, source.state_dict(), ""
    _check_index("layer", layer, source.num_layers)
    if reverse and not source.bidirectional:
        raise ValueError("reverse: the module is not bidirectional; it has no reverse direction")
    return module_cell, source.state_dict(), f"_l{layer}" + ("_reverse" if reverse else "")


def _torch_key(state_dict, prefix, name, suffix, required=True):
    key = f"{prefix}{name}{suffix}"
    if key in state_dict:
        return key
    if suffix == "_l0" and f"{prefix}{name}" in state_dict:
        return f"{prefix}{name}"                           # a *Cell module's state dict
    if required:
        have = ", ".join(sorted(k for k in state_dict if str(k).startswith(prefix)))[:400]
        raise ValueError(f"state_dict: no key {key!r}; the keys are: {have or '(none)'}")
    return None


def from_torch(source, cell=None, *, layer: int = 0, reverse: bool = False,
               prefix: str = "") -> CellWeights:
    """fastrnn weights of one layer and direction of a PyTorch recurrent module.

    Args:
        source: a ``torch.nn.RNN``, ``LSTM`` or ``GRU`` (or ``RNNCell``, ``LSTMCell``,
            ``GRUCell``), or a state dict (values: tensors or NumPy arrays).
        cell: the fastrnn cell; read off a module, required for a state dict (the keys do
            not tell ``rnn_tanh`` from ``rnn_relu``).
        layer: the layer index k of the ``*_l{k}`` keys.
        reverse: take the reverse direction of a bidirectional module (``*_reverse`` keys).
        prefix: prepended to every key, for a state dict of a larger model (``"rnn."``).

    Returns:
        :class:`CellWeights`: W (I, G*H), U (H, G*H), b (G*H,) and bn (H,) for gru, in the
        dtype of the source. ``b`` is ``bias_ih + bias_hh`` (gru: see the module docstring).
    """
    layer = _check_index("layer", layer)
    name, state, suffix = _torch_source(source, cell, layer, bool(reverse))
    spec = get_cell(name)
    if spec.name not in _TORCH_MODULES:
        raise ValueError(f"cell: {spec.name!r} has no PyTorch counterpart (PyTorch's GRU "
                         f"applies the reset after U_n: cell 'gru')")
    if not isinstance(prefix, str):
        raise TypeError(f"prefix: expected a str, got {type(prefix).__name__}")
    weight_names = ("weight_ih", "weight_hh") + (("weight_hr",) if spec.has_projection else ())
    keys = {n: _torch_key(state, prefix, n, suffix) for n in weight_names}
    if not spec.has_projection and _torch_key(state, prefix, "weight_hr", suffix,
                                              required=False) is not None:
        raise ValueError(f"state_dict: has weight_hr{suffix}, the projection of an LSTM with "
                         f"proj_size > 0; read it as cell 'lstmp', not {spec.name!r}")
    for n in ("bias_ih", "bias_hh"):
        keys[n] = _torch_key(state, prefix, n, suffix, required=False)
    if (keys["bias_ih"] is None) != (keys["bias_hh"] is None):
        missing = "bias_hh" if keys["bias_hh"] is None else "bias_ih"
        raise ValueError(f"state_dict: has one bias of layer suffix {suffix!r} but not "
                         f"{missing}{suffix}")
    w = {n: _to_numpy(f"state_dict[{k!r}]", state[k]) for n, k in keys.items() if k is not None}
    _same_dtype(w)
    G, w_ih, w_hh = spec.num_gates, w["weight_ih"], w["weight_hh"]
    if (w_hh.ndim != 2 or w_hh.shape[0] % G or w_hh.shape[0] == 0
            or (not spec.has_projection and w_hh.shape[0] != G * w_hh.shape[1])):
        cols = "P" if spec.has_projection else "H"
        raise ValueError(f"state_dict[{keys['weight_hh']!r}]: expected shape ({G}*H, {cols}) "
                         f"for cell {spec.name!r}, got {w_hh.shape}")
    H = w_hh.shape[0] // G
    if w_ih.ndim != 2 or w_ih.shape[0] != G * H:
        raise ValueError(f"state_dict[{keys['weight_ih']!r}]: expected shape ({G * H}, I) "
                         f"({G}*H rows, H={H}), got {w_ih.shape}")
    zeros = np.zeros(G * H, dtype=w_ih.dtype)
    b_ih, b_hh = w.get("bias_ih", zeros), w.get("bias_hh", zeros)
    for n in ("bias_ih", "bias_hh"):
        if n in w:
            _check_shape(f"state_dict[{keys[n]!r}]", w[n], (G * H,), f"{G}*H with H={H}")
    order = _torch_gates(spec)
    params = {"W": _permute_gates(w_ih.T, order, spec.gates),
              "U": _permute_gates(w_hh.T, order, spec.gates),
              **fold_biases(spec, _permute_gates(b_ih, order, spec.gates),
                            _permute_gates(b_hh, order, spec.gates), H, w_ih.dtype)}
    if spec.has_projection:
        _check_shape(f"state_dict[{keys['weight_hr']!r}]", w["weight_hr"], (w_hh.shape[1], H),
                     f"(P, H) with P={w_hh.shape[1]} (the columns of weight_hh) and H={H}")
        params["Wr"] = w["weight_hr"].T
    return CellWeights(spec.name, {k: np.ascontiguousarray(v) for k, v in params.items()})


def _torch_arrays(spec: CellSpec, p: dict, H: int) -> dict:
    """fastrnn params -> (weight_ih, weight_hh, bias_ih, bias_hh) as NumPy, the documented split."""
    order = _torch_gates(spec)
    b_ih, b_hh = split_biases(spec, p["b"], p.get("bn"))
    arrays = {"weight_ih": _permute_gates(p["W"], spec.gates, order).T,
              "weight_hh": _permute_gates(p["U"], spec.gates, order).T,
              "bias_ih": _permute_gates(b_ih, spec.gates, order),
              "bias_hh": _permute_gates(b_hh, spec.gates, order)}
    if spec.has_projection:
        arrays["weight_hr"] = p["Wr"].T
    return arrays


def to_torch(cell, params, module=None, *, layer: int = 0, reverse: bool = False,
             prefix: str = ""):
    """PyTorch weights of fastrnn params: a state dict, or copied into ``module``.

    Args:
        cell, params: fastrnn weights (e.g. a :class:`CellWeights` unpacked).
        module: optional ``torch.nn.RNN/LSTM/GRU`` (or a *Cell module) of matching type and
            sizes; its parameters of (``layer``, ``reverse``) are overwritten in place.
        layer, reverse: which ``*_l{k}{_reverse}`` keys to write.
        prefix: prepended to the returned keys (ignored with ``module``).

    Returns:
        ``module`` when given, else a dict ``{key: torch.Tensor}`` (``weight_ih_l{k}``,
        ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``) in the dtype of params.
        Biases are split as ``bias_ih = b``, ``bias_hh = 0`` (gru: ``[0, 0, bn]``).
    """
    import torch
    spec, p, I, H = _check_cell_params(cell, params)
    if spec.name not in _TORCH_MODULES:
        raise ValueError(f"cell: {spec.name!r} has no PyTorch counterpart; PyTorch's GRU is "
                         f"fastrnn's 'gru' (reset applied after U_n)")
    layer = _check_index("layer", layer)
    arrays = _torch_arrays(spec, p, H)
    if module is None:
        suffix = f"_l{layer}" + ("_reverse" if reverse else "")
        return {f"{prefix}{n}{suffix}": torch.from_numpy(np.ascontiguousarray(a))
                for n, a in arrays.items()}
    module_cell, one_step = _torch_module_cell(module)
    if module_cell != spec.name:
        raise ValueError(f"module: a {type(module).__name__} computing {module_cell!r} cannot "
                         f"take weights of cell {spec.name!r}")
    suffix = _torch_source(module, None, layer, bool(reverse))[2]
    targets = {n: getattr(module, n + suffix, None) for n in arrays}
    w_ih = targets["weight_ih"]
    hidden = spec.sizes_of(p)[0]
    if (tuple(w_ih.shape) != arrays["weight_ih"].shape or module.hidden_size != hidden
            or getattr(module, "proj_size", 0) != (H if spec.has_projection else 0)):
        raise ValueError(f"params: input size {I}, hidden size {hidden}"
                         + (f" and projection size {H}" if spec.has_projection else "")
                         + f" do not match the module's weight_ih{suffix} of shape "
                         f"{tuple(w_ih.shape)} (hidden_size={module.hidden_size}, "
                         f"proj_size={getattr(module, 'proj_size', 0)})")
    if targets["bias_ih"] is None:
        nonzero = [n for n in ("bias_ih", "bias_hh") if np.any(arrays[n])]
        if nonzero:
            raise ValueError("params: the module was built with bias=False but params['b'] "
                             f"{'or params[bn] ' if spec.has_recurrent_bias else ''}is not zero")
    with torch.no_grad():
        for n, a in arrays.items():
            if targets[n] is not None:
                targets[n].copy_(torch.from_numpy(np.ascontiguousarray(a)))
    return module


# ------------------------------------------------------------------------------ Keras 3

_KERAS_ACTIVATIONS = {"tanh": "rnn_tanh", "relu": "rnn_relu"}


def _keras_gates(spec: CellSpec) -> tuple:
    if spec.has_projection:
        raise ValueError(f"cell: {spec.name!r} has no Keras counterpart (Keras's LSTM has no "
                         f"projection)")
    return KERAS_GATES.get(spec.name, spec.gates)


def _keras_layer_cell(layer) -> str:
    """fastrnn cell of a Keras 3 SimpleRNN, LSTM or GRU layer (its configuration checked)."""
    import keras
    L = keras.layers
    if isinstance(layer, L.Bidirectional):
        raise TypeError("layer: a Bidirectional wrapper holds two layers; convert "
                        "layer.forward_layer and layer.backward_layer one at a time")
    cell = getattr(layer, "cell", None)
    act = getattr(getattr(cell, "activation", None), "__name__", None)
    if isinstance(layer, L.SimpleRNN):
        if act not in _KERAS_ACTIVATIONS:
            raise ValueError(f"layer: SimpleRNN with activation {act!r} has no fastrnn cell "
                             f"(tanh -> 'rnn_tanh', relu -> 'rnn_relu')")
        return _KERAS_ACTIVATIONS[act]
    if isinstance(layer, (L.LSTM, L.GRU)):
        rec = getattr(cell.recurrent_activation, "__name__", None)
        if act != "tanh" or rec != "sigmoid":
            raise ValueError(f"layer: fastrnn's {type(layer).__name__} uses activation 'tanh' "
                             f"and recurrent_activation 'sigmoid', the layer has {act!r} and "
                             f"{rec!r}")
        if isinstance(layer, L.LSTM):
            return "lstm"
        return "gru" if layer.reset_after else "gru_reset_before"
    raise TypeError(f"layer: expected a keras.layers.SimpleRNN, LSTM or GRU, got "
                    f"{type(layer).__name__}")


def from_keras(source, cell=None) -> CellWeights:
    """fastrnn weights of a Keras 3 recurrent layer or of its ``get_weights()`` list.

    Args:
        source: a built ``keras.layers.SimpleRNN``, ``LSTM`` or ``GRU``, or the list
            ``[kernel (I, G*H), recurrent_kernel (H, G*H), bias]`` (bias left out when the
            layer has ``use_bias=False``). GRU bias: (2, 3H) with ``reset_after=True``,
            (3H,) with ``reset_after=False``.
        cell: required with a list: ``'rnn_tanh'``, ``'rnn_relu'``, ``'lstm'``, ``'gru'``
            (``reset_after=True``) or ``'gru_reset_before'`` (``reset_after=False``); with a
            layer it is read off the layer (and checked if given).

    Returns:
        :class:`CellWeights` in the dtype of the weights.
    """
    if hasattr(source, "get_weights") and not isinstance(source, (list, tuple)):
        layer_cell = _keras_layer_cell(source)
        if cell is not None and get_cell(cell).name != layer_cell:
            raise ValueError(f"cell: {cell!r} does not match the layer, a "
                             f"{type(source).__name__} computing {layer_cell!r}")
        if not source.built:
            raise ValueError("layer: the layer is not built and has no weights yet; call it on "
                             "an input or call layer.build(input_shape) first")
        cell, source = layer_cell, source.get_weights()
    if cell is None:
        raise ValueError("cell: a list of Keras weights does not say which cell it holds; pass "
                         "cell='rnn_tanh', 'rnn_relu', 'lstm', 'gru' or 'gru_reset_before'")
    spec = get_cell(cell)
    if not isinstance(source, Sequence) or len(source) not in (2, 3):
        raise ValueError(f"weights: expected [kernel, recurrent_kernel, bias] or [kernel, "
                         f"recurrent_kernel], got {describe(source)}"
                         f"{f' of length {len(source)}' if isinstance(source, Sequence) else ''}")
    names = ("kernel", "recurrent_kernel", "bias")
    w = {n: _to_numpy(n, a) for n, a in zip(names, source)}
    _same_dtype(w)
    G, kernel, rec = spec.num_gates, w["kernel"], w["recurrent_kernel"]
    if rec.ndim != 2 or rec.shape[1] != G * rec.shape[0]:
        raise ValueError(f"recurrent_kernel: expected shape (H, {G}*H) for cell {spec.name!r}, "
                         f"got {rec.shape}")
    H = rec.shape[0]
    if kernel.ndim != 2 or kernel.shape[1] != G * H:
        raise ValueError(f"kernel: expected shape (I, {G * H}) ({G}*H columns, H={H}), got "
                         f"{kernel.shape}")
    bias_shape = (2, G * H) if spec.has_recurrent_bias else (G * H,)
    bias = w.get("bias", np.zeros(bias_shape, dtype=kernel.dtype))
    _check_shape("bias", bias, bias_shape,
                 "reset_after=True: input and recurrent rows" if spec.has_recurrent_bias
                 else f"{G}*H with H={H}" + ("; a (2, 3H) bias is cell 'gru' (reset_after=True)"
                                             if spec.is_gru else ""))
    order = _keras_gates(spec)
    params = {"W": _permute_gates(kernel, order, spec.gates),
              "U": _permute_gates(rec, order, spec.gates)}
    if spec.has_recurrent_bias:                 # rows: input bias, recurrent bias
        params.update(fold_biases(spec, _permute_gates(bias[0], order, spec.gates),
                                  _permute_gates(bias[1], order, spec.gates), H, kernel.dtype))
    else:
        params["b"] = _permute_gates(bias, order, spec.gates)
    return CellWeights(spec.name, {k: np.ascontiguousarray(v) for k, v in params.items()})


def to_keras(cell, params, layer=None):
    """Keras 3 weights of fastrnn params: the ``get_weights()`` list, or set into ``layer``.

    Args:
        cell, params: fastrnn weights.
        layer: optional built Keras ``SimpleRNN``, ``LSTM`` or ``GRU`` computing the same
            cell (``GRU(reset_after=True)`` for ``gru``, ``reset_after=False`` for
            ``gru_reset_before``); its weights are replaced with ``layer.set_weights``.

    Returns:
        ``layer`` when given, else ``[kernel (I, G*H), recurrent_kernel (H, G*H), bias]``
        with bias (2, 3H) = ``[b, [0, 0, bn]]`` (z, r, h order) for ``gru``, else (G*H,).
    """
    spec, p, I, H = _check_cell_params(cell, params)
    order = _keras_gates(spec)
    bias = _permute_gates(p["b"], spec.gates, order)
    if spec.has_recurrent_bias:
        b_rec = split_biases(spec, p["b"], p["bn"])[1]
        bias = np.stack([bias, _permute_gates(b_rec, spec.gates, order)])
    weights = [np.ascontiguousarray(_permute_gates(p["W"], spec.gates, order)),
               np.ascontiguousarray(_permute_gates(p["U"], spec.gates, order)),
               np.ascontiguousarray(bias)]
    if layer is None:
        return weights
    layer_cell = _keras_layer_cell(layer)
    if layer_cell != spec.name:
        raise ValueError(f"layer: a {type(layer).__name__} computing {layer_cell!r} cannot take "
                         f"weights of cell {spec.name!r}")
    if not layer.built:
        layer.build((None, None, I))
    current = layer.get_weights()
    if not layer.use_bias:
        if np.any(weights[2]):
            raise ValueError("params: the layer has use_bias=False but params['b']"
                             f"{' or params[bn]' if spec.has_recurrent_bias else ''} is not zero")
        weights = weights[:2]
    for name, new, old in zip(("kernel", "recurrent_kernel"), weights, current):
        if new.shape != old.shape:
            raise ValueError(f"params: {name} of shape {new.shape} (I={I}, H={H}) does not fit "
                             f"the layer's {name} of shape {old.shape}")
    layer.set_weights(weights)
    return layer


# ------------------------------------------------------------------------ course notebooks

def _notebook_bias(name: str, b: np.ndarray, H: int) -> np.ndarray:
    if b.shape not in ((H, 1), (1, H), (H,)):
        raise ValueError(f"{name}: expected shape ({H}, 1), (1, {H}) or ({H},) (H={H}), got "
                         f"{b.shape}")
    return b.reshape(H)


def _notebook_layout(parameters) -> tuple[str, dict]:
    """(layout, {key: array}) where layout is 'rnn', 'lstm' or 'gru'; readout keys dropped."""
    if isinstance(parameters, Sequence) and not isinstance(parameters, str):
        keys = [f"{w}{g}" for g in NOTEBOOK_GRU_GATES for w in "UWb"]
        if len(parameters) != len(keys):
            raise ValueError(f"parameters: a list is read as the GRU notebook's [{', '.join(keys)}]"
                             f"; expected {len(keys)} arrays, got {len(parameters)}")
        parameters = dict(zip(keys, parameters))
    if not isinstance(parameters, Mapping):
        raise TypeError(f"parameters: expected a dict of notebook weights (or the GRU notebook's "
                        f"list), got {type(parameters).__name__}")
    layouts = {"rnn": ("Wax", "Waa", "ba"),
               "lstm": tuple(f"{w}{g}" for g in NOTEBOOK_LSTM_GATES for w in "Wb"),
               "gru": tuple(f"{w}{g}" for g in NOTEBOOK_GRU_GATES for w in "UWb")}
    found = [name for name, keys in layouts.items() if keys[0] in parameters]
    if len(found) != 1:
        expected = "; ".join(f"{n}: {', '.join(k)}" for n, k in layouts.items())
        raise ValueError(f"parameters: expected the keys of one notebook layout ({expected}), "
                         f"got {', '.join(map(str, parameters)) or 'no keys'}")
    layout, keys = found[0], layouts[found[0]]
    missing = [k for k in keys if k not in parameters]
    extra = [k for k in parameters if k not in keys and k not in NOTEBOOK_READOUT_KEYS]
    if missing or extra:
        raise ValueError(f"parameters: the {layout} notebook layout has keys {', '.join(keys)}"
                         f"{'; missing ' + ', '.join(missing) if missing else ''}"
                         f"{'; unexpected ' + ', '.join(map(repr, extra)) if extra else ''}")
    arrays = {k: _to_numpy(f"parameters[{k!r}]", parameters[k]) for k in keys}
    _same_dtype(arrays)
    return layout, arrays


def _as_row(name: str, m: np.ndarray, shape_row: tuple, orientation: str, hint: str):
    """The row-orientation form of notebook matrix ``m`` (transposed when 'column')."""
    expected = shape_row if orientation == "row" else shape_row[::-1]
    if m.shape != expected:
        other = " (that is the other orientation)" if m.shape == expected[::-1] else ""
        raise ValueError(f"{name}: expected shape {expected} ({hint}, orientation="
                         f"{orientation!r}), got {m.shape}{other}")
    return m if orientation == "row" else m.T


def _input_size(name: str, m: np.ndarray, H: int, orientation: str) -> int:
    """n_x of an input matrix: (n_a, n_x) in column orientation, (n_x, n_a) in row."""
    h_axis = 0 if orientation == "column" else 1
    if m.ndim != 2 or m.shape[h_axis] != H:
        expected = (H, "n_x") if orientation == "column" else ("n_x", H)
        other = (" (that is the other orientation)" if m.ndim == 2 and m.shape[1 - h_axis] == H
                 else "")
        raise ValueError(f"{name}: expected shape ({expected[0]}, {expected[1]}) (n_a={H}, "
                         f"orientation={orientation!r}), got {m.shape}{other}")
    return m.shape[1 - h_axis]


def _from_notebook_rnn(a: dict, orientation: str) -> dict:
    Waa = a["Waa"]
    if Waa.ndim != 2 or Waa.shape[0] != Waa.shape[1]:
        raise ValueError(f"parameters['Waa']: expected a square (n_a, n_a), got {Waa.shape}")
    H = Waa.shape[0]
    I = _input_size("parameters['Wax']", a["Wax"], H, orientation)
    W = _as_row("parameters['Wax']", a["Wax"], (I, H), orientation, f"n_x={I}, n_a={H}")
    return {"W": W, "U": Waa if orientation == "row" else Waa.T,
            "b": _notebook_bias("parameters['ba']", a["ba"], H)}


def _from_notebook_lstm(a: dict, orientation: str, spec: CellSpec) -> dict:
    Wf = a["Wf"]
    if Wf.ndim != 2:
        raise ValueError(f"parameters['Wf']: expected a 2-d array, got shape {Wf.shape}")
    H = Wf.shape[0] if orientation == "column" else Wf.shape[1]
    I = Wf.size // H - H if H else 0
    if I < 1:
        raise ValueError(f"parameters['Wf']: expected shape (n_a, n_a + n_x) (orientation "
                         f"'column') or (n_a + n_x, n_a) ('row'), orientation={orientation!r}, "
                         f"got {Wf.shape}{' (that is the other orientation)' if Wf.size else ''}")
    blocks = {}
    for letter, gate in NOTEBOOK_LSTM_GATES.items():
        blocks[gate] = (_as_row(f"parameters['W{letter}']", a[f"W{letter}"], (H + I, H),
                                orientation, f"rows act on [a_prev; x], n_a={H}, n_x={I}"),
                        _notebook_bias(f"parameters['b{letter}']", a[f"b{letter}"], H))
    stacked = np.concatenate([blocks[g][0] for g in spec.gates], axis=1)    # (H+I, 4H)
    return {"W": stacked[H:], "U": stacked[:H],
            "b": np.concatenate([blocks[g][1] for g in spec.gates])}


def _from_notebook_gru(a: dict, orientation: str, spec: CellSpec) -> dict:
    Wz = a["Wz"]
    if Wz.ndim != 2 or Wz.shape[0] != Wz.shape[1]:
        raise ValueError(f"parameters['Wz']: expected a square (n_a, n_a), got {Wz.shape}")
    H = Wz.shape[0]
    I = _input_size("parameters['Uz']", a["Uz"], H, orientation)
    blocks = {}
    for letter, gate in NOTEBOOK_GRU_GATES.items():
        sign = -1 if letter in NOTEBOOK_GRU_NEGATED else 1
        hint = f"n_x={I}, n_a={H}"
        blocks[gate] = [sign * _as_row(f"parameters['{w}{letter}']", a[f"{w}{letter}"], shape,
                                       orientation, hint)
                        for w, shape in (("U", (I, H)), ("W", (H, H)))]
        blocks[gate].append(sign * _notebook_bias(f"parameters['b{letter}']", a[f"b{letter}"], H))
    return {name: np.concatenate([blocks[g][k] for g in spec.gates], axis=-1)
            for k, name in enumerate(("W", "U", "b"))}


_NOTEBOOK_CELLS = {"rnn": ("rnn_tanh", "rnn_relu"), "lstm": ("lstm",),
                   "gru": ("gru_reset_before",)}
_NOTEBOOK_ORIENTATION = {"rnn": "column", "lstm": "column", "gru": "row"}


def from_notebook(parameters, cell=None, *, orientation: str | None = None) -> CellWeights:
    """fastrnn weights of course-notebook parameters (layouts in the module docstring).

    Args:
        parameters: the notebook's dict: ``Wax, Waa, ba`` (RNN), ``Wf, bf, Wi, bi, Wc, bc,
            Wo, bo`` (LSTM) or ``Uz, Wz, bz, Ur, Wr, br, Uh, Wh, bh`` (GRU; also its list in
            that order). Readout keys ``Wy``/``Wya``/``by`` are ignored (see
            :func:`readout_from_notebook`). Biases may be (n_a, 1), (1, n_a) or (n_a,).
        cell: which fastrnn cell; read off the keys (``rnn_tanh`` for the RNN, whose
            notebook uses tanh; pass ``'rnn_relu'`` for a ReLU one).
        orientation: ``'column'`` or ``'row'``; default the notebook's own (column for RNN
            and LSTM, row for GRU).

    Returns:
        :class:`CellWeights`; the GRU notebook gives ``gru_reset_before`` with its z block
        negated (its z is fastrnn's 1 - z).
    """
    layout, arrays = _notebook_layout(parameters)
    cells = _NOTEBOOK_CELLS[layout]
    name = cells[0] if cell is None else get_cell(cell).name
    if name not in cells:
        raise ValueError(f"cell: the {layout} notebook layout computes {' or '.join(cells)}, "
                         f"not {name!r}")
    orientation = _check_orientation(orientation or _NOTEBOOK_ORIENTATION[layout])
    spec = get_cell(name)
    if layout == "rnn":
        params = _from_notebook_rnn(arrays, orientation)
    elif layout == "lstm":
        params = _from_notebook_lstm(arrays, orientation, spec)
    else:
        params = _from_notebook_gru(arrays, orientation, spec)
    return CellWeights(spec.name, {k: np.array(v, order="C") for k, v in params.items()})


def _row_to(m: np.ndarray, orientation: str) -> np.ndarray:
    return np.array(m if orientation == "row" else m.T, order="C")


def _bias_to(b: np.ndarray, orientation: str) -> np.ndarray:
    return np.array(b.reshape((1, -1) if orientation == "row" else (-1, 1)), order="C")


def to_notebook(cell, params, *, orientation: str | None = None) -> dict:
    """Course-notebook parameters of fastrnn weights (the inverse of :func:`from_notebook`).

    ``rnn_tanh`` / ``rnn_relu`` -> ``Wax, Waa, ba``; ``lstm`` -> ``Wf, bf, Wi, bi, Wc, bc,
    Wo, bo`` stacked on ``[a_prev; x]``; ``gru_reset_before`` -> ``Uz, Wz, bz, Ur, Wr, br,
    Uh, Wh, bh`` (z negated; ``list(d.values())`` is the GRU notebook's params list). Biases
    are (n_a, 1) in column orientation, (1, n_a) in row. ``gru`` (reset after) has no
    notebook form and raises ValueError.
    """
    spec, p, I, H = _check_cell_params(cell, params)
    layout = next((k for k, cells in _NOTEBOOK_CELLS.items() if spec.name in cells), None)
    if layout is None:
        raise ValueError(f"cell: {spec.name!r} has no course-notebook layout; the notebooks' "
                         f"GRU is 'gru_reset_before'")
    orientation = _check_orientation(orientation or _NOTEBOOK_ORIENTATION[layout])
    if layout == "rnn":
        return {"Wax": _row_to(p["W"], orientation), "Waa": _row_to(p["U"], orientation),
                "ba": _bias_to(p["b"], orientation)}
    out = {}
    if layout == "lstm":
        stacked = np.concatenate([p["U"], p["W"]], axis=0)          # rows act on [a_prev; x]
        for letter, gate in NOTEBOOK_LSTM_GATES.items():
            cols = spec.gate_slice(gate, H)
            out[f"W{letter}"] = _row_to(stacked[:, cols], orientation)
            out[f"b{letter}"] = _bias_to(p["b"][cols], orientation)
        return out
    for letter, gate in NOTEBOOK_GRU_GATES.items():
        cols = spec.gate_slice(gate, H)
        sign = -1 if letter in NOTEBOOK_GRU_NEGATED else 1
        out[f"U{letter}"] = _row_to(sign * p["W"][:, cols], orientation)
        out[f"W{letter}"] = _row_to(sign * p["U"][:, cols], orientation)
        out[f"b{letter}"] = _bias_to(sign * p["b"][cols], orientation)
    return out


def readout_from_notebook(parameters, *, orientation: str = "column") -> tuple:
    """``(Wy (n_a, n_y), by (n_y,))`` for :func:`fastrnn.readout` from a notebook's ``Wya`` or
    ``Wy`` (n_y, n_a) and ``by`` (n_y, 1) (column orientation; row: (n_a, n_y) and (1, n_y))."""
    orientation = _check_orientation(orientation)
    if not isinstance(parameters, Mapping):
        raise TypeError(f"parameters: expected a dict, got {type(parameters).__name__}")
    names = [k for k in ("Wy", "Wya") if k in parameters]
    if len(names) != 1 or "by" not in parameters:
        raise ValueError("parameters: expected a readout matrix 'Wy' or 'Wya' (one of them) "
                         "and a bias 'by'")
    Wy = _to_numpy(f"parameters[{names[0]!r}]", parameters[names[0]])
    by = _to_numpy("parameters['by']", parameters["by"])
    if Wy.ndim != 2:
        raise ValueError(f"parameters[{names[0]!r}]: expected a 2-d array, got {Wy.shape}")
    n_y = Wy.shape[0] if orientation == "column" else Wy.shape[1]
    _same_dtype({names[0]: Wy, "by": by})
    return (np.array(Wy.T if orientation == "column" else Wy, order="C"),
            _notebook_bias("parameters['by']", by, n_y))


def readout_to_notebook(Wy, by, *, orientation: str = "column", name: str = "Wy") -> dict:
    """Notebook readout ``{name: (n_y, n_a), 'by': (n_y, 1)}`` (column) of fastrnn's
    ``Wy (n_a, n_y)``, ``by (n_y,)``; row orientation gives ``(n_a, n_y)`` and ``(1, n_y)``."""
    orientation = _check_orientation(orientation)
    if name not in ("Wy", "Wya"):
        raise ValueError(f"name: expected 'Wy' (LSTM notebook) or 'Wya' (RNN notebook), "
                         f"got {name!r}")
    Wy, by = _to_numpy("Wy", Wy), _to_numpy("by", by)
    if Wy.ndim != 2:
        raise ValueError(f"Wy: expected shape (n_a, n_y), got {Wy.shape}")
    _check_shape("by", by, (Wy.shape[1],), "n_y, the columns of Wy")
    _same_dtype({"Wy": Wy, "by": by})
    return {name: _row_to(Wy, orientation), "by": _bias_to(by, orientation)}
