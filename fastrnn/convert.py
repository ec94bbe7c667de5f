"""``fastrnn.convert``: weights from and to other layouts.

The public path of :mod:`fastrnn.interop.convert`; importing it gives that module itself.
"""

import sys

from .interop import convert as _implementation

sys.modules[__name__] = _implementation
