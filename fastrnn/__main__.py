"""``python -m fastrnn``: the same as the ``fastrnn`` command."""

import sys

from .tools.cli import main

sys.exit(main())
