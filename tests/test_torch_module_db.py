"""PyTorch's own module tests, run on fastrnn.torch: every sample of ``module_db`` for
``nn.RNN``, ``nn.GRU`` and ``nn.LSTM`` (projections included) gives torch.nn's outputs and
gradients, and every error sample raises torch.nn's exception type at the same stage.

The cells' module_db samples are in test_torch_cells.py. ``torch.testing._internal`` needs
``expecttest`` (in the test extra).
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence

import fastrnn.torch as frt
from fastrnn.core.tolerances import SAME_ARITHMETIC

pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest")
from torch.testing._internal import common_modules as cm  # noqa: E402

TWINS = {torch.nn.RNN: frt.RNN, torch.nn.GRU: frt.GRU, torch.nn.LSTM: frt.LSTM}
F64 = torch.float64


def _info(torch_cls):
    return next(m for m in cm.module_db if m.module_cls is torch_cls)


def _fresh(value):
    """A leaf copy of a forward argument (tensors, PackedSequences, tuples of them)."""
    if isinstance(value, PackedSequence):
        return PackedSequence(_fresh(value.data), value.batch_sizes, value.sorted_indices,
                              value.unsorted_indices)
    if isinstance(value, torch.Tensor):
        return value.detach().clone().requires_grad_(value.requires_grad)
    if isinstance(value, (tuple, list)):
        return type(value)(_fresh(v) for v in value)
    return value


def _tensors(value):
    """Every tensor in a (nested) module output or argument, in order."""
    if isinstance(value, PackedSequence):
        return [value.data]
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _run(module, args, kwargs):
    args, kwargs = _fresh(args), _fresh(kwargs)
    out = module(*args, **kwargs)
    outs = _tensors(out)
    sum((t * (k + 1.0)).sin().sum() for k, t in enumerate(outs)).backward()
    leaves = [t for t in _tensors((args, list(kwargs.values()))) if t.requires_grad]
    return outs, [t.grad for t in leaves], [p.grad for p in module.parameters()]


@pytest.mark.parametrize("torch_cls", list(TWINS), ids=lambda c: c.__name__)
def test_module_db_samples_match_torch_nn(torch_cls, cpu_backend):
    info = _info(torch_cls)
    samples = info.module_inputs_func(info, device="cpu", dtype=F64, requires_grad=True,
                                      training=True)
    assert samples, "torch lists no samples"
    projected = 0
    for k, sample in enumerate(samples):
        ctor, fwd = sample.constructor_input, sample.forward_input
        torch.manual_seed(k)
        ref = torch_cls(*ctor.args, **ctor.kwargs, dtype=F64)
        ours = TWINS[torch_cls](*ctor.args, **ctor.kwargs, dtype=F64, backend=cpu_backend)
        ours.load_state_dict(ref.state_dict())
        projected += getattr(ref, "proj_size", 0) > 0
        want, got = _run(ref, fwd.args, fwd.kwargs), _run(ours, fwd.args, fwd.kwargs)
        for part, a_list, b_list in zip(("output", "input grad", "parameter grad"), got, want):
            assert len(a_list) == len(b_list), f"sample {k}: {part} count"
            for a, b in zip(a_list, b_list):
                torch.testing.assert_close(a, b, **SAME_ARITHMETIC,
                                           msg=lambda m: f"sample {k} ({ctor.kwargs}) {part}: {m}")
    if torch_cls is torch.nn.LSTM:
        assert projected, "module_db's LSTM samples include proj_size > 0"


@pytest.mark.parametrize("torch_cls", list(TWINS), ids=lambda c: c.__name__)
def test_module_db_error_samples_raise_torch_nn_types(torch_cls):
    info = _info(torch_cls)
    samples = info.module_error_inputs_func(info, device="cpu", dtype=F64, requires_grad=False,
                                            training=True)
    assert samples, "torch lists no error samples"
    wrong = []
    for k, sample in enumerate(samples):
        ctor = sample.module_error_input.constructor_input
        fwd = sample.module_error_input.forward_input
        on_forward = sample.error_on == cm.ModuleErrorEnum.FORWARD_ERROR
        with pytest.raises(sample.error_type):              # torch.nn itself, as a check
            m = torch_cls(*ctor.args, **ctor.kwargs)
            if on_forward:
                m(*fwd.args, **fwd.kwargs)
        stage, got = "construction", None
        try:
            m = TWINS[torch_cls](*ctor.args, **ctor.kwargs)
            if on_forward:
                stage = "forward"
                m(*fwd.args, **fwd.kwargs)
        except Exception as exc:                           # noqa: BLE001 - compared below
            got = exc
        if type(got) is not sample.error_type or stage != ("forward" if on_forward
                                                           else "construction"):
            wrong.append((k, sample.error_regex, f"{type(got).__name__} at {stage}: {got}"))
    assert not wrong, f"exception types differ from torch.nn's: {wrong}"
