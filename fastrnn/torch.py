"""``fastrnn.torch``: drop-in ``torch.nn`` recurrent modules running on fastrnn.

The public path of :mod:`fastrnn.interop.torch_modules`; importing it gives that module
itself.
"""

import sys

from .interop import torch_modules as _implementation

sys.modules[__name__] = _implementation
