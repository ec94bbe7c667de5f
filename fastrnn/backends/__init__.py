"""The backends and their registry: names -> backend classes, loaded lazily, with the
reason a backend cannot run.

One folder per backend, each behind the small protocol of :mod:`.base`: ``numpy/`` (the
reference), ``numba/`` (fused CPU kernels), ``cupy/`` (GPU). :mod:`.readout` is the array
code they share. A new backend is a folder here with a :class:`Backend` subclass,
registered below (or at run time with :func:`register_backend`).

Importing this package imports neither numba nor cupy; a backend's module is imported the
first time that backend is asked for (or when :func:`available_backends` probes it).
"""

from __future__ import annotations

import importlib

from ..core import config
from ..core.arrays import is_cupy_array
from .base import Backend, BackwardOut, ForwardOut

__all__ = ["Backend", "ForwardOut", "BackwardOut", "BackendUnavailableError", "register_backend", "unregister_backend",
           "get_backend", "available_backends", "unavailable_reasons", "backend_names",
           "auto_backend_name", "resolve"]

class BackendUnavailableError(RuntimeError):
    """A known backend cannot run on this machine; the message says why."""


# name -> "module:Class" (loaded on first use) or a Backend subclass
_REGISTRY: dict[str, object] = {
    "numpy": "fastrnn.backends.numpy:NumpyBackend",
    "numba": "fastrnn.backends.numba:NumbaBackend",
    "cupy": "fastrnn.backends.cupy:CupyBackend",
}
_instances: dict[str, Backend] = {}
_reasons: dict[str, str] = {}


def register_backend(name: str, backend: object) -> None:
    """Register a Backend subclass (or a "module:Class" string) under ``name``."""
    _REGISTRY[name] = backend
    _instances.pop(name, None)
    _reasons.pop(name, None)


def unregister_backend(name: str) -> None:
    """Remove a registered backend (the built-in ones too); ValueError if unknown."""
    if name not in _REGISTRY:
        raise ValueError(f"backend: unknown backend {name!r}")
    del _REGISTRY[name]
    _instances.pop(name, None)
    _reasons.pop(name, None)


def backend_names() -> list[str]:
    """Every registered name, available here or not."""
    return list(_REGISTRY)


def _load(name: str) -> Backend:
    entry = _REGISTRY[name]
    if isinstance(entry, str):
        module_name, cls_name = entry.split(":")
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
        except ImportError as exc:
            raise BackendUnavailableError(
                f"backend {name!r} cannot run here: importing it failed ({exc})") from exc
    else:
        cls = entry
    reason = cls.unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(f"backend {name!r} cannot run here: {reason}")
    return cls()


def get_backend(name: str) -> Backend:
    """The backend instance for ``name``; ValueError if unknown, BackendUnavailableError if it cannot run."""
    try:
        return _instances[name]
    except KeyError:
        pass
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"backend: unknown backend {name!r}; expected 'auto' or one of "
                         f"{', '.join(_REGISTRY)}")
    if name in _reasons:
        raise BackendUnavailableError(_reasons[name])
    try:
        backend = _load(name)
    except BackendUnavailableError as exc:
        _reasons[name] = str(exc)
        raise
    _instances[name] = backend
    return backend


def unavailable_reasons() -> dict[str, str]:
    """For each registered backend that cannot run here, the reason."""
    out = {}
    for name in _REGISTRY:
        try:
            get_backend(name)
        except BackendUnavailableError as exc:
            out[name] = str(exc)
    return out


def available_backends() -> list[str]:
    """Names of the backends that can run here, e.g. ``["numpy", "numba"]``."""
    missing = unavailable_reasons()
    return [name for name in _REGISTRY if name not in missing]


def resolve(backend, array=None) -> Backend:
    """The backend object for a ``backend=`` argument: ``"auto"`` or None (chosen from the
    type of ``array`` by :func:`auto_backend_name`), a registered name, or a backend object."""
    if backend is None or backend == "auto":
        backend = auto_backend_name(array)
    if isinstance(backend, Backend):
        return backend
    if not isinstance(backend, str):
        raise TypeError(f"backend: expected a backend name (str), got {type(backend).__name__}")
    return get_backend(backend)


def auto_backend_name(array) -> str:
    """The backend ``backend="auto"`` picks for an input array.

    ``config.backend`` (``FASTRNN_BACKEND``) wins when set; else CuPy arrays go to cupy
    and everything else to numba when it can run, else to numpy.
    """
    chosen = config.backend
    if chosen and chosen != "auto":
        return chosen
    if is_cupy_array(array):
        return "cupy"
    try:
        get_backend("numba")
        return "numba"
    except BackendUnavailableError:
        return "numpy"
