"""Persistent kernels: the whole time loop of a forward, or of a backward, in one launch.

One cooperative launch runs all T steps (``kernels/persist.cuh``): each block keeps its
slice of U in shared memory, and the blocks synchronise between steps inside the kernel,
so a step costs no launch and no pass of U through memory. It pays where the per-step
path is bound by launches and small GEMMs: small batches. The kernels write the same
tape and gradients as the per-step path, so either forward pairs with either backward.

``config.cupy_persistent`` (``FASTRNN_CUPY_PERSISTENT``) chooses: "0" (the default until
the crossover against the per-step path is measured on hardware) never; "1" whenever the
size fits the device (a failed launch is then an error); "auto" when B and H are at most
``config.cupy_persistent_max_batch`` / ``_max_hidden`` and the size fits, falling back to
the per-step path if the launch is refused. gru_reset_before always takes the per-step
path (its second product depends on r, which would need a second grid barrier per step).
"""

from __future__ import annotations

import warnings

import numpy as np

from ...core import config
from ..base import ForwardOut
from .lib import cupy
from .nvrtc import function
from .steps import NULL, Saved

__all__ = ["persistent_plan", "plan_for_call", "persistent_forward", "persistent_backward"]

_PERSIST_THREADS = 256
_PERSIST_TS = 65               # PERSIST_TS of persist.cuh: row stride of the staged tile
_PERSIST_R = 8                 # PERSIST_R: outputs per thread at most
_PERSIST_CELLS = {"rnn_tanh": ("rnn", 1), "rnn_relu": ("rnn", 1), "lstm": ("lstm", 4),
                  "gru": ("gru", 3)}
# per-unit shared-memory arrays of each backward kernel (rec, carry, dc, direct)
_PERSIST_BACKWARD_STATE = {"rnn": 3, "lstm": 4, "gru": 3}
_device_limits_cache: dict[int, tuple[int, int, bool]] = {}


def _persist_mode() -> str:
    mode = str(config.cupy_persistent).strip().lower()
    return mode if mode in ("0", "1", "auto") else "0"


def _device_limits() -> tuple[int, int, bool]:
    """(multiprocessors, opt-in shared memory per block in bytes, cooperative launch)."""
    rt = cupy.cuda.runtime
    device = rt.getDevice()
    limits = _device_limits_cache.get(device)
    if limits is None:
        attr = lambda name, number: rt.deviceGetAttribute(              # noqa: E731
            getattr(rt, name, number), device)
        limits = (attr("cudaDevAttrMultiProcessorCount", 16),
                  attr("cudaDevAttrMaxSharedMemoryPerBlockOptin", 97),
                  bool(attr("cudaDevAttrCooperativeLaunch", 95)))
        _device_limits_cache[device] = limits
    return limits


