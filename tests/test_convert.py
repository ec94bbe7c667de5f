"""fastrnn.convert: PyTorch, Keras 3 and course-notebook layouts.

Round trips are checked bit for bit (np.array_equal); conversions of foreign weights are
checked by running the foreign code (torch modules, the notebooks' own forward functions)
against ``fastrnn.forward(..., backend="numpy")``. Keras layers computing the same function
as the reference are checked in test_reference_keras.py.
"""

import os
import subprocess
import sys

os.environ["KERAS_BACKEND"] = "torch"      # before keras is imported anywhere in this process

try:
    import keras  # noqa: E402
except ImportError as _exc:                 # e.g. the GPU machines: the Keras tests skip
    class _SkipWithoutKeras:
        """Stands for the keras module: a test that reaches for keras is skipped, saying
        why, and every test that does not (torch, notebooks, weight lists) still runs."""

        why = f"keras is not installed ({_exc}); pip install -e '.[test]' brings it"

        def __getattr__(self, name):
            if name.startswith(("_", "pytest")):       # pytest's own look at module names
                raise AttributeError(name)
            pytest.skip(self.why)

    keras = _SkipWithoutKeras()
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fastrnn  # noqa: E402
from fastrnn import convert  # noqa: E402
from fastrnn.tools import problems  # noqa: E402
pytestmark = pytest.mark.filterwarnings(
    # Keras internals call np.array(tensor) in a way NumPy 2 deprecates; not ours to fix.
    "ignore:__array__ implementation doesn.t accept a copy keyword:DeprecationWarning")

from conftest import record_error  # noqa: E402
from fastrnn.core.tolerances import TORCH_TOLERANCES, rel_err  # noqa: E402
from assertions import assert_close  # noqa: E402

TORCH_CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]
KERAS_CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru", "gru_reset_before"]
NOTEBOOK_CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru_reset_before"]
ALL_CELLS = list(fastrnn.CELLS)


def random_params(rng, cell, I, H, dtype="float64"):
    return problems.random_params(rng, cell, I, H, dtype, scale=1.0)


def assert_params_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert np.array_equal(a[k], b[k]), f"{k} differs"


def ref_forward(cell, x, params, h0=None, c0=None, reverse=False):
    return fastrnn.forward(cell, x, params, h0, c0, reverse=reverse, backend="numpy",
                           training=False)


def test_gate_orders_are_permutations_of_the_cell_specs():
    for table in (convert.TORCH_GATES, convert.KERAS_GATES):
        for cell, order in table.items():
            assert sorted(order) == sorted(fastrnn.get_cell(cell).gates)
    assert sorted(convert.NOTEBOOK_LSTM_GATES.values()) == sorted(fastrnn.get_cell("lstm").gates)
    assert (sorted(convert.NOTEBOOK_GRU_GATES.values())
            == sorted(fastrnn.get_cell("gru_reset_before").gates))


# ------------------------------------------------------------------------------ PyTorch

def torch_module(cell, I, H, **kw):
    kinds = {"rnn_tanh": (torch.nn.RNN, {"nonlinearity": "tanh"}),
             "rnn_relu": (torch.nn.RNN, {"nonlinearity": "relu"}),
             "lstm": (torch.nn.LSTM, {}), "gru": (torch.nn.GRU, {})}
    cls, extra = kinds[cell]
    return cls(I, H, dtype=torch.float64, **extra, **kw)


def run_torch(module, x, cell):
    with torch.no_grad():
        out, state = module(torch.from_numpy(x))
    h_n = state[0] if cell == "lstm" else state
    c_n = state[1] if cell == "lstm" else None
    return out.numpy(), h_n.numpy(), None if c_n is None else c_n.numpy()


@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_torch_stacked_bidirectional_module_matches_reference(cell, rng):
    """Every layer and direction of a 2-layer bidirectional module, converted and chained."""
    T, B, I, H = 5, 3, 4, 6
    torch.manual_seed(int(rng.integers(1 << 31)))
    module = torch_module(cell, I, H, num_layers=2, bidirectional=True)
    x = rng.standard_normal((T, B, I))
    out, h_n, c_n = run_torch(module, x, cell)
    inp, finals, cells = x, [], []
    for layer in range(2):
        halves = []
        for reverse in (False, True):
            name, params = convert.from_torch(module, layer=layer, reverse=reverse)
            assert name == cell
            res = ref_forward(cell, inp, params, reverse=reverse)
            halves.append(res.h)
            finals.append(res.h_n)
            cells.append(res.c_n)
        inp = np.concatenate(halves, axis=-1)
    tol = TORCH_TOLERANCES
    err = assert_close(inp, out, "float64", "forward", "output", table=tol)
    record_error("converted torch modules vs reference float64 forward", err)
    assert_close(np.stack(finals), h_n, "float64", "forward", "h_n", table=tol)
    if cell == "lstm":
        assert_close(np.stack(cells), c_n, "float64", "forward", "c_n", table=tol)


