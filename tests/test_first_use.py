"""The line on stderr while a first call compiles (fastrnn/backends/numba/first_use.py)."""

import time

import pytest

from fastrnn.backends.numba import first_use
from fastrnn.core import config
from fastrnn.core.cells import get_cell


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(first_use, "_seen", set())
    monkeypatch.setattr(config, "compile_notice_s", 0.05)


def test_a_slow_first_call_says_what_compiles_once(fresh, capfd):
    for _ in range(2):
        with first_use.compile_notice("forward", get_cell("lstm"), "float32"):
            time.sleep(0.5)
    err = capfd.readouterr().err
    assert err.count("fastrnn: compiling") == 1
    assert "lstm forward for float32" in err


def test_a_fast_first_call_prints_nothing(fresh, capfd):
    with first_use.compile_notice("backward", get_cell("gru"), "float64"):
        pass
    time.sleep(0.2)
    assert capfd.readouterr().err == ""


def test_the_notice_can_be_turned_off(fresh, monkeypatch, capfd):
    monkeypatch.setattr(config, "compile_notice_s", None)
    with first_use.compile_notice("forward", get_cell("rnn_tanh"), "float32"):
        time.sleep(0.2)
    assert capfd.readouterr().err == ""