def persistent_plan(cell, B: int, H: int, dtype, backward: bool):
    """(blocks, hidden units per block, shared-memory bytes) of the persistent kernel of
    ``cell`` for this size on the current device, or None if it has none (gru_reset_before)
    or the size does not fit (one block per multiprocessor, U's slice in shared memory)."""
    if cell.name not in _PERSIST_CELLS:
        return None
    source, G = _PERSIST_CELLS[cell.name]
    sms, max_smem, cooperative = _device_limits()
    if not cooperative:
        return None
    nj = -(-H // sms)                          # fewest units per block on one block per SM
    blocks = -(-H // nj)
    NT = _PERSIST_THREADS
    if backward:
        outputs = B * nj
        elems = G * H * nj + B * _PERSIST_TS + NT + _PERSIST_BACKWARD_STATE[source] * B * nj
    else:
        outputs = B * G * nj
        elems = H * G * nj + B * _PERSIST_TS + NT + B * G * nj
    smem = elems * (8 if dtype.itemsize == 8 else 4)
    if outputs > _PERSIST_R * NT or smem > max_smem:
        return None
    return blocks, nj, smem


def plan_for_call(cell, B: int, H: int, dtype, backward: bool):
    """The plan to run now (FASTRNN_CUPY_PERSISTENT), or None for the per-step path."""
    mode = _persist_mode()
    if mode == "0" or (mode == "auto" and (B > config.cupy_persistent_max_batch
                                             or H > config.cupy_persistent_max_hidden)):
        return None
    return persistent_plan(cell, B, H, dtype, backward)


def _launch_persistent(fn, plan, args) -> bool:
    """Cooperative launch of a persistent kernel. False if the device refuses the grid
    in "auto" mode (the caller then takes the per-step path); an error in mode "1".

    All ``blocks`` must be resident at once (the kernel synchronises them): the launch
    goes ahead only if the occupancy calculator allows them, and CuPy's habit of
    shrinking a too-large cooperative grid with a warning is turned into an error.
    """
    blocks, _, smem = plan
    try:
        if smem > 48 * 1024:
            fn.max_dynamic_shared_size_bytes = smem
        kernel = fn.kernel
        per_sm = cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(
            kernel.ptr, _PERSIST_THREADS, smem)
        if per_sm * _device_limits()[0] < blocks:
            raise RuntimeError(f"the persistent kernel needs {blocks} resident blocks; the "
                               f"device holds {per_sm} per multiprocessor")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            kernel((blocks,), (_PERSIST_THREADS,), args, shared_mem=smem,
                   enable_cooperative_groups=True)
    except Exception:
        if _persist_mode() == "1":
            raise
        return False
    return True


def persistent_forward(st, cell, xw, p, h0, c0, out, training, plan):
    """All steps in one launch; a ForwardOut, or None when the launch was refused.
    xw (T, B, G*H) is in ``st.acc`` (float32 for 16-bit storage), as the kernels read it."""
    source, _ = _PERSIST_CELLS[cell.name]
    T, B, H, dt = st.T, st.B, st.H, st.dtype
    slots = T + 1 if training else 2
    hs = cupy.empty((slots, B, H), dtype=dt)
    hs[0] = h0
    cs = None
    if cell.name == "lstm":
        cs = cupy.empty((slots, B, H), dtype=dt)
        cs[0] = c0
    gates = None
    if training and cell.name in ("lstm", "gru"):
        gates = cupy.empty((T, B, 4 * H), dtype=dt)
    bar = cupy.zeros(2, dtype=cupy.uint32)
    tail = (st.lens_arg, np.int32(T), np.int32(B), np.int32(H), np.int32(st.reverse),
            np.int32(training), np.int32(plan[1]), bar)
    g_arg = NULL if gates is None else gates
    if cell.name == "lstm":
        args = (xw, p["b"], p["U"], hs, cs, out, g_arg) + tail
    elif cell.name == "gru":
        args = (xw, p["b"], p["bn"], p["U"], hs, out, g_arg) + tail
    else:
        args = (xw, p["b"], p["U"], hs, out) + tail + (np.int32(cell.nonlinearity == "relu"),)
    if not _launch_persistent(function(source, f"{source}_persist_forward", dt), plan, args):
        return None
    last = T if training else T % 2
    saved = Saved(hs, cs, gates, None, st.lengths) if training else None
    return ForwardOut(out, hs[last].copy(), None if cs is None else cs[last].copy(), saved)


def persistent_backward(st, cell, saved, p, dh_arg, dh_n, dc_n, plan):
    """All steps of the backward in one launch: (dgx, dgr, dh0, dc0) for finish_backward,
    or None when the launch was refused."""
    source, G = _PERSIST_CELLS[cell.name]
    T, B, H, dt = st.T, st.B, st.H, st.dtype
    dh0 = cupy.empty((B, H), dtype=dt)
    dc0 = cupy.empty((B, H), dtype=dt) if cell.name == "lstm" else None
    bar = cupy.zeros(2, dtype=cupy.uint32)
    tail = (st.lens_arg, np.int32(T), np.int32(B), np.int32(H), np.int32(st.reverse),
            np.int32(plan[1]), bar)
    dhn_arg = NULL if dh_n is None else dh_n
    dgx = cupy.empty((T, B, G * H), dtype=dt)
    dgr = dgx
    if cell.name == "lstm":
        args = (dh_arg, dhn_arg, NULL if dc_n is None else dc_n, saved.gates, saved.cs,
                p["U"], dgx, dh0, dc0) + tail
    elif cell.name == "gru":
        dgr = cupy.empty((T, B, G * H), dtype=dt)
        args = (dh_arg, dhn_arg, saved.gates, saved.hs, p["U"], dgr, dgx, dh0) + tail
    else:
        args = (dh_arg, dhn_arg, saved.hs, p["U"], dgx, dh0) + tail + (
            np.int32(cell.nonlinearity == "relu"),)
    if not _launch_persistent(function(source, f"{source}_persist_backward", dt), plan, args):
        return None
    return dgx, dgr, dh0, dc0