@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_torch_one_step_cell_module_matches_reference(cell, rng):
    I, H, B = 3, 5, 4
    cls = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}.get(cell, torch.nn.RNNCell)
    kw = {"nonlinearity": cell[4:]} if cell.startswith("rnn") else {}
    torch.manual_seed(int(rng.integers(1 << 31)))
    module = cls(I, H, dtype=torch.float64, **kw)
    x = rng.standard_normal((B, I))
    h0 = rng.standard_normal((B, H))
    c0 = rng.standard_normal((B, H))
    with torch.no_grad():
        state = (torch.from_numpy(h0), torch.from_numpy(c0)) if cell == "lstm" else \
            torch.from_numpy(h0)
        got = module(torch.from_numpy(x), state)
    got_h = (got[0] if cell == "lstm" else got).numpy()
    name, params = convert.from_torch(module)
    res = ref_forward(name, x[None], params, h0, c0 if cell == "lstm" else None)
    assert_close(res.h_n, got_h, "float64", "forward", "h'", table=TORCH_TOLERANCES)
    if cell == "lstm":
        assert_close(res.c_n, got[1].numpy(), "float64", "forward", "c'", table=TORCH_TOLERANCES)
    rebuilt = cls(I, H, dtype=torch.float64, **kw)
    convert.to_torch(name, params, rebuilt)
    assert_params_equal(convert.from_torch(rebuilt).params, params)


@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_torch_bias_sum_and_gru_split(cell, rng):
    """b = b_ih + b_hh; for gru the n part of b_hh stays apart as bn."""
    I, H = 3, 4
    torch.manual_seed(int(rng.integers(1 << 31)))
    sd = torch_module(cell, I, H).state_dict()
    _, p = convert.from_torch(sd, cell)
    b_ih, b_hh = sd["bias_ih_l0"].numpy(), sd["bias_hh_l0"].numpy()
    if cell == "gru":
        assert np.array_equal(p["b"][:2 * H], b_ih[:2 * H] + b_hh[:2 * H])
        assert np.array_equal(p["b"][2 * H:], b_ih[2 * H:])
        assert np.array_equal(p["bn"], b_hh[2 * H:])
    else:
        assert np.array_equal(p["b"], b_ih + b_hh)
    assert np.array_equal(p["W"], sd["weight_ih_l0"].numpy().T)
    assert np.array_equal(p["U"], sd["weight_hh_l0"].numpy().T)


@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_torch_round_trip_from_fastrnn_is_exact(cell, rng):
    I, H = 4, 3
    params = random_params(rng, cell, I, H)
    sd = convert.to_torch(cell, params, layer=1, reverse=True)
    assert set(sd) == {f"{n}_l1_reverse" for n in ("weight_ih", "weight_hh", "bias_ih",
                                                    "bias_hh")}
    back = convert.from_torch(sd, cell, layer=1, reverse=True)
    assert back.cell == cell
    assert_params_equal(back.params, params)
    # the documented split: everything in bias_ih, bias_hh zero except gru's n block
    b_hh = sd["bias_hh_l1_reverse"].numpy()
    assert np.array_equal(sd["bias_ih_l1_reverse"].numpy(), params["b"])
    expected_hh = np.zeros(b_hh.shape)
    if cell == "gru":
        expected_hh[2 * H:] = params["bn"]
    assert np.array_equal(b_hh, expected_hh)
    # through a module's parameters, and from a state dict of NumPy arrays
    module = torch_module(cell, 2 * H, H, num_layers=2, bidirectional=True)
    module_params = random_params(rng, cell, 2 * H, H)
    assert convert.to_torch(cell, module_params, module, layer=1, reverse=True) is module
    assert_params_equal(convert.from_torch(module, layer=1, reverse=True).params, module_params)
    numpy_sd = {k: v.numpy() for k, v in sd.items()}
    assert_params_equal(convert.from_torch(numpy_sd, cell, layer=1, reverse=True).params, params)


