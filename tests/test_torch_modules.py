"""fastrnn.torch.LSTM / GRU / RNN against their torch.nn twins.

Same weights (through load_state_dict), same input, same upstream gradients: outputs, final
states and every parameter, input and state gradient must agree to TORCH_TOLERANCES, for
1-3 layers, one or two directions, time-major, batch_first, packed (unsorted lengths) and
unbatched input, with and without hx. Dropout in training cannot match torch's fused RNG
use, so it is checked structurally against a composition of single torch layers and
F.dropout under the same seed.
"""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastrnn.torch as frt
from conftest import require_backend
from fastrnn.core.tolerances import GRADCHECK, SAME_ARITHMETIC, TORCH_TOLERANCES
from assertions import assert_close

# name -> (fastrnn.torch class, torch.nn class, extra constructor kwargs)
KINDS = {"lstm": (frt.LSTM, torch.nn.LSTM, {}), "gru": (frt.GRU, torch.nn.GRU, {}),
         "rnn_tanh": (frt.RNN, torch.nn.RNN, {"nonlinearity": "tanh"}),
         "rnn_relu": (frt.RNN, torch.nn.RNN, {"nonlinearity": "relu"})}
T, B, I, H = 5, 3, 4, 3
LENGTHS = [3, 5, 2]                      # unsorted, so the packed path permutes hx and h_n


def make_pair(kind, backend, seed=0, dtype=torch.float64, **kw):
    """(fastrnn module, torch.nn module) with the torch module's weights loaded."""
    ours, theirs, extra = KINDS[kind]
    torch.manual_seed(seed)
    ref = theirs(I, H, dtype=dtype, **extra, **kw)
    mod = ours(I, H, dtype=dtype, backend=backend, **extra, **kw)
    mod.load_state_dict(ref.state_dict())
    return mod, ref


def make_inputs(kind, mode, L, D, with_hx, gen, dtype=torch.float64):
    """Leaf tensors: x in the mode's layout and the initial states (or None)."""
    if mode == "unbatched":
        x = torch.randn(T, I, generator=gen, dtype=dtype)
        sshape = (L * D, H)
    else:
        x = torch.randn(*((B, T, I) if mode == "batch_first" else (T, B, I)), generator=gen,
                        dtype=dtype)
        sshape = (L * D, B, H)
    states = []
    if with_hx:
        states.append(torch.randn(sshape, generator=gen, dtype=dtype) * 0.5)
        if kind == "lstm":
            states.append(torch.randn(sshape, generator=gen, dtype=dtype) * 0.5)
    return [t.requires_grad_() for t in [x] + states]


def run(module, kind, mode, leaves, weights):
    """Forward, then backward of a weighted sum of every output; returns (outputs, grads)."""
    x, *states = leaves
    inp = (pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=False)
           if mode == "packed" else x)
    hx = (tuple(states) if kind == "lstm" else states[0]) if states else None
    out, hn = module(inp, hx)
    if mode == "packed":
        assert isinstance(out, torch.nn.utils.rnn.PackedSequence)
        assert torch.equal(out.batch_sizes, inp.batch_sizes)
        assert torch.equal(out.unsorted_indices, inp.unsorted_indices)
        out, lens = pad_packed_sequence(out)
        assert lens.tolist() == LENGTHS
    finals = list(hn) if kind == "lstm" else [hn]
    outs = [out] + finals
    loss = sum((o * w).sum() for o, w in zip(outs, weights))
    loss.backward()
    grads = [t.grad for t in leaves] + [p.grad for p in module.parameters()]
    return [o.detach() for o in outs], grads


