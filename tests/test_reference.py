"""The reference backend proven: central finite differences and PyTorch as an oracle.

* Finite differences (float64, every entry of every input perturbed) check every gradient
  of every cell, with and without lengths, reverse and initial states, against the scalar
  loss ``L = sum(dh*h) + sum(dh_n*h_n) + sum(dc_n*c_n)`` with random upstream gradients,
  so all three upstream paths are exercised at once. The readout likewise.
* ``torch.nn.RNN/LSTM/GRU`` (packed sequences for lengths, the ``_reverse`` direction of a
  bidirectional layer for reverse, batch_first) give an independent forward and autograd
  backward. ``gru_reset_before`` has no PyTorch module; its oracle is its equation written
  in torch and differentiated by autograd, one sequence at a time.

The worst relative errors measured are printed in the run's terminal summary.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fastrnn
from fastrnn.core.cells import CELLS
from conftest import make_upstream, record_error
from fastrnn.core.tolerances import FD_EPS, FD_TOLERANCE, TORCH_TOLERANCES, rel_err
from assertions import assert_close


def _record(kind: str, err: float) -> float:
    return record_error(f"reference vs {kind}", err)


# ------------------------------------------------------------------ finite differences

FD_T, FD_B, FD_I, FD_H = 4, 3, 2, 3
FD_P = 2                                # lstmp's projection: h narrower than c
FD_LENGTHS = np.array([2, 4, 1])        # unsorted, one full, one of length 1
MODES = {"plain": (False, False), "lengths": (True, False), "reverse": (False, True),
         "reverse+lengths": (True, True)}


def _fd_cases():
    for cell, spec in CELLS.items():
        for mode in MODES:
            for states in (False, True):
                names = ["x", "h0"] + (["c0"] if spec.has_cell_state else [])
                names += list(spec.param_names)
                for name in names:
                    tag = "states" if states else "nostates"
                    yield pytest.param(cell, mode, states, name,
                                       id=f"{cell}-{mode}-{tag}-d{name}")


def _fd_problem(rng, cell, states):
    spec = CELLS[cell]
    T, B, I, H = FD_T, FD_B, FD_I, FD_H
    P = _fd_width(spec)
    inputs = {"x": rng.standard_normal((T, B, I))}
    inputs.update({k: rng.uniform(-1, 1, s)
                   for k, s in spec.param_shapes(I, H, P).items()})
    if states:
        inputs["h0"] = rng.standard_normal((B, P)) * 0.5
        if spec.has_cell_state:
            inputs["c0"] = rng.standard_normal((B, H)) * 0.5
    return inputs


def _fd_width(spec):
    """The width of h: FD_P for lstmp, FD_H otherwise."""
    return FD_P if spec.has_projection else FD_H


def _run(cell, inputs, lengths, reverse, training):
    spec = CELLS[cell]
    params = {k: inputs[k] for k in spec.param_names}
    return fastrnn.forward(cell, inputs["x"], params, inputs.get("h0"), inputs.get("c0"),
                           lengths=lengths, reverse=reverse, backend="numpy", training=training)


def _loss(res, dh, dh_n, dc_n):
    L = np.sum(dh * res.h) + np.sum(dh_n * res.h_n)
    if dc_n is not None:
        L += np.sum(dc_n * res.c_n)
    return L


@pytest.mark.parametrize("cell, mode, states, name", list(_fd_cases()))
def test_gradient_matches_finite_differences(rng, cell, mode, states, name):
    """d L / d(name) from backward equals central differences, entry by entry."""
    spec = CELLS[cell]
    use_lengths, reverse = MODES[mode]
    lengths = FD_LENGTHS if use_lengths else None
    inputs = _fd_problem(rng, cell, states)
    P = _fd_width(spec)
    dh, dh_n, _ = make_upstream(rng, cell, FD_T, FD_B, P)
    dc_n = rng.standard_normal((FD_B, FD_H)) if spec.has_cell_state else None

    res = _run(cell, inputs, lengths, reverse, training=True)
    grads = fastrnn.backward(res.tape, dh, dh_n, dc_n)
    analytic = {"x": grads.dx, "h0": grads.dh0, "c0": grads.dc0, **grads.params}[name]

    # Perturb a private copy; a state that was None is perturbed around zero.
    work = {k: v.copy() for k, v in inputs.items()}
    if name not in work:
        work[name] = np.zeros((FD_B, P if name == "h0" else FD_H))
    arr = work[name]
    base_active = res.h > 0          # rnn_relu: all evaluations must stay on one linear piece
    numeric = np.zeros_like(arr)
    for idx in np.ndindex(arr.shape):
        old = arr[idx]
        values = []
        for step in (+FD_EPS, -FD_EPS):
            arr[idx] = old + step
            r = _run(cell, work, lengths, reverse, training=False)
            if spec.nonlinearity == "relu":
                assert np.array_equal(r.h > 0, base_active), \
                    f"{name}{idx}: a ReLU pre-activation crossed 0 within eps; FD invalid here"
            values.append(_loss(r, dh, dh_n, dc_n))
        arr[idx] = old
        numeric[idx] = (values[0] - values[1]) / (2 * FD_EPS)

    assert analytic.shape == numeric.shape
    err = _record("finite differences", rel_err(analytic, numeric))
    assert err <= FD_TOLERANCE, f"d{name}: relative error {err:.3e} vs FD > {FD_TOLERANCE:.0e}"
    if use_lengths and name == "x":     # padded steps get exactly no gradient
        t = np.arange(FD_T)[:, None]
        assert np.all(analytic[t >= FD_LENGTHS[None, :]] == 0)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid", "linear"])
@pytest.mark.parametrize("name", ["h", "Wy", "by"])
def test_readout_gradient_matches_finite_differences(rng, activation, name):
    T, B, H, n_y = 3, 2, 3, 4
    inputs = {"h": rng.standard_normal((T, B, H)), "Wy": rng.standard_normal((H, n_y)),
              "by": rng.standard_normal(n_y)}
    dy = rng.standard_normal((T, B, n_y))
    y, rtape = fastrnn.readout(inputs["h"], inputs["Wy"], inputs["by"], activation,
                              backend="numpy")
    analytic = dict(zip(["h", "Wy", "by"], fastrnn.readout_backward(rtape, dy)))[name]

    work = {k: v.copy() for k, v in inputs.items()}
    arr = work[name]
    numeric = np.zeros_like(arr)
    for idx in np.ndindex(arr.shape):
        old = arr[idx]
        values = []
        for step in (+FD_EPS, -FD_EPS):
            arr[idx] = old + step
            yy, _ = fastrnn.readout(work["h"], work["Wy"], work["by"], activation,
                                    backend="numpy")
            values.append(np.sum(dy * yy))
        arr[idx] = old
        numeric[idx] = (values[0] - values[1]) / (2 * FD_EPS)
    err = _record("finite differences (readout)", rel_err(analytic, numeric))
    assert err <= FD_TOLERANCE, f"d{name}: relative error {err:.3e} vs FD > {FD_TOLERANCE:.0e}"


# ------------------------------------------------------------------ PyTorch oracle

TORCH_CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]
TORCH_MODES = {"plain": (False, False), "packed": (True, False),
               "bidirectional": (False, True), "bidirectional+packed": (True, True)}


def _torch_module(cell, I, H, bidirectional, batch_first, dtype):
    kw = dict(batch_first=batch_first, bidirectional=bidirectional)
    if cell == "lstm":
        mod = torch.nn.LSTM(I, H, **kw)
    elif cell == "gru":
        mod = torch.nn.GRU(I, H, **kw)
    else:
        mod = torch.nn.RNN(I, H, nonlinearity=CELLS[cell].nonlinearity, **kw)
    return mod.to(getattr(torch, dtype))


def _params_from_torch(mod, cell, suffix):
    """fastrnn params of one direction: W = weight_ih.T, U = weight_hh.T, b = b_ih + b_hh
    (gru: b = b_ih + [b_hh_r, b_hh_z, 0] and bn = b_hh_n)."""
    get = lambda n: getattr(mod, f"{n}_l0{suffix}").detach().numpy()  # noqa: E731
    H = mod.hidden_size
    b_ih, b_hh = get("bias_ih"), get("bias_hh")
    p = {"W": get("weight_ih").T.copy(), "U": get("weight_hh").T.copy()}
    if cell == "gru":
        p["b"] = b_ih + np.concatenate([b_hh[:2 * H], np.zeros(H, b_hh.dtype)])
        p["bn"] = b_hh[2 * H:].copy()
    else:
        p["b"] = b_ih + b_hh
    return p


def _grads_from_torch(mod, cell, suffix):
    """Autograd gradients mapped onto fastrnn's params the same way, plus the gradient of
    b_hh's part that shares db (torch differentiates b_ih and b_hh separately)."""
    get = lambda n: getattr(mod, f"{n}_l0{suffix}").grad.numpy()  # noqa: E731
    H = mod.hidden_size
    g = {"W": get("weight_ih").T, "U": get("weight_hh").T, "b": get("bias_ih")}
    if cell == "gru":
        g["bn"] = get("bias_hh")[2 * H:]
        shared = get("bias_hh")[:2 * H]
    else:
        shared = get("bias_hh")
    return g, shared


