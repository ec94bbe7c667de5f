"""``fastrnn.dask``: forward and one training step over dask arrays sharded along the batch.

The public path of :mod:`fastrnn.interop.dask`; importing it gives that module itself.
Needs the optional extra ``fastrnn[dask]`` (``dask[array]``, ``distributed``).
"""

import sys

from .interop import dask as _implementation

sys.modules[__name__] = _implementation
