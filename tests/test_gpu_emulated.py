"""The cupy backend's own code on the CPU (tests/cuda_emulation): what the GPU suite checks
on a device, checked in CI as far as a CPU can.

* the persistent kernels over the geometries the planner can choose (batch groups, blocks
  per group, one row, several k-tiles), with lengths, reverse and initial states, in
  float64, float32 and 16-bit storage, against the NumPy reference;
* TF32: the products' operands rounded to 10 bits (the emulated cuBLAS rounds them as the
  tensor cores do), within the stated tolerance of the float64 reference, T = 30 and 200;
* the planner on an H100/H200-sized device: every goal size of the benchmark has a plan
  for both directions, every plan fits, and its constants come from kernels/persist.cuh;
* arrays on two devices are refused with both named; out of memory names the buffer and
  the call; the persistent path falls back only where the device cannot hold the grid.

What the emulation cannot show (timing, the GPU's memory order, CUDA's math library,
float32 flush-to-zero, the real CuPy and cuBLAS) is tests/test_gpu.py's, on a GPU.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import pytest

import fastrnn
import cuda_emulation as ce
from assertions import assert_close
from conftest import make_problem, make_upstream, named_results, run_both, widened
from fastrnn.backends.cupy import persistent as P
from fastrnn.backends.cupy.device import DeviceLimits
from fastrnn.core.arrays import to_numpy

KERNELS = Path(__file__).resolve().parents[1] / "kernels"
H200 = DeviceLimits(multiprocessors=132, smem_per_block=232448, cooperative=True)
PERSISTENT = ["rnn_tanh", "rnn_relu", "lstm", "gru"]

pytestmark = pytest.mark.skipif(ce.compiler() is None,
                                reason="the CUDA emulation needs a C++ compiler (g++)")


@pytest.fixture
def emulated(monkeypatch):
    """Installs the emulated cupy backend (a 12-multiprocessor device) under "cupy"."""
    with ce.emulated_cupy_backend(monkeypatch, ce.EmulatedDevice(multiprocessors=12)) as be:
        yield be


_results = named_results


def _run(cell, x, params, h0, c0, lens, reverse, up, backend, **kw):
    return _results(*run_both(cell, x, params, h0, c0, lens, reverse, *up, backend, **kw))


def _launches():
    return {kernel: fn.launches for (_, kernel, _), fn in ce._kernels.items()}


# ------------------------------------------------------------- persistent geometries

GEOMETRIES = [   # B, H, (batch groups, blocks per group), k-tile cap
    (1, 7, (1, 1), None), (1, 9, (1, 3), None), (5, 9, (2, 2), None),
    (6, 13, (3, 4), None), (9, 10, (2, 1), None), (16, 40, (1, 2), 12), (5, 30, (2, 3), 8)]


@pytest.mark.parametrize("B,H,split,max_kt", GEOMETRIES,
                         ids=[f"B{b}-H{h}-{s[0]}x{s[1]}{'-kt' + str(k) if k else ''}"
                              for b, h, s, k in GEOMETRIES])
@pytest.mark.parametrize("cell", PERSISTENT)
def test_persistent_geometries_match_the_reference(emulated, monkeypatch, rng, cell, B, H,
                                                   split, max_kt):
    """Forward (training and inference) and backward in one launch each, forced onto one
    geometry of the planner, against the float64 reference."""
    monkeypatch.setattr(fastrnn.config, "cupy_persistent", "1")
    monkeypatch.setattr(fastrnn.config, "cupy_persistent_split", split)
    monkeypatch.setattr(P, "plan", functools.partial(P.plan, max_kt=max_kt))
    spec = fastrnn.get_cell(cell)
    for backward in (False, True):
        p = P.plan_for_call(spec, B, H, np.dtype("float64"), backward)
        assert p is not None and (p.groups, p.group_blocks) <= split
        if max_kt:
            assert p.kt <= max_kt
    T, I = 7, 5
    x, params, h0, c0, lens = make_problem(rng, cell, T, B, I, H, "float64", lengths=B > 1,
                                           states=True)
    up = make_upstream(rng, cell, T, B, H, "float64")
    ce._kernels.clear()
    for reverse in (False, True):
        ref = _run(cell, x, params, h0, c0, lens, reverse, up, "numpy")
        got = _run(cell, x, params, h0, c0, lens, reverse, up, "cupy")
        for name, a in got.items():
            kind = "forward" if name in ("h", "h_n", "c_n") else "grad"
            assert_close(a, ref[name], "float64", kind, f"{cell} {name} reverse={reverse}")
        inf = fastrnn.forward(cell, x, params, h0, c0, lengths=lens, reverse=reverse,
                              backend="cupy", training=False)
        for name, a in (("h", inf.h), ("h_n", inf.h_n), ("c_n", inf.c_n)):
            if a is not None:
                assert_close(a, ref[name], "float64", "forward", f"{cell} inference {name}")
    launches = _launches()
    ctype = ce.nvrtc.CELL_TYPES[cell]
    assert launches.get(f"persist_forward<{ctype}>") == 4, launches
    assert launches.get(f"persist_backward<{ctype}>") == 2, launches
    assert not any(k.startswith("step_") for k in launches), launches


PATHS = [(c, "per-step") for c in ("lstm", "gru", "gru_reset_before", "rnn_tanh", "lstmp")]
PATHS += [(c, "persistent") for c in ("lstm", "gru", "rnn_tanh")]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("cell,path", PATHS, ids=[f"{c}-{p}" for c, p in PATHS])
def test_storage_types_on_both_paths(emulated, monkeypatch, rng, cell, path, dtype):
    """16-bit storage with float32 arithmetic (and float32) on each path (gru_reset_before
    and lstmp have only the per-step path), against the float64 reference run on the same
    rounded inputs, with the tolerances of the GPU."""
    low = np.dtype(pytest.importorskip("ml_dtypes").bfloat16 if dtype == "bfloat16" else dtype)
    monkeypatch.setattr(fastrnn.config, "cupy_persistent", "1" if path == "persistent" else "0")
    T, B, I, H = 12, 5, 8, 10
    x, params, h0, c0, lens = make_problem(rng, cell, T, B, I, H, "float64", lengths=True,
                                           states=True)
    up = make_upstream(rng, cell, T, B, params["U"].shape[0], "float64")
    rounded = widened(x, params, h0, c0, *up, dtype=low)
    wide = widened(*rounded)
    ref = _run(cell, *wide[:4], lens, True, wide[4:], "numpy")
    got = _run(cell, *rounded[:4], lens, True, rounded[4:], "cupy")
    for name, a in got.items():
        assert a.dtype == low, f"{name}: {a.dtype}"
        kind = "forward" if name in ("h", "h_n", "c_n") else "grad"
        assert_close(to_numpy(a).astype(np.float64), ref[name], low.name, kind,
                     f"{cell} {path} {name}")


# ------------------------------------------------------------------------------- TF32

TF32_CASES = [("per-step", 30), ("per-step", 200), ("persistent", 30)]


@pytest.mark.parametrize("path,T", TF32_CASES, ids=[f"{p}-T{t}" for p, t in TF32_CASES])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_tf32_within_its_tolerance_of_float64(emulated, monkeypatch, rng, cell, path, T):
    """allow_tf32: the cuBLAS products read TF32 operands; the results stay within the
    "tf32" tolerance of the float64 reference, and differ from strict float32 (TF32 is
    really used, and strict float32 does not use it). The persistent path at T = 200 is
    the GPU suite's (each emulated step of it costs a CPU thousands of context switches)."""
    monkeypatch.setattr(fastrnn.config, "cupy_persistent", "1" if path == "persistent" else "0")
    B, I, H = 8, 64, 64
    x, params, h0, c0, lens = make_problem(rng, cell, T, B, I, H, "float32", lengths=True,
                                           states=True)
    up = make_upstream(rng, cell, T, B, H, "float32")
    wide = widened(x, params, h0, c0, *up)
    ref = _run(cell, *wide[:4], lens, True, wide[4:], "numpy")
    strict = _run(cell, x, params, h0, c0, lens, True, up, "cupy")
    tf32 = _run(cell, x, params, h0, c0, lens, True, up, "cupy", allow_tf32=True)
    for name, a in tf32.items():
        kind = "forward" if name in ("h", "h_n", "c_n") else "grad"
        assert_close(a, ref[name], "tf32", kind, f"{cell} TF32 {name}")
        assert_close(strict[name], ref[name], "float32", kind, f"{cell} strict {name}")
    assert not np.array_equal(to_numpy(tf32["h"]), to_numpy(strict["h"])), "TF32 not applied"


