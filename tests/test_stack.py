"""fastrnn.stack_forward / Stack: multi-layer / bidirectional stacks over the core API, against torch.nn.

The torch modules get the same weights (through fastrnn.convert, itself tested against
torch in test_convert.py) and the same upstream gradients; outputs, final states and every
gradient must agree to TORCH_TOLERANCES. Dropout cannot match torch's RNG, so it is checked
structurally: the masks on the tape, applied between single torch layers, must reproduce
the stack exactly, and the masks themselves must have the right statistics.
"""

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastrnn
from fastrnn.interop.biases import fold_gradients
from fastrnn.layers.stack import (Stack, StackGradients, StackResult, dropout_mask, init_stack_params,
                           stack_backward, stack_forward)
from fastrnn.core.tolerances import TORCH_TOLERANCES
from assertions import assert_close

CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
TORCH_CLASS = {"lstm": (torch.nn.LSTM, {}), "gru": (torch.nn.GRU, {}),
               "rnn_tanh": (torch.nn.RNN, {"nonlinearity": "tanh"}),
               "rnn_relu": (torch.nn.RNN, {"nonlinearity": "relu"})}
T, B, I, H = 5, 3, 4, 3


def torch_twin(cell, L, D, dtype=torch.float64, seed=0):
    cls, kw = TORCH_CLASS[cell]
    torch.manual_seed(seed)
    return cls(I, H, num_layers=L, bidirectional=D == 2, dtype=dtype, **kw)


def params_from_torch(module, cell):
    """torch.nn weights -> the stack's params, a list over layers of tuples over directions."""
    D = 2 if module.bidirectional else 1
    return [tuple(fastrnn.convert.from_torch(module, layer=l, reverse=d == 1).params
                  for d in range(D)) for l in range(module.num_layers)]


def torch_run(module, x, h0, c0, lengths, dh, dh_n, dc_n):
    """torch forward over time-major x (lengths: through packing), then backward of the
    loss sum(h*dh) + sum(h_n*dh_n) + sum(c_n*dc_n); returns outputs and gradients."""
    xt = torch.tensor(x, requires_grad=True)
    states = [torch.tensor(s, requires_grad=True) for s in (h0, c0) if s is not None]
    hx = None
    if states:
        hx = tuple(states) if isinstance(module, torch.nn.LSTM) else states[0]
    inp = xt if lengths is None else pack_padded_sequence(xt, torch.tensor(lengths),
                                                          enforce_sorted=False)
    out, hn = module(inp, hx)
    if lengths is not None:
        out, _ = pad_packed_sequence(out, total_length=x.shape[0])
    h_n, c_n = hn if isinstance(hn, tuple) else (hn, None)
    loss = (out * torch.tensor(dh)).sum() + (h_n * torch.tensor(dh_n)).sum()
    if c_n is not None:
        loss = loss + (c_n * torch.tensor(dc_n)).sum()
    loss.backward()
    grads = {"dx": xt.grad}
    if states:
        grads["dh0"] = states[0].grad
        if len(states) == 2:
            grads["dc0"] = states[1].grad
    return out, h_n, c_n, grads


def torch_param_grads(module):
    """torch's parameter gradients, by parameter name."""
    return {k: v.grad.numpy() for k, v in module.named_parameters()}


