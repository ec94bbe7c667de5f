"""The tape's guard on the GPU: checksums of device arrays taken without waiting for the device.

A tape checksums the arrays its backward will read, so that a backward after they were
changed in place refuses instead of returning wrong gradients. On the host that is a CRC
of a sample of each array. For device arrays, copying the sample to the host waits for
every kernel queued before it: after the forward's, that idles the device while the host
then enqueues the backward. Here one kernel (``digest_arrays`` of kernels/util.cu) hashes a
sample of up to 8 arrays on the device, and the hashes travel to pinned host memory with
an asynchronous copy marked by an event; the backward's comparison waits on those events
only, after its own kernels are queued.

Each array is hashed through the elements the host's checksum reads
(:func:`fastrnn.core.results.digest_sampling`).
"""

from __future__ import annotations

import numpy as np

from ...core.results import digest_sampling
from .lib import cupy
from .nvrtc import function

__all__ = ["DeviceChecksum", "checksum", "changed"]

_MAX = 8
_DIGEST = np.dtype([("ptr", "<u8", (_MAX,)), ("stride", "<i8", (_MAX,)),
                    ("count", "<i8", (_MAX,)), ("bytes", "<i8", (_MAX,))])


class DeviceChecksum:
    """Hashes of some arrays: on the device, and (once ``event`` has passed) in ``host``."""

    __slots__ = ("device", "host", "event", "_pinned")

    def __init__(self, device, host, event, pinned):
        self.device, self.host, self.event, self._pinned = device, host, event, pinned

    def values(self) -> np.ndarray:
        self.event.synchronize()
        return self.host


def checksum(arrays) -> DeviceChecksum:
    """Start hashing ``arrays`` (contiguous device arrays) on the current stream."""
    n = len(arrays)
    out = cupy.empty(max(n, 1), dtype=cupy.uint64)
    fn = function("util", "digest_arrays()", np.dtype(np.float32))
    for start in range(0, n, _MAX):
        chunk = arrays[start:start + _MAX]
        spec = np.zeros((), dtype=_DIGEST)
        for i, a in enumerate(chunk):
            stride, count = digest_sampling(int(a.size))
            spec["ptr"][i] = a.data.ptr
            spec["stride"][i], spec["count"][i] = stride, count
            spec["bytes"][i] = a.dtype.itemsize
        fn((len(chunk),), (256,), (spec[()], out[start:]), shared_mem=256 * 8)
    pinned = cupy.cuda.alloc_pinned_memory(out.nbytes)
    host = np.frombuffer(pinned, dtype=np.uint64, count=out.size)
    out.get(out=host, blocking=False)
    event = cupy.cuda.Event(disable_timing=True)
    event.record()
    return DeviceChecksum(out, host, event, pinned)


def changed(then: DeviceChecksum, arrays):
    """Hash ``arrays`` again; the returned function waits for both hashes and gives the
    indices of the arrays whose hash differs from ``then``'s."""
    now = checksum(arrays)

    def result():
        a, b = then.values(), now.values()
        return [i for i in range(len(arrays)) if a[i] != b[i]]
    return result
