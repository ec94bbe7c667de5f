"""``fastrnn.notebook``: the RNN/LSTM course notebook's functions, computed by fastrnn.

The public path of :mod:`fastrnn.interop.notebook`; importing it gives that module itself.
"""

import sys

from .interop import notebook as _implementation

sys.modules[__name__] = _implementation