@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_torch_round_trip_from_torch_computes_the_same_function(cell, rng):
    T, B, I, H = 4, 2, 3, 5
    torch.manual_seed(int(rng.integers(1 << 31)))
    src = torch_module(cell, I, H, num_layers=2, bidirectional=True)
    dst = torch_module(cell, I, H, num_layers=2, bidirectional=True)
    for layer in range(2):
        for reverse in (False, True):
            convert.to_torch(*convert.from_torch(src, layer=layer, reverse=reverse), dst,
                             layer=layer, reverse=reverse)
    x = rng.standard_normal((T, B, I))
    for a, b in zip(run_torch(dst, x, cell), run_torch(src, x, cell)):
        if b is not None:
            assert_close(a, b, "float64", "forward", "rebuilt module", table=TORCH_TOLERANCES)
    s, d = src.state_dict(), dst.state_dict()
    for k in s:
        if k.startswith("weight"):
            assert torch.equal(s[k], d[k]), k
    for sfx in ("_l0", "_l1", "_l0_reverse", "_l1_reverse"):
        s_sum = s["bias_ih" + sfx] + s["bias_hh" + sfx]
        d_sum = d["bias_ih" + sfx] + d["bias_hh" + sfx]
        rz = slice(0, 2 * H) if cell == "gru" else slice(None)
        assert_close(d_sum[rz], s_sum[rz], "float64", "forward", "bias sum", table=TORCH_TOLERANCES)
        if cell == "gru":        # n biases are not interchangeable: each stays in place
            assert torch.equal(d["bias_hh" + sfx][2 * H:], s["bias_hh" + sfx][2 * H:])
            assert torch.equal(d["bias_ih" + sfx][2 * H:], s["bias_ih" + sfx][2 * H:])


@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_torch_module_without_bias(cell, rng):
    I, H = 3, 2
    module = torch_module(cell, I, H, bias=False)
    name, p = convert.from_torch(module)
    assert name == cell
    for k in ("b", "bn"):
        if k in p:
            assert p[k].shape == fastrnn.get_cell(cell).param_shapes(I, H)[k]
            assert not p[k].any()
    new = random_params(rng, cell, I, H)
    with pytest.raises(ValueError, match="bias=False"):
        convert.to_torch(cell, new, module)
    new = {k: (v if k in ("W", "U") else np.zeros_like(v)) for k, v in new.items()}
    convert.to_torch(cell, new, module)
    assert_params_equal(convert.from_torch(module).params, new)


def test_torch_float32_tensors_and_prefix_keep_dtype(rng):
    module = torch.nn.LSTM(3, 4)
    sd = {f"encoder.rnn.{k}": v for k, v in module.state_dict().items()}
    name, p = convert.from_torch(sd, "lstm", prefix="encoder.rnn.")
    assert all(v.dtype == np.float32 for v in p.values())
    assert_params_equal(p, convert.from_torch(module).params)
    p["W"][0, 0] = 123.0                           # a copy: the module is not touched
    assert module.weight_ih_l0[0, 0].item() != 123.0


