"""Persistent kernels: the whole time loop of a forward, or of a backward, in one launch.

One cooperative launch of ``kernels/persist.cu`` runs all T steps: each block keeps its
slice of U in shared memory for the whole sequence and the blocks meet at a barrier once
per step, so a step costs no launch, no host work and no pass of U through memory. The
kernels write the same tape and gradients as the per-step path (:mod:`.steps`), so either
forward pairs with either backward.

The planner (:func:`plan`) splits the batch into groups and the hidden units of each group
over blocks, sizes the shared memory, and estimates the time of a step for every split
that fits the device with a simple model of what a step costs (:class:`StepCosts`); the
cheapest wins. Batch groups never wait for each other, and a group of one block needs no
barrier at all, so small sizes run on few blocks and large ones on every multiprocessor.

``config.cupy_persistent`` (``FASTRNN_CUPY_PERSISTENT``) chooses: "auto" (the default) takes
the persistent kernels where the plan's estimate beats the per-step path's, "1" wherever a
plan fits the device (else the per-step path), "0" never. A launch the device refuses for
room is the only failure that falls back to the per-step path ("auto" only); any other
error propagates. gru_reset_before and lstmp always take the per-step path (their
second product per step depends on the first, which would need a second barrier per step).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np

from ...core import config
from ..base import ForwardOut
from . import device
from .lib import cupy
from .memory import alloc
from .nvrtc import CELL_TYPES, cell_traits, function, header_constants
from .steps import NULL, Saved, acc_dtype

__all__ = ["PersistPlan", "StepCosts", "plan", "plan_for_call", "persistent_forward",
           "persistent_backward", "persist_constants"]


def persist_constants() -> dict[str, int]:
    """PERSIST_TILE, PERSIST_PREFETCH, PERSIST_MAX_THREADS, PERSIST_BAR_STRIDE of
    kernels/persist.cuh, where they are written."""
    return header_constants("persist.cuh")


@dataclass(frozen=True)
class StepCosts:
    """The planner's model of one step of a persistent kernel on one block, in µs.

    barrier + barrier_per_block * blocks: the group barrier when a group has more than one
    block; l2_latency: one round of staging loads from L2 (each thread has
    PERSIST_STAGE_BATCH of them in flight); l2_bytes_per_us: one multiprocessor's share of
    L2 bandwidth; fma_per_us: one multiprocessor's float32 multiply-adds in block_matvec
    (float64 at half that); sync: one __syncthreads; pointwise: the cell's pass over the
    block's units. The barrier's terms are the H200's (bench/gpu_persist_sweep.py, rnn_tanh
    B = 1, H = 128: 1 block to 132 blocks adds 1.1 µs a step; bench/README.md); the rest are
    leads to measure again.
    """

    barrier: float = 0.3
    barrier_per_block: float = 0.0075
    l2_latency: float = 0.8
    l2_bytes_per_us: float = 1.0e5
    fma_per_us: float = 1.0e5
    sync: float = 0.05
    pointwise: float = 0.5
    host_per_step: float = 35.0          # the per-step path: Python and CuPy per step
    gemm_flops_per_us: float = 3.0e7     # its cuBLAS products (30 TFLOP/s)


COSTS = StepCosts()


@dataclass(frozen=True)
class PersistPlan:
    """One launch of a persistent kernel: the grid, and the geometry and shared-memory
    carve-up the kernel reads from its arguments (see kernels/persist.cu).

    groups x group_blocks blocks of ``threads`` threads; a group owns ``rows`` batch rows,
    a block ``nj`` hidden units; the block's product is rs x cs outputs over k-tiles of
    ``kt`` columns staged with row stride ``kstride``; element offsets of the regions of
    dynamic shared memory (W at 0); ``smem`` bytes in all; ``step_us`` the model's estimate.
    """

    groups: int
    group_blocks: int
    threads: int
    rows: int
    nj: int
    rs: int
    cs: int
    kt: int
    off_out: int
    off_units: int
    off_scratch: int
    smem: int
    step_us: float

    @property
    def blocks(self) -> int:
        return self.groups * self.group_blocks

    @property
    def kstride(self) -> int:
        """Row stride of the staged tile: 4 past the k-tile, which shifts each row by four
        banks while keeping 16-byte loads aligned."""
        return self.kt + 4

    def kernel_args(self) -> tuple:
        """The geometry arguments of persist_forward / persist_backward, in their order."""
        return tuple(np.int32(v) for v in (
            self.group_blocks, self.nj, self.rows, self.rs, self.cs, self.kt, self.kstride,
            self.off_out, self.off_scratch, self.off_units))


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _round(a: int, m: int) -> int:
    return _ceil(a, m) * m


def _layout(cell, B: int, H: int, itemsize: int, acc_size: int, backward: bool,
            groups: int, group_blocks: int, smem_limit: int, costs: StepCosts,
            max_kt: int | None = None):
    """The plan for ``groups`` batch groups of ``group_blocks`` blocks, or None if it does
    not fit (shared memory, or more output tiles than threads). ``max_kt`` caps the k-tile
    (a multiple of 4; the tests use it to run several tiles on small sizes)."""
    k = persist_constants()
    tile, threads = k["PERSIST_TILE"], k["PERSIST_MAX_THREADS"]
    rows = _ceil(B, groups)
    groups = _ceil(B, rows)
    nj = _ceil(H, group_blocks)
    group_blocks = _ceil(H, nj)
    G = cell.num_gates
    K, C = (G * H, nj) if backward else (H, G * nj)
    cs = _round(C, 4)
    rs = 1 if rows == 1 else _round(rows, tile)
    tr = 1 if rs == 1 else tile
    tiles = (rs // tr) * (cs // 4)
    if tiles > threads:
        return None
    nks = 1 if tiles >= threads else threads // tiles
    Kp = _round(K, 4)
    w, out = Kp * cs, rs * cs
    units = (3 if backward else 2) * rows * nj
    partial = nks * tiles * tr * 4 if nks > 1 else 0
    off_out = _round(w, 4)
    off_units = off_out + _round(out, 4)
    off_scratch = off_units + _round(units, 4)

    def smem_for(kt):
        return (off_scratch + _round(max(rs * (kt + 4), partial), 4)) * acc_size

    kt = Kp if max_kt is None else min(Kp, max_kt)
    while smem_for(kt) > smem_limit:
        kt = (kt // 2) // 32 * 32
        if kt < 32:
            return None
    k_tiles = _ceil(Kp, kt)
    fma = costs.fma_per_us * (0.5 if acc_size == 8 else 1.0)
    rounds = k_tiles * _ceil(_ceil(rs * min(kt, Kp) // 4, threads), k["PERSIST_STAGE_BATCH"])
    barrier = costs.barrier + costs.barrier_per_block * group_blocks if group_blocks > 1 else 0.0
    step = (barrier + rounds * costs.l2_latency + rows * K * itemsize / costs.l2_bytes_per_us
            + rs * cs * Kp / fma + costs.sync * (2 * k_tiles + 2) + costs.pointwise)
    return PersistPlan(groups, group_blocks, threads, rows, nj, rs, cs, kt, off_out, off_units,
                       off_scratch, smem_for(kt), step)


def plan(cell, B: int, H: int, dtype, backward: bool, limits=None,
         costs: StepCosts = COSTS, split=None, max_kt: int | None = None):
    """The cheapest :class:`PersistPlan` for ``cell`` at batch B and hidden size H in storage
    ``dtype`` on the current device (``limits``: a :class:`device.DeviceLimits`), or None
    if the cell has no persistent kernel or no split fits. ``split`` = (groups,
    blocks per group) forces one split (``config.cupy_persistent_split``). Each answer is
    worked out once and kept (the search costs more than a small call's kernels)."""
    if cell.name not in CELL_TYPES:
        return None
    limits = limits or device.limits()
    if not limits.cooperative:
        return None
    return _plan(cell, int(B), int(H), np.dtype(dtype), bool(backward), limits, costs,
                 None if split is None else tuple(split), max_kt)


@functools.lru_cache(maxsize=4096)
def _plan(cell, B, H, dtype, backward, limits, costs, split, max_kt):
    acc_size = acc_dtype(dtype).itemsize
    sms = limits.multiprocessors
    if split is not None:
        candidates = [tuple(split)]
    else:
        pow2 = [1 << i for i in range(int(math.log2(max(sms, 1))) + 1)]
        candidates = [(g, n) for g in pow2 if g <= B
                      for n in sorted(set(pow2 + [sms // g])) if 1 <= n and g * n <= sms]
    best = None
    for groups, blocks in candidates:
        p = _layout(cell, B, H, dtype.itemsize, acc_size, backward, groups, blocks,
                    limits.smem_per_block, costs, max_kt)
        if p is not None and p.blocks <= sms and (best is None or p.step_us < best.step_us):
            best = p
    return best


def per_step_us(cell, B: int, H: int, backward: bool, costs: StepCosts = COSTS) -> float:
    """The model's time of one step of the per-step path: the host's Python and CuPy, or
    the device's product, whichever is longer."""
    gemm = 2 * B * H * cell.num_gates * H / costs.gemm_flops_per_us
    return max(costs.host_per_step, gemm + costs.pointwise)


def _mode() -> str:
    mode = str(config.cupy_persistent).strip().lower()
    if mode not in ("0", "1", "auto"):
        raise ValueError(f"config.cupy_persistent (FASTRNN_CUPY_PERSISTENT): expected '0', "
                         f"'1' or 'auto', got {config.cupy_persistent!r}")
    return mode


def plan_for_call(cell, B: int, H: int, dtype, backward: bool):
    """The plan to run now under ``config.cupy_persistent``, or None for the per-step path."""
    mode = _mode()
    if mode == "0":
        return None
    p = plan(cell, B, H, dtype, backward, split=config.cupy_persistent_split)
    if p is None or (mode == "auto" and p.step_us >= per_step_us(cell, B, H, backward)):
        return None
    return p


def _launch(fn, p: PersistPlan, args) -> bool:
    """Cooperative launch of a persistent kernel. False, in "auto" mode, when the device
    cannot hold every block at once (the caller then takes the per-step path); in mode "1"
    that is an error. Errors of the launch itself always propagate."""
    resident = device.resident_blocks(fn, p.threads, p.smem)
    if resident < p.blocks:
        if _mode() == "1":
            raise RuntimeError(f"the persistent kernel needs {p.blocks} blocks of {p.threads} "
                               f"threads and {p.smem} bytes of shared memory resident at once; "
                               f"the device holds {resident}")
        return False
    with warnings.catch_warnings():
        # CuPy shrinks a cooperative grid it deems too large, with a warning: the kernel's
        # barrier would then wait forever, so that warning is an error here.
        warnings.simplefilter("error")
        fn.kernel((p.blocks,), (p.threads,), args, shared_mem=p.smem,
                  enable_cooperative_groups=True)
    return True


def _kernel(cell, which: str, dtype):
    return function("persist", f"persist_{which}<{CELL_TYPES[cell.name]}>", dtype)


def _barriers(p: PersistPlan):
    return cupy.zeros(p.groups * persist_constants()["PERSIST_BAR_STRIDE"], dtype=cupy.uint32)


def persistent_forward(st, cell, xw, p, h0, c0, out, training, pp: PersistPlan):
    """All steps in one launch: a ForwardOut, or None when the device refused the grid.
    xw (T, B, G*H) is in ``st.acc`` (float32 for 16-bit storage), as the kernels read it."""
    traits = cell_traits(cell.name)
    T, B, H, dt = st.T, st.B, st.H, st.dtype
    slots = T + 1 if training else 2
    hs = alloc("the tape of the states h", (slots, B, H), dt)
    cs = None
    if traits["HAS_C"]:
        cs = alloc("the tape of the states c", (slots, B, H), dt)
    if training:                       # the tape holds the initial states in slot 0
        hs[0] = h0
        if cs is not None:
            cs[0] = c0
    tape = None
    if training and traits["TAPE"]:
        tape = alloc("the tape of the gates", (T, B, traits["TAPE"] * H), dt)
    args = ((xw, p["b"], p["bn"] if traits["BIAS_N"] else NULL, p["U"], h0,
             NULL if cs is None else c0, hs, NULL if cs is None else cs, out,
             NULL if tape is None else tape, st.lens_arg,
             np.int32(T), np.int32(B), np.int32(H), np.int32(st.reverse), np.int32(training))
            + pp.kernel_args() + (_barriers(pp),))
    if not _launch(_kernel(cell, "forward", dt), pp, args):
        return None
    if not training:                   # nothing else holds the two slots: views will do
        last = T % 2
        return ForwardOut(out, hs[last], None if cs is None else cs[last], None)
    saved = Saved(hs, cs, tape, None, st.lengths)
    return ForwardOut(out, hs[T].copy(), None if cs is None else cs[T].copy(), saved)


def persistent_backward(st, cell, saved, p, dh_arg, dh_n, dc_n, pp: PersistPlan):
    """All steps of the backward in one launch: (dgx, dgr, dh0, dc0) for finish_backward,
    or None when the device refused the grid."""
    traits = cell_traits(cell.name)
    T, B, H, dt = st.T, st.B, st.H, st.dtype
    G = cell.num_gates
    dg_rec = alloc("the gate gradients", (T, B, G * H), dt)
    dg_x = alloc("the gate gradients of x @ W", (T, B, G * H), dt) if traits["SPLIT_GRAD"] else None
    dh0 = cupy.empty((B, H), dtype=dt)
    dc0 = cupy.empty((B, H), dtype=dt) if traits["HAS_C"] else None
    args = ((dh_arg, NULL if dh_n is None else dh_n, NULL if dc_n is None else dc_n,
             NULL if saved.gates is None else saved.gates, saved.hs,
             NULL if saved.cs is None else saved.cs, p["U"], dg_rec,
             NULL if dg_x is None else dg_x, dh0, NULL if dc0 is None else dc0, st.lens_arg,
             np.int32(T), np.int32(B), np.int32(H), np.int32(st.reverse))
            + pp.kernel_args() + (_barriers(pp),))
    if not _launch(_kernel(cell, "backward", dt), pp, args):
        return None
    return (dg_rec if dg_x is None else dg_x), dg_rec, dh0, dc0