def as_torch_grads(cell, params):
    """The stack's parameter gradients mapped to torch's names: dweight_ih = dW.T, ...,
    the bias gradients through the fold of fastrnn.interop.biases."""
    spec = fastrnn.get_cell(cell)
    out = {}
    for l, row in enumerate(params):
        for d, p in enumerate(row):
            s = f"_l{l}" + ("_reverse" if d else "")
            db_ih, db_hh = fold_gradients(spec, p["b"], p.get("bn"))
            out.update({"weight_ih" + s: p["W"].T, "weight_hh" + s: p["U"].T,
                        "bias_ih" + s: db_ih, "bias_hh" + s: db_hh})
    return out


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("D", [1, 2], ids=["uni", "bi"])
@pytest.mark.parametrize("mode", ["time_major", "batch_first", "lengths", "unbatched"])
def test_stack_matches_torch(cell, L, D, mode, cpu_backend):
    rng = np.random.default_rng([L, D, CELLS.index(cell), len(mode)])
    module = torch_twin(cell, L, D)
    params = params_from_torch(module, cell)
    Bx = 1 if mode == "unbatched" else B
    x = rng.standard_normal((T, Bx, I))
    h0 = rng.standard_normal((L * D, Bx, H)) * 0.5
    c0 = rng.standard_normal((L * D, Bx, H)) * 0.5 if cell == "lstm" else None
    lengths = np.array([3, T, 1]) if mode == "lengths" else None
    dh = rng.standard_normal((T, Bx, D * H))
    dh_n = rng.standard_normal((L * D, Bx, H))
    dc_n = rng.standard_normal((L * D, Bx, H)) if cell == "lstm" else None
    out_t, hn_t, cn_t, g_t = torch_run(module, x, h0, c0, lengths, dh, dh_n, dc_n)

    def user(a, kind):                         # time-major batched -> the mode's layout
        if a is None:
            return None
        if mode == "unbatched":
            return a[:, 0]
        if mode == "batch_first" and kind == "seq":
            return a.transpose(1, 0, 2)
        return a

    res = stack_forward(cell, user(x, "seq"), params, user(h0, "state"), user(c0, "state"),
                        lengths=lengths, batch_first=mode == "batch_first", backend=cpu_backend)
    g = stack_backward(res, user(dh, "seq"), user(dh_n, "state"), user(dc_n, "state"))
    tol = dict(dtype="float64", table=TORCH_TOLERANCES)
    assert_close(res.h, user(out_t.detach().numpy(), "seq"), kind="forward", what="h", **tol)
    assert_close(res.h_n, user(hn_t.detach().numpy(), "state"), kind="forward", what="h_n", **tol)
    assert_close(g.dx, user(g_t["dx"].numpy(), "seq"), kind="grad", what="dx", **tol)
    assert_close(g.dh0, user(g_t["dh0"].numpy(), "state"), kind="grad", what="dh0", **tol)
    if cell == "lstm":
        assert_close(res.c_n, user(cn_t.detach().numpy(), "state"), kind="forward", what="c_n",
                     **tol)
        assert_close(g.dc0, user(g_t["dc0"].numpy(), "state"), kind="grad", what="dc0", **tol)
    else:
        assert res.c_n is None and g.dc0 is None
    assert len(g.params) == L
    for l in range(L):
        assert isinstance(g.params[l], tuple) and len(g.params[l]) == D
    expected, got = torch_param_grads(module), as_torch_grads(cell, g.params)
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert_close(got[k], v, kind="grad", what=f"d{k}", **tol)


def test_stack_float32_matches_torch(cpu_backend):
    rng = np.random.default_rng(7)
    module = torch_twin("lstm", 2, 2, dtype=torch.float32)
    params = params_from_torch(module, "lstm")
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dh = rng.standard_normal((T, B, 2 * H)).astype(np.float32)
    z = np.zeros((4, B, H), np.float32)
    out_t, hn_t, cn_t, g_t = torch_run(module, x, None, None, None, dh, z, z)
    res = stack_forward("lstm", x, params, backend=cpu_backend)
    g = stack_backward(res, dh)
    assert res.h.dtype == np.float32 and g.dx.dtype == np.float32
    tol = dict(dtype="float32", table=TORCH_TOLERANCES)
    assert_close(res.h, out_t.detach().numpy(), kind="forward", what="h", **tol)
    assert_close(res.c_n, cn_t.detach().numpy(), kind="forward", what="c_n", **tol)
    assert_close(g.dx, g_t["dx"].numpy(), kind="grad", what="dx", **tol)
    expected = torch_param_grads(module)
    assert_close(g.params[1][1]["U"].T, expected["weight_hh_l1_reverse"], kind="grad",
                 what="dU", **tol)


