"""Keras 3 as an independent oracle for the NumPy reference.

``gru_reset_before`` has no PyTorch twin; Keras ``GRU(reset_after=False)`` is it. The same
checks run for ``gru`` (``reset_after=True``), ``lstm`` and both ``SimpleRNN`` activations.
Keras runs on its torch backend (no TensorFlow needed), in float64, and its gradients come
from torch autograd through the layer call: outputs, final states and the gradients of x,
the initial states and every weight are compared with the reference's forward and backward.
Weights move between the two with :mod:`fastrnn.convert`; its round trips are proven exact
in test_convert.py.
"""

import os

os.environ["KERAS_BACKEND"] = "torch"      # before keras is imported anywhere in this process

import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip(
    "keras", reason="keras is not installed (the GPU machines have none): these tests use "
    "Keras 3 as an oracle; pip install -e '.[test]' brings it")
import torch  # noqa: E402

import fastrnn  # noqa: E402
from conftest import make_problem, record_error  # noqa: E402
from fastrnn import convert  # noqa: E402
pytestmark = pytest.mark.filterwarnings(
    # Keras internals call np.array(tensor) in a way NumPy 2 deprecates; not ours to fix.
    "ignore:__array__ implementation doesn.t accept a copy keyword:DeprecationWarning")

from fastrnn.core.tolerances import TORCH_TOLERANCES  # noqa: E402
from assertions import assert_close  # noqa: E402

CELLS = ["gru_reset_before", "gru", "lstm", "rnn_tanh", "rnn_relu"]
SHAPES = [(1, 1, 1, 1), (5, 3, 4, 6), (7, 2, 6, 3)]        # T, B, I, H


def test_keras_runs_on_the_torch_backend():
    assert keras.backend.backend() == "torch", (
        "keras was imported with another backend before this module set KERAS_BACKEND=torch")


@pytest.fixture
def keras_float64(monkeypatch):
    """Let Keras compute in float64 for the length of one test.

    Outside TensorFlow, Keras 3 follows JAX's default type promotion, in which an op on two
    float64 tensors yields float32 (``BIT64_TO_BIT32_DTYPE`` in
    ``keras/src/backend/common/dtypes.py``). SimpleRNN and GRU(reset_after=False) multiply
    through ``keras.ops.matmul`` and so drop to float32 even in a float64 layer (measured
    ~1e-7 off), while LSTM and GRU(reset_after=True) run Keras's own pure-torch loop in
    float64. The fixture turns on the float64 promotion Keras uses on TensorFlow, and checks
    that it took effect.
    """
    def matmul_dtype():
        x = keras.ops.ones((1, 1), dtype="float64")
        return keras.backend.standardize_dtype(keras.ops.matmul(x, x).dtype)

    if matmul_dtype() != "float64":
        from keras.src.backend.common import dtypes
        monkeypatch.setitem(dtypes.BIT64_TO_BIT32_DTYPE, "float64", "float64")
    assert matmul_dtype() == "float64", "could not make keras.ops.matmul keep float64"


def keras_layer(cell, H, dtype, go_backwards):
    L = keras.layers
    kw = dict(return_sequences=True, return_state=True, go_backwards=go_backwards, dtype=dtype)
    if cell.startswith("rnn"):
        return L.SimpleRNN(H, activation=cell[4:], **kw)
    if cell == "lstm":
        return L.LSTM(H, **kw)
    return L.GRU(H, reset_after=(cell == "gru"), **kw)


def keras_forward_backward(layer, x, h0, c0, dh, dh_n, dc_n):
    """Run the layer on time-major NumPy arrays; return outputs and autograd gradients,
    everything time-major NumPy. ``dh`` etc. weight the loss sum(dh*h) + sum(dh_n*h_n) + ..."""
    def leaf(a):
        t = keras.ops.convert_to_tensor(a)
        return t.detach().clone().requires_grad_(True)

    xt = leaf(x.transpose(1, 0, 2))                                 # Keras is batch-major
    states = [leaf(h0)] + ([leaf(c0)] if c0 is not None else [])
    out = layer(xt, initial_state=states)
    seq, h_n = out[0], out[1]
    c_n = out[2] if c0 is not None else None
    loss = (seq * keras.ops.convert_to_tensor(dh.transpose(1, 0, 2))).sum()
    loss = loss + (h_n * keras.ops.convert_to_tensor(dh_n)).sum()
    if c_n is not None:
        loss = loss + (c_n * keras.ops.convert_to_tensor(dc_n)).sum()
    loss.backward()

    def np_(t):
        return None if t is None else t.detach().cpu().numpy()

    return {"h": np_(seq).transpose(1, 0, 2), "h_n": np_(h_n), "c_n": np_(c_n),
            "dx": np_(xt.grad).transpose(1, 0, 2), "dh0": np_(states[0].grad),
            "dc0": np_(states[1].grad) if c0 is not None else None,
            "weights": [np_(w.value.grad) for w in layer.weights]}


