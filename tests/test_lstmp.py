"""The projected LSTM (cell ``lstmp``, PyTorch's ``LSTM(proj_size=P)``) with P != H.

The rest of the suite runs lstmp with P = H (the shared problem builder's default); here h
is narrower than c, so a width mixed up anywhere fails: every fast backend against the
reference, the Stepper, stacks, the conversions, and fastrnn.torch.LSTM(proj_size) against
torch.nn.LSTM(proj_size) — outputs, (h_n, c_n) and every gradient in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastrnn
import fastrnn.torch as frt
from assertions import assert_close
from conftest import record_error, to_backend
from fastrnn.core.arrays import to_numpy
from fastrnn.core.tolerances import GRADCHECK, SAME_ARITHMETIC
from fastrnn.tools.problems import random_problem

T, B, I, H, P = 6, 4, 3, 7, 3
MODES = {"plain": (False, False), "lengths": (True, False), "reverse": (False, True),
         "lengths+reverse": (True, True)}


def _problem(rng, dtype, lengths, states=True):
    return random_problem(rng, "lstmp", T, B, I, H, dtype, lengths=lengths, states=states,
                          proj_size=P)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", list(MODES))
def test_fast_backend_matches_reference(backend, rng, mode, dtype):
    use_lengths, reverse = MODES[mode]
    p = _problem(rng, dtype, use_lengths)
    assert p.h0.shape == (B, P) and p.c0.shape == (B, H) and p.params["Wr"].shape == (H, P)
    runs = {}
    for name in ("numpy", backend):
        res = fastrnn.forward("lstmp", p.x, p.params, p.h0, p.c0, lengths=p.lengths,
                              reverse=reverse, backend=name)
        runs[name] = res, fastrnn.backward(res.tape, *p.upstream)
    (r0, g0), (r1, g1) = runs["numpy"], runs[backend]
    assert r1.h.shape == (T, B, P) and r1.h_n.shape == (B, P) and r1.c_n.shape == (B, H)
    pairs = [("h", r1.h, r0.h, "forward"), ("h_n", r1.h_n, r0.h_n, "forward"),
             ("c_n", r1.c_n, r0.c_n, "forward"), ("dx", g1.dx, g0.dx, "grad"),
             ("dh0", g1.dh0, g0.dh0, "grad"), ("dc0", g1.dc0, g0.dc0, "grad")]
    pairs += [(f"d{k}", g1.params[k], g0.params[k], "grad") for k in g0.params]
    assert set(g1.params) == {"W", "U", "b", "Wr"}
    for what, a, b, kind in pairs:
        err = assert_close(to_numpy(a), b, dtype, kind, f"lstmp {mode} {what}")
        record_error(f"{backend} vs reference (lstmp, P != H) {dtype} {kind}", err)


def test_stepper_and_prepared_weights(any_backend, rng):
    p = _problem(rng, "float64", False)
    ref = fastrnn.forward("lstmp", p.x, p.params, p.h0, p.c0, backend="numpy")
    w = fastrnn.prepare("lstmp", p.params, backend=any_backend)
    x, h0, c0 = (to_backend(any_backend, a) for a in (p.x, p.h0, p.c0))   # where w is
    st = fastrnn.Stepper("lstmp", w, batch_size=B, h0=h0, c0=c0)
    steps = np.stack([to_numpy(st(x[t])) for t in range(T)])
    assert_close(steps, ref.h, "float64", "forward", "steps")
    assert_close(st.c, ref.c_n, "float64", "forward", "c")
    assert_close(fastrnn.forward("lstmp", x, w, h0, c0).h, ref.h, "float64", "forward",
                 "prepared")


def test_layer_and_stack(rng):
    layer = fastrnn.LSTM(I, H, proj_size=P, dtype="float64", seed=4)
    assert layer.cell.name == "lstmp" and layer.params["U"].shape == (P, 4 * H)
    x = rng.standard_normal((T, B, I))
    assert layer(x).h.shape == (T, B, P)
    params = fastrnn.init_stack_params("lstmp", I, H, 2, bidirectional=True, dtype="float64",
                                       proj_size=P)
    assert params[1][0]["W"].shape == (2 * P, 4 * H)
    c0 = rng.standard_normal((4, B, H))
    res = fastrnn.stack_forward("lstmp", x, params, c0=c0)
    assert res.h.shape == (T, B, 2 * P) and res.h_n.shape == (4, B, P)
    assert res.c_n.shape == (4, B, H)
    g = fastrnn.stack_backward(res, dc_n=np.ones((4, B, H)))
    assert g.dc0.shape == (4, B, H) and g.dh0.shape == (4, B, P)


def test_errors(rng):
    p = _problem(rng, "float64", False)
    with pytest.raises(ValueError, match=r"c0: expected shape \(4, 7\)"):
        fastrnn.forward("lstmp", p.x, p.params, p.h0, np.zeros((B, P)))
    with pytest.raises(ValueError, match=r"h0: expected shape \(4, 3\)"):
        fastrnn.forward("lstmp", p.x, p.params, np.zeros((B, H)))
    with pytest.raises(ValueError, match=r"params\['Wr'\]: expected shape \(7, 3\)"):
        fastrnn.forward("lstmp", p.x, dict(p.params, Wr=np.zeros((P, H))))
    with pytest.raises(ValueError, match=r"params: cell 'lstmp' needs W, U, b, Wr; missing Wr"):
        fastrnn.forward("lstmp", p.x, {k: v for k, v in p.params.items() if k != "Wr"})
    res = fastrnn.forward("lstmp", p.x, p.params, p.h0, p.c0)
    with pytest.raises(ValueError, match=r"dc_n: expected shape \(4, 7\)"):
        fastrnn.backward(res.tape, dc_n=np.zeros((B, P)))


# ---------------------------------------------------------------------------- conversions

def test_conversions_round_trip_and_compute_torchs_function(rng):
    torch.manual_seed(1)
    module = torch.nn.LSTM(I, H, proj_size=P, num_layers=2, bidirectional=True,
                           dtype=torch.float64)
    for layer in range(2):
        for reverse in (False, True):
            cw = fastrnn.convert.from_torch(module, layer=layer, reverse=reverse)
            assert cw.cell == "lstmp" and cw.params["Wr"].shape == (H, P)
            sd = fastrnn.convert.to_torch(*cw, layer=layer, reverse=reverse)
            back = fastrnn.convert.from_torch(sd, "lstmp", layer=layer, reverse=reverse)
            for k in cw.params:
                assert np.array_equal(back.params[k], cw.params[k]), k
    x = rng.standard_normal((T, B, I))
    one = torch.nn.LSTM(I, H, proj_size=P, dtype=torch.float64)
    cell, params = fastrnn.convert.from_torch(one)
    with torch.no_grad():
        out, (h_n, c_n) = one(torch.from_numpy(x))
    res = fastrnn.forward(cell, x, params, backend="numpy")
    assert_close(res.h, out.numpy(), "float64", "forward", "h")
    assert_close(res.c_n, c_n[0].numpy(), "float64", "forward", "c_n")
    fresh = torch.nn.LSTM(I, H, proj_size=P, dtype=torch.float64)
    fastrnn.convert.to_torch(cell, params, fresh)
    assert torch.equal(fresh.weight_hr_l0, one.weight_hr_l0)
    with pytest.raises(ValueError, match="proj_size=2"):
        fastrnn.convert.to_torch(cell, params, torch.nn.LSTM(I, H, proj_size=2))


# ------------------------------------------------------------------------ fastrnn.torch

def _pair(backend, **kw):
    torch.manual_seed(3)
    ref = torch.nn.LSTM(I, H, proj_size=P, dtype=torch.float64, **kw)
    mod = frt.LSTM(I, H, proj_size=P, dtype=torch.float64, backend=backend, **kw)
    mod.load_state_dict(ref.state_dict())
    return mod, ref


@pytest.mark.parametrize("layout", ["time_major", "batch_first", "packed", "unbatched"])
@pytest.mark.parametrize("config", [dict(num_layers=1), dict(num_layers=2, bidirectional=True),
                                    dict(num_layers=2, bias=False)],
                         ids=["one", "two_bi", "two_nobias"])
def test_torch_module_equals_torch_nn(cpu_backend, layout, config):
    kw = dict(config, batch_first=layout == "batch_first")
    mod, ref = _pair(cpu_backend, **kw)
    assert [n for n, _ in mod.named_parameters()] == [n for n, _ in ref.named_parameters()]
    LD = kw["num_layers"] * (2 if kw.get("bidirectional") else 1)
    gen = torch.Generator().manual_seed(5)
    shape = {"batch_first": (B, T, I), "unbatched": (T, I)}.get(layout, (T, B, I))
    sb = () if layout == "unbatched" else (B,)
    leaves = [torch.randn(shape, generator=gen, dtype=torch.float64),
              torch.randn((LD,) + sb + (P,), generator=gen, dtype=torch.float64),
              torch.randn((LD,) + sb + (H,), generator=gen, dtype=torch.float64)]
    results = []
    for module in (mod, ref):
        xs = [t.clone().requires_grad_() for t in leaves]
        inp = xs[0]
        if layout == "packed":
            inp = pack_padded_sequence(inp, torch.tensor([4, T, 2, 5]), enforce_sorted=False)
        out, (h_n, c_n) = module(inp, (xs[1], xs[2]))
        if layout == "packed":
            out = pad_packed_sequence(out)[0]
        assert out.shape[-1] == P * (2 if kw.get("bidirectional") else 1)
        assert h_n.shape[-1] == P and c_n.shape[-1] == H
        (out.sin().sum() + h_n.cos().sum() + (c_n * c_n).sum()).backward()
        results.append([out, h_n, c_n] + [t.grad for t in xs]
                       + [p.grad for p in module.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **SAME_ARITHMETIC)


def test_torch_module_gradcheck(cpu_backend):
    mod, _ = _pair(cpu_backend, num_layers=2)
    names = [n for n, _ in mod.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in mod.parameters()]
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(3, 2, I, generator=gen, dtype=torch.float64, requires_grad=True)

    def f(x, *ps):
        out, (h_n, c_n) = torch.func.functional_call(mod, dict(zip(names, ps)), (x,))
        return out, h_n, c_n
    assert torch.autograd.gradcheck(f, [x] + params, **GRADCHECK)