@pytest.mark.parametrize("cell", CELLS + ["gru_reset_before"])
def test_single_layer_stack_is_the_core_api(cell, rng):
    """One layer, one direction, bare mapping: exactly fastrnn.forward / backward."""
    spec = fastrnn.get_cell(cell)
    p = spec.init_params(I, H, "float64", seed=3)
    x = rng.standard_normal((T, B, I))
    lengths = np.array([T, 2, 4])
    res = stack_forward(cell, x, [p], lengths=lengths, backend="numpy")
    ref = fastrnn.forward(cell, x, p, lengths=lengths, backend="numpy")
    np.testing.assert_array_equal(res.h, ref.h)
    np.testing.assert_array_equal(res.h_n[0], ref.h_n)
    dh = rng.standard_normal(res.h.shape)
    g = stack_backward(res, dh)
    gr = fastrnn.backward(ref, dh)
    np.testing.assert_array_equal(g.dx, gr.dx)
    assert isinstance(g.params[0], dict)                  # bare mapping in, bare mapping out
    for k in p:
        np.testing.assert_array_equal(g.params[0][k], gr.params[k])


# ------------------------------------------------------------------------------ dropout

def _torch_layers(cell, params, D):
    """Single-layer torch modules carrying the stack's weights, one per layer."""
    cls, kw = TORCH_CLASS[cell]
    mods = []
    for l, row in enumerate(params):
        m = cls(row[0]["W"].shape[0], H, bidirectional=D == 2, dtype=torch.float64, **kw)
        for d, p in enumerate(row):
            fastrnn.convert.to_torch(cell, p, m, reverse=d == 1)
        mods.append(m)
    return mods


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_dropout_masks_between_layers_match_manual_composition(cell, rng, cpu_backend):
    """Dropout multiplies the output of every layer but the last by the taped mask, and the
    gradient flows back through the same mask."""
    L, D, p = 3, 2, 0.4
    params = init_stack_params(cell, I, H, L, bidirectional=True, dtype="float64", seed=1)
    x = rng.standard_normal((T, B, I))
    res = stack_forward(cell, x, params, dropout=p, rng=123, backend=cpu_backend)
    masks = res.tape.masks
    assert len(masks) == L - 1 and all(m.shape == (T, B, D * H) for m in masks)
    dh = rng.standard_normal(res.h.shape)
    g = stack_backward(res, dh)

    xt = torch.tensor(x, requires_grad=True)
    inp = xt
    for l, m in enumerate(_torch_layers(cell, params, D)):
        inp, _ = m(inp)
        if l < L - 1:
            inp = inp * torch.tensor(masks[l])
    (inp * torch.tensor(dh)).sum().backward()
    tol = dict(dtype="float64", table=TORCH_TOLERANCES)
    assert_close(res.h, inp.detach().numpy(), kind="forward", what="h", **tol)
    assert_close(g.dx, xt.grad.numpy(), kind="grad", what="dx", **tol)


def test_dropout_is_reproducible_and_seeded(rng):
    params = init_stack_params("gru", I, H, 3, dtype="float64", seed=0)
    x = rng.standard_normal((T, B, I))
    a = stack_forward("gru", x, params, dropout=0.5, rng=7, backend="numpy")
    b = stack_forward("gru", x, params, dropout=0.5, rng=np.random.default_rng(7),
                      backend="numpy")
    c = stack_forward("gru", x, params, dropout=0.5, rng=8, backend="numpy")
    np.testing.assert_array_equal(a.h, b.h)
    for ma, mb in zip(a.tape.masks, b.tape.masks):
        np.testing.assert_array_equal(ma, mb)
    assert not np.array_equal(a.h, c.h)
    # No dropout outside training, none with p = 0: both equal the plain stack.
    plain = stack_forward("gru", x, params, backend="numpy")
    ev = stack_forward("gru", x, params, dropout=0.5, rng=7, training=False, backend="numpy")
    assert ev.tape is None
    np.testing.assert_array_equal(ev.h, plain.h)
    assert not np.array_equal(a.h, plain.h)
    assert plain.tape.masks == (None, None)


