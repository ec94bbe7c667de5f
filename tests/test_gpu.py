"""GPU-specific checks of the cupy backend (marked ``gpu``; skipped, with the reason, where
CuPy or a CUDA device is missing).

Agreement with the reference for every cell, dtype, lengths, reverse and upstream gradient
is in test_backends.py, which runs on the cupy backend too. Here: results are CuPy arrays
on the device, user arrays are never written, 16-bit storage (also over T = 200 steps),
the kernels' float32 flush-to-zero, bitwise determinism, the padding of a batch never
leaks NaN into the GEMMs over all rows, grid-stride loops past one launch, a non-default
stream, the tape checksum of device arrays, one compilation per kernel, and agreement with
PyTorch's cuDNN RNNs on the same GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from conftest import make_problem, make_upstream, named_results, require_backend, widened
from fastrnn.core.tolerances import CUDA_FLOAT32_SIGMOID_ULPS, TOLERANCES, TORCH_TOLERANCES
from assertions import assert_close

pytestmark = pytest.mark.gpu

CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru", "gru_reset_before"]


@pytest.fixture(scope="module")
def cp():
    """The cupy module, once the cupy backend can run here (else the test is skipped)."""
    require_backend("cupy")
    import cupy
    return cupy


_results = named_results


def _run(cell, x, params, h0, c0, lens, reverse, dh, dh_n, dc_n, backend="cupy"):
    res = fastrnn.forward(cell, x, params, h0, c0, lengths=lens, reverse=reverse,
                          backend=backend)
    return res, fastrnn.backward(res.tape, dh, dh_n, dc_n)


def _to_device(cp, *arrays):
    return [None if a is None else (cp.asarray(a) if isinstance(a, np.ndarray) else
                                    {k: cp.asarray(v) for k, v in a.items()})
            for a in arrays]


@pytest.mark.parametrize("cell", CELLS)
def test_results_are_device_arrays_on_the_device_of_x(cp, rng, cell):
    x, params, h0, c0, lens = make_problem(rng, cell, 5, 3, 4, 6, "float32", lengths=True,
                                           states=True)
    dh, dh_n, dc_n = make_upstream(rng, cell, 5, 3, 6, "float32")
    xd, pd, h0d, c0d, dhd, dh_nd, dc_nd = _to_device(cp, x, params, h0, c0, dh, dh_n, dc_n)
    res = fastrnn.forward(cell, xd, pd, h0d, c0d, lengths=lens, backend="auto")
    assert res.tape.backend.name == "cupy", "backend='auto' must pick cupy for CuPy arrays"
    g = fastrnn.backward(res.tape, dhd, dh_nd, dc_nd)
    device = xd.device.id
    for name, a in _results(res, g).items():
        assert isinstance(a, cp.ndarray), f"{name}: {type(a).__name__}, not cupy.ndarray"
        assert a.device.id == device, f"{name} on device {a.device.id}, x on {device}"
        assert a.dtype == np.float32, f"{name}: dtype {a.dtype}"
    # NumPy inputs with backend="cupy" are copied to the device; results are CuPy arrays.
    res_np, g_np = _run(cell, x, params, h0, c0, lens, False, dh, dh_n, dc_n)
    for name, a in _results(res_np, g_np).items():
        assert isinstance(a, cp.ndarray), f"{name} from NumPy inputs: {type(a).__name__}"
    for name, a in _results(res, g).items():
        assert bool((a == _results(res_np, g_np)[name]).all()), f"{name} differs by input kind"


@pytest.mark.parametrize("cell", CELLS)
def test_user_arrays_are_never_written(cp, rng, cell):
    """States and carried gradients are updated in place inside the kernels: on copies."""
    x, params, h0, c0, lens = make_problem(rng, cell, 6, 4, 3, 5, "float64", lengths=True,
                                           states=True)
    dh, dh_n, dc_n = make_upstream(rng, cell, 6, 4, 5, "float64")
    dev = _to_device(cp, x, params, h0, c0, dh, dh_n, dc_n)
    before = [None if a is None else (a.copy() if not isinstance(a, dict) else
                                      {k: v.copy() for k, v in a.items()}) for a in dev]
    for training in (True, False):
        res = fastrnn.forward(cell, dev[0], dev[1], dev[2], dev[3], lengths=lens,
                              reverse=True, backend="cupy", training=training)
        if training:
            fastrnn.backward(res.tape, dev[4], dev[5], dev[6])
    for name, a, b in zip(("x", "params", "h0", "c0", "dh", "dh_n", "dc_n"), dev, before):
        if a is None:
            continue
        pairs = a.items() if isinstance(a, dict) else [("", a)]
        for k, v in pairs:
            ref = b[k] if isinstance(b, dict) else b
            assert bool((v == ref).all()), f"{name}{k} was modified"


@pytest.mark.parametrize("cell", CELLS)
def test_two_runs_are_bitwise_identical(cp, rng, cell):
    """No atomics: the same inputs give the same bits, gradients included."""
    x, params, h0, c0, lens = make_problem(rng, cell, 20, 64, 96, 256, "float32",
                                           lengths=True, states=True)
    dh, dh_n, dc_n = make_upstream(rng, cell, 20, 64, 256, "float32")
    args = _to_device(cp, x, params, h0, c0) + [lens, True] + _to_device(cp, dh, dh_n, dc_n)
    first = {k: v.get() for k, v in _results(*_run(cell, *args)).items()}
    for _ in range(2):
        again = _results(*_run(cell, *args))
        for name, a in again.items():
            assert np.array_equal(a.get(), first[name], equal_nan=True), f"{name} changed bits"


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_nan_in_padding_does_not_leak(cp, rng, cell, reverse):
    """dW and dx come from GEMMs over all T*B rows, padding included: a NaN that a caller
    left in padded x or dh must not reach any result (0 * NaN is NaN)."""
    T, B, I, H = 7, 5, 4, 6
    x, params, h0, c0, _ = make_problem(rng, cell, T, B, I, H, "float64", states=True)
    lens = np.array([T, 3, 1, 5, 2])
    dh, dh_n, dc_n = make_upstream(rng, cell, T, B, H, "float64")
    x_nan, dh_nan = x.copy(), dh.copy()
    for b, n in enumerate(lens):
        x[n:, b] = 0.0
        dh[n:, b] = 0.0
        x_nan[n:, b] = np.nan
        dh_nan[n:, b] = np.nan
    ref = _results(*_run(cell, x, params, h0, c0, lens, reverse, dh, dh_n, dc_n, "numpy"))
    got = _results(*_run(cell, *_to_device(cp, x_nan, params, h0, c0), lens, reverse,
                         *_to_device(cp, dh_nan, dh_n, dc_n)))
    for name, a in got.items():
        a = a.get()
        assert np.isfinite(a).all(), f"{name}: NaN from the padding leaked"
        assert_close(a, ref[name], "float64", "forward" if name in ("h", "h_n", "c_n")
                     else "grad", f"{cell} {name}")


def _tolerance_16(dtype: str):
    if dtype not in TOLERANCES:
        pytest.fail(f"fastrnn/core/tolerances.py has no TOLERANCES[{dtype!r}] entry (forward, "
                    f"grad) for the GPU's 16-bit storage")
    return TOLERANCES


def _storage_16(cp, dtype: str) -> np.dtype:
    """The NumPy dtype of 16-bit storage ``dtype``; skips where the cupy backend lacks it."""
    be = require_backend("cupy")
    if dtype == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 storage needs ml_dtypes")
        low = np.dtype(ml_dtypes.bfloat16)
    else:
        low = np.dtype(dtype)
    if low.name not in be.dtypes:
        pytest.skip(f"the cupy backend does not support {low.name} storage here (its dtypes: "
                    f"{', '.join(be.dtypes)}; bfloat16 needs CuPy >= 14 and ml_dtypes, this "
                    f"is CuPy {cp.__version__})")
    return low


def _check_16bit(cp, rng, cell, low, T):
    """One problem (B = 8, I = H = 64, lengths, reverse, initial states) in ``low`` storage
    against the float64 reference run on the same rounded inputs."""
    table = _tolerance_16(low.name)
    B, I, H = 8, 64, 64
    x, params, h0, c0, lens = make_problem(rng, cell, T, B, I, H, "float64", lengths=True,
                                           states=True)
    dh, dh_n, dc_n = make_upstream(rng, cell, T, B, H, "float64")
    rnd = widened(x, params, h0, c0, dh, dh_n, dc_n, dtype=low)
    up = widened(*rnd)
    ref = _results(*_run(cell, *up[:4], lens, True, *up[4:], backend="numpy"))
    got = _results(*_run(cell, *_to_device(cp, *rnd[:4]), lens, True,
                         *_to_device(cp, *rnd[4:])))
    for name, a in got.items():
        assert a.dtype == low, f"{name}: dtype {a.dtype}, expected {low}"
        kind = "forward" if name in ("h", "h_n", "c_n") else "grad"
        if kind == "grad" and cell == "rnn_relu":
            continue
        assert_close(a.get().astype(np.float64), ref[name], low.name, kind,
                     f"{cell} T={T} {name}", table=table)


@pytest.mark.parametrize("T", [30, 200])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("cell", CELLS)
def test_16bit_storage_matches_the_float64_reference(cp, rng, cell, dtype, T):
    """16-bit storage, float32 arithmetic: against the float64 reference run on the same
    rounded inputs, also over T = 200 steps (the state is rounded to 16 bits at every step;
    the intermediates x @ W, h @ U and the carried gradients stay float32). rnn_relu's
    gradients are left out: relu' jumps at 0, so a pre-activation within rounding of 0
    flips its mask, an O(1) change at that element whatever the precision (forward outputs
    are still compared)."""
    _check_16bit(cp, rng, cell, _storage_16(cp, dtype), T)


# ------------------------------------------------------- the kernels' float32 arithmetic

FLT_MIN = float(np.finfo(np.float32).tiny)


def sigmoid64(a):
    """1 / (1 + exp(-a)) in float64, without overflow for any a."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(a, dtype=np.float64)))