@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("states", [False, True], ids=["nostates", "states"])
@pytest.mark.parametrize("mode", list(TORCH_MODES))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_matches_torch(rng, cell, dtype, mode, states, batch_first):
    """Forward and autograd gradients of torch.nn.{RNN,LSTM,GRU} equal the reference's."""
    packed, bidirectional = TORCH_MODES[mode]
    T, B, I, H = (int(v) for v in rng.integers(1, 6, size=4))
    D = 2 if bidirectional else 1
    torch.manual_seed(int(rng.integers(2**31)))
    mod = _torch_module(cell, I, H, bidirectional, batch_first, dtype)
    tdt = getattr(torch, dtype)
    has_c = cell == "lstm"

    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
    lengths = rng.integers(1, T + 1, size=B) if packed else None
    if packed:
        lengths[rng.integers(B)] = T      # torch needs one full-length sequence to pad to T
    h0 = (rng.standard_normal((D, B, H)) * 0.5).astype(dtype) if states else None
    c0 = (rng.standard_normal((D, B, H)) * 0.5).astype(dtype) if states and has_c else None
    seq_shape = (B, T, D * H) if batch_first else (T, B, D * H)
    dh = rng.standard_normal(seq_shape).astype(dtype)
    dh_n = rng.standard_normal((D, B, H)).astype(dtype)
    dc_n = rng.standard_normal((D, B, H)).astype(dtype) if has_c else None

    # torch: forward, the same scalar loss, autograd
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0, requires_grad=True) if states else None
    c0t = torch.tensor(c0, requires_grad=True) if states and has_c else None
    hx = (h0t, c0t) if has_c and states else h0t
    inp = xt
    if packed:
        inp = torch.nn.utils.rnn.pack_padded_sequence(
            xt, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False)
    out, hn = mod(inp, hx)
    cn = None
    if has_c:
        hn, cn = hn
    if packed:
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first,
                                                        total_length=T)
    loss = (torch.tensor(dh, dtype=tdt) * out).sum() + (torch.tensor(dh_n) * hn).sum()
    if has_c:
        loss = loss + (torch.tensor(dc_n) * cn).sum()
    loss.backward()

    def check(a, b, kind, what):
        err = assert_close(a, b, dtype, kind, what, table=TORCH_TOLERANCES)
        _record(f"torch {dtype} {kind}", err)

    # fastrnn: one call per direction, the reverse one with reverse=True
    dx = np.zeros_like(x)
    for d in range(D):
        suffix = "_reverse" if d else ""
        params = _params_from_torch(mod, cell, suffix)
        res = fastrnn.forward(cell, x, params, None if h0 is None else h0[d],
                              None if c0 is None else c0[d], lengths=lengths,
                              reverse=bool(d), batch_first=batch_first, backend="numpy")
        cols = slice(d * H, (d + 1) * H)
        check(res.h, out.detach()[..., cols], "forward", f"h (direction {d})")
        check(res.h_n, hn.detach()[d], "forward", f"h_n (direction {d})")
        if has_c:
            check(res.c_n, cn.detach()[d], "forward", f"c_n (direction {d})")
        g = fastrnn.backward(res.tape, dh[..., cols], dh_n[d], None if dc_n is None else dc_n[d])
        dx += g.dx
        if states:
            check(g.dh0, h0t.grad[d], "grad", f"dh0 (direction {d})")
            if has_c:
                check(g.dc0, c0t.grad[d], "grad", f"dc0 (direction {d})")
        tgrads, shared = _grads_from_torch(mod, cell, suffix)
        for k, v in tgrads.items():
            check(g.params[k], v, "grad", f"d{k} (direction {d})")
        check(g.params["b"][:shared.shape[0]], shared, "grad", f"db vs bias_hh.grad ({d})")
    check(dx, xt.grad, "grad", "dx")


