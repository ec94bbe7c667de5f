"""What the current GPU can hold: the limits the persistent kernels are planned against.

Read once per device through CuPy and kept; the test suite's CPU emulation of the kernels
replaces :func:`limits` and :func:`resident_blocks` with those of its own small device.
"""

from __future__ import annotations

from dataclasses import dataclass

from .lib import cupy

__all__ = ["DeviceLimits", "limits", "resident_blocks"]


@dataclass(frozen=True)
class DeviceLimits:
    """multiprocessors; smem_per_block: the opt-in shared memory a block may have, in bytes;
    cooperative: whether cooperative launches (all blocks resident at once) work."""

    multiprocessors: int
    smem_per_block: int
    cooperative: bool


_cache: dict[int, DeviceLimits] = {}


def limits() -> DeviceLimits:
    """The limits of CuPy's current device."""
    rt = cupy.cuda.runtime
    device = rt.getDevice()
    found = _cache.get(device)
    if found is None:
        def attr(name, number):
            return rt.deviceGetAttribute(getattr(rt, name, number), device)
        found = _cache[device] = DeviceLimits(
            multiprocessors=attr("cudaDevAttrMultiProcessorCount", 16),
            smem_per_block=attr("cudaDevAttrMaxSharedMemoryPerBlockOptin", 97),
            cooperative=bool(attr("cudaDevAttrCooperativeLaunch", 95)))
    return found


_resident: dict[tuple, int] = {}


def resident_blocks(fn, threads: int, smem: int) -> int:
    """How many blocks of the compiled kernel ``fn`` (a ``cupy.RawKernel`` function) with
    ``threads`` threads and ``smem`` bytes of dynamic shared memory the whole device holds
    at once: the occupancy calculator's blocks per multiprocessor times their number.
    Asked once per kernel and size (the kernels are compiled once per process)."""
    key = (id(fn), fn.kernel.ptr, threads, smem)
    found = _resident.get(key)
    if found is None:
        if smem > 48 * 1024 and fn.max_dynamic_shared_size_bytes < smem:
            fn.max_dynamic_shared_size_bytes = smem
        per_sm = cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(
            fn.kernel.ptr, threads, smem)
        found = _resident[key] = per_sm * limits().multiprocessors
    return found
