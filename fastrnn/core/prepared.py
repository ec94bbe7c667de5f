"""Prepared weights: a cell's parameters checked, copied and packed once for one backend.

Every call of :func:`fastrnn.forward` with a plain ``params`` mapping checks the arrays and
lets the backend pack them into the layout its kernels read (the numba backend's panels,
say). Calls that reuse the same weights — streaming one frame at a time, decoding one
token at a time, a cell called in a loop — can pay that once: ``w = fastrnn.prepare(cell,
params)`` and then ``fastrnn.forward(cell, x, w)`` anywhere ``params`` goes.

:func:`fastrnn.prepare` (fastrnn/api.py) makes them; this module holds the object.

The contract: a :class:`PreparedWeights` is a **snapshot**. ``prepare`` copies the arrays,
so changing the source arrays afterwards (an optimiser step, say) is not seen until they
are prepared again. Nothing is cached behind the caller's back: there is no lookup keyed
on the identity of the arrays.
"""

from __future__ import annotations

from typing import Any

from .cells import CellSpec

__all__ = ["PreparedWeights", "read_only_views"]


class PreparedWeights:
    """A cell's weights packed for one backend (see the module docstring).

    Attributes:
        cell: the :class:`~fastrnn.core.cells.CellSpec`.
        backend: the backend object the weights are packed for.
        input_size, hidden_size: I and H.
        dtype: the dtype of every array (and of the inputs they accept).
        params: the snapshot, name -> read-only array (shapes of :mod:`fastrnn.core.cells`).
        packed: what the backend's kernels read (backend-private).
    """

    __slots__ = ("cell", "backend", "input_size", "hidden_size", "dtype", "params", "packed")

    def __init__(self, cell: CellSpec, backend, params: dict, packed: Any):
        self.cell, self.backend, self.params, self.packed = cell, backend, params, packed
        self.input_size, self.hidden_size = params["W"].shape[0], params["U"].shape[0]
        self.dtype = params["W"].dtype

    def __repr__(self):
        return (f"PreparedWeights(cell={self.cell.name!r}, backend={self.backend.name!r}, "
                f"input_size={self.input_size}, hidden_size={self.hidden_size}, "
                f"dtype={self.dtype})")


def read_only_views(arrays: dict) -> dict:
    """Views the caller may read but not write (NumPy; device arrays have no such flag)."""
    out = {}
    for k, a in arrays.items():
        view = a.view()
        if hasattr(view.flags, "writeable"):
            view.flags.writeable = False
        out[k] = view
    return out