def sigmoid_ftz32(a):
    """The kernels' float32 sigmoid as a CPU model: float64 sigmoid, and exactly 0 where
    expf(-|a|) falls below FLT_MIN (-ftz=true flushes it), i.e. a < ln(FLT_MIN)."""
    a = np.asarray(a, dtype=np.float64)
    return np.where(a < np.log(FLT_MIN), 0.0, sigmoid64(a))


def flush32(a):
    """A float32 value as the kernels' arithmetic takes it: subnormals are 0."""
    a = np.asarray(a, dtype=np.float32)
    return np.where(np.abs(a) < FLT_MIN, np.float32(0), a)


def _gate_probe(cp, cell, bias, dtype):
    """h_n of one step (T = B = 1) whose every pre-activation but the bias is 0: gru with
    h0 = 1 and only the z block of b set gives h_n = z = sigmoid(b_z) exactly; rnn_tanh
    gives h_n = tanh(b)."""
    H = bias.size
    spec = fastrnn.get_cell(cell)
    params = {k: cp.zeros(s, dtype=dtype) for k, s in spec.param_shapes(1, H).items()}
    b = np.zeros(params["b"].shape, dtype=np.float64)
    if cell == "gru":
        b[H:2 * H] = bias
    else:
        b[:] = bias
    params["b"] = cp.asarray(b.astype(dtype))
    x = cp.ones((1, 1, 1), dtype=dtype)
    h0 = cp.ones((1, H), dtype=dtype) if cell == "gru" else None
    return fastrnn.forward(cell, x, params, h0, backend="cupy", training=False).h_n[0].get()