def test_torch_conversion_works_without_torch_installed():
    """convert imports without torch, and reads state dicts of NumPy arrays."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "import numpy as np, fastrnn.convert as c\n"
            "sd = {'weight_ih_l0': np.ones((6, 2)), 'weight_hh_l0': np.ones((6, 2)),\n"
            "      'bias_ih_l0': np.ones(6), 'bias_hh_l0': np.arange(6.0)}\n"
            "cell, p = c.from_torch(sd, 'gru')\n"
            "assert p['bn'].tolist() == [4.0, 5.0], p\n"
            "assert p['b'].tolist() == [1.0, 2.0, 3.0, 4.0, 1.0, 1.0], p\n"
            "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


class TestTorchErrors:
    def test_state_dict_needs_cell(self):
        with pytest.raises(ValueError, match="cell"):
            convert.from_torch(torch.nn.GRU(2, 3).state_dict())

    def test_missing_layer_key_names_state_dict(self):
        with pytest.raises(ValueError, match=r"state_dict: no key 'weight_ih_l1'"):
            convert.from_torch(torch.nn.GRU(2, 3).state_dict(), "gru", layer=1)

    def test_one_bias_missing(self):
        sd = dict(torch.nn.GRU(2, 3).state_dict())
        del sd["bias_hh_l0"]
        with pytest.raises(ValueError, match="bias_hh_l0"):
            convert.from_torch(sd, "gru")

    def test_wrong_shape_names_the_key(self):
        sd = torch.nn.GRU(2, 3).state_dict()
        with pytest.raises(ValueError, match=r"weight_hh_l0.*\(4\*H, H\)"):
            convert.from_torch(sd, "lstm")
        sd = dict(sd)
        sd["bias_ih_l0"] = torch.zeros(5)
        with pytest.raises(ValueError, match=r"bias_ih_l0"):
            convert.from_torch(sd, "gru")

    def test_unknown_module_type(self):
        with pytest.raises(TypeError, match="module"):
            convert.from_torch(torch.nn.Linear(2, 3))
        with pytest.raises(TypeError, match="source"):
            convert.from_torch(42)

    def test_layer_and_reverse_out_of_range(self):
        module = torch.nn.LSTM(2, 3, num_layers=2)
        with pytest.raises(ValueError, match="layer"):
            convert.from_torch(module, layer=2)
        with pytest.raises(TypeError, match="layer"):
            convert.from_torch(module, layer=1.0)
        with pytest.raises(ValueError, match="reverse"):
            convert.from_torch(module, reverse=True)
        with pytest.raises(ValueError, match="layer, reverse"):
            convert.from_torch(torch.nn.LSTMCell(2, 3), layer=1)

    def test_cell_mismatch_and_reset_before(self, rng):
        with pytest.raises(ValueError, match="cell"):
            convert.from_torch(torch.nn.RNN(2, 3), "rnn_relu")
        with pytest.raises(ValueError, match="no PyTorch counterpart"):
            convert.to_torch("gru_reset_before", random_params(rng, "gru_reset_before", 2, 3))
        with pytest.raises(ValueError, match="module"):
            convert.to_torch("gru", random_params(rng, "gru", 2, 3), torch.nn.LSTM(2, 3))

    def test_size_mismatch_into_module(self, rng):
        with pytest.raises(ValueError, match="params"):
            convert.to_torch("lstm", random_params(rng, "lstm", 5, 3), torch.nn.LSTM(2, 3))

    def test_projection_lstm_is_lstmp_not_lstm(self):
        module = torch.nn.LSTM(2, 4, proj_size=2)
        assert convert.from_torch(module).cell == "lstmp"
        with pytest.raises(ValueError, match="weight_hr_l0, the projection .* cell 'lstmp'"):
            convert.from_torch(module.state_dict(), "lstm")
        with pytest.raises(ValueError, match="cell: 'lstmp' has no Keras counterpart"):
            convert.to_keras("lstmp", convert.from_torch(module).params)

    def test_integer_and_mixed_dtypes(self, rng):
        sd = {k: v.double() for k, v in torch.nn.RNN(2, 3).state_dict().items()}
        bad = dict(sd, weight_ih_l0=torch.ones(3, 2, dtype=torch.int64))
        with pytest.raises(TypeError, match="weight_ih_l0"):
            convert.from_torch(bad, "rnn_tanh")
        mixed = dict(sd, bias_ih_l0=sd["bias_ih_l0"].float())
        with pytest.raises(TypeError, match="one dtype"):
            convert.from_torch(mixed, "rnn_tanh")

    def test_bad_fastrnn_params(self, rng):
        p = random_params(rng, "lstm", 2, 3)
        with pytest.raises(ValueError, match=r"params\['b'\]"):
            convert.to_torch("lstm", dict(p, b=p["b"][:5]))
        with pytest.raises(ValueError, match="missing U"):
            convert.to_torch("lstm", {"W": p["W"], "b": p["b"]})
        with pytest.raises(TypeError, match="params"):
            convert.to_torch("lstm", [p["W"], p["U"], p["b"]])


# ------------------------------------------------------------------------------- Keras 3

def keras_layer(cell, H, **kw):
    L = keras.layers
    make = {"rnn_tanh": lambda: L.SimpleRNN(H, **kw),
            "rnn_relu": lambda: L.SimpleRNN(H, activation="relu", **kw),
            "lstm": lambda: L.LSTM(H, **kw),
            "gru": lambda: L.GRU(H, reset_after=True, **kw),
            "gru_reset_before": lambda: L.GRU(H, reset_after=False, **kw)}
    return make[cell]()


@pytest.mark.parametrize("cell", KERAS_CELLS)
def test_keras_round_trip_from_fastrnn_is_exact(cell, rng):
    I, H = 3, 4
    params = random_params(rng, cell, I, H)
    weights = convert.to_keras(cell, params)
    back = convert.from_keras(weights, cell)
    assert back.cell == cell
    assert_params_equal(back.params, params)
    layer = keras_layer(cell, H, dtype="float64")
    layer.build((None, None, I))
    assert convert.to_keras(cell, params, layer) is layer
    for got, want in zip(layer.get_weights(), weights):
        assert np.array_equal(got, want)
    assert_params_equal(convert.from_keras(layer).params, params)


@pytest.mark.parametrize("cell", KERAS_CELLS)
def test_keras_round_trip_from_keras(cell, rng):
    """Keras -> fastrnn -> Keras is exact, except the reset_after GRU's bias split."""
    I, H = 2, 5
    layer = keras_layer(cell, H, dtype="float64")
    layer.build((None, None, I))
    weights = [rng.uniform(-1, 1, w.shape) for w in layer.get_weights()]
    back = convert.to_keras(*convert.from_keras(weights, cell))
    for k in range(2):
        assert np.array_equal(back[k], weights[k])
    if cell != "gru":
        assert np.array_equal(back[2], weights[2])
        return
    # z, r sums of the two bias rows are kept; the h (n) parts stay in their rows
    assert np.array_equal(back[2][:, 2 * H:], weights[2][:, 2 * H:])
    assert not back[2][1, :2 * H].any()
    assert_close(back[2][0, :2 * H], weights[2].sum(axis=0)[:2 * H], "float64", "forward",
                 "bias z, r sums", table=TORCH_TOLERANCES)