def _torch_gru_reset_before(x, W, U, b, h0, lengths, reverse):
    """The gru_reset_before equations in torch, one sequence at a time (autograd-able).

    r = σ(xW_r + b_r + hU_r); z = σ(xW_z + b_z + hU_z); n = tanh(xW_n + b_n + (r*h)U_n);
    h' = (1-z)*n + z*h. Sequence b runs over its first lengths[b] steps (backwards when
    reverse), outputs sit at their original time positions, zeros elsewhere.
    """
    T, B, _ = x.shape
    H = U.shape[0]
    outs, finals = [], []
    for bi in range(B):
        L = int(lengths[bi])
        order = range(L - 1, -1, -1) if reverse else range(L)
        h = h0[bi]
        hs = {}
        for t in order:
            a = x[t, bi] @ W + b
            r = torch.sigmoid(a[:H] + h @ U[:, :H])
            z = torch.sigmoid(a[H:2 * H] + h @ U[:, H:2 * H])
            n = torch.tanh(a[2 * H:] + (r * h) @ U[:, 2 * H:])
            h = (1 - z) * n + z * h
            hs[t] = h
        zero = torch.zeros(H, dtype=x.dtype)
        outs.append(torch.stack([hs.get(t, zero) for t in range(T)]))
        finals.append(h)
    return torch.stack(outs, dim=1), torch.stack(finals)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gru_reset_before_matches_torch_equations(rng, dtype, mode):
    """gru_reset_before has no torch module: its equations in torch + autograd are the oracle."""
    use_lengths, reverse = MODES[mode]
    T, B, I, H = 5, 3, 4, 3
    spec = CELLS["gru_reset_before"]
    params = {k: rng.uniform(-1, 1, s).astype(dtype) for k, s in spec.param_shapes(I, H).items()}
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = (rng.standard_normal((B, H)) * 0.5).astype(dtype)
    lengths = np.array([3, 5, 1]) if use_lengths else None
    dh, dh_n, _ = make_upstream(rng, "gru_reset_before", T, B, H, dtype)

    leaves = {k: torch.tensor(v, requires_grad=True)
              for k, v in dict(params, x=x, h0=h0).items()}
    out, hn = _torch_gru_reset_before(leaves["x"], leaves["W"], leaves["U"], leaves["b"],
                                      leaves["h0"], np.full(B, T) if lengths is None else lengths,
                                      reverse)
    ((torch.tensor(dh) * out).sum() + (torch.tensor(dh_n) * hn).sum()).backward()

    res = fastrnn.forward("gru_reset_before", x, params, h0, lengths=lengths, reverse=reverse,
                          backend="numpy")
    g = fastrnn.backward(res.tape, dh, dh_n)
    pairs = [("h", res.h, out, "forward"), ("h_n", res.h_n, hn, "forward"),
             ("dx", g.dx, leaves["x"].grad, "grad"), ("dh0", g.dh0, leaves["h0"].grad, "grad")]
    pairs += [(f"d{k}", g.params[k], leaves[k].grad, "grad") for k in spec.param_names]
    for what, a, ref, kind in pairs:
        err = assert_close(a, ref.detach(), dtype, kind, what, table=TORCH_TOLERANCES)
        _record(f"torch {dtype} {kind}", err)