def keras_layout_grads(cell, grads):
    """fastrnn's parameter gradients in Keras's [kernel, recurrent_kernel, bias] layout.

    The map is linear, so it is to_keras, except for the reset-after GRU's bias: there
    b = bias_in + (bias_rec with its h part zeroed) and bn = bias_rec_h, so d bias_rec holds
    db in its z and r parts and dbn in its h part, where to_keras writes zeros.
    """
    out = convert.to_keras(cell, grads)
    if cell == "gru":
        H = grads["bn"].shape[0]
        rec_as_b = np.concatenate([grads["b"][:2 * H], grads["bn"]])
        out[2][1] = convert.to_keras(cell, dict(grads, b=rec_as_b))[2][0]
    return out


def run_case(cell, shape, states, reverse, dtype, rng):
    T, B, I, H = shape
    spec = fastrnn.get_cell(cell)
    x, params, h0, c0, _ = make_problem(rng, cell, T, B, I, H, dtype=dtype, states=True)
    if not states:
        h0 = np.zeros((B, H), dtype)
        c0 = np.zeros((B, H), dtype) if spec.has_cell_state else None
    dh = rng.standard_normal((T, B, H)).astype(dtype)
    dh_n = rng.standard_normal((B, H)).astype(dtype)
    dc_n = rng.standard_normal((B, H)).astype(dtype) if spec.has_cell_state else None

    layer = keras_layer(cell, H, dtype, go_backwards=reverse)
    layer.build((None, None, I))
    convert.to_keras(cell, params, layer)
    # go_backwards emits its outputs in processing order; fastrnn stores them in place
    flip = (lambda a: a[::-1]) if reverse else (lambda a: a)
    k = keras_forward_backward(layer, x, h0, c0, flip(dh), dh_n, dc_n)

    res = fastrnn.forward(cell, x, params, None if not states else h0,
                          c0 if states else None, reverse=reverse, backend="numpy")
    g = fastrnn.backward(res.tape, dh, dh_n, dc_n)

    def check(got, want, kind, what):
        err = assert_close(got, want, dtype, kind, f"{cell} {what}", table=TORCH_TOLERANCES)
        record_error(f"reference vs Keras {dtype} {kind}", err)

    check(res.h, flip(k["h"]), "forward", "h")
    check(res.h_n, k["h_n"], "forward", "h_n")
    if spec.has_cell_state:
        check(res.c_n, k["c_n"], "forward", "c_n")
    check(g.dx, k["dx"], "grad", "dx")
    check(g.dh0, k["dh0"], "grad", "dh0")
    if spec.has_cell_state:
        check(g.dc0, k["dc0"], "grad", "dc0")
    for name, got, want in zip(("kernel", "recurrent_kernel", "bias"),
                               keras_layout_grads(cell, g.params), k["weights"]):
        check(got, want, "grad", f"d{name}")


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "go_backwards"])
@pytest.mark.parametrize("states", [False, True], ids=["zero_state", "initial_state"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
@pytest.mark.parametrize("cell", CELLS)
def test_reference_matches_keras_float64(cell, shape, states, reverse, rng, keras_float64):
    run_case(cell, shape, states, reverse, "float64", rng)


@pytest.mark.parametrize("cell", CELLS)
def test_reference_matches_keras_float32(cell, rng):
    run_case(cell, (6, 3, 5, 4), True, False, "float32", rng)


def test_keras_loss_sees_a_wrong_gate_order(rng, keras_float64):
    """The comparison can fail: swapping r and z in the reference's weights is caught."""
    T, B, I, H = 4, 2, 3, 5
    x, params, h0, _, _ = make_problem(rng, "gru_reset_before", T, B, I, H, states=True)
    layer = keras_layer("gru_reset_before", H, "float64", go_backwards=False)
    layer.build((None, None, I))
    convert.to_keras("gru_reset_before", params, layer)
    with torch.no_grad():
        seq = layer(keras.ops.convert_to_tensor(x.transpose(1, 0, 2)),
                    initial_state=[keras.ops.convert_to_tensor(h0)])[0]
    swapped = {k: np.concatenate([v[..., H:2 * H], v[..., :H], v[..., 2 * H:]], axis=-1)
               for k, v in params.items()}
    res = fastrnn.forward("gru_reset_before", x, swapped, h0, backend="numpy", training=False)
    with pytest.raises(AssertionError):
        assert_close(res.h, seq.cpu().numpy().transpose(1, 0, 2), "float64", "forward", "",
                     table=TORCH_TOLERANCES)
