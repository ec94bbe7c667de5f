"""Objects built on the core API that hold their parameters.

* :mod:`.layer` — ``fastrnn.LSTM``, ``GRU``, ``RNN``: one layer;
* :mod:`.stepper` — ``fastrnn.Stepper``: streaming inference, the state kept inside;
* :mod:`.stack` — ``stack_forward`` / ``stack_backward`` / ``Stack``: several layers,
  bidirectional, dropout between them.
"""

from .layer import GRU, LSTM, RNN, Layer, LayerParams
from .stepper import Stepper
from .stack import (Stack, StackGradients, StackResult, StackTape, dropout_mask,
                    init_stack_params, stack_backward, stack_forward)

__all__ = ["Layer", "LayerParams", "Stepper", "LSTM", "GRU", "RNN", "Stack", "StackGradients", "StackResult",
           "StackTape", "dropout_mask", "init_stack_params", "stack_backward", "stack_forward"]