def test_float32_sigmoid_is_exactly_zero_below_ln_flt_min(cp):
    """sigmoid in float32 kernels: exact 0 below ln(FLT_MIN) ~ -87.34 (flush to zero), within
    a few ulps of float64 above; float64 kernels do not flush."""
    flushed = np.array([-1e4, -200.0, -110.0, -100.0, -90.0, -88.0, -87.6])
    kept = np.array([-87.0, -80.0, -50.0, -20.0, -5.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 5.0,
                     20.0, 90.0])
    z = np.concatenate([flushed, kept])
    got = _gate_probe(cp, "gru", z, "float32")
    want = sigmoid_ftz32(z.astype(np.float32))
    assert np.array_equal(got[:flushed.size], np.zeros(flushed.size, np.float32)), (
        f"sigmoid below ln(FLT_MIN) is not flushed to 0: {got[:flushed.size]}")
    assert (want[flushed.size:] >= FLT_MIN).all()
    spacing = np.spacing(want[flushed.size:].astype(np.float32)).astype(np.float64)
    ulps = np.abs(got[flushed.size:] - want[flushed.size:]) / spacing
    assert ulps.max() <= CUDA_FLOAT32_SIGMOID_ULPS, f"sigmoid off by {ulps.max()} ulps"
    got64 = _gate_probe(cp, "gru", flushed, "float64")
    want64 = sigmoid64(flushed)
    assert (got64[1:] > 0).all(), "float64 kernels flushed a sigmoid to 0"
    assert_close(got64, want64, "float64", "forward", "float64 sigmoid below ln(FLT_MIN)")


