"""The weights as the numba kernels read them, packed on first use.

The per-step products of a sequence read W and U as panels (:func:`.gemm.pack_panels`);
its backward reads U^T as panels and W^T for dx. Packing is a copy of every weight, so it
is made once per weights object, on the first call that needs it: a one-step call
(:mod:`.single_step`) reads the arrays as given and never packs, because there each
weight is read once anyway and the copy would cost more than it saves.
"""

from __future__ import annotations

import numpy as np

from ...core.cells import CellSpec
from .gemm import pack_panels

__all__ = ["NumbaWeights"]


def _writable(a: np.ndarray) -> np.ndarray:
    """Numba compiles a separate variant for read-only or strided arrays; hand it a
    writable contiguous one (a copy only where needed: biases are small)."""
    return a if a.flags.writeable and a.flags.c_contiguous else np.array(a, order="C")


class NumbaWeights:
    """The weights of one cell, packed on first use.

    params: the checked arrays (W (I, G*H), U (H, G*H), b, bn), any strides (a transposed
    view costs no copy here; packing reads it as it is). Wp, Up: panels of W and U (for
    gru_reset_before Up holds U's r, z columns and Up_n its n columns, since the n product
    reads r * h). Rp: panels of the projection Wr (lstmp, else None). b, bn: writable
    contiguous biases (bn None unless gru).
    """

    __slots__ = ("cell", "params", "b", "bn", "_wp", "_up", "_rp", "_ut", "_wt", "_rt")

    def __init__(self, cell: CellSpec, params):
        self.cell, self.params = cell, params
        self.b = _writable(params["b"])
        self.bn = _writable(params["bn"]) if cell.has_recurrent_bias else None
        self._wp = self._up = self._rp = self._ut = self._wt = self._rt = None

    @property
    def packed(self) -> bool:
        """Whether the forward's panels exist already (a later call then reuses them)."""
        return self._wp is not None

    @property
    def Wp(self) -> np.ndarray:
        if self._wp is None:
            self._wp = pack_panels(self.params["W"])
        return self._wp

    def _u_panels(self):
        if self._up is None:
            U = self.params["U"]
            H = U.shape[0]
            if self.cell.name == "gru_reset_before":
                self._up = (pack_panels(U[:, :2 * H]), pack_panels(U[:, 2 * H:]))
            else:
                self._up = (pack_panels(U), None)
        return self._up

    @property
    def Up(self) -> np.ndarray:
        return self._u_panels()[0]

    @property
    def Up_n(self):
        return self._u_panels()[1]

    @property
    def Rp(self):
        if self._rp is None and self.cell.has_projection:
            self._rp = pack_panels(self.params["Wr"])
        return self._rp

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
