"""fastrnn.torch.RNNCell / GRUCell / LSTMCell against their torch.nn twins.

Same weights (through load_state_dict), same inputs, same upstream gradients: the new
state(s) and every gradient (input, hx or (h, c), the four parameters) must equal
torch.nn's in float64 elementwise to SAME_ARITHMETIC (one step of the same equations), and
in float32 within TORCH_TOLERANCES; batched and unbatched, hx given and None, bias=False;
a decoder loop of cell calls forward and backward through the whole loop; gradcheck;
constructor, names, init and repr; the weight cache (prepared once per version of the
parameters); torch.nn's own error samples (module_db) and a few more mistakes.

"""

import copy
import io

import pytest
import torch
from torch import nn

import fastrnn.interop.torch_function as torch_function
import fastrnn.torch as frt
from assertions import assert_close
from conftest import require_backend
from fastrnn.backends import get_backend
from fastrnn.core.tolerances import GRADCHECK, SAME_ARITHMETIC, TORCH_TOLERANCES

# name -> (fastrnn.torch class, torch.nn class, extra constructor kwargs)
KINDS = {"rnn_tanh": (frt.RNNCell, nn.RNNCell, {"nonlinearity": "tanh"}),
         "rnn_relu": (frt.RNNCell, nn.RNNCell, {"nonlinearity": "relu"}),
         "gru": (frt.GRUCell, nn.GRUCell, {}),
         "lstm": (frt.LSTMCell, nn.LSTMCell, {})}
TWINS = {nn.RNNCell: frt.RNNCell, nn.GRUCell: frt.GRUCell, nn.LSTMCell: frt.LSTMCell}
B, I, H = 3, 4, 5
F64 = torch.float64


def make_pair(kind, backend="numpy", seed=0, dtype=F64, **kw):
    """(fastrnn cell, torch.nn cell) with the torch cell's weights loaded."""
    ours, theirs, extra = KINDS[kind]
    torch.manual_seed(seed)
    ref = theirs(I, H, dtype=dtype, **extra, **kw)
    mod = ours(I, H, dtype=dtype, backend=backend, **extra, **kw)
    mod.load_state_dict(ref.state_dict())
    return mod, ref


def n_states(kind):
    return 2 if kind == "lstm" else 1


def step(cell, kind, x, states):
    """One call; returns the new states as a tuple ((h,) or (h, c))."""
    hx = (tuple(states) if kind == "lstm" else states[0]) if states else None
    out = cell(x, hx)
    return tuple(out) if kind == "lstm" else (out,)


def probe(cell, kind, x):
    """One call with fixed non-zero states, so that every parameter shapes the result."""
    gen = torch.Generator().manual_seed(99)
    return step(cell, kind, x, random_states(kind, x.shape[0], gen, x.dtype))


def random_states(kind, batch, gen, dtype=F64):
    shape = (batch, H) if batch else (H,)
    return [torch.randn(shape, generator=gen, dtype=dtype) * 0.5 for _ in range(n_states(kind))]


def same(a, b, what=""):
    """float64 elementwise agreement of two routes to the same arithmetic."""
    assert a is not None and b is not None, what
    torch.testing.assert_close(a, b, **SAME_ARITHMETIC, msg=lambda m: f"{what}: {m}")