def test_float32_subnormal_preactivations_act_as_zero(cp):
    """tanh of a subnormal float32 pre-activation is 0 (the operand is flushed); of the
    smallest normals it is the value itself."""
    b = np.array([1e-39, -5e-40, 1e-45, FLT_MIN, -2 * FLT_MIN, 1e-30], dtype=np.float32)
    got = _gate_probe(cp, "rnn_tanh", b, "float32")
    assert np.array_equal(got, flush32(b)), f"tanh({b}) gave {got}, expected {flush32(b)}"


@pytest.mark.parametrize("cell", ["lstm", "gru_reset_before", "rnn_tanh"])
def test_sizes_beyond_one_launch(cp, rng, cell):
    """T*B*I past 65536 blocks of 256 threads: the grid-stride loops of gather_steps."""
    T, B, I, H = 64, 256, 1040, 16
    x, params, h0, c0, lens = make_problem(rng, cell, T, B, I, H, "float32", lengths=True)
    dh, dh_n, dc_n = make_upstream(rng, cell, T, B, H, "float32")
    assert T * B * I > (1 << 16) * 256
    ref = _results(*_run(cell, x, params, h0, c0, lens, True, dh, dh_n, dc_n, "numpy"))
    got = _results(*_run(cell, *_to_device(cp, x, params, h0, c0), lens, True,
                         *_to_device(cp, dh, dh_n, dc_n)))
    for name, a in got.items():
        assert_close(a, ref[name], "float32", "forward" if name in ("h", "h_n", "c_n")
                     else "grad", f"{cell} {name}")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_runs_on_the_current_stream(cp, rng, cell):
    """Kernels and GEMMs go to CuPy's current stream (fastrnn.torch sets torch's stream)."""
    x, params, h0, c0, lens = make_problem(rng, cell, 12, 16, 32, 64, "float32",
                                           lengths=True, states=True)
    dh, dh_n, dc_n = make_upstream(rng, cell, 12, 16, 64, "float32")
    args = _to_device(cp, x, params, h0, c0) + [lens, True] + _to_device(cp, dh, dh_n, dc_n)
    base = {k: v.get() for k, v in _results(*_run(cell, *args)).items()}
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        got = _results(*_run(cell, *args))
    stream.synchronize()
    for name, a in got.items():
        assert np.array_equal(a.get(), base[name]), f"{name} differs on another stream"


_SPIN = r"""
extern "C" __global__ void spin(long long cycles) {
    long long start = clock64();
    while (clock64() - start < cycles) { }
}
"""


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_work_is_queued_behind_the_current_stream(cp, rng, cell):
    """The kernels really go to the current stream: queued behind a half-second spin on a
    non-blocking stream, an inference forward has written nothing when its output is read
    from a third stream, and everything once that stream is synchronised.

    The output's memory is first NaN: a block of its size, filled and freed on the stream,
    which CuPy's stream-aware pool hands to the forward's first allocation of that size.
    """
    T, B, I, H = 12, 16, 32, 64
    x, params, h0, c0, _ = make_problem(rng, cell, T, B, I, H, "float32", states=True)
    args = _to_device(cp, x, params, h0, c0)
    base = fastrnn.forward(cell, *args, backend="cupy", training=False).h.get()
    spin = cp.RawKernel(_SPIN, "spin")
    clock_khz = cp.cuda.runtime.deviceGetAttribute(cp.cuda.runtime.cudaDevAttrClockRate,
                                                   cp.cuda.runtime.getDevice())
    stream, reader = cp.cuda.Stream(non_blocking=True), cp.cuda.Stream(non_blocking=True)
    with stream:
        poison = cp.full((T, B, H), cp.nan, dtype=cp.float32)
        del poison
        spin((1,), (1,), (np.int64(clock_khz * 500),))           # about 0.5 s
        res = fastrnn.forward(cell, *args, backend="cupy", training=False)
    early = cp.asnumpy(res.h, stream=reader)
    reader.synchronize()
    assert not stream.done, "the spin ended before the check; the test cannot tell"
    assert np.isnan(early).all(), "the forward did not wait behind the current stream's work"
    stream.synchronize()
    assert np.array_equal(res.h.get(), base)