@pytest.mark.filterwarnings("error::UserWarning")
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("mode", ["time_major", "batch_first", "packed", "unbatched"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
def test_module_matches_torch(kind, L, bidirectional, mode, with_hx, cpu_backend):
    D = 2 if bidirectional else 1
    mod, ref = make_pair(kind, cpu_backend, num_layers=L, bidirectional=bidirectional,
                         batch_first=mode == "batch_first")
    gen = torch.Generator().manual_seed(L * 100 + D * 10 + len(mode) + with_hx)
    leaves_ref = make_inputs(kind, mode, L, D, with_hx, gen)
    leaves = [t.detach().clone().requires_grad_() for t in leaves_ref]
    # Upstream gradients: random weights on every output, so a permutation cannot hide.
    seq = {"unbatched": (T, D * H), "batch_first": (B, T, D * H)}.get(mode, (T, B, D * H))
    state = (L * D, H) if mode == "unbatched" else (L * D, B, H)
    shapes = [seq, state] + ([state] if kind == "lstm" else [])
    weights = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    outs_ref, grads_ref = run(ref, kind, mode, leaves_ref, weights)
    outs, grads = run(mod, kind, mode, leaves, weights)
    tol = dict(dtype="float64", table=TORCH_TOLERANCES)
    names = ["output", "h_n", "c_n"]
    for name, a, b in zip(names, outs, outs_ref):
        assert a.shape == b.shape, name
        assert_close(a, b, kind="forward", what=name, **tol)
    pnames = [f"d{n}" for n, _ in ref.named_parameters()]
    gnames = ["dinput", "dh_0", "dc_0"][:len(leaves)] + pnames
    assert len(grads) == len(grads_ref) == len(gnames)
    for name, a, b in zip(gnames, grads, grads_ref):
        assert a is not None, name
        assert_close(a, b, kind="grad", what=name, **tol)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_float32_matches_torch(kind, cpu_backend):
    mod, ref = make_pair(kind, cpu_backend, dtype=torch.float32, num_layers=2,
                         bidirectional=True, batch_first=True)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(B, T, I, generator=gen)
    xr = x.clone().requires_grad_()
    xm = x.clone().requires_grad_()
    out_r, _ = ref(xr)
    out_m, _ = mod(xm)
    assert out_m.dtype == torch.float32
    w = torch.randn(out_r.shape, generator=gen)
    (out_r * w).sum().backward()
    (out_m * w).sum().backward()
    tol = dict(dtype="float32", table=TORCH_TOLERANCES)
    assert_close(out_m, out_r, kind="forward", what="output", **tol)
    assert_close(xm.grad, xr.grad, kind="grad", what="dinput", **tol)
    for (n, pr), pm in zip(ref.named_parameters(), mod.parameters()):
        assert_close(pm.grad, pr.grad, kind="grad", what=n, **tol)


@pytest.mark.parametrize("kind", list(KINDS))
def test_without_bias_matches_torch(kind, rng):
    mod, ref = make_pair(kind, "numpy", num_layers=2, bias=False)
    assert [n for n, _ in mod.named_parameters()] == ["weight_ih_l0", "weight_hh_l0",
                                                      "weight_ih_l1", "weight_hh_l1"]
    x = torch.tensor(rng.standard_normal((T, B, I)))
    (a, _), (b, _) = mod(x), ref(x)
    assert_close(a, b, "float64", "forward", "output", table=TORCH_TOLERANCES)
    a.sum().backward()
    b.sum().backward()
    for (n, pr), pm in zip(ref.named_parameters(), mod.parameters()):
        assert_close(pm.grad, pr.grad, "float64", "grad", n, table=TORCH_TOLERANCES)


# ---------------------------------------------------------------------------- gradcheck

def _gradcheck(mod, kind, x, states, lengths=None):
    names = [n for n, _ in mod.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in mod.parameters()]

    def f(x, *rest):
        st, ps = rest[:len(states)], rest[len(states):]
        inp = (pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
               if lengths is not None else x)
        hx = (tuple(st) if kind == "lstm" else st[0]) if st else None
        out, hn = torch.func.functional_call(mod, dict(zip(names, ps)), (inp, hx))
        if lengths is not None:
            out = pad_packed_sequence(out)[0]
        return (out,) + (tuple(hn) if kind == "lstm" else (hn,))

    inputs = [x.requires_grad_()] + [s.requires_grad_() for s in states] + params
    assert torch.autograd.gradcheck(f, inputs, **GRADCHECK)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("config", ["one_layer", "two_layer_bi_packed"])
def test_gradcheck(kind, config, cpu_backend):
    gen = torch.Generator().manual_seed(11)
    if config == "one_layer":
        mod, _ = make_pair(kind, cpu_backend, batch_first=True)
        x = torch.randn(2, 3, I, generator=gen, dtype=torch.float64)
        _gradcheck(mod, kind, x, [])
    else:
        ours, _, extra = KINDS[kind]
        mod = ours(2, 2, num_layers=2, bidirectional=True, dtype=torch.float64,
                   backend=cpu_backend, **extra)
        x = torch.randn(3, 2, 2, generator=gen, dtype=torch.float64)
        nst = 2 if kind == "lstm" else 1
        states = [torch.randn(4, 2, 2, generator=gen, dtype=torch.float64) for _ in range(nst)]
        _gradcheck(mod, kind, x, states, lengths=[2, 3])


# --------------------------------------------------------------- state dicts and init

@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("bias", [True, False])
def test_parameters_and_init_are_torch_s(kind, bias):
    ours, theirs, extra = KINDS[kind]
    kw = dict(num_layers=3, bidirectional=True, bias=bias, dtype=torch.float64, **extra)
    torch.manual_seed(42)
    ref = theirs(5, 7, **kw)
    torch.manual_seed(42)
    mod = ours(5, 7, **kw)
    sd_r, sd_m = ref.state_dict(), mod.state_dict()
    assert list(sd_m) == list(sd_r)
    for k in sd_r:                        # same shapes, and the same draws under one seed
        assert torch.equal(sd_m[k], sd_r[k]), k
    ref2 = theirs(5, 7, **kw)             # and back into torch.nn, unchanged
    ref2.load_state_dict(mod.state_dict())
    assert len(mod.all_weights) == 6 and mod.all_weights[1][0] is mod.weight_ih_l0_reverse
    assert repr(mod).endswith("(5, 7, num_layers=3" + ("" if bias else ", bias=False")
                              + ", bidirectional=True)")


def test_device_and_dtype_kwargs():
    m = frt.GRU(3, 4, dtype=torch.float32, device="cpu")
    assert m.weight_ih_l0.dtype == torch.float32 and m.weight_ih_l0.device.type == "cpu"
    assert m.double().weight_hh_l0.dtype == torch.float64
    out, h = m(torch.randn(2, 1, 3, dtype=torch.float64))
    assert out.dtype == torch.float64 and h.shape == (1, 1, 4)


# ------------------------------------------------------------------------------ dropout

def test_dropout_eval_equals_torch(rng):
    mod, ref = make_pair("lstm", "numpy", num_layers=3, dropout=0.5, bidirectional=True)
    mod.eval()
    ref.eval()
    x = torch.tensor(rng.standard_normal((T, B, I)), requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    (a, _), (b, _) = mod(x), ref(x2)
    torch.testing.assert_close(a, b, **SAME_ARITHMETIC)
    a.sum().backward()
    b.sum().backward()
    assert_close(x.grad, x2.grad, "float64", "grad", "dinput", table=TORCH_TOLERANCES)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_dropout_train_is_torch_dropout_between_layers(kind, rng, cpu_backend):
    """Training output == single torch layers with F.dropout after all but the last, drawing
    from the same torch seed; gradients too."""
    L, p = 3, 0.3
    mod, ref = make_pair(kind, cpu_backend, num_layers=L, dropout=p, bidirectional=True)
    _, theirs, extra = KINDS[kind]
    layers = []
    for l in range(L):
        m = theirs(I if l == 0 else 2 * H, H, bidirectional=True, dtype=torch.float64, **extra)
        m.load_state_dict({k.replace(f"_l{l}", "_l0"): v for k, v in ref.state_dict().items()
                           if f"_l{l}" in k})
        layers.append(m)
    x = torch.tensor(rng.standard_normal((T, B, I)))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.manual_seed(99)
    a, _ = mod(xa)
    torch.manual_seed(99)
    b = xb
    for l, m in enumerate(layers):
        b, _ = m(b)
        if l < L - 1:
            b = F.dropout(b, p, training=True)
    tol = dict(dtype="float64", table=TORCH_TOLERANCES)
    assert_close(a, b, kind="forward", what="output", **tol)
    a.sum().backward()
    b.sum().backward()
    assert_close(xa.grad, xb.grad, kind="grad", what="dinput", **tol)
    assert_close(mod.weight_ih_l0.grad, layers[0].weight_ih_l0.grad, kind="grad",
                 what="dweight_ih_l0", **tol)


def test_dropout_train_behaviour(rng):
    mod, _ = make_pair("gru", "numpy", num_layers=2, dropout=0.5)
    x = torch.tensor(rng.standard_normal((T, B, I)))
    torch.manual_seed(1)
    a, _ = mod(x)
    torch.manual_seed(1)
    a2, _ = mod(x)
    torch.manual_seed(2)
    c, _ = mod(x)
    torch.testing.assert_close(a, a2, rtol=0, atol=0)           # reproducible under a seed
    assert not torch.allclose(a, c)                             # and random across seeds
    mod.eval()
    e, _ = mod(x)
    assert not torch.allclose(a, e)                             # no dropout in eval mode
    # p = 1 zeroes the first layer's output: the top layer runs on zeros.
    full, _ = make_pair("gru", "numpy", num_layers=2, dropout=1.0)
    top = torch.nn.GRU(H, H, dtype=torch.float64)
    top.load_state_dict({k.replace("_l1", "_l0"): v for k, v in full.state_dict().items()
                         if "_l1" in k})
    torch.testing.assert_close(full(x)[0], top(torch.zeros(T, B, H, dtype=torch.float64))[0],
                               **SAME_ARITHMETIC)


def test_dropout_warning_and_errors():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        frt.LSTM(3, 4, dropout=0.5)
    with pytest.raises(ValueError, match=r"dropout: expected a probability in \[0, 1\]"):
        frt.GRU(3, 4, num_layers=2, dropout=1.5)


# -------------------------------------------------------------------- autograd details

def test_no_grad_and_inference_mode(rng):
    mod, ref = make_pair("lstm", "numpy", num_layers=2)
    x = torch.tensor(rng.standard_normal((T, B, I)))
    with torch.no_grad():
        a, (h, c) = mod(x)
    assert a.grad_fn is None and not a.requires_grad
    with torch.inference_mode():
        b, _ = mod(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, ref(x)[0], **SAME_ARITHMETIC)


def test_inplace_changes_before_backward_are_refused(rng):
    mod, _ = make_pair("gru", "numpy")
    x = torch.tensor(rng.standard_normal((T, B, I)), requires_grad=True)
    out, _ = mod(x)
    out.mul_(2)                                  # the tape reads this memory
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()
    out, _ = mod(x)
    with torch.no_grad():
        mod.weight_hh_l0.add_(1.0)               # an optimiser step before backward
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_retain_graph_and_second_backward(rng):
    mod, _ = make_pair("lstm", "numpy")
    x = torch.tensor(rng.standard_normal((T, B, I)), requires_grad=True)
    out, _ = mod(x)
    out.sum().backward(retain_graph=True)
    g1 = x.grad.clone()
    out.sum().backward()
    torch.testing.assert_close(x.grad, 2 * g1, **SAME_ARITHMETIC)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        out.sum().backward()


def test_double_backward_is_refused(rng):
    mod, _ = make_pair("rnn_tanh", "numpy")
    x = torch.tensor(rng.standard_normal((T, B, I)), requires_grad=True)
    out, _ = mod(x)
    (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|double backward|does not require"):
        gx.sum().backward()


def test_only_needed_gradients(rng):
    """Input without requires_grad, frozen first layer: no gradients where none are asked."""
    mod, ref = make_pair("gru", "numpy", num_layers=2)
    for p in (mod.weight_ih_l0, mod.weight_hh_l0, mod.bias_ih_l0, mod.bias_hh_l0):
        p.requires_grad_(False)
    x = torch.tensor(rng.standard_normal((T, B, I)))
    out, _ = mod(x)
    out.sum().backward()
    ref(x)[0].sum().backward()
    assert mod.weight_ih_l0.grad is None and x.grad is None
    assert_close(mod.weight_hh_l1.grad, ref.weight_hh_l1.grad, "float64", "grad",
                 "dweight_hh_l1", table=TORCH_TOLERANCES)


def test_bias_grads_do_not_alias(rng):
    mod, _ = make_pair("lstm", "numpy")
    mod(torch.tensor(rng.standard_normal((T, B, I))))[0].sum().backward()
    assert mod.bias_ih_l0.grad.data_ptr() != mod.bias_hh_l0.grad.data_ptr()
    torch.testing.assert_close(mod.bias_ih_l0.grad, mod.bias_hh_l0.grad, rtol=0, atol=0)


# ------------------------------------------------------------------------------- errors

def test_errors():
    with pytest.raises(ValueError, match="proj_size: has to be smaller than hidden_size"):
        frt.LSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match="proj_size: only LSTM has a projection"):
        frt.GRU(3, 4, proj_size=2)
    with pytest.raises(ValueError, match="nonlinearity: expected 'tanh' or 'relu'"):
        frt.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="hidden_size: expected a positive int"):
        frt.GRU(3, 0)
    with pytest.raises(TypeError, match="batch_first: expected a bool"):
        frt.GRU(3, 4, batch_first=1)
    with pytest.raises(ValueError, match="backend: unknown backend 'fortran'"):
        frt.GRU(3, 4, backend="fortran")
    # the exception types of torch.nn for the same mistakes, fastrnn's messages
    m = frt.LSTM(3, 4, num_layers=2, dtype=torch.float64, backend="numpy")
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"hx: expected a tuple \(h_0, c_0\) for LSTM"):
        m(x, torch.zeros(2, 2, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"hx\[0\] \(h_0\): expected shape \(2, 2, 4\)"):
        m(x, (torch.zeros(1, 2, 4, dtype=torch.float64), torch.zeros(2, 2, 4,
                                                                      dtype=torch.float64)))
    with pytest.raises(RuntimeError, match="hx\\[1\\] \\(c_0\\): expected a torch.float64"):
        m(x, (torch.zeros(2, 2, 4, dtype=torch.float64), torch.zeros(2, 2, 4)))
    with pytest.raises(ValueError, match="input: dtype torch.float32 does not match"):
        m(x.float())
    with pytest.raises(RuntimeError, match="input: expected 3 features"):
        m(torch.randn(5, 2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="input: expected a 3-d"):
        m(torch.randn(5, dtype=torch.float64))
    with pytest.raises(TypeError, match="input: expected a tensor or a PackedSequence"):
        m(x.numpy())
    with pytest.raises(ValueError, match="backend: 'cupy' cannot compute on cpu tensors"):
        frt.GRU(3, 4, backend="cupy")(torch.randn(5, 2, 3))


def test_import_fastrnn_does_not_import_torch():
    code = "import sys, fastrnn; fastrnn.forward; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_warnings_in_training_step(rng):
    """Read-only outputs of the tape reach torch without a 'not writable' warning."""
    mod, _ = make_pair("lstm", "numpy", num_layers=2, bidirectional=True)
    x = torch.tensor(rng.standard_normal((T, B, I)), requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, (h, c) = mod(x)
        (out.sum() + h.sum() + c.sum()).backward()
    assert np.isfinite(x.grad.numpy()).all()


# ------------------------------------------------------------------------------ CUDA

def _require_cuda():
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device here")
    require_backend("cupy")


@pytest.mark.gpu
@pytest.mark.parametrize("kind", list(KINDS))
def test_cuda_module_matches_torch(kind):
    """CUDA tensors go through DLPack to the cupy backend and back, gradients included."""
    _require_cuda()
    mod, ref = make_pair(kind, "auto", num_layers=2, bidirectional=True)
    mod, ref = mod.cuda(), ref.cuda()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64).cuda()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    pa = pack_padded_sequence(xa, torch.tensor(LENGTHS), enforce_sorted=False)
    pb = pack_padded_sequence(xb, torch.tensor(LENGTHS), enforce_sorted=False)
    (oa, _), (ob, _) = mod(pa), ref(pb)
    oa, ob = pad_packed_sequence(oa)[0], pad_packed_sequence(ob)[0]
    assert oa.is_cuda
    w = torch.randn(oa.shape, generator=gen, dtype=torch.float64).cuda()
    (oa * w).sum().backward()
    (ob * w).sum().backward()
    tol = dict(dtype="float64", table=TORCH_TOLERANCES)
    assert_close(oa, ob, kind="forward", what="output", **tol)
    assert_close(xa.grad, xb.grad, kind="grad", what="dinput", **tol)
    for (n, pr), pm in zip(ref.named_parameters(), mod.parameters()):
        assert_close(pm.grad, pr.grad, kind="grad", what=n, **tol)


@pytest.mark.gpu
@pytest.mark.parametrize("steps", [30, 200])
@pytest.mark.parametrize("amp", ["float16", "bfloat16"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cuda_autocast_runs_in_the_autocast_dtype(kind, amp, steps):
    """Under torch.autocast("cuda"), as torch.nn's RNNs: inputs, weights and outputs in the
    autocast dtype (16-bit storage, float32 arithmetic on the cupy backend), gradients
    reaching the float32 parameters in float32. Against the float64 reference on the same
    rounded values, with the 16-bit tolerances, over 30 and 200 steps."""
    _require_cuda()
    from fastrnn.core.tolerances import TOLERANCES
    dtype = getattr(torch, amp)
    gen = torch.Generator().manual_seed(11)
    mod, ref = make_pair(kind, "auto", dtype=torch.float32, num_layers=2)
    mod = mod.cuda()
    ref.load_state_dict({k: v.to(dtype).double() for k, v in mod.state_dict().items()})
    ref = ref.double()
    x = torch.randn(steps, B, I, generator=gen)
    w = torch.randn(steps, B, H, generator=gen, dtype=torch.float64)
    xc = x.cuda().requires_grad_()
    with torch.autocast("cuda", dtype=dtype):
        out, _ = mod(xc)
    assert out.dtype == dtype, f"output {out.dtype} under autocast({amp})"
    (out.double() * w.cuda()).sum().backward()
    assert mod.weight_hh_l0.grad.dtype == torch.float32
    x64 = x.to(dtype).double().requires_grad_()
    out64, _ = ref(x64)
    (out64 * w).sum().backward()
    tol = TOLERANCES[amp]
    assert_close(out.double().cpu(), out64.detach(), amp, "forward", f"{kind} output")
    assert_close(xc.grad.double().cpu(), x64.grad, amp, "grad", f"{kind} dinput")
    for (n, pr), pm in zip(ref.named_parameters(), mod.parameters()):
        assert_close(pm.grad.double().cpu(), pr.grad, amp, "grad", f"{kind} {n}")
    assert tol["forward"] > 0


@pytest.mark.gpu
def test_cuda_follows_torchs_tf32_switch(monkeypatch):
    """fastrnn.torch on CUDA lets TF32 in exactly where torch.nn's cuDNN RNNs would."""
    _require_cuda()
    from fastrnn.interop import torch_function
    seen = []
    real = torch_function._forward

    def spy(*args, **kwargs):
        seen.append(kwargs.get("tf32"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch_function, "_forward", spy)
    mod = frt.LSTM(I, H).cuda()
    x = torch.randn(T, B, I).cuda()
    before = torch.backends.cudnn.allow_tf32
    try:
        for allowed in (True, False):
            torch.backends.cudnn.allow_tf32 = allowed
            mod(x)
            assert seen[-1] is allowed
    finally:
        torch.backends.cudnn.allow_tf32 = before
