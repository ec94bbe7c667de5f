"""Torch tensors as arrays of the backend that computes on their device, and back.

CPU tensors share their memory with NumPy arrays and run on the numba backend (numpy
where numba cannot run, or whichever ``backend=`` names); CUDA tensors go through DLPack,
zero-copy, to CuPy, on torch's current stream, and run on the cupy backend. Nothing here
imports CuPy until a CUDA tensor arrives.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from .. import backends as _backends

__all__ = ["resolve"]


class _NumpyBridge:
    """CPU tensors as NumPy arrays and back, sharing memory."""

    xp = np
    device_type = "cpu"

    def scope(self, tensor):
        return contextlib.nullcontext()

    @staticmethod
    def array(t):
        return t.detach().numpy()

    @staticmethod
    def tensor(a, avoid=None):
        """A tensor on ``a``'s memory; a copy if ``a`` is read-only or overlaps ``avoid``."""
        if not a.flags.writeable or (avoid is not None and np.may_share_memory(a, avoid)):
            a = a.copy()
        return torch.from_numpy(a)

    @staticmethod
    def output_tensor(a):
        """A tensor on the memory of an output that the tape also reads.

        fastrnn marks such an output read-only so a NumPy user cannot corrupt the tape. Here
        the Function saves the returned tensor for backward, so torch's version counter
        guards it instead (an in-place change raises at backward time) and the flag can be
        lifted; where NumPy refuses (a read-only base), the output is copied.
        """
        if not a.flags.writeable:
            try:
                a.flags.writeable = True
            except ValueError:
                a = a.copy()
        return torch.from_numpy(a)


class _StreamProtocol:
    """A raw CUDA stream pointer behind the CUDA stream protocol (``__cuda_stream__``)."""

    __slots__ = ("pointer",)

    def __init__(self, pointer: int):
        self.pointer = pointer

    def __cuda_stream__(self):
        return (0, self.pointer)


class _CupyBridge:
    """CUDA tensors as CuPy arrays and back through DLPack, zero-copy.

    Every conversion and every fastrnn call runs inside :meth:`scope`: on the tensor's
    device and on torch's current CUDA stream (wrapped as a CuPy stream), so CuPy
    work is ordered with torch's work without extra synchronisation.
    """

    device_type = "cuda"

    def __init__(self):
        import cupy                                          # noqa: PLC0415 - optional
        self.cp = self.xp = cupy
        self._streams: dict[int, object] = {}

    def scope(self, tensor):
        stack = contextlib.ExitStack()
        stack.enter_context(self.cp.cuda.Device(tensor.device.index))
        stack.enter_context(self.stream(torch.cuda.current_stream(tensor.device)))
        return stack

    def stream(self, torch_stream):
        """torch's stream as a CuPy stream, made once per stream pointer. CuPy 14's
        ``Stream.from_external`` takes an object with the CUDA stream protocol
        (``__cuda_stream__``); it is handed the pointer alone, so that no torch stream is
        kept alive here. CuPy 13 has only ``ExternalStream(pointer)``, which 14 deprecates.
        The device is the current one (scope enters the tensor's device first)."""
        pointer = int(torch_stream.cuda_stream)
        found = self._streams.get(pointer)
        if found is None:
            from_external = getattr(self.cp.cuda.Stream, "from_external", None)
            if from_external is not None:
                found = from_external(_StreamProtocol(pointer))
            else:
                found = self.cp.cuda.ExternalStream(pointer)
            if len(self._streams) >= 64:            # programs that make streams per call
                self._streams.clear()
            self._streams[pointer] = found
        return found

    def array(self, t):
        # Contiguous first: fastrnn would copy a strided array anyway, and DLPack importers
        # differ on zero strides (expanded gradients).
        return self.cp.from_dlpack(t.detach().contiguous())

    def tensor(self, a, avoid=None):
        if avoid is not None and self.cp.may_share_memory(a, avoid):
            a = a.copy()
        return torch.from_dlpack(a)

    def output_tensor(self, a):
        return torch.from_dlpack(a)


_NUMPY_BRIDGE = _NumpyBridge()
_GPU_BACKENDS = {"cupy"}
_CUPY_BRIDGE = None


def _cupy_bridge():
    global _CUPY_BRIDGE
    if _CUPY_BRIDGE is None:
        try:
            _CUPY_BRIDGE = _CupyBridge()
        except ImportError as exc:
            raise _backends.BackendUnavailableError(
                f"backend 'cupy' cannot run here: importing cupy failed ({exc}); CUDA tensors "
                f"need CuPy") from exc
    return _CUPY_BRIDGE


_cpu_resolved: dict = {}


def resolve(backend, device: torch.device):
    """(backend object, bridge) for tensors on ``device`` (the CPU's answer is kept: a
    cell step in a loop asks at every call)."""
    if device.type == "cpu" and isinstance(backend, str):
        found = _cpu_resolved.get(backend)
        if found is None:
            found = _cpu_resolved[backend] = _resolve(backend, device)
        return found
    return _resolve(backend, device)


def _resolve(backend, device: torch.device):
    if device.type == "cpu":
        bridge = _NUMPY_BRIDGE
        name = (_backends.auto_backend_name(np.empty(0)) if backend in (None, "auto")
                else backend)
    elif device.type == "cuda":
        bridge = _cupy_bridge()
        name = "cupy" if backend in (None, "auto") else backend
    else:
        raise ValueError(f"input: tensors on device {device} are not supported; fastrnn.torch "
                         f"runs CPU tensors (numba or numpy backend) and CUDA tensors (cupy)")

    def wrong_device():
        return ValueError(f"backend: {name!r} cannot compute on {device.type} tensors; use "
                          f"backend='auto' or one for {device.type} "
                          f"({'numba or numpy' if device.type == 'cpu' else 'cupy'})")

    if (name in _GPU_BACKENDS) != (device.type == "cuda") and name in _backends.backend_names():
        raise wrong_device()                        # before loading it: the clearer reason
    be = _backends.get_backend(name)
    if be.xp is not bridge.xp:                      # a registered backend of another device
        raise wrong_device()
    return be, bridge