def test_tape_checksum_sees_device_arrays_changed_in_place(cp, rng):
    x, params, h0, c0, _ = make_problem(rng, "lstm", 4, 3, 5, 6, "float32")
    xd, pd = _to_device(cp, x, params)
    res = fastrnn.forward("lstm", xd, pd, backend="cupy")
    pd["U"] += 1.0
    with pytest.raises(ValueError, match="changed in place"):
        fastrnn.backward(res.tape, dh_n=cp.ones((3, 6), dtype=cp.float32))


def test_each_kernel_is_compiled_once(cp, rng):
    from fastrnn.backends.cupy import nvrtc
    x, params, h0, c0, lens = make_problem(rng, "gru", 4, 3, 5, 6, "float32", lengths=True)
    args = _to_device(cp, x, params) + [None, None, lens, True, None, cp.ones((3, 6), "f4"),
                                        None]
    _run("gru", *args)
    modules = dict(nvrtc._modules)
    _run("gru", *args)
    assert nvrtc._modules == modules, "a second call compiled again"


# ------------------------------------------------------------------------------ cuDNN

TORCH_CELLS = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN", "rnn_relu": "RNN"}


@pytest.mark.parametrize("dtype", ["float64", "float32", "tf32"])
@pytest.mark.parametrize("cell", list(TORCH_CELLS))
def test_matches_cudnn_on_the_same_gpu(cp, rng, cell, dtype):
    """PyTorch's nn.LSTM / GRU / RNN through cuDNN, forward and every gradient, like with
    like: strict float32 on both sides (cuDNN's TF32 off: torch.backends.cudnn.flags resets
    allow_tf32 to True unless told, which the first GPU run tripped over), or TF32 allowed
    on both ("tf32": float32 storage, allow_tf32=True here)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch here has no CUDA (a CPU build, or no device it can use)")
    if not torch.backends.cudnn.is_available():
        pytest.skip("PyTorch here has no cuDNN")
    from fastrnn import convert
    tf32 = dtype == "tf32"
    dtype = "float32" if tf32 else dtype
    T, B, I, H = 25, 8, 12, 32
    x, params, h0, c0, _ = make_problem(rng, cell, T, B, I, H, dtype, states=True)
    dh, dh_n, dc_n = make_upstream(rng, cell, T, B, H, dtype)
    res = fastrnn.forward(cell, *_to_device(cp, x, params, h0, c0), backend="cupy",
                          allow_tf32=tf32)
    ours = _results(res, fastrnn.backward(res.tape, *_to_device(cp, dh, dh_n, dc_n)))

    kwargs = {"nonlinearity": cell[4:]} if cell.startswith("rnn_") else {}
    tdt = getattr(torch, dtype)
    module = getattr(torch.nn, TORCH_CELLS[cell])(I, H, **kwargs).to("cuda", tdt)
    convert.to_torch(cell, params, module)
    dev = lambda a: torch.tensor(a, device="cuda", dtype=tdt)          # noqa: E731
    xt = dev(x).requires_grad_(True)
    h0t = dev(h0[None]).requires_grad_(True)
    before = torch.backends.cudnn.allow_tf32
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=tf32):
            if cell == "lstm":
                c0t = dev(c0[None]).requires_grad_(True)
                out, (hn, cn) = module(xt, (h0t, c0t))
                loss = ((out * dev(dh)).sum() + (hn[0] * dev(dh_n)).sum()
                        + (cn[0] * dev(dc_n)).sum())
            else:
                out, hn = module(xt, h0t)
                loss = (out * dev(dh)).sum() + (hn[0] * dev(dh_n)).sum()
            loss.backward()
    finally:
        torch.backends.cudnn.allow_tf32 = before
    G = fastrnn.get_cell(cell).num_gates
    theirs = {"h": out, "h_n": hn[0], "dx": xt.grad, "dh0": h0t.grad[0],
              "dW": module.weight_ih_l0.grad.T, "dU": module.weight_hh_l0.grad.T,
              "db": module.bias_ih_l0.grad}
    if cell == "lstm":
        theirs.update(c_n=cn[0], dc0=c0t.grad[0])
    if cell == "gru":
        theirs["dbn"] = module.bias_hh_l0.grad[2 * H:]
        assert module.bias_hh_l0.grad.shape[0] == G * H
    for name, a in ours.items():
        kind = "forward" if name in ("h", "h_n", "c_n") else "grad"
        assert_close(a, theirs[name], "tf32" if tf32 else dtype, kind,
                     f"{cell} {name} vs cuDNN", table=TORCH_TOLERANCES)


# ------------------------------------------------------------------ persistent kernels

PERSISTENT_CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


def _persistent_fits(cell, B, H, dtype):
    from fastrnn.backends.cupy import persistent as cb
    spec = fastrnn.get_cell(cell)
    return all(cb.plan(spec, B, H, np.dtype(dtype), backward=bw) is not None
               for bw in (False, True))


def _require_cooperative_launch():
    """Skips, saying so, where the device reports no cooperative launch (the persistent
    kernels need all their blocks resident at once)."""
    from fastrnn.backends.cupy import device
    if not device.limits().cooperative:
        pytest.skip("this device reports no cooperative launch (cudaDevAttrCooperativeLaunch "
                    "is 0): the persistent kernels cannot run here")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("cell", PERSISTENT_CELLS)
def test_persistent_kernels_with_16bit_storage(cp, rng, monkeypatch, cell, dtype):
    """The persistent kernels read the float32 x @ W of 16-bit storage as the per-step
    kernels do: the same check as the per-step path's, in one cooperative launch."""
    low = _storage_16(cp, dtype)
    _require_cooperative_launch()
    monkeypatch.setattr(fastrnn.config, "cupy_persistent", "1")
    assert _persistent_fits(cell, 8, 64, low)
    _check_16bit(cp, rng, cell, low, 30)