@pytest.mark.parametrize("cell", KERAS_CELLS)
def test_keras_gate_order_on_a_known_layout(cell):
    """Column block k of the Keras kernel lands in the block of gate KERAS_GATES[cell][k]."""
    I, H = 1, 1
    G = fastrnn.get_cell(cell).num_gates
    kernel = np.arange(1.0, G + 1).reshape(I, G * H)
    rec = 10 * kernel
    bias = np.stack([100 * kernel[0], 1000 * kernel[0]]) if cell == "gru" else 100 * kernel[0]
    _, p = convert.from_keras([kernel, rec, bias], cell)
    spec = fastrnn.get_cell(cell)
    for k, gate in enumerate(convert.KERAS_GATES.get(cell, spec.gates)):
        j = spec.gates.index(gate)
        assert p["W"][0, j] == k + 1 and p["U"][0, j] == 10 * (k + 1)
    if cell == "lstm":          # Keras i, f, c, o is fastrnn i, f, g, o
        assert p["W"].tolist() == [[1.0, 2.0, 3.0, 4.0]]
    if cell.startswith("gru"):  # Keras z, r, h -> fastrnn r, z, n
        assert p["W"].tolist() == [[2.0, 1.0, 3.0]]
    if cell == "gru":           # b = input row + recurrent row for r, z; bn = recurrent h
        assert p["b"].tolist() == [2200.0, 1100.0, 300.0] and p["bn"].tolist() == [3000.0]


@pytest.mark.parametrize("cell", KERAS_CELLS)
def test_keras_layer_without_bias(cell, rng):
    I, H = 2, 3
    layer = keras_layer(cell, H, use_bias=False, dtype="float64")
    layer.build((None, None, I))
    name, p = convert.from_keras(layer)
    assert name == cell and not p["b"].any()
    params = random_params(rng, cell, I, H)
    with pytest.raises(ValueError, match="use_bias=False"):
        convert.to_keras(cell, params, layer)
    params = {k: (v if k in ("W", "U") else np.zeros_like(v)) for k, v in params.items()}
    convert.to_keras(cell, params, layer)
    assert_params_equal(convert.from_keras(layer).params, params)


class TestKerasErrors:
    def test_list_needs_cell(self):
        with pytest.raises(ValueError, match="cell"):
            convert.from_keras([np.zeros((2, 9)), np.zeros((3, 9)), np.zeros(9)])

    def test_gru_bias_shape_says_reset_after(self):
        with pytest.raises(ValueError, match="reset_after"):
            convert.from_keras([np.zeros((2, 9)), np.zeros((3, 9)), np.zeros(9)], "gru")
        with pytest.raises(ValueError, match="reset_after=True"):
            convert.from_keras([np.zeros((2, 9)), np.zeros((3, 9)), np.zeros((2, 9))],
                               "gru_reset_before")

    def test_kernel_shapes(self):
        with pytest.raises(ValueError, match="recurrent_kernel"):
            convert.from_keras([np.zeros((2, 12)), np.zeros((3, 9)), np.zeros(12)], "lstm")
        with pytest.raises(ValueError, match="kernel"):
            convert.from_keras([np.zeros((2, 8)), np.zeros((3, 12)), np.zeros(12)], "lstm")
        with pytest.raises(ValueError, match="weights"):
            convert.from_keras([np.zeros((2, 12))], "lstm")

    def test_layer_types(self):
        with pytest.raises(TypeError, match="layer"):
            convert.from_keras(keras.layers.Dense(3))
        with pytest.raises(TypeError, match="forward_layer"):
            convert.from_keras(keras.layers.Bidirectional(keras.layers.LSTM(3)))
        with pytest.raises(ValueError, match="hard_sigmoid"):
            convert.from_keras(keras.layers.LSTM(3, recurrent_activation="hard_sigmoid"))
        with pytest.raises(ValueError, match="activation"):
            convert.from_keras(keras.layers.SimpleRNN(3, activation="sigmoid"))

    def test_unbuilt_layer_and_cell_mismatch(self, rng):
        with pytest.raises(ValueError, match="not built"):
            convert.from_keras(keras.layers.GRU(3))
        with pytest.raises(ValueError, match="cell"):
            convert.from_keras(keras.layers.GRU(3, reset_after=False), "gru")
        with pytest.raises(ValueError, match="layer"):
            convert.to_keras("gru", random_params(rng, "gru", 2, 3), keras.layers.GRU(3,
                             reset_after=False))

    def test_size_mismatch_into_layer(self, rng):
        layer = keras.layers.LSTM(3)
        layer.build((None, None, 2))
        with pytest.raises(ValueError, match="kernel"):
            convert.to_keras("lstm", random_params(rng, "lstm", 5, 3), layer)