def test_dropout_mask_statistics():
    p, shape = 0.3, (200, 50, 20)
    mask = dropout_mask(np.random.default_rng(0), np, shape, p, np.float32)
    assert mask.dtype == np.float32
    n = mask.size
    dropped = np.count_nonzero(mask == 0) / n
    assert abs(dropped - p) < 5 * np.sqrt(p * (1 - p) / n)         # 5 sigma of a binomial
    np.testing.assert_allclose(np.unique(mask[mask != 0]), [1 / (1 - p)], rtol=1e-6)
    assert abs(mask.mean() - 1.0) < 0.01                             # E[mask] = 1
    np.testing.assert_array_equal(dropout_mask(np.random.default_rng(0), np, (4, 3), 1.0,
                                               np.float64), np.zeros((4, 3)))


def test_dropout_one_cuts_the_lower_layers(rng):
    """p = 1: the top layer sees zeros, so nothing below it gets a gradient."""
    params = init_stack_params("lstm", I, H, 2, dtype="float64", seed=2)
    x = rng.standard_normal((T, B, I))
    res = stack_forward("lstm", x, params, dropout=1.0, rng=0, backend="numpy")
    top = fastrnn.forward("lstm", np.zeros((T, B, H)), params[1][0], backend="numpy")
    np.testing.assert_allclose(res.h, top.h, rtol=0, atol=0)
    g = stack_backward(res, np.ones_like(res.h))
    assert not g.dx.any() and not g.params[0][0]["W"].any()


# -------------------------------------------------------------------------------- Stack

def test_stack_object(rng):
    s = Stack("lstm", I, H, 2, bidirectional=True, dropout=0.2, dtype="float64", seed=5,
              backend="numpy")
    assert [tuple(p["W"].shape for p in row) for row in s.params] == [((I, 4 * H),) * 2,
                                                                       ((2 * H, 4 * H),) * 2]
    again = Stack("lstm", I, H, 2, bidirectional=True, dtype="float64", seed=5)
    other = Stack("lstm", I, H, 2, bidirectional=True, dtype="float64", seed=6)
    np.testing.assert_array_equal(s.params[1][1]["U"], again.params[1][1]["U"])
    assert not np.array_equal(s.params[1][1]["U"], other.params[1][1]["U"])
    assert not np.array_equal(s.params[0][0]["W"], s.params[0][1]["W"])
    x = rng.standard_normal((B, T, I))
    res = s(x, batch_first=True)
    assert isinstance(res, StackResult)
    assert res.h.shape == (B, T, 2 * H) and res.h_n.shape == (4, B, H) == res.c_n.shape
    g = s.backward(res, dh=np.ones_like(res.h))
    assert isinstance(g, StackGradients) and g.dx.shape == x.shape and g.dh0.shape == (4, B, H)
    r1, r2 = s(x, batch_first=True), s(x, batch_first=True)        # the generator advances
    assert not np.array_equal(r1.h, r2.h)
    np.testing.assert_array_equal(s(x, batch_first=True, training=False).h,
                                  stack_forward("lstm", x, s.params, batch_first=True,
                                                backend="numpy").h)


# ------------------------------------------------------------------------------- errors

def _params(cell="lstm", L=2, bidirectional=False):
    return init_stack_params(cell, I, H, L, bidirectional=bidirectional, dtype="float64")