@pytest.mark.parametrize("B,H,dtype", [(1, 128, "float64"), (16, 256, "float64"),
                                       (5, 33, "float64"), (32, 512, "float64"),
                                       (32, 1024, "float32")])
@pytest.mark.parametrize("cell", PERSISTENT_CELLS)
def test_persistent_kernels_match_the_reference(cp, rng, monkeypatch, cell, B, H, dtype):
    """All steps in one cooperative launch (FASTRNN_CUPY_PERSISTENT=1), forward, backward
    and inference, with lengths and reverse, against the NumPy reference."""
    _require_cooperative_launch()
    monkeypatch.setattr(fastrnn.config, "cupy_persistent", "1")
    if not _persistent_fits(cell, B, H, dtype):
        pytest.skip(f"B={B}, H={H}, {dtype}: U's slices do not fit this GPU's shared memory "
                    f"on one block per multiprocessor (they do on an H100 / H200)")
    T, I = 12, 24
    x, params, h0, c0, lens = make_problem(rng, cell, T, B, I, H, dtype, lengths=B > 1,
                                           states=True)
    dh, dh_n, dc_n = make_upstream(rng, cell, T, B, H, dtype)
    ref = _results(*_run(cell, x, params, h0, c0, lens, True, dh, dh_n, dc_n, "numpy"))
    dev = _to_device(cp, x, params, h0, c0)
    got = _results(*_run(cell, *dev, lens, True, *_to_device(cp, dh, dh_n, dc_n)))
    for name, a in got.items():
        assert_close(a, ref[name], dtype, "forward" if name in ("h", "h_n", "c_n") else "grad",
                     f"{cell} persistent {name}")
    inf = fastrnn.forward(cell, *dev, lengths=lens, reverse=True, backend="cupy",
                          training=False)
    for name, a in (("h", inf.h), ("h_n", inf.h_n), ("c_n", inf.c_n)):
        if a is not None:
            assert_close(a, ref[name], dtype, "forward", f"{cell} persistent inference {name}")


@pytest.mark.parametrize("cell", PERSISTENT_CELLS)
def test_persistent_kernels_are_deterministic(cp, rng, monkeypatch, cell):
    """The cross-block sums are added in a fixed order: same inputs, same bits."""
    _require_cooperative_launch()
    monkeypatch.setattr(fastrnn.config, "cupy_persistent", "1")
    B, H = 8, 256
    assert _persistent_fits(cell, B, H, "float32")
    x, params, h0, c0, lens = make_problem(rng, cell, 30, B, 64, H, "float32", lengths=True,
                                           states=True)
    dh, dh_n, dc_n = make_upstream(rng, cell, 30, B, H, "float32")
    args = _to_device(cp, x, params, h0, c0) + [lens, False] + _to_device(cp, dh, dh_n, dc_n)
    first = {k: v.get() for k, v in _results(*_run(cell, *args)).items()}
    for name, a in _results(*_run(cell, *args)).items():
        assert np.array_equal(a.get(), first[name]), f"{name} changed bits"


