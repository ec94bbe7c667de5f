"""Weights moving between torch.nn and fastrnn.torch, and whole models saved and loaded.

* ``state_dict`` both ways: a trained-looking torch.nn module's state loaded into its
  fastrnn.torch twin (strict), the twin's state loaded back into a fresh torch.nn module;
  all three compute the same function (modules: layers, directions, proj_size; cells).
* ``torch.load(weights_only=True)`` of a whole saved model holding fastrnn.torch modules,
  as PyTorch's word-language-model example saves and reloads its model: refused without
  the allowlist, loaded with the one line the README gives
  (``torch.serialization.add_safe_globals(fastrnn.torch.SAFE_GLOBALS)``), and the loaded
  model computes what the saved one did.
"""

import io
import pickle

import pytest
import torch
from torch import nn

import fastrnn.torch as frt
from conftest import require_backend
from fastrnn.core.cells import get_cell
from fastrnn.core.tolerances import SAME_ARITHMETIC

F64 = torch.float64

MODULES = {
    "lstm": (nn.LSTM, frt.LSTM, {"num_layers": 2, "bidirectional": True}),
    "lstm_proj": (nn.LSTM, frt.LSTM, {"num_layers": 2, "proj_size": 3}),
    "gru": (nn.GRU, frt.GRU, {"num_layers": 2, "batch_first": True}),
    "rnn_relu": (nn.RNN, frt.RNN, {"nonlinearity": "relu", "bidirectional": True}),
}
CELLS = {
    "lstm": (nn.LSTMCell, frt.LSTMCell, {}),
    "gru": (nn.GRUCell, frt.GRUCell, {}),
    "rnn_tanh": (nn.RNNCell, frt.RNNCell, {}),
}


@pytest.fixture(autouse=True)
def numba_runs():
    require_backend("numba")


def _scrambled(module):
    """Move every parameter away from its init, as training would."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return module


def _outputs(module, x):
    out = module(x)
    flat = []
    for o in out if isinstance(out, tuple) else (out,):
        flat.extend(o if isinstance(o, tuple) else (o,))
    return [o.detach() for o in flat]


def _same(a, b, what):
    for i, (u, v) in enumerate(zip(a, b)):
        torch.testing.assert_close(u, v, **SAME_ARITHMETIC, msg=lambda m: f"{what}[{i}]: {m}")


@pytest.mark.parametrize("kind", list(MODULES) + [f"cell_{c}" for c in CELLS])
def test_state_dict_moves_both_ways(kind):
    if kind.startswith("cell_"):
        theirs, ours, kw = CELLS[kind[5:]]
        args, x = (4, 6), torch.randn(3, 4, dtype=F64)
    else:
        theirs, ours, kw = MODULES[kind]
        args, x = (4, 6), torch.randn(5, 3, 4, dtype=F64)
    torch.manual_seed(0)
    ref = _scrambled(theirs(*args, dtype=F64, **kw))
    mod = ours(*args, dtype=F64, **kw)
    mod.load_state_dict(ref.state_dict(), strict=True)            # torch.nn -> fastrnn.torch
    _same(_outputs(mod, x), _outputs(ref, x), "fastrnn.torch after torch.nn's state")
    with torch.no_grad():                                         # trained on our side
        for p in mod.parameters():
            p.mul_(0.9)
    back = theirs(*args, dtype=F64, **kw)
    back.load_state_dict(mod.state_dict(), strict=True)           # fastrnn.torch -> torch.nn
    assert list(back.state_dict()) == list(mod.state_dict())
    _same(_outputs(back, x), _outputs(mod, x), "torch.nn after fastrnn.torch's state")


class WordLanguageModel(nn.Module):
    """The shape of PyTorch's word_language_model example: embedding, RNN, decoder."""

    def __init__(self, rnn):
        super().__init__()
        self.encoder = nn.Embedding(20, 4)
        self.rnn = rnn
        self.decoder = nn.Linear(rnn.proj_size or rnn.hidden_size, 20)

    def forward(self, tokens):
        out = self.rnn(self.encoder(tokens))[0]
        return self.decoder(out)


TORCH_PARTS = [WordLanguageModel, nn.Embedding, nn.Linear]


@pytest.fixture
def no_global_allowlist():
    """An empty process-wide allowlist for the test (other tests may have added to it)."""
    kept = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    yield
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(kept)


@pytest.mark.parametrize("rnn", [lambda: frt.LSTM(4, 6, num_layers=2),
                                 lambda: frt.GRU(4, 6, bidirectional=False),
                                 lambda: frt.LSTM(4, 6, proj_size=2)],
                         ids=["lstm", "gru", "lstm_proj"])
def test_whole_model_loads_with_weights_only(rnn, no_global_allowlist):
    torch.manual_seed(1)
    model = _scrambled(WordLanguageModel(rnn()))
    tokens = torch.randint(0, 20, (7, 3))
    want = model(tokens).detach()
    buf = io.BytesIO()
    torch.save(model, buf)
    with pytest.raises(pickle.UnpicklingError):
        with torch.serialization.safe_globals(TORCH_PARTS):
            torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    with torch.serialization.safe_globals(TORCH_PARTS + frt.SAFE_GLOBALS):
        loaded = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    assert type(loaded.rnn) is type(model.rnn)
    torch.testing.assert_close(loaded(tokens).detach(), want, rtol=0, atol=0)


@pytest.mark.parametrize("cls,args", [(frt.LSTMCell, (3, 5)), (frt.GRUCell, (3, 5)),
                                      (frt.RNNCell, (3, 5)), (frt.RNN, (3, 5))])
def test_each_module_loads_with_weights_only(cls, args):
    mod = cls(*args)
    buf = io.BytesIO()
    torch.save(mod, buf)
    with torch.serialization.safe_globals(frt.SAFE_GLOBALS):
        loaded = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    x = torch.randn(2, 3) if "Cell" in cls.__name__ else torch.randn(4, 2, 3)
    _same(_outputs(loaded, x), _outputs(mod, x), cls.__name__)


def test_a_pickled_cell_spec_is_the_registered_one():
    spec = get_cell("gru")
    assert pickle.loads(pickle.dumps(spec)) is spec