# ----------------------------------------------------------------------- course notebooks
# Direct transcriptions of the notebooks' forward cells (../shared/user-code/):
# the oracle for the notebook layouts.

def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def notebook_rnn_forward(x, a0, p, act=np.tanh):
    """rnn_forward of the course notebook: x (n_x, m, T_x) -> a (n_a, m, T_x)."""
    a_prev, out = a0, []
    for t in range(x.shape[2]):
        a_prev = act(np.dot(p["Waa"], a_prev) + np.dot(p["Wax"], x[:, :, t]) + p["ba"])
        out.append(a_prev)
    return np.stack(out, axis=2)


def notebook_lstm_forward(x, a0, c0, p):
    """lstm_cell_forward of the course notebook chained over T_x (column vectors)."""
    a_prev, c_prev, out = a0, c0, []
    for t in range(x.shape[2]):
        conc = np.concatenate((a_prev, x[:, :, t]), axis=0)
        ft = _sigmoid(np.dot(p["Wf"], conc) + p["bf"])
        it = _sigmoid(np.dot(p["Wi"], conc) + p["bi"])
        cct = np.tanh(np.dot(p["Wc"], conc) + p["bc"])
        c_prev = ft * c_prev + it * cct
        ot = _sigmoid(np.dot(p["Wo"], conc) + p["bo"])
        a_prev = ot * np.tanh(c_prev)
        out.append(a_prev)
    return np.stack(out, axis=2), c_prev


def notebook_gru_forward(x, h0, p):
    """forward_cell of the GRU notebook chained over T (row vectors): x (T, m, n_x)."""
    h_prev, out = h0, []
    for t in range(x.shape[0]):
        zt = _sigmoid(x[t] @ p["Uz"] + h_prev @ p["Wz"] + p["bz"])
        rt = _sigmoid(x[t] @ p["Ur"] + h_prev @ p["Wr"] + p["br"])
        h_hat = np.tanh(x[t] @ p["Uh"] + (h_prev * rt) @ p["Wh"] + p["bh"])
        h_prev = h_prev * (1 - zt) + h_hat * zt
        out.append(h_prev)
    return np.stack(out)


def notebook_params(rng, cell, I, H):
    """Random weights in each notebook's own layout and shapes."""
    if cell.startswith("rnn"):
        return {"Wax": rng.uniform(-1, 1, (H, I)), "Waa": rng.uniform(-1, 1, (H, H)) / 2,
                "ba": rng.uniform(-1, 1, (H, 1))}
    if cell == "lstm":
        p = {}
        for g in "fico":
            p[f"W{g}"] = rng.uniform(-1, 1, (H, H + I))
            p[f"b{g}"] = rng.uniform(-1, 1, (H, 1))
        return p
    p = {}
    for g in "zrh":
        p[f"U{g}"] = rng.uniform(-1, 1, (I, H))
        p[f"W{g}"] = rng.uniform(-1, 1, (H, H))
        p[f"b{g}"] = rng.uniform(-1, 1, (1, H))
    return p


@pytest.mark.parametrize("cell", NOTEBOOK_CELLS)
def test_notebook_forward_matches_reference(cell, rng):
    T, B, I, H = 6, 3, 2, 4
    nb = notebook_params(rng, cell, I, H)
    name, params = convert.from_notebook(nb, cell)
    assert name == cell
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((B, H)) * 0.5
    c0 = rng.standard_normal((B, H)) * 0.5
    if cell == "gru_reset_before":
        want = notebook_gru_forward(x, h0, nb)
    elif cell == "lstm":
        a, _ = notebook_lstm_forward(x.transpose(2, 1, 0), h0.T, c0.T, nb)
        want = a.transpose(2, 1, 0)
    else:
        act = np.tanh if cell == "rnn_tanh" else (lambda v: np.maximum(v, 0))
        want = notebook_rnn_forward(x.transpose(2, 1, 0), h0.T, nb, act).transpose(2, 1, 0)
    res = ref_forward(cell, x, params, h0, c0 if cell == "lstm" else None)
    err = assert_close(res.h, want, "float64", "forward", "notebook forward")
    record_error("reference vs course notebooks float64 forward", err)