def test_persistent_mode_leaves_gru_reset_before_on_the_per_step_path(cp, rng, monkeypatch):
    from fastrnn.backends.cupy import persistent as cb
    monkeypatch.setattr(fastrnn.config, "cupy_persistent", "1")
    assert cb.plan(fastrnn.get_cell("gru_reset_before"), 4, 64, np.dtype("float32"),
                   backward=False) is None
    x, params, h0, c0, lens = make_problem(rng, "gru_reset_before", 6, 4, 8, 64, "float64",
                                           lengths=True)
    ref = fastrnn.forward("gru_reset_before", x, params, lengths=lens, backend="numpy")
    got = fastrnn.forward("gru_reset_before", *_to_device(cp, x, params), lengths=lens,
                          backend="cupy")
    assert_close(got.h, ref.h, "float64", "forward", "gru_reset_before h")


@pytest.mark.parametrize("B,H,split", [(64, 512, (2, 32)), (16, 1024, None), (64, 256, None),
                                       (3, 200, (3, 40))])
@pytest.mark.parametrize("cell", PERSISTENT_CELLS)
def test_persistent_kernels_at_the_goal_sizes(cp, rng, monkeypatch, cell, B, H, split):
    """The persistent kernels at the sizes the speed goals name, on the planner's choice
    and on forced splits (several batch groups), float32, against the per-step path and
    the float64 reference."""
    _require_cooperative_launch()
    monkeypatch.setattr(fastrnn.config, "cupy_persistent", "1")
    monkeypatch.setattr(fastrnn.config, "cupy_persistent_split", split)
    assert _persistent_fits(cell, B, H, "float32")
    T, I = 10, 64
    x, params, h0, c0, lens = make_problem(rng, cell, T, B, I, H, "float32", lengths=True,
                                           states=True)
    dh, dh_n, dc_n = make_upstream(rng, cell, T, B, H, "float32")
    up = widened(x, params, h0, c0, dh, dh_n, dc_n)
    ref = _results(*_run(cell, *up[:4], lens, True, *up[4:], backend="numpy"))
    got = _results(*_run(cell, *_to_device(cp, x, params, h0, c0), lens, True,
                         *_to_device(cp, dh, dh_n, dc_n)))
    for name, a in got.items():
        kind = "forward" if name in ("h", "h_n", "c_n") else "grad"
        if kind == "grad" and cell == "rnn_relu":
            continue
        assert_close(a, ref[name], "float32", kind, f"{cell} B={B} H={H} persistent {name}")


# ------------------------------------------------------------------ precision modes

@pytest.mark.parametrize("T", [30, 200])
@pytest.mark.parametrize("path", ["0", "1"], ids=["per-step", "persistent"])
@pytest.mark.parametrize("cell", CELLS)
def test_tf32_matches_the_float64_reference(cp, rng, monkeypatch, cell, path, T):
    """allow_tf32=True: within the "tf32" tolerance of the float64 reference (B = 8,
    I = H = 64, lengths, reverse, initial states), forward and every gradient."""
    if path == "1":
        _require_cooperative_launch()
    monkeypatch.setattr(fastrnn.config, "cupy_persistent", path)
    B, I, H = 8, 64, 64
    x, params, h0, c0, lens = make_problem(rng, cell, T, B, I, H, "float32", lengths=True,
                                           states=True)
    dh, dh_n, dc_n = make_upstream(rng, cell, T, B, H, "float32")
    up = widened(x, params, h0, c0, dh, dh_n, dc_n)
    ref = _results(*_run(cell, *up[:4], lens, True, *up[4:], backend="numpy"))
    res = fastrnn.forward(cell, *_to_device(cp, x, params, h0, c0), lengths=lens, reverse=True,
                          backend="cupy", allow_tf32=True)
    got = _results(res, fastrnn.backward(res.tape, *_to_device(cp, dh, dh_n, dc_n)))
    for name, a in got.items():
        kind = "forward" if name in ("h", "h_n", "c_n") else "grad"
        if kind == "grad" and cell == "rnn_relu":
            continue
        assert_close(a, ref[name], "tf32", kind, f"{cell} TF32 T={T} {name}")


# ------------------------------------------------------------------ robust on the device