def leaves(tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def forward_backward(cell, kind, x, states, weights):
    """Forward one step and backward a weighted sum of its outputs: (outputs, grads)."""
    outs = step(cell, kind, x, states)
    sum((o * w).sum() for o, w in zip(outs, weights)).backward()
    grads = [x.grad] + [s.grad for s in states] + [p.grad for p in cell.parameters()]
    return [o.detach() for o in outs], grads


# ----------------------------------------------------------------- against torch.nn

@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_cell_matches_torch(kind, batched, with_hx, bias, cpu_backend):
    mod, ref = make_pair(kind, cpu_backend, bias=bias)
    gen = torch.Generator().manual_seed(list(KINDS).index(kind) * 8 + 4 * batched
                                        + 2 * with_hx + bias)
    x = torch.randn((B, I) if batched else (I,), generator=gen, dtype=F64)
    states = random_states(kind, B if batched else 0, gen) if with_hx else []
    weights = [torch.randn((B, H) if batched else (H,), generator=gen, dtype=F64)
               for _ in range(n_states(kind))]
    xa, *sa = leaves([x] + states)
    xb, *sb = leaves([x] + states)
    outs, grads = forward_backward(mod, kind, xa, sa, weights)
    outs_ref, grads_ref = forward_backward(ref, kind, xb, sb, weights)
    for name, a, b in zip(["h'", "c'"], outs, outs_ref):
        assert a.shape == b.shape == ((B, H) if batched else (H,)), name
        same(a, b, name)
    names = (["dinput"] + ["dh", "dc"][:len(states)]
             + [f"d{n}" for n, _ in ref.named_parameters()])
    assert len(grads) == len(grads_ref) == len(names) == 1 + len(states) + (4 if bias else 2)
    for name, a, b in zip(names, grads, grads_ref):
        same(a, b, name)


@pytest.mark.parametrize("kind", list(KINDS))
def test_float32_matches_torch(kind, cpu_backend):
    mod, ref = make_pair(kind, cpu_backend, dtype=torch.float32)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(B, I, generator=gen)
    states = random_states(kind, B, gen, torch.float32)
    weights = [torch.randn(B, H, generator=gen) for _ in range(n_states(kind))]
    xa, *sa = leaves([x] + states)
    xb, *sb = leaves([x] + states)
    outs, grads = forward_backward(mod, kind, xa, sa, weights)
    outs_ref, grads_ref = forward_backward(ref, kind, xb, sb, weights)
    tol = dict(dtype="float32", table=TORCH_TOLERANCES)
    for a, b in zip(outs, outs_ref):
        assert a.dtype == torch.float32
        assert_close(a, b, kind="forward", what="state", **tol)
    for a, b in zip(grads, grads_ref):
        assert a.dtype == torch.float32
        assert_close(a, b, kind="grad", what="gradient", **tol)


def _decode(cell, kind, xs, states, steps):
    """A decoder loop: the input of each step also reads the previous output, so the
    gradient flows through inputs and states; returns every step's states."""
    outs = []
    for t in range(steps):
        inp = xs[t] if t == 0 else xs[t] + torch.tanh(outs[-1][0][..., :1])
        st = step(cell, kind, inp, states)
        states = list(st)
        outs.append(st)
    return outs


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_decoder_loop_matches_torch(kind, batched, cpu_backend):
    """Forward and backward through a loop of cell calls equal torch's loop."""
    T = 6
    mod, ref = make_pair(kind, cpu_backend)
    gen = torch.Generator().manual_seed(7)
    xs = torch.randn((T, B, I) if batched else (T, I), generator=gen, dtype=F64)
    states = random_states(kind, B if batched else 0, gen)
    up = torch.randn((T, n_states(kind)) + ((B, H) if batched else (H,)), generator=gen,
                     dtype=F64)
    results = []
    for cell in (mod, ref):
        x, *st = leaves([xs] + states)
        outs = _decode(cell, kind, x, st, T)
        sum((o * up[t, k]).sum() for t, os in enumerate(outs) for k, o in enumerate(os)
            ).backward()
        results.append(([o.detach() for os in outs for o in os],
                        [x.grad] + [s.grad for s in st] + [p.grad for p in cell.parameters()]))
    (outs, grads), (outs_ref, grads_ref) = results
    for a, b in zip(outs, outs_ref):
        same(a, b, "state")
    for name, a, b in zip(["dinput", "dh0", "dc0"][:1 + len(states)]
                          + [n for n, _ in ref.named_parameters()], grads, grads_ref):
        same(a, b, name)


@pytest.mark.parametrize("kind", list(KINDS))
def test_loop_of_cells_equals_fastrnn_layer(kind, cpu_backend):
    """A loop of cell calls is the fastrnn.torch layer over the whole sequence."""
    T = 5
    mod, _ = make_pair(kind, cpu_backend)
    layer_cls = {"rnn_tanh": frt.RNN, "rnn_relu": frt.RNN, "gru": frt.GRU, "lstm": frt.LSTM}
    extra = KINDS[kind][2]
    layer = layer_cls[kind](I, H, dtype=F64, backend=cpu_backend, **extra)
    layer.load_state_dict({f"{k}_l0": v for k, v in mod.state_dict().items()})
    gen = torch.Generator().manual_seed(8)
    xs = torch.randn(T, B, I, generator=gen, dtype=F64)
    states = random_states(kind, B, gen)
    up = torch.randn(T, B, H, generator=gen, dtype=F64)
    xa, *sa = leaves([xs] + states)
    st, hs = sa, []
    for t in range(T):
        st = list(step(mod, kind, xa[t], st))
        hs.append(st[0])
    (torch.stack(hs) * up).sum().backward()
    xb, *sb = leaves([xs] + states)
    hx = tuple(s.unsqueeze(0) for s in sb) if kind == "lstm" else sb[0].unsqueeze(0)
    out, _ = layer(xb, hx)
    (out * up).sum().backward()
    same(torch.stack(hs).detach(), out.detach(), "h")
    same(xa.grad, xb.grad, "dinput")
    for a, b in zip(sa, sb):
        same(a.grad, b.grad, "dstate")
    for (n, p), q in zip(mod.named_parameters(), layer.parameters()):
        same(p.grad, q.grad, n)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_strided_and_expanded_inputs(kind, cpu_backend):
    """Non-contiguous input, transposed and zero-stride (expanded) states."""
    mod, ref = make_pair(kind, cpu_backend)
    gen = torch.Generator().manual_seed(9)
    wide = torch.randn(B, 2 * I, generator=gen, dtype=F64)
    hT = torch.randn(H, B, generator=gen, dtype=F64)
    row = torch.randn(1, H, generator=gen, dtype=F64)
    res = []
    for cell in (mod, ref):
        w, t, r = leaves([wide, hT, row])
        states = [t.t(), r.expand(B, H)][:n_states(kind)]
        outs = step(cell, kind, w[:, ::2], states)
        sum(o.sum() * (k + 1) for k, o in enumerate(outs)).backward()
        res.append([o.detach() for o in outs] + [w.grad, t.grad]
                   + ([r.grad] if kind == "lstm" else []))
    for a, b in zip(*res):
        same(a, b)


def test_only_needed_gradients(cpu_backend):
    """Input without requires_grad and frozen weights: only the state gets a gradient."""
    mod, ref = make_pair("lstm", cpu_backend)
    for p in mod.parameters():
        p.requires_grad_(False)
    x = torch.randn(B, I, dtype=F64)
    ha, ca = leaves([torch.randn(B, H, dtype=F64), torch.randn(B, H, dtype=F64)])
    hb, cb = leaves([ha, ca])
    h, c = mod(x, (ha, ca))
    (h.sum() + 2 * c.sum()).backward()
    h2, c2 = ref(x, (hb, cb))
    (h2.sum() + 2 * c2.sum()).backward()
    assert x.grad is None and all(p.grad is None for p in mod.parameters())
    same(ha.grad, hb.grad, "dh")
    same(ca.grad, cb.grad, "dc")


def test_no_grad_and_inference_mode(cpu_backend):
    mod, ref = make_pair("gru", cpu_backend)
    x = torch.randn(B, I, dtype=F64)
    with torch.no_grad():
        a = mod(x)
    assert a.grad_fn is None and not a.requires_grad
    with torch.inference_mode():
        b = mod(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with torch.no_grad():
        same(a, ref(x))


def test_inplace_change_before_backward_is_refused():
    mod, _ = make_pair("gru")
    x = torch.randn(B, I, dtype=F64, requires_grad=True)
    h = mod(x)
    with torch.no_grad():
        mod.weight_hh.add_(1.0)                  # an optimiser step before backward
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        h.sum().backward()


# ---------------------------------------------------------------------------- gradcheck

@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("config", ["batched_hx", "unbatched_no_hx", "no_bias"])
def test_gradcheck(kind, config, cpu_backend):
    ours, _, extra = KINDS[kind]
    torch.manual_seed(11)
    i, h = 3, 2                                           # every element is perturbed: small
    mod = ours(i, h, bias=config != "no_bias", dtype=F64, backend=cpu_backend, **extra)
    gen = torch.Generator().manual_seed(11)
    batched = config != "unbatched_no_hx"
    x = torch.randn((2, i) if batched else (i,), generator=gen, dtype=F64)
    states = ([torch.randn(2, h, generator=gen, dtype=F64) for _ in range(n_states(kind))]
              if batched else [])
    names = [n for n, _ in mod.named_parameters()]
    params = [p.detach().clone() for p in mod.parameters()]

    def f(x, *rest):
        st, ps = rest[:len(states)], rest[len(states):]
        hx = (tuple(st) if kind == "lstm" else st[0]) if st else None
        out = torch.func.functional_call(mod, dict(zip(names, ps)), (x, hx))
        return tuple(out) if kind == "lstm" else out

    inputs = [t.requires_grad_() for t in [x] + states + params]
    assert torch.autograd.gradcheck(f, inputs, **GRADCHECK)


# --------------------------------------------------------------- constructor and init

@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("bias", [True, False])
def test_parameters_init_and_state_dicts_are_torch_s(kind, bias):
    ours, theirs, extra = KINDS[kind]
    torch.manual_seed(42)
    ref = theirs(I, H, bias=bias, dtype=F64, **extra)
    torch.manual_seed(42)
    mod = ours(I, H, bias=bias, dtype=F64, **extra)
    assert [(n, p.shape) for n, p in mod.named_parameters()] == \
        [(n, p.shape) for n, p in ref.named_parameters()]
    for (n, p), q in zip(ref.named_parameters(), mod.parameters()):
        assert isinstance(q, nn.Parameter) and q.requires_grad and q.dtype == F64, n
        assert torch.equal(q, p), n                           # the same draws under one seed
    assert (mod.bias_ih is None) == (ref.bias_ih is None) == (not bias)
    assert list(mod.state_dict()) == list(ref.state_dict())
    for attr in ("input_size", "hidden_size", "bias") + (("nonlinearity",) if extra else ()):
        assert getattr(mod, attr) == getattr(ref, attr), attr
    torch.manual_seed(5)
    mod.reset_parameters()
    torch.manual_seed(5)
    ref.reset_parameters()
    for n, t in ref.state_dict().items():
        assert torch.equal(mod.state_dict()[n], t), n
    # load_state_dict both ways, strict
    other = ours(I, H, bias=bias, dtype=F64, **extra)
    other.load_state_dict(ref.state_dict())
    back = theirs(I, H, bias=bias, dtype=F64, **extra)
    back.load_state_dict(other.state_dict())
    for n, t in ref.state_dict().items():
        assert torch.equal(other.state_dict()[n], t) and torch.equal(back.state_dict()[n], t)
    with pytest.raises(RuntimeError, match="Missing key|Unexpected key"):
        ours(I, H, bias=not bias, dtype=F64, **extra).load_state_dict(ref.state_dict())


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("bias", [True, False])
def test_repr_is_torch_s(kind, bias):
    ours, theirs, extra = KINDS[kind]
    assert repr(ours(I, H, bias=bias, **extra)) == repr(theirs(I, H, bias=bias, **extra))
    r = repr(ours(I, H, bias=bias, backend="numpy", **extra))
    assert r == repr(theirs(I, H, bias=bias, **extra))[:-1] + ", backend='numpy')"


def test_factory_kwargs_and_defaults():
    m = frt.LSTMCell(I, H)
    assert m.weight_ih.dtype == torch.get_default_dtype() and m.weight_ih.device.type == "cpu"
    assert m.backend == "auto"
    m = frt.GRUCell(I, H, dtype=torch.float32, device="cpu")
    assert m.weight_hh.dtype == torch.float32
    assert frt.RNNCell(I, H).nonlinearity == "tanh"
    # positional order of torch.nn.RNNCell: (input_size, hidden_size, bias, nonlinearity)
    m = frt.RNNCell(I, H, False, "relu")
    assert m.bias is False and m.nonlinearity == "relu" and m.bias_ih is None
    assert isinstance(m, frt.RNNCellBase) and isinstance(m, nn.Module)


def test_dtype_conversion_before_first_call():
    m = frt.GRUCell(I, H, dtype=torch.float32, backend="numpy")
    ref = nn.GRUCell(I, H, dtype=torch.float32)
    ref.load_state_dict(m.state_dict())
    m.double()
    ref.double()
    x = torch.randn(B, I, dtype=F64)
    out = m(x)
    assert out.dtype == F64
    same(out, ref(x))


def test_dtype_conversion_after_a_call_is_seen():
    m = frt.RNNCell(I, H, dtype=torch.float32, backend="numpy")
    ref = nn.RNNCell(I, H, dtype=torch.float32)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(B, I)
    with torch.no_grad():
        m(x)
        m.double()
        ref.double()
        same(m(x.double()), ref(x.double()))


# ----------------------------------------------------------------------- weight cache

@pytest.fixture
def count_prepare(monkeypatch):
    """Counts the calls of fastrnn's prepare made by the torch cells' weight cache."""
    calls = []
    real = torch_function.prepare

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(torch_function, "prepare", counting)
    return calls


def reads_weights_in_place(backend_name) -> bool:
    """Whether the backend runs a cell step on the parameters' own memory (the numba
    backend's one-step path): then the cells prepare nothing and keep no cache."""
    return get_backend(backend_name).strided_params


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_backend_reading_weights_in_place_prepares_nothing(kind, count_prepare):
    """numba: every step reads the parameters as they are now, with or without gradients,
    whatever changed them (optimiser, .data in place, load_state_dict)."""
    require_backend("numba")
    mod, ref = make_pair(kind, "numba")
    x = torch.randn(B, I, dtype=F64)
    with torch.no_grad():
        for how in ("start", "in place", ".data in place", "load_state_dict"):
            if how == "in place":
                for m in (mod, ref):
                    m.weight_hh.mul_(0.5)
            elif how == ".data in place":
                for m in (mod, ref):
                    m.weight_ih.data.mul_(-1.0)
            elif how == "load_state_dict":
                ref.bias_hh.add_(0.25)
                mod.load_state_dict(ref.state_dict())
            same(probe(mod, kind, x)[0], probe(ref, kind, x)[0], how)
    xs = torch.randn(5, B, I, dtype=F64, requires_grad=True)
    outs = _decode(mod, kind, xs, [], 5)
    sum(o.sum() for os in outs for o in os).backward()
    assert count_prepare == []


@pytest.mark.parametrize("kind", list(KINDS))
def test_unchanged_weights_are_prepared_once(kind, count_prepare):
    """A backend that reads prepared weights (the reference here; cupy on a GPU)."""
    cpu_backend = "numpy"
    assert not reads_weights_in_place(cpu_backend)
    mod, ref = make_pair(kind, cpu_backend)
    x = torch.randn(B, I, dtype=F64)
    with torch.no_grad():                                # inference: counters decide
        outs = [probe(mod, kind, x) for _ in range(4)]
        states = []
        for _ in range(5):                               # a decoder loop
            states = list(step(mod, kind, x, states))
    assert len(count_prepare) == 1
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=0, atol=0)
    xs = torch.randn(5, B, I, dtype=F64, requires_grad=True)
    outs = _decode(mod, kind, xs, [], 5)                 # training: values compared, equal
    sum(o.sum() for os in outs for o in os).backward()
    assert len(count_prepare) == 1
    with torch.no_grad():                                # a change in place: one more
        mod.weight_hh.mul_(0.5)
        ref.weight_hh.mul_(0.5)
        probe(mod, kind, x)
        same(probe(mod, kind, x)[0], probe(ref, kind, x)[0])
    assert len(count_prepare) == 2
    mod.flatten_parameters()                             # cleared: prepared again
    with torch.no_grad():
        probe(mod, kind, x)
    assert len(count_prepare) == 3


@pytest.mark.parametrize("kind", list(KINDS))
def test_optimizer_steps_are_seen(kind, cpu_backend):
    """Training steps with SGD: the cells stay equal to torch's, in training and inference."""
    mod, ref = make_pair(kind, cpu_backend)
    opts = [torch.optim.SGD(m.parameters(), lr=0.5, momentum=0.9) for m in (mod, ref)]
    gen = torch.Generator().manual_seed(13)
    xs = torch.randn(4, B, I, generator=gen, dtype=F64)
    for _ in range(3):
        with torch.no_grad():                            # inference path between steps
            same(probe(mod, kind, xs[0])[0], probe(ref, kind, xs[0])[0], "no_grad")
        for cell, opt in zip((mod, ref), opts):
            opt.zero_grad()
            outs = _decode(cell, kind, xs, [], 4)
            sum((o ** 2).sum() for os in outs for o in os).backward()
            opt.step()
        for (n, p), q in zip(ref.named_parameters(), mod.parameters()):
            same(q, p, n)
    with torch.no_grad():
        same(probe(mod, kind, xs[1])[0], probe(ref, kind, xs[1])[0], "after steps")


@pytest.mark.parametrize("kind", ["rnn_relu", "lstm"])
def test_replaced_parameter_and_load_state_dict_are_seen(kind, cpu_backend):
    mod, ref = make_pair(kind, cpu_backend)
    x = torch.randn(B, I, dtype=F64)
    with torch.no_grad():
        probe(mod, kind, x)
        new = torch.randn_like(ref.weight_hh)
        param = nn.Parameter(new.clone())                # another Parameter ...
        while param._version < mod.weight_hh._version:   # ... at the same version
            param.mul_(1.0)
        assert param._version == mod.weight_hh._version
        mod.weight_hh = param
        ref.weight_hh = nn.Parameter(new.clone())
        same(probe(mod, kind, x)[0], probe(ref, kind, x)[0], "replaced")
        _, other = make_pair(kind, cpu_backend, seed=1)
        mod.load_state_dict(other.state_dict())
        same(probe(mod, kind, x)[0], probe(other, kind, x)[0], "load_state_dict")
    # torch.func.functional_call swaps in other tensors for one call only
    sd = {n: t * 2 for n, t in other.state_dict().items()}

    hx = probe(other, kind, x)                            # any non-zero states

    def swapped(cell):
        out = torch.func.functional_call(cell, sd, (x, hx if kind == "lstm" else hx[0]))
        return out[0] if kind == "lstm" else out

    with torch.no_grad():
        same(swapped(mod), swapped(other), "functional_call")
        same(probe(mod, kind, x)[0], probe(other, kind, x)[0], "after functional_call")


@pytest.mark.parametrize("how", ["data_inplace", "data_assign"])
def test_data_changes_follow_the_documented_contract(how, cpu_backend):
    """The contract: without gradients the cache trusts torch's version counters and the
    parameters' storage, so a change made in place through ``.data`` (which bumps no
    counter) is not seen until flatten_parameters(), while a new ``.data`` (new storage)
    is; while gradients flow to the weights every change is seen at once. A backend that
    reads the weights in place (numba) sees every change at once."""
    mod, ref = make_pair("gru", cpu_backend)
    x = torch.randn(B, I, dtype=F64)

    def change(m, value):
        if how == "data_inplace":
            m.weight_ih.data.copy_(value)
        else:
            m.weight_ih.data = value.clone()

    with torch.no_grad():
        before = mod(x)
        new = torch.randn_like(ref.weight_ih)
        change(mod, new)
        change(ref, new)
        if how == "data_inplace" and not reads_weights_in_place(cpu_backend):
            torch.testing.assert_close(mod(x), before, rtol=0, atol=0)   # stale, documented
        else:
            same(mod(x), ref(x), "a new .data")
        mod.flatten_parameters()
        same(mod(x), ref(x), "after flatten_parameters")
    newer = torch.randn_like(ref.weight_ih)
    change(mod, newer)
    change(ref, newer)
    out = mod(x)                                          # gradients flow: values compared
    assert out.requires_grad
    same(out.detach(), ref(x).detach(), "with gradients")


@pytest.mark.parametrize("kind", list(KINDS))
def test_deepcopy(kind, cpu_backend):
    mod, ref = make_pair(kind, cpu_backend)
    x = torch.randn(B, I, dtype=F64)
    with torch.no_grad():
        a = probe(mod, kind, x)                        # fills the cache
        dup = copy.deepcopy(mod)
        for o, p in zip(probe(dup, kind, x), a):
            torch.testing.assert_close(o, p, rtol=0, atol=0)
        dup.weight_hh.mul_(-1.0)                          # the copy's own weights
        ref2 = copy.deepcopy(ref)
        ref2.weight_hh.mul_(-1.0)
        same(probe(dup, kind, x)[0], probe(ref2, kind, x)[0], "copy")
        same(probe(mod, kind, x)[0], a[0], "original")


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_pickle_with_torch_save(kind, cpu_backend):
    mod, _ = make_pair(kind, cpu_backend)
    x = torch.randn(B, I, dtype=F64)
    a = probe(mod, kind, x)
    buf = io.BytesIO()
    torch.save(mod, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert type(loaded) is type(mod) and loaded.backend == cpu_backend
    for o, p in zip(probe(loaded, kind, x), a):
        torch.testing.assert_close(o, p, rtol=0, atol=0)


def test_state_dict_through_torch_save(cpu_backend):
    """The usual way to save: a state_dict through torch.save, weights_only."""
    mod, ref = make_pair("lstm", cpu_backend)
    buf = io.BytesIO()
    torch.save(mod.state_dict(), buf)
    buf.seek(0)
    other = frt.LSTMCell(I, H, dtype=F64, backend=cpu_backend)
    other.load_state_dict(torch.load(buf))
    x = torch.randn(B, I, dtype=F64)
    same(other(x)[0], ref(x)[0])


def test_cell_built_in_inference_mode():
    with torch.inference_mode():
        mod = frt.GRUCell(I, H, dtype=F64)
        ref = nn.GRUCell(I, H, dtype=F64)
        ref.load_state_dict(mod.state_dict())
        x = torch.randn(B, I, dtype=F64)
        same(mod(x), ref(x))


def test_parametrized_weight_matches_torch(cpu_backend):
    """weight_norm makes weight_hh a fresh tensor at every access: still torch's numbers."""
    from torch.nn.utils.parametrizations import weight_norm
    mod, ref = make_pair("gru", cpu_backend)
    weight_norm(mod, "weight_hh")
    weight_norm(ref, "weight_hh")
    x = torch.randn(B, I, dtype=F64)
    a, b = mod(x), ref(x)
    same(a, b)
    a.sum().backward()
    b.sum().backward()
    for (n, p), q in zip(ref.named_parameters(), mod.parameters()):
        same(q.grad, p.grad, n)


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("torch_cls", list(TWINS), ids=lambda c: c.__name__)
def test_torch_module_db_error_inputs(torch_cls):
    """Every case of torch's module_error_inputs_torch_nn_RNN_GRU_Cell / _LSTMCell raises
    the exception type torch.nn raises (messages may differ), at the same stage."""
    pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest")
    from torch.testing._internal import common_modules as cm
    info = next(m for m in cm.module_db if m.module_cls is torch_cls)
    samples = info.module_error_inputs_func(info, device="cpu", dtype=F64,
                                            requires_grad=False, training=True)
    assert samples, "torch lists no error inputs"
    ours = TWINS[torch_cls]
    wrong = []
    for k, sample in enumerate(samples):
        ctor = sample.module_error_input.constructor_input
        fwd = sample.module_error_input.forward_input
        expected = sample.error_type
        with pytest.raises(expected):                     # torch itself, as a check
            m = torch_cls(*ctor.args, **ctor.kwargs, dtype=F64)
            if sample.error_on == cm.ModuleErrorEnum.FORWARD_ERROR:
                m(*fwd.args, **fwd.kwargs)
        stage, got = "construction", None
        try:
            m = ours(*ctor.args, **ctor.kwargs, dtype=F64, backend="numpy")
            if sample.error_on == cm.ModuleErrorEnum.FORWARD_ERROR:
                stage = "forward"
                m(*fwd.args, **fwd.kwargs)
        except Exception as exc:                          # noqa: BLE001 - compared below
            got = exc
        want_stage = ("forward" if sample.error_on == cm.ModuleErrorEnum.FORWARD_ERROR
                      else "construction")
        if type(got) is expected and stage == want_stage:
            continue
        wrong.append((k, sample.error_regex, f"{type(got).__name__} at {stage}: {got}"))
    assert not wrong, f"{ours.__name__}: exception types differ from torch.nn's: {wrong}"


@pytest.mark.parametrize("torch_cls", list(TWINS), ids=lambda c: c.__name__)
def test_torch_module_db_samples(torch_cls):
    """torch's module_db samples (unbatched input) give torch.nn's numbers."""
    pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest")
    from torch.testing._internal import common_modules as cm
    info = next(m for m in cm.module_db if m.module_cls is torch_cls)
    samples = info.module_inputs_func(info, device="cpu", dtype=F64, requires_grad=True,
                                      training=True)
    assert samples
    for sample in samples:
        ctor, fwd = sample.constructor_input, sample.forward_input
        torch.manual_seed(0)
        ref = torch_cls(*ctor.args, **ctor.kwargs, dtype=F64)
        torch.manual_seed(0)
        mod = TWINS[torch_cls](*ctor.args, **ctor.kwargs, dtype=F64, backend="numpy")
        for (n, p), q in zip(ref.named_parameters(), mod.parameters()):
            assert torch.equal(p, q), n
        a, b = mod(*fwd.args, **fwd.kwargs), ref(*fwd.args, **fwd.kwargs)
        a, b = (a, b) if isinstance(a, tuple) else ((a,), (b,))
        for p, q in zip(a, b):
            same(p, q, f"{torch_cls.__name__}{ctor.args}{ctor.kwargs}")


def _x(*shape, dtype=F64):
    return torch.randn(*shape, dtype=dtype)


def _st(kind, *shape, dtype=F64):
    return (_x(*shape, dtype=dtype), _x(*shape, dtype=dtype)) if kind == "lstm" \
        else _x(*shape, dtype=dtype)


# name -> call(cell, kind): a mistake that torch.nn and fastrnn must refuse alike
MISTAKES = {
    "input float32 (dtype mismatch)": lambda m, k: m(_x(B, I, dtype=torch.float32)),
    "input int64": lambda m, k: m(_x(B, I).long()),
    "input 3-d": lambda m, k: m(_x(1, B, I)),
    "input 0-d": lambda m, k: m(torch.tensor(1.0, dtype=F64)),
    "input wrong input_size": lambda m, k: m(_x(B, I + 1)),
    "unbatched input wrong input_size": lambda m, k: m(_x(I + 1)),
    "hx float32 (dtype mismatch)": lambda m, k: m(_x(B, I), _st(k, B, H, dtype=torch.float32)),
    "hx 3-d": lambda m, k: m(_x(B, I), _st(k, 1, B, H)),
    "hx 0-d": lambda m, k: m(_x(B, I), (torch.tensor(1.0, dtype=F64),) * 2 if k == "lstm"
                             else torch.tensor(1.0, dtype=F64)),
    "hx wrong hidden_size": lambda m, k: m(_x(B, I), _st(k, B, H + 1)),
    "hx wrong batch": lambda m, k: m(_x(B, I), _st(k, B + 1, H)),
    "hx unbatched for batched input": lambda m, k: m(_x(B, I), _st(k, H)),
    "hx batched for unbatched input": lambda m, k: m(_x(I), _st(k, 1, H)),
}
LSTM_MISTAKES = {
    "lstm hx of three tensors": lambda m, k: m(_x(B, I), (_x(B, H),) * 3),
    "lstm hx of one tensor": lambda m, k: m(_x(B, I), (_x(B, H),)),
    "lstm c wrong hidden_size": lambda m, k: m(_x(B, I), (_x(B, H), _x(B, H + 1))),
    "lstm c unbatched, h batched": lambda m, k: m(_x(B, I), (_x(B, H), _x(H))),
    "lstm c 3-d": lambda m, k: m(_x(B, I), (_x(B, H), _x(1, B, H))),
    "lstm hx a plain tensor": lambda m, k: m(_x(B, I), _x(B, H)),
}
KNOWN_ERROR_DIVERGENCES: dict = {}


def _error_case(kind, name, call):
    reason = KNOWN_ERROR_DIVERGENCES.get(name)
    marks = pytest.mark.xfail(strict=True, reason=reason) if reason else ()
    return pytest.param(kind, name, call, id=f"{kind}-{name}", marks=marks)


ERROR_CASES = ([_error_case(k, n, c) for k in KINDS for n, c in MISTAKES.items()]
               + [_error_case("lstm", n, c) for n, c in LSTM_MISTAKES.items()])


@pytest.mark.parametrize("kind,name,call", ERROR_CASES)
def test_mistakes_raise_torch_s_exception_type(kind, name, call):
    mod, ref = make_pair(kind)
    with pytest.raises(Exception) as theirs:
        call(ref, kind)
    with pytest.raises(Exception) as ours:
        call(mod, kind)
    assert ours.type is theirs.type, (f"{name}: torch.nn raises {theirs.type.__name__} "
                                      f"({theirs.value}), fastrnn {ours.type.__name__} "
                                      f"({ours.value})")


@pytest.mark.parametrize("kind", list(KINDS))
def test_error_messages(kind):
    """fastrnn's own messages: they name the argument and what was expected."""
    mod, _ = make_pair(kind)
    with pytest.raises(RuntimeError, match="input: dtype torch.float32 does not match"):
        mod(_x(B, I, dtype=torch.float32))
    with pytest.raises(ValueError, match="Expected input to be 1D or 2D, got 3D"):
        mod(_x(2, B, I))
    with pytest.raises(RuntimeError, match=f"input: expected {I} features"):
        mod(_x(B, I + 1))
    first = "hx\\[0\\]" if kind == "lstm" else "hidden"
    with pytest.raises(RuntimeError, match=f"{first}: expected shape \\({B}, {H}\\)"):
        mod(_x(B, I), _st(kind, B + 1, H))
    with pytest.raises(ValueError, match=f"Expected {first} to be 1D or 2D, got 3D"):
        mod(_x(B, I), _st(kind, 1, B, H))
    with pytest.raises(TypeError, match="input: expected a tensor, got ndarray"):
        mod(_x(B, I).numpy())


def test_constructor_errors():
    with pytest.raises(ValueError, match="nonlinearity: expected 'tanh' or 'relu'"):
        frt.RNNCell(I, H, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="hidden_size: expected a positive int"):
        frt.GRUCell(I, 0)
    with pytest.raises(TypeError, match="input_size: expected an int"):
        frt.LSTMCell(4.0, H)
    with pytest.raises(ValueError, match="backend: unknown backend 'fortran'"):
        frt.LSTMCell(I, H, backend="fortran")
    with pytest.raises(ValueError, match="backend: 'cupy' cannot compute on cpu tensors"):
        frt.GRUCell(I, H, backend="cupy")(torch.randn(B, I))
    with pytest.raises(RuntimeError):                     # torch's own: integer parameters
        frt.GRUCell(I, H, dtype=torch.int64)