def test_notebook_gru_z_is_negated(rng):
    """The GRU notebook's z is fastrnn's 1 - z: without negating the z block, outputs differ."""
    T, B, I, H = 5, 2, 3, 4
    nb = notebook_params(rng, "gru_reset_before", I, H)
    _, params = convert.from_notebook(nb)
    z = fastrnn.get_cell("gru_reset_before").gate_slice("z", H)
    assert np.array_equal(params["W"][:, z], -nb["Uz"])
    assert np.array_equal(params["U"][:, z], -nb["Wz"])
    assert np.array_equal(params["b"][z], -nb["bz"][0])
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((B, H))
    unflipped = {k: v.copy() for k, v in params.items()}
    for k in ("W", "U", "b"):
        unflipped[k][..., z] *= -1
    want = notebook_gru_forward(x, h0, nb)
    assert rel_err(ref_forward("gru_reset_before", x, unflipped, h0).h, want) > 1e-2


@pytest.mark.parametrize("orientation", ["column", "row"])
@pytest.mark.parametrize("cell", NOTEBOOK_CELLS)
def test_notebook_round_trips_are_exact(cell, orientation, rng):
    I, H = 3, 2
    params = random_params(rng, cell, I, H)
    nb = convert.to_notebook(cell, params, orientation=orientation)
    back = convert.from_notebook(nb, cell, orientation=orientation)
    assert back.cell == cell
    assert_params_equal(back.params, params)
    nb2 = convert.to_notebook(*back, orientation=orientation)
    assert nb2.keys() == nb.keys()
    for k in nb:
        assert np.array_equal(nb2[k], nb[k]), k
    bias_shape = (1, H) if orientation == "row" else (H, 1)
    assert all(v.shape == bias_shape for k, v in nb.items() if k.startswith("b"))
    # the other orientation holds the transposes of the same matrices
    other = convert.to_notebook(cell, params,
                                orientation="row" if orientation == "column" else "column")
    for k in nb:
        assert np.array_equal(other[k], nb[k].T), k


def test_notebook_default_orientations_and_shapes(rng):
    I, H = 3, 2
    lstm = convert.to_notebook("lstm", random_params(rng, "lstm", I, H))
    assert list(lstm) == ["Wf", "bf", "Wi", "bi", "Wc", "bc", "Wo", "bo"]
    assert lstm["Wf"].shape == (H, H + I) and lstm["bf"].shape == (H, 1)
    rnn = convert.to_notebook("rnn", random_params(rng, "rnn_tanh", I, H))
    assert rnn["Wax"].shape == (H, I) and rnn["Waa"].shape == (H, H) and rnn["ba"].shape == (H, 1)
    gru = convert.to_notebook("gru_reset_before", random_params(rng, "gru_reset_before", I, H))
    assert list(gru) == ["Uz", "Wz", "bz", "Ur", "Wr", "br", "Uh", "Wh", "bh"]
    assert gru["Uz"].shape == (I, H) and gru["Wz"].shape == (H, H) and gru["bz"].shape == (1, H)


def test_notebook_gru_params_list_and_flat_biases(rng):
    nb = notebook_params(rng, "gru_reset_before", 2, 3)
    as_list = [nb[k] for k in ("Uz", "Wz", "bz", "Ur", "Wr", "br", "Uh", "Wh", "bh")]
    assert_params_equal(convert.from_notebook(as_list).params, convert.from_notebook(nb).params)
    flat = {k: (v.ravel() if k.startswith("b") else v) for k, v in nb.items()}
    assert_params_equal(convert.from_notebook(flat).params, convert.from_notebook(nb).params)


def test_notebook_readout(rng):
    H, n_y, m, T = 4, 3, 2, 5
    nb = {"Wya": rng.standard_normal((n_y, H)), "by": rng.standard_normal((n_y, 1))}
    Wy, by = convert.readout_from_notebook(nb)
    a = rng.standard_normal((H, m, T))
    logits = np.einsum("yh,hmt->ymt", nb["Wya"], a) + nb["by"][:, :, None]
    want = np.exp(logits) / np.exp(logits).sum(axis=0, keepdims=True)     # notebook softmax
    y, _ = fastrnn.readout(a.transpose(2, 1, 0), Wy, by, "softmax", backend="numpy")
    assert_close(y, want.transpose(2, 1, 0), "float64", "forward", "readout")
    back = convert.readout_to_notebook(Wy, by, name="Wya")
    assert np.array_equal(back["Wya"], nb["Wya"]) and np.array_equal(back["by"], nb["by"])
    row = convert.readout_to_notebook(Wy, by, orientation="row")
    assert np.array_equal(row["Wy"], Wy) and row["by"].shape == (1, n_y)
    Wy2, by2 = convert.readout_from_notebook(row, orientation="row")
    assert np.array_equal(Wy2, Wy) and np.array_equal(by2, by)


