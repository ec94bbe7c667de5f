"""The reference backend: plain NumPy, one readable step at a time (:mod:`.reference`)."""

from .reference import NumpyBackend

__all__ = ["NumpyBackend"]
