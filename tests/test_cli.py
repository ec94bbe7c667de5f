"""The ``fastrnn`` command: argument checks, a tiny real benchmark and its files, ``check``
passing on a correct backend and failing on broken ones, ``info``."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastrnn
from fastrnn import backends as registry
from fastrnn.tools import benchmark as bm
from fastrnn.tools import report
from fastrnn.backends import Backend, register_backend
from fastrnn.backends.numpy import NumpyBackend
from fastrnn.tools.cli import bench_config, build_parser, main

ROOT = Path(__file__).resolve().parents[1]
TINY = "4x2x3x5"      # T x B x I x H


# ----------------------------------------------------------------------------- test backends

class NudgedBackend(NumpyBackend):
    """The reference with h and dx scaled by 1.01: what a subtly wrong kernel looks like."""

    name = "nudged"

    def forward(self, *args):
        out = super().forward(*args)
        out.h = out.h * 1.01
        return out

    def backward(self, *args):
        g = super().backward(*args)
        g.dx = g.dx * 1.01
        return g


class NanBackend(NumpyBackend):
    """Returns NaN everywhere in h and dx."""

    name = "nan"

    def forward(self, *args):
        out = super().forward(*args)
        out.h = np.full_like(out.h, np.nan)
        return out

    def backward(self, *args):
        g = super().backward(*args)
        g.dx = np.full_like(g.dx, np.nan)
        return g


class CrashingBackend(NumpyBackend):
    name = "crashing"

    def backward(self, *args):
        raise RuntimeError("kernel exploded")


class TwinBackend(NumpyBackend):
    """A correct backend under another name."""

    name = "twin"


class AbsentBackend(Backend):
    name = "absent"

    @classmethod
    def unavailable_reason(cls):
        return "it needs hardware this machine lacks"


@pytest.fixture
def extra_backends(monkeypatch):
    """Register test backends in a private copy of the registry, restored afterwards."""
    for attr in ("_REGISTRY", "_instances", "_reasons"):
        monkeypatch.setattr(registry, attr, dict(getattr(registry, attr)))

    def add(*classes):
        for cls in classes:
            register_backend(cls.name, cls)
    return add


def run(argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


# ----------------------------------------------------------------------------- arguments

def parse_bench(argv):
    parser = build_parser()
    args = parser.parse_args(["bench", *argv])
    return bench_config(args, parser)[0]


def test_bench_defaults():
    cfg = parse_bench([])
    assert cfg.cells == ["lstm", "gru", "rnn_tanh"]
    assert [s.name for s in cfg.sizes] == ["tiny", "small", "medium", "large"]
    assert [s.dims for s in cfg.sizes] == [(100, 1, 32, 32), (100, 16, 64, 128),
                                           (100, 64, 256, 256), (50, 64, 512, 512)]
    assert cfg.modes == ["train", "infer"] and cfg.dtypes == ["float32"]
    assert cfg.backends == [n for n, why in bm.runner_status().items() if not why]
    assert "numpy" in cfg.backends
    assert cfg.repeat >= cfg.min_rounds >= 1 and cfg.threads >= 1


def test_bench_lists_split_repeat_and_dedupe():
    cfg = parse_bench(["--cells", "rnn,LSTM", "--cells", "lstm", "--sizes", "tiny",
                       "--sizes", "200x8x32x64,tiny", "--mode", "infer", "--dtype",
                       "float64,float32", "--repeat", "2", "--threads", "1", "--backends",
                       "numpy"])
    assert cfg.cells == ["rnn_tanh", "lstm"]
    assert [(s.name, s.dims) for s in cfg.sizes] == [("tiny", (100, 1, 32, 32)),
                                                     ("200x8x32x64", (200, 8, 32, 64))]
    assert cfg.modes == ["infer"] and cfg.dtypes == ["float64", "float32"]
    assert cfg.repeat == 2 and cfg.min_rounds == 2 and cfg.threads == 1
    assert cfg.backends == ["numpy"]


@pytest.mark.parametrize("argv, message", [
    (["bench", "--cells", "lstn"], "argument --cells: cell: unknown cell 'lstn'"),
    (["bench", "--cells", ","], "argument --cells: expected at least one cell"),
    (["bench", "--sizes", "huge"], "argument --sizes: unknown size 'huge'"),
    (["bench", "--sizes", "10x2x3"], "argument --sizes: unknown size '10x2x3'"),
    (["bench", "--sizes", "10,2,3,4"], "argument --sizes: unknown size '10'"),
    (["bench", "--sizes", "0x1x1x1"], "at least 1"),
    (["bench", "--backends", "jax"], "argument --backends: unknown backend 'jax'; expected one "
                                     "of numpy, numba, cupy"),
    (["bench", "--mode", "eval"], "argument --mode: unknown mode 'eval'; expected one of "
                                  "train, infer"),
    (["bench", "--dtype", "float16"], "argument --dtype: unknown dtype 'float16'"),
    (["bench", "--repeat", "0"], "argument --repeat: repeat must be at least 1, got 0"),
    (["bench", "--repeat", "two"], "argument --repeat: expected a whole number, got 'two'"),
    (["bench", "--threads", "0"], "argument --threads: threads must be at least 1"),
    (["bench", "--budget", "-1"], "argument --budget: budget must be 0"),
    (["check", "--backends", "torch"], "argument --backends: unknown backend 'torch'"),
    (["check", "--cells", "lstm,foo"], "argument --cells: cell: unknown cell 'foo'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "the following arguments are required"),
])
def test_bad_arguments_exit_2_naming_the_argument(argv, message, capsys):
    rc, out, err = run(argv, capsys)
    assert rc == 2
    assert message in err
    assert out == ""


def test_unavailable_backend_requested_says_why(extra_backends, capsys):
    extra_backends(AbsentBackend)
    for cmd in ("bench", "check"):
        rc, _, err = run([cmd, "--backends", "absent"], capsys)
        assert rc == 2
        assert "argument --backends" in err and "it needs hardware this machine lacks" in err


def test_plot_without_matplotlib_is_refused_before_running(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(report, "have_matplotlib", lambda: False)
    rc, out, err = run(["bench", "--sizes", TINY, "--plot", str(tmp_path / "p.png")], capsys)
    assert rc == 2
    assert "argument --plot: matplotlib is not installed" in err
    assert out == "" and not (tmp_path / "p.png").exists()


def test_help_exits_0(capsys):
    rc, out, _ = run(["bench", "--help"], capsys)
    assert rc == 0
    assert "200x8x32x64" in out and "--budget" in out


# ----------------------------------------------------------------------------- a real run

RECORD_KEYS = {"cell", "size", "T", "B", "I", "H", "mode", "dtype", "backend", "device",
               "status", "note", "times_s", "median_s", "q1_s", "q3_s", "min_s", "max_s",
               "first_call_s", "compile_s", "flops", "gflops", "peak_gflops", "pct_peak",
               "speedup", "rel_err", "tolerance", "agrees", "in_program_times_s",
               "in_program_median_s", "in_program_ratio"}


def test_in_program_times_each_runner_after_numpy_and_torch_work(tmp_path, capsys):
    path = tmp_path / "r.json"
    rc, out, _ = run(["bench", "--cells", "gru", "--sizes", TINY, "--repeat", "2",
                      "--budget", "0", "--backends", "numpy,numba", "--in-program",
                      "--json", str(path), "--no-progress"], capsys)
    assert rc == 0, out
    assert "in-program" in out
    doc = json.loads(path.read_text())
    assert doc["config"]["in_program"] is True
    for r in doc["records"]:
        assert len(r["in_program_times_s"]) == 2                   # one per round
        assert r["in_program_ratio"] == pytest.approx(r["in_program_median_s"] / r["median_s"])


def test_tiny_bench_writes_json_csv_and_plot(tmp_path, capsys):
    pytest.importorskip("torch", reason="the torch peer is part of the test extra")
    runners = [n for n in ("numpy", "numba", "torch") if n in parse_bench([]).backends]
    paths = {ext: tmp_path / "out" / f"run.{ext}" for ext in ("json", "csv", "png")}
    argv = ["bench", "--cells", "lstm,gru,gru_reset_before", "--sizes", f"{TINY},3x1x2x4",
            "--mode", "train,infer", "--repeat", "2", "--threads", "1", "--backends",
            ",".join(runners), "--json", str(paths["json"]), "--csv", str(paths["csv"]),
            "--plot", str(paths["png"]), "--no-progress"]
    rc, out, _ = run(argv, capsys)
    assert rc == 0, out
    assert "GEMM peak" in out and "× numpy" in out and "× torch" in out
    assert "PyTorch has no reset-before GRU" in out

    doc = json.loads(paths["json"].read_text())
    assert doc["schema"] == "fastrnn-bench" and doc["version"] == 1
    assert doc["command"] == ["fastrnn", *argv]
    assert {"cpu", "cores", "threads", "blas", "gpu", "versions", "gemm_peak_gflops",
            "threads_applied"} <= set(doc["machine"])
    assert doc["machine"]["threads"] == 1
    peak = doc["machine"]["gemm_peak_gflops"]["cpu"]["float32"]
    assert peak > 0
    assert doc["config"]["cells"] == ["lstm", "gru", "gru_reset_before"]
    assert doc["config"]["sizes"][0] == {"name": TINY, "T": 4, "B": 2, "I": 3, "H": 5}
    recs = doc["records"]
    assert len(recs) == 3 * 2 * 2 * len(runners)        # cells x sizes x modes x runners
    for r in recs:
        assert set(r) == RECORD_KEYS
        if r["backend"] == "torch" and r["cell"] == "gru_reset_before":
            assert r["status"] == "n/a" and r["median_s"] is None
            continue
        assert r["status"] == "ok", r
        assert len(r["times_s"]) == 2 * doc["config"]["block"]   # rounds x timed calls per round
        assert r["median_s"] == pytest.approx(float(np.median(r["times_s"])))
        assert r["min_s"] <= r["q1_s"] <= r["median_s"] <= r["q3_s"] <= r["max_s"]
        spec = fastrnn.get_cell(r["cell"])
        dims = (r["T"], r["B"], r["I"], r["H"])
        flops = spec.forward_flops(*dims)
        if r["mode"] == "train":
            flops += spec.backward_flops(*dims)
        assert r["flops"] == flops
        assert r["gflops"] == pytest.approx(flops / r["median_s"] / 1e9)
        assert r["pct_peak"] == pytest.approx(100 * r["gflops"] / peak)
        assert r["compile_s"] >= 0 and r["first_call_s"] > 0
        if r["backend"] == "numpy":
            assert r["rel_err"] is None
        else:
            assert r["agrees"] is True and r["rel_err"] <= r["tolerance"]
            assert r["speedup"]["numpy"] > 0
    # speedups are ratios of the medians of the same problem
    by = {(r["cell"], r["size"], r["mode"], r["backend"]): r for r in recs}
    lstm_torch = by[("lstm", TINY, "train", "torch")]
    lstm_numpy = by[("lstm", TINY, "train", "numpy")]
    assert lstm_torch["speedup"]["numpy"] == pytest.approx(
        lstm_numpy["median_s"] / lstm_torch["median_s"])
    assert lstm_numpy["speedup"]["torch"] == pytest.approx(
        lstm_torch["median_s"] / lstm_numpy["median_s"])

    with paths["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(recs)
    assert rows[0]["cell"] == "lstm" and "speedup_vs_torch" in rows[0] and rows[0]["samples"] == "4"
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_bench_flags_a_backend_that_disagrees_and_exits_1(extra_backends, tmp_path, capsys):
    extra_backends(NudgedBackend, NanBackend, CrashingBackend)
    path = tmp_path / "r.json"
    rc, out, _ = run(["bench", "--cells", "gru", "--sizes", TINY, "--repeat", "1",
                      "--backends", "numpy,nudged,nan,crashing", "--json", str(path),
                      "--no-progress"], capsys)
    assert rc == 1
    assert "measurement(s) failed" in out
    recs = {(r["backend"], r["mode"]): r for r in json.loads(path.read_text())["records"]}
    for mode, what in (("train", "dx"), ("infer", "h")):
        nudged = recs[("nudged", mode)]
        assert nudged["status"] == "error" and nudged["agrees"] is False
        assert f"{what} disagrees with the numpy reference" in nudged["note"]
        assert nudged["rel_err"] == pytest.approx(0.01, rel=1e-4)   # 1.01 in float32 arithmetic
        nan = recs[("nan", mode)]
        assert nan["status"] == "error" and nan["rel_err"] is None     # NaN written as null
        assert recs[("numpy", mode)]["status"] == "ok"
    assert recs[("crashing", "train")]["note"] == "RuntimeError: kernel exploded"
    assert recs[("crashing", "infer")]["status"] == "ok"


# ----------------------------------------------------------------------------- check

def test_check_quick_passes_on_a_correct_backend(extra_backends, capsys):
    extra_backends(TwinBackend)
    rc, out, _ = run(["check", "--quick", "--backends", "twin", "--seed", "3", "--no-progress"],
                     capsys)
    assert rc == 0, out
    assert "seed 3" in out
    rows = [l for l in out.splitlines() if "twin" in l and "float" in l]
    cells = len(fastrnn.CELLS)
    assert len(rows) == 2 * cells and all("pass" in l for l in rows)     # cells x 2 dtypes
    assert f"all {12 * cells} comparisons passed" in out     # x 2 sizes x 3 variants


def test_check_fails_on_broken_backends(extra_backends, capsys):
    extra_backends(TwinBackend, NudgedBackend, CrashingBackend)
    rc, out, _ = run(["check", "--quick", "--backends", "twin,nudged,crashing", "--cells", "lstm",
                      "--no-progress"], capsys)
    assert rc == 1
    lines = out.splitlines()
    assert sum("twin" in l and "pass" in l for l in lines) == 2
    assert sum("nudged" in l and "FAIL (6)" in l for l in lines) == 2
    assert sum("crashing" in l and "FAIL (6)" in l for l in lines) == 2
    assert "RuntimeError: kernel exploded" in out
    assert "FAIL: 4 of 6 groups failed" in out


def test_check_real_backends_quick(capsys):
    """Whatever runs here besides the reference (numba at least) passes the quick check."""
    names = [n for n in fastrnn.available_backends() if n != "numpy"]
    if not names:
        pytest.fail(f"no backend besides numpy can run: {fastrnn.unavailable_reasons()}")
    rc, out, _ = run(["check", "--quick", "--cells", "lstm,gru", "--no-progress",
                      "--backends", ",".join(names)], capsys)
    assert rc == 0, out


# ----------------------------------------------------------------------------- info

def test_info_lists_backends_and_reasons(extra_backends, capsys):
    extra_backends(AbsentBackend)
    rc, out, _ = run(["info"], capsys)
    assert rc == 0
    assert f"fastrnn {fastrnn.__version__}" in out
    for name in fastrnn.available_backends():
        assert any(l.split()[:2] == [name, "available"] for l in out.splitlines()), name
    for name, why in fastrnn.unavailable_reasons().items():
        assert f"{name}" in out and why in out
    assert "it needs hardware this machine lacks" in out
    assert "torch-cuda" in out


def test_python_dash_m_fastrnn_info():
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    proc = subprocess.run([sys.executable, "-m", "fastrnn", "info"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "backends:" in proc.stdout and "numpy" in proc.stdout


# ----------------------------------------------------------------------------- engine details

def test_rounds_stop_at_the_budget_after_min_rounds():
    problem = bm.make_problem("rnn_tanh", bm.parse_size("3x2x2x3"), "infer", "float64")
    for budget, rounds in ((0.0, 6), (1e-9, 2), (1e9, 6)):
        cfg = bm.BenchConfig(repeat=6, min_rounds=2, budget_s=budget)
        (rec,) = bm.measure_problem(problem, ["numpy"], cfg, peaks={})
        assert rec.status == "ok" and len(rec.times_s) == rounds * cfg.block
        assert rec.pct_peak is None and rec.speedup == {}


def test_parse_size():
    from fastrnn.tools.benchmark import parse_size
    assert parse_size(" Large ").dims == (50, 64, 512, 512)
    assert parse_size("7x1x2x3").name == "7x1x2x3"
    for bad in ("7x1x2", "7x1x2x3x4", "7x1x-2x3", "axbxcxd", ""):
        with pytest.raises(ValueError, match="unknown size"):
            parse_size(bad)


def test_plain_text_output_without_rich(monkeypatch, extra_backends, capsys):
    monkeypatch.setattr(report, "have_rich", lambda: False)
    extra_backends(TwinBackend)
    rc, out, err = run(["check", "--quick", "--backends", "twin", "--cells", "gru"], capsys)
    assert rc == 0
    lines = out.splitlines()
    header = next(l for l in lines if l.startswith("backend"))
    assert header.split()[:3] == ["backend", "cell", "dtype"]
    assert not any(ch in out for ch in "┃│━")
    assert "[1/12] twin: gru float32" in err                # one progress line per step
    rc, out, _ = run(["bench", "--backends", "numpy", "--sizes", TINY, "--cells", "lstm",
                      "--mode", "infer", "--repeat", "1", "--no-progress"], capsys)
    assert rc == 0
    row = next(l for l in out.splitlines() if l.startswith("lstm"))
    assert row.split()[:5] == ["lstm", "infer", "float32", TINY, "numpy"]


def test_plot_with_nothing_to_compare_exits_1(tmp_path, capsys):
    png = tmp_path / "p.png"
    rc, out, _ = run(["bench", "--backends", "numpy", "--sizes", TINY, "--cells", "rnn_tanh",
                      "--mode", "infer", "--repeat", "1", "--plot", str(png), "--no-progress"],
                     capsys)
    assert rc == 1
    assert "no plot written: --plot: only numpy was measured" in out
    assert not png.exists()


def test_bench_writes_a_markdown_table(tmp_path, capsys):
    path = tmp_path / "table.md"
    rc, out, _ = run(["bench", "--cells", "gru", "--sizes", "3x2x2x4", "--mode", "infer",
                      "--repeat", "1", "--backends", "numpy,numba", "--markdown", str(path),
                      "--no-progress"], capsys)
    assert rc == 0 and f"wrote {path}" in out
    text = path.read_text()
    assert text.startswith("# fastrnn bench") and "GEMM peak" in text
    table = [ln for ln in text.splitlines() if ln.startswith("|")]
    assert table[0].startswith("| cell | mode | dtype") and "× numpy" in table[0]
    assert len(table) == 2 + 2                          # header, rule, numpy and numba rows
    assert any("| numba |" in ln and "×" in ln for ln in table[2:])
