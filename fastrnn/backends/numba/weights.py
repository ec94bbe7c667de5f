"""The weights as the numba kernels read them, packed once per :func:`fastrnn.prepare`.

The per-step products read W and U as panels (:func:`.gemm.pack_panels`); the backward
reads U^T as panels and W^T for dx. Packing is a copy, so a prepared object made once
serves every call; the panels of the backward are made on the first backward.
"""

from __future__ import annotations

import numpy as np

from ...core.cells import CellSpec
from .gemm import pack_panels

__all__ = ["NumbaWeights"]


def _writable(a: np.ndarray) -> np.ndarray:
    """Numba compiles a separate variant for read-only arrays; hand it a writable copy."""
    return a if a.flags.writeable else a.copy()


class NumbaWeights:
    """Packed weights of one cell.

    params: the checked arrays (W (I, G*H), U (H, G*H), b, bn). Wp, Up: panels of W and U
    (for gru_reset_before Up holds U's r, z columns and Up_n its n columns, since the n
    product reads r * h). Rp: panels of the projection Wr (lstmp, else None). b, bn:
    writable biases (bn None unless gru).
    """

    __slots__ = ("cell", "params", "Wp", "Up", "Up_n", "Rp", "b", "bn", "_ut", "_wt", "_rt")

    def __init__(self, cell: CellSpec, params):
        self.cell, self.params = cell, params
        W, U = params["W"], params["U"]
        H = U.shape[0]
        self.Wp = pack_panels(W)
        if cell.name == "gru_reset_before":
            self.Up, self.Up_n = pack_panels(U[:, :2 * H]), pack_panels(U[:, 2 * H:])
        else:
            self.Up, self.Up_n = pack_panels(U), None
        self.Rp = pack_panels(params["Wr"]) if cell.has_projection else None
        self.b = _writable(params["b"])
        self.bn = _writable(params["bn"]) if cell.has_recurrent_bias else None
        self._ut = self._wt = self._rt = None

    def ut_panels(self):
        """Panels of U^T (gru_reset_before: of its r, z rows and of its n rows, else None)."""
        if self._ut is None:
            UT = self.params["U"].T
            H = UT.shape[1]
            if self.cell.name == "gru_reset_before":
                self._ut = (pack_panels(UT[:2 * H]), pack_panels(UT[2 * H:]))
            else:
                self._ut = (pack_panels(UT), None)
        return self._ut

    def rt_panels(self) -> np.ndarray:
        """Panels of Wr^T (P, H), the right operand of dL/dm = dL/dh' @ Wr^T (lstmp)."""
        if self._rt is None:
            self._rt = pack_panels(self.params["Wr"].T)
        return self._rt

    def wt_panels(self) -> np.ndarray:
        """Panels of W^T (G*H, I), the right operand of dx = dG @ W^T."""
        if self._wt is None:
            self._wt = pack_panels(self.params["W"].T)
        return self._wt