def test_errors_name_the_argument(rng):
    x = rng.standard_normal((T, B, I))
    mixed = [_params(bidirectional=True)[0], _params()[1]]
    with pytest.raises(ValueError, match=r"params\[1\]: layer 0 has 2 direction"):
        stack_forward("lstm", x, mixed, backend="numpy")
    bad = _params()
    bad[1] = ({**bad[1][0], "W": np.zeros((I, 4 * H))},)             # layer 1 reads H, not I
    with pytest.raises(ValueError, match=r"params\[1\]\[0\] \(layer 1, forward direction\)"):
        stack_forward("lstm", x, bad, backend="numpy")
    with pytest.raises(TypeError, match="params: expected a sequence over layers"):
        stack_forward("lstm", x, _params()[0][0], backend="numpy")
    with pytest.raises(ValueError, match="params: expected at least one layer"):
        stack_forward("lstm", x, [], backend="numpy")
    with pytest.raises(ValueError, match=r"h0: expected shape \(2, 3, 3\)"):
        stack_forward("lstm", x, _params(), h0=np.zeros((1, B, H)), backend="numpy")
    with pytest.raises(TypeError, match="h0: expected dtype float64"):
        stack_forward("lstm", x, _params(), h0=np.zeros((2, B, H), np.float32),
                      backend="numpy")
    with pytest.raises(ValueError, match="c0: cell 'gru' has no cell state"):
        stack_forward("gru", x, _params("gru"), c0=np.zeros((2, B, H)), backend="numpy")
    with pytest.raises(ValueError, match="rng: dropout > 0 in training"):
        stack_forward("lstm", x, _params(), dropout=0.5, backend="numpy")
    with pytest.raises(TypeError, match="rng: expected an int seed"):
        stack_forward("lstm", x, _params(), dropout=0.5, rng="seed", backend="numpy")
    with pytest.raises(ValueError, match=r"dropout: expected a probability in \[0, 1\]"):
        stack_forward("lstm", x, _params(), dropout=1.5, rng=0, backend="numpy")
    with pytest.raises(ValueError, match="lengths: unbatched input"):
        stack_forward("lstm", x[:, 0], _params(), lengths=[T], backend="numpy")
    with pytest.raises(ValueError, match=r"lengths: expected values in 1\.\.5"):
        stack_forward("lstm", x, _params(), lengths=[0, 1, 2], backend="numpy")
    with pytest.raises(ValueError, match="x: expected a 3-d array"):
        stack_forward("lstm", x[None], _params(), backend="numpy")
    with pytest.raises(TypeError, match="params\\[0\\]\\[0\\]\\['W'\\]: expected dtype float32"):
        stack_forward("lstm", x.astype(np.float32), _params(), backend="numpy")


def test_backward_errors(rng):
    x = rng.standard_normal((T, B, I))
    res = stack_forward("gru", x, _params("gru"), backend="numpy")
    with pytest.raises(ValueError, match=r"dh: expected shape \(5, 3, 3\)"):
        stack_backward(res, dh=np.zeros((T, B, 2 * H)))
    with pytest.raises(ValueError, match=r"dh_n: expected shape \(2, 3, 3\)"):
        stack_backward(res, dh_n=np.zeros((1, B, H)))
    with pytest.raises(ValueError, match="dc_n: cell 'gru' has no cell state"):
        stack_backward(res, dc_n=np.zeros((2, B, H)))
    no_tape = stack_forward("gru", x, _params("gru"), training=False, backend="numpy")
    with pytest.raises(ValueError, match="training=False"):
        stack_backward(no_tape)
    with pytest.raises(TypeError, match="tape: expected the .tape of a stack_forward result"):
        stack_backward(fastrnn.forward("gru", x, _params("gru")[0][0], backend="numpy").tape)
    # A parameter changed in place between forward and backward is refused by the layer tape.
    params = _params("gru")
    res = stack_forward("gru", x, params, backend="numpy")
    params[1][0]["U"] += 1.0
    with pytest.raises(ValueError, match="changed in place"):
        stack_backward(res, dh=np.ones_like(res.h))