def test_tf32_follows_the_config(emulated, monkeypatch, rng):
    x, params, *_ = make_problem(rng, "lstm", 4, 3, 16, 16, "float32")
    strict = fastrnn.forward("lstm", x, params, backend="cupy").h
    monkeypatch.setattr(fastrnn.config, "allow_tf32", True)
    res = fastrnn.forward("lstm", x, params, backend="cupy")
    assert res.tape.tf32
    assert not np.array_equal(to_numpy(res.h), to_numpy(strict))
    assert not fastrnn.forward("lstm", x, params, backend="cupy", allow_tf32=False).tape.tf32


# ------------------------------------------------------------------------- the planner

GOAL_SIZES = [(B, H) for B in (16, 64) for H in (256, 512)] + [(16, 1024)]


@pytest.mark.parametrize("cell", PERSISTENT)
def test_planner_covers_the_goal_sizes_on_an_h200(cell):
    """The sizes the GPU goals name run on the persistent kernels in float32, forward and
    backward, on a device like the H200 (132 multiprocessors, 227 KB per block)."""
    spec = fastrnn.get_cell(cell)
    for B, H in GOAL_SIZES:
        for backward in (False, True):
            p = P.plan(spec, B, H, np.dtype("float32"), backward, H200)
            assert p is not None, f"{cell} B={B} H={H} backward={backward}: no plan"
            assert p.step_us < P.per_step_us(spec, B, H, backward), (
                f"{cell} B={B} H={H}: the model prefers the per-step path")


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("cell", PERSISTENT)
def test_every_plan_fits_its_device(cell, dtype):
    spec = fastrnn.get_cell(cell)
    k = P.persist_constants()
    for B in (1, 2, 3, 16, 33, 64, 256):
        for H in (1, 5, 64, 127, 256, 1024, 2048):
            for backward in (False, True):
                p = P.plan(spec, B, H, np.dtype(dtype), backward, H200)
                if p is None:
                    continue
                assert p.smem <= H200.smem_per_block and p.blocks <= H200.multiprocessors
                assert p.threads == k["PERSIST_MAX_THREADS"]
                assert p.groups * p.rows >= B and p.group_blocks * p.nj >= H
                assert (p.groups - 1) * p.rows < B and (p.group_blocks - 1) * p.nj < H
                assert p.kt % 4 == 0 and p.cs % 4 == 0 and p.kstride == p.kt + 4
                tile = 1 if p.rs == 1 else k["PERSIST_TILE"]
                assert (p.rs // tile) * (p.cs // 4) <= p.threads


def test_persistent_constants_are_written_once():
    """The host reads the kernels' constants from kernels/persist.cuh; the kernels use the
    macros, and take the geometry the plan passes, in its order."""
    k = P.persist_constants()
    header = (KERNELS / "persist.cuh").read_text()
    source = (KERNELS / "persist.cu").read_text()
    for name, value in k.items():
        assert re.search(rf"^#define {name} {value}\b", header, re.MULTILINE)
    assert source.count("__launch_bounds__(PERSIST_MAX_THREADS, 1)") == 2
    geometry = ("int nug, int nj, int rows, int rs, int cs_, int kt, int kstride,\n"
                "    int off_out, int off_scratch, int off_units, unsigned int* bar)")
    assert source.count(geometry) == 2
    p = P.plan(fastrnn.get_cell("lstm"), 16, 256, np.dtype("float32"), False, H200)
    assert len(p.kernel_args()) == 10
    py = Path(P.__file__).read_text()
    for name in k:
        assert not re.search(rf"\b{name}\s*=\s*\d", py), f"{name} written again in Python"


# --------------------------------------------------------------- where arrays live

def test_host_and_device_arrays_are_never_mixed(emulated, rng):
    cp = emulated.xp
    x, params, h0, c0, _ = make_problem(rng, "lstm", 4, 3, 5, 6, "float32", states=True)
    dev = {k: cp.asarray(v) for k, v in params.items()}
    with pytest.raises(TypeError, match=r"params\['W'\]: a numpy.ndarray \(host memory\) "
                                        r"beside x, a cupy.ndarray"):
        fastrnn.forward("lstm", cp.asarray(x), params)
    with pytest.raises(TypeError, match=r"h0: a numpy.ndarray .* beside x, a cupy.ndarray"):
        fastrnn.forward("lstm", cp.asarray(x), dev, h0)
    with pytest.raises(TypeError, match=r"params\['W'\]: a cupy.ndarray .* beside x, a "
                                        r"numpy.ndarray \(host memory\)"):
        fastrnn.forward("lstm", x, dev, backend="cupy")
    res = fastrnn.forward("lstm", cp.asarray(x), dev, cp.asarray(h0), cp.asarray(c0))
    with pytest.raises(TypeError, match=r"dh_n: a numpy.ndarray .* beside the forward's x"):
        fastrnn.backward(res.tape, dh_n=np.ones((3, 6), np.float32))
    w = fastrnn.prepare("lstm", dev)
    with pytest.raises(TypeError, match=r"x: a numpy.ndarray .*|params\['W'\]: a cupy"):
        fastrnn.forward("lstm", x, w)
    st = fastrnn.Stepper("lstm", dev, batch_size=3)
    with pytest.raises(TypeError, match=r"x: a numpy.ndarray .* beside the Stepper's state"):
        st(x[0])
    with pytest.raises(TypeError, match=r"Wy: a numpy.ndarray .* beside h, a cupy.ndarray"):
        fastrnn.readout(res.h, np.ones((6, 2), np.float32), cp.zeros(2, np.float32))
    # all on the host with backend="cupy" named: the one explicit copy to the device
    out = fastrnn.forward("lstm", x, params, h0, c0, backend="cupy")
    assert isinstance(out.h, cp.ndarray)
    fastrnn.backward(out.tape, dh_n=np.ones((3, 6), np.float32))
    # lengths may come from either side
    fastrnn.forward("lstm", cp.asarray(x), dev, lengths=cp.asarray([4, 2, 1]))


def test_a_cpu_backend_names_the_device_array_it_refuses(emulated, rng):
    cp = emulated.xp
    x, params, *_ = make_problem(rng, "gru", 3, 2, 4, 5, "float32")
    dev = {k: cp.asarray(v) for k, v in params.items()}
    with pytest.raises(TypeError, match=r"x: expected a numpy.ndarray for backend 'numba', "
                                        r"which computes on numpy arrays; got a cupy.ndarray "
                                        r"\(GPU 0\)"):
        fastrnn.forward("gru", cp.asarray(x), dev, backend="numba")


# ----------------------------------------------------------------------- out of memory

def test_out_of_memory_names_the_buffer_and_the_call(emulated, monkeypatch, rng):
    cp = emulated.xp
    T, B, I, H = 50, 8, 16, 32
    x, params, *_ = make_problem(rng, "lstm", T, B, I, H, "float32")
    monkeypatch.setattr(fastrnn.config, "cupy_persistent", "0")
    monkeypatch.setattr(cp, "memory_limit", T * B * 4 * H * 4 - 1)      # the gates' tape
    with pytest.raises(cp.cuda.memory.OutOfMemoryError) as info:
        fastrnn.forward("lstm", x, params, backend="cupy")
    msg = str(info.value)
    for part in ("lstm forward (training)", f"T={T}", f"B={B}", f"I={I}", f"H={H}", "float32",
                 "input projection x @ W", "training=False", "needs about"):
        assert part in msg, f"{part!r} not in: {msg}"
    assert isinstance(info.value, MemoryError)
    assert "Out of memory allocating" in str(info.value.__cause__.__cause__ or
                                             info.value.__cause__)
    monkeypatch.setattr(cp, "memory_limit", None)
    assert fastrnn.forward("lstm", x[:2], params, backend="cupy").h.shape == (2, B, H)


def test_out_of_memory_in_the_tape(emulated, monkeypatch, rng):
    cp = emulated.xp
    T, B, H = 40, 4, 8
    x, params, *_ = make_problem(rng, "gru", T, B, 3, H, "float32")
    monkeypatch.setattr(cp, "memory_limit", T * B * 7 * H * 2)  # x @ W (3H) fits, the tape (4H) not
    with pytest.raises(cp.cuda.memory.OutOfMemoryError, match=r"the tape of the gates, "
                                                              r"\(40, 4, 32\) float32"):
        fastrnn.forward("gru", x, params, backend="cupy")


# ------------------------------------------------------------ persistent path fallback

def test_persistent_falls_back_only_where_the_device_cannot_hold_the_grid(emulated,
                                                                          monkeypatch, rng):
    from fastrnn.backends.cupy import device
    x, params, h0, c0, _ = make_problem(rng, "gru", 6, 3, 4, 8, "float64", states=True)
    ref = fastrnn.forward("gru", x, params, h0, backend="numpy").h
    monkeypatch.setattr(device, "resident_blocks", lambda fn, threads, smem: 0)
    monkeypatch.setattr(fastrnn.config, "cupy_persistent", "auto")
    ce._kernels.clear()
    assert_close(fastrnn.forward("gru", x, params, h0, backend="cupy").h, ref, "float64",
                 "forward", "fallback")
    launches = _launches()
    assert launches.get("step_forward<GruCell>") == 6
    assert launches.get("persist_forward<GruCell>", 0) == 0
    monkeypatch.setattr(fastrnn.config, "cupy_persistent", "1")
    with pytest.raises(RuntimeError, match="resident at once"):
        fastrnn.forward("gru", x, params, h0, backend="cupy")


def test_a_failing_persistent_launch_is_an_error_not_a_fallback(emulated, monkeypatch, rng):
    x, params, *_ = make_problem(rng, "lstm", 5, 2, 4, 8, "float32")

    class Broken:
        max_dynamic_shared_size_bytes = 48 * 1024

        @property
        def kernel(self):
            return self

        def __call__(self, *args, **kwargs):
            raise RuntimeError("cudaErrorIllegalAddress: an illegal memory access")

    monkeypatch.setattr(fastrnn.config, "cupy_persistent", "auto")
    monkeypatch.setattr(P, "function", lambda *a: Broken())
    with pytest.raises(RuntimeError, match="illegal memory access"):
        fastrnn.forward("lstm", x, params, backend="cupy")


def test_config_mode_is_checked(emulated, monkeypatch, rng):
    x, params, *_ = make_problem(rng, "lstm", 3, 2, 4, 8, "float32")
    monkeypatch.setattr(fastrnn.config, "cupy_persistent", "yes")
    with pytest.raises(ValueError, match="FASTRNN_CUPY_PERSISTENT"):
        fastrnn.forward("lstm", x, params, backend="cupy")


# ----------------------------------------------------------------------- the tape's guard

@pytest.mark.parametrize("size", [(3, 2, 4, 5), (40, 64, 30, 40)], ids=["whole", "sampled"])
def test_device_checksums_catch_arrays_changed_in_place(emulated, rng, size):
    """The tape's checksums of device arrays (taken on the device, compared after the
    backward is queued) refuse a backward once x, h0 or a parameter changed in place, whole
    or through its sample, and let it through otherwise."""
    cp = emulated.xp
    T, B, I, H = size
    x, params, h0, c0, _ = make_problem(rng, "lstm", T, B, I, H, "float32", states=True)
    dev = {k: cp.asarray(v) for k, v in params.items()}
    xd, h0d = cp.asarray(x), cp.asarray(h0)
    dh_n = cp.ones((B, H), cp.float32)
    res = fastrnn.forward("lstm", xd, dev, h0d)
    fastrnn.backward(res.tape, dh_n=dh_n)                      # unchanged: fine
    for name, array in (("x", xd), ("h0", h0d), ("params['U']", dev["U"])):
        res = fastrnn.forward("lstm", xd, dev, h0d)
        flat = array.reshape(-1)
        old = float(flat[0])
        flat[0] = old + 1.0                                     # element 0 is always hashed
        with pytest.raises(ValueError, match=re.escape(name) + ".*changed in place"):
            fastrnn.backward(res.tape, dh_n=dh_n)
        flat[0] = old
    res = fastrnn.forward("lstm", xd, dev, h0d, guard=False)
    dev["U"] += 1.0
    fastrnn.backward(res.tape, dh_n=dh_n)                       # no guard: not checked


def test_host_checksums_where_the_device_cannot_take_them(emulated, monkeypatch, rng):
    """If the device checksums fail (no asynchronous copies, say), the guard still works,
    on the host, after one warning."""
    from fastrnn.backends.cupy import checksum

    def broken(arrays):
        raise RuntimeError("no pinned memory here")

    monkeypatch.setattr(checksum, "checksum", broken)
    monkeypatch.setattr(emulated, "_device_checksum_failed", None)
    cp = emulated.xp
    x, params, *_ = make_problem(rng, "gru", 4, 2, 3, 5, "float32")
    dev = {k: cp.asarray(v) for k, v in params.items()}
    with pytest.warns(RuntimeWarning, match="checksums on the GPU failed"):
        res = fastrnn.forward("gru", cp.asarray(x), dev)
    assert isinstance(res.tape._digest, tuple)
    dev["W"] += 1.0
    with pytest.raises(ValueError, match=r"params\['W'\] changed in place"):
        fastrnn.backward(res.tape, dh_n=cp.ones((2, 5), cp.float32))