def test_notebook_ignores_readout_keys(rng):
    nb = notebook_params(rng, "lstm", 2, 3)
    with_readout = dict(nb, Wy=np.ones((4, 3)), by=np.ones((4, 1)))
    assert_params_equal(convert.from_notebook(with_readout).params,
                        convert.from_notebook(nb).params)


class TestNotebookErrors:
    def test_unknown_and_missing_keys(self, rng):
        with pytest.raises(ValueError, match="one notebook layout"):
            convert.from_notebook({"A": np.zeros((2, 2))})
        nb = notebook_params(rng, "lstm", 2, 3)
        with pytest.raises(ValueError, match="missing bo"):
            convert.from_notebook({k: v for k, v in nb.items() if k != "bo"})
        with pytest.raises(ValueError, match="unexpected 'Wq'"):
            convert.from_notebook(dict(nb, Wq=nb["Wf"]))
        with pytest.raises(ValueError, match="9 arrays"):
            convert.from_notebook([np.zeros((2, 2))] * 3)
        with pytest.raises(TypeError, match="parameters"):
            convert.from_notebook(3)

    def test_wrong_orientation_is_named(self, rng):
        nb = notebook_params(rng, "rnn_tanh", 2, 3)
        with pytest.raises(ValueError, match="other orientation"):
            convert.from_notebook(nb, orientation="row")
        with pytest.raises(ValueError, match="orientation"):
            convert.from_notebook(nb, orientation="diagonal")
        lstm = notebook_params(rng, "lstm", 2, 3)
        with pytest.raises(ValueError, match="other orientation"):
            convert.from_notebook(lstm, orientation="row")
        gru = notebook_params(rng, "gru_reset_before", 2, 3)
        with pytest.raises(ValueError, match="other orientation"):
            convert.from_notebook(gru, orientation="column")

    def test_wrong_shapes(self, rng):
        nb = notebook_params(rng, "lstm", 2, 3)
        with pytest.raises(ValueError, match=r"parameters\['Wo'\]"):
            convert.from_notebook(dict(nb, Wo=nb["Wo"][:, :-1]))
        with pytest.raises(ValueError, match=r"parameters\['bc'\]"):
            convert.from_notebook(dict(nb, bc=np.zeros((4, 1))))
        gru = notebook_params(rng, "gru_reset_before", 2, 3)
        with pytest.raises(ValueError, match=r"parameters\['Uh'\]"):
            convert.from_notebook(dict(gru, Uh=np.zeros((3, 3))))

    def test_cells_without_notebook_layout(self, rng):
        with pytest.raises(ValueError, match="no course-notebook layout"):
            convert.to_notebook("gru", random_params(rng, "gru", 2, 3))
        with pytest.raises(ValueError, match="cell"):
            convert.from_notebook(notebook_params(rng, "rnn_tanh", 2, 3), "lstm")

    def test_mixed_dtypes(self, rng):
        nb = notebook_params(rng, "rnn_tanh", 2, 3)
        with pytest.raises(TypeError, match="one dtype"):
            convert.from_notebook(dict(nb, ba=nb["ba"].astype(np.float32)))


# ------------------------------------------------------------------------ property-based

@settings(max_examples=40, deadline=None)
@given(cell=st.sampled_from(ALL_CELLS), I=st.integers(1, 5), H=st.integers(1, 5),
       dtype=st.sampled_from(["float32", "float64"]), seed=st.integers(0, 2**32 - 1))
def test_every_round_trip_is_exact(cell, I, H, dtype, seed):
    """fastrnn -> X -> fastrnn is bit-exact for every layout that can hold the cell."""
    params = random_params(np.random.default_rng(seed), cell, I, H, dtype)
    if cell in TORCH_CELLS + ["lstmp"]:
        sd = convert.to_torch(cell, params, layer=2, reverse=True)
        assert_params_equal(convert.from_torch(sd, cell, layer=2, reverse=True).params, params)
    if cell in KERAS_CELLS:
        assert_params_equal(convert.from_keras(convert.to_keras(cell, params), cell).params,
                            params)
    if cell in NOTEBOOK_CELLS:
        for orientation in ("column", "row"):
            nb = convert.to_notebook(cell, params, orientation=orientation)
            got = convert.from_notebook(nb, cell, orientation=orientation)
            assert_params_equal(got.params, params)