def test_a_buffer_past_2_31_elements(cp, rng):
    """T * B * 4H > 2^31 (the gates' tape, x @ W and the gate gradients): the last rows equal
    a run of those rows alone (every index of the kernels is 64-bit)."""
    T, I, H = 4, 4, 1024
    B = (1 << 31) // (T * 4 * H) + 8
    free = cp.cuda.runtime.memGetInfo()[0]
    if free < 48 * 2**30:
        pytest.skip(f"needs about 40 GiB of free device memory, {free / 2**30:.0f} GiB here")
    x, params, *_ = make_problem(rng, "lstm", T, 2, I, H, "float32")
    pd = _to_device(cp, params)[0]
    xs = cp.asarray(x)
    small = fastrnn.forward("lstm", xs, pd, backend="cupy")
    gs = fastrnn.backward(small.tape, dh_n=cp.ones((2, H), cp.float32))
    big_x = cp.zeros((T, B, I), cp.float32)
    big_x[:, -2:] = xs
    big = fastrnn.forward("lstm", big_x, pd, backend="cupy")
    assert T * B * 4 * H > 2**31
    gb = fastrnn.backward(big.tape, dh_n=cp.ones((B, H), cp.float32))
    for name, a, b in (("h", big.h[:, -2:], small.h), ("h_n", big.h_n[-2:], small.h_n),
                       ("c_n", big.c_n[-2:], small.c_n), ("dx", gb.dx[:, -2:], gs.dx),
                       ("dh0", gb.dh0[-2:], gs.dh0)):
        assert_close(a, b, "float32", "forward" if name[0] != "d" else "grad", name)
    del big, gb, big_x
    cp.get_default_memory_pool().free_all_blocks()


def test_out_of_memory_names_the_buffer_and_a_small_call_works_after(cp, rng):
    x, params, *_ = make_problem(rng, "lstm", 2, 2, 1, 128, "float32")
    pd = _to_device(cp, params)[0]
    total = cp.cuda.runtime.memGetInfo()[1]
    T = int(2 * total // (1024 * 4 * 128 * 4)) + 1            # x @ W alone: twice the device
    huge = cp.zeros((T, 1024, 1), cp.float32)
    with pytest.raises(cp.cuda.memory.OutOfMemoryError) as info:
        fastrnn.forward("lstm", huge, pd, backend="cupy")
    msg = str(info.value)
    for part in ("lstm forward (training)", f"T={T}", "B=1024", "H=128", "float32",
                 "the input projection x @ W", "needs about", "free of"):
        assert part in msg, f"{part!r} not in: {msg}"
    del huge
    cp.get_default_memory_pool().free_all_blocks()
    assert fastrnn.forward("lstm", cp.asarray(x), pd, backend="cupy").h.shape == (2, 2, 128)


def test_host_and_device_arrays_are_refused_side_by_side(cp, rng):
    x, params, h0, c0, _ = make_problem(rng, "gru", 3, 2, 4, 5, "float32", states=True)
    pd = _to_device(cp, params)[0]
    with pytest.raises(TypeError, match=r"params\['W'\]: a numpy.ndarray \(host memory\) "
                                        r"beside x, a cupy.ndarray \(GPU \d+\)"):
        fastrnn.forward("gru", cp.asarray(x), params)
    with pytest.raises(TypeError, match=r"h0: a numpy.ndarray"):
        fastrnn.forward("gru", cp.asarray(x), pd, h0)
    with pytest.raises(TypeError, match=r"x: a cupy.ndarray|params\['W'\]: a cupy.ndarray"):
        fastrnn.forward("gru", x, pd, backend="cupy")
    with pytest.raises(TypeError, match=r"expected a numpy.ndarray for backend 'numba'"):
        fastrnn.forward("gru", cp.asarray(x), pd, backend="numba")


def test_tape_checksums_run_on_the_device(cp, rng):
    """The guard's checksums of device arrays are taken on the device (no synchronisation;
    the backend falls back to the host's with a warning where they cannot be)."""
    from fastrnn.backends.cupy.checksum import DeviceChecksum
    x, params, h0, c0, _ = make_problem(rng, "gru", 5, 3, 4, 6, "float32")
    xd, pd = _to_device(cp, x, params)
    res = fastrnn.forward("gru", xd, pd, backend="cupy")
    assert isinstance(res.tape._digest, DeviceChecksum), type(res.tape._digest)
    fastrnn.backward(res.tape, dh_n=cp.ones((3, 6), cp.float32))
