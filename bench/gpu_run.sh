#!/usr/bin/env bash
# One call on a GPU machine, from the repository root:  bash bench/gpu_run.sh [--check]
#
#  1. makes fastrnn importable from this checkout through PYTHONPATH (no pip install: the
#     GPU machines have no hatchling and no internet; wheels carried in .whl/ go first),
#     and stops (exit 2) unless fastrnn comes from here and its cupy backend can run;
#  2. runs the GPU suite: every test that runs on the cupy backend or the GPU (pytest -k
#     "(cupy or gpu) and not emulated and not nvrtc": the backend-vs-reference tests with
#     backend="cupy", tests/test_gpu.py, the CUDA tests of fastrnn.torch; about 120 s on an
#     H200, kernels compiled on first use included); FASTRNN_GPU_SUITE=all runs the whole
#     suite instead. The CPU-only tests, the compile checks (the real kernels compile in the
#     suite anyway) and the CUDA emulation are CI's job;
#  3. runs the GPU benchmarks against PyTorch's cuDNN RNNs: strict float32 (every size, both
#     paths), TF32 and bfloat16 (the goal sizes), the persistent kernels' splits, and the
#     char-LM training loop through fastrnn.torch.
#
# FASTRNN_GPU_PHASES (default "tests,sanitize,strict,tf32,bf16,sweep,train") picks the
# phases (sanitize: compute-sanitizer's memcheck and racecheck on bench/gpu_sanitize.py), in
# that order; FASTRNN_GPU_BUDGET_S (default 570) is the time the script plans for in all.
# The notebook tests read the course notebook from FASTRNN_SHARED (a copy of ../shared
# carried inside the checkout, e.g. .device/shared) when ../shared is not beside it.
#
# --check: steps 1 and 2 without a GPU or tests run: the import route, the kernel sources,
# that the GPU suite collects without errors, that the benchmark scripts load. Run it
# before spending device time.
#
# Writes into bench/results/ and, when $OUT is set (the device tool's output folder), into
# $OUT as well:  gpu-tests-<device>.log and .json (counts, every failure and skip),
# gpu-<device>[-tf32|-bf16].json/.md, gpu-<device>-persist-sweep.json,
# gpu-<device>-train-loop.json. The device tool allows 600 s per command.
#
# Exit status: 0 = every selected GPU test ran and passed; 1 = failures, errors or a
# collection error; 3 = none failed but some were skipped (listed, with their reasons);
# 4 = no test ran; 124 = the test budget ran out; 2 = setup (fastrnn not importable from
# here, or the cupy backend cannot run). The benchmark's outcome does not change it.
set -u -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

CHECK=0
[ "${1:-}" = "--check" ] && CHECK=1
PY=${PYTHON:-python3}
BUDGET=${FASTRNN_GPU_BUDGET_S:-570}
RESULTS=bench/results
START=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - START))); }
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
  --format=csv,noheader 2>&1 || echo "nvidia-smi failed"
"$PY" - <<'PYEOF'
import importlib, sys
print("python", sys.version.split()[0], sys.executable)
for name in ("numpy", "numba", "cupy", "torch", "ml_dtypes", "pytest", "hypothesis",
             "pytest_benchmark", "pytest_timeout", "expecttest", "keras", "rich",
             "threadpoolctl", "matplotlib"):
    try:
        mod = importlib.import_module(name)
        print(f"  {name:17s} {getattr(mod, '__version__', '?')}")
    except Exception as exc:
        print(f"  {name:17s} MISSING ({type(exc).__name__}: {exc})")
PYEOF

echo "== fastrnn from this checkout (PYTHONPATH)"
if compgen -G ".whl/*.whl" >/dev/null; then
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
       --target /tmp/fastrnn-site .whl/*.whl; then
    export PYTHONPATH=/tmp/fastrnn-site${PYTHONPATH:+:$PYTHONPATH}
    echo "installed the carried wheels: $(ls .whl | tr '\n' ' ')"
  else
    echo "installing the carried wheels in .whl/ failed; going on without them"
  fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if ! "$PY" - "$PWD" "$CHECK" <<'PYEOF'
import os, sys
here, check = os.path.realpath(sys.argv[1]), sys.argv[2] == "1"
import fastrnn
if not getattr(fastrnn, "__file__", None):
    sys.exit(f"fastrnn resolved to a namespace package ({list(fastrnn.__path__)}), not this checkout")
from fastrnn.backends.cupy import nvrtc
where = os.path.realpath(os.path.dirname(fastrnn.__file__))
print("fastrnn", fastrnn.__version__, "from", where)
if os.path.dirname(where) != here:
    sys.exit(f"fastrnn was imported from {where}, not from this checkout {here}")
print("kernel sources:", nvrtc.kernel_dir())
print("backends:", fastrnn.available_backends())
reason = fastrnn.unavailable_reasons().get("cupy")
print("cupy backend:", reason or "available")
if reason and not check:
    sys.exit("the cupy backend cannot run here, so there is no GPU suite to run")
PYEOF
then
  echo "setup failed (exit 2)"
  exit 2
fi

SLUG=unknown-gpu
[ "$CHECK" = 1 ] || SLUG=$("$PY" bench/gpu_bench.py --print-slug 2>/dev/null) || SLUG=unknown-gpu
LOG="$RESULTS/gpu-tests-$SLUG.log"
SUMMARY="$RESULTS/gpu-tests-$SLUG.json"

# A pytest plugin, written here, that counts what the selected tests did (run phase only:
# a module skipped at import for a missing optional package is not a test of the suite).
PLUGIN_DIR=$(mktemp -d)
trap 'rm -rf "$PLUGIN_DIR"' EXIT
cat >"$PLUGIN_DIR/fastrnn_gpu_suite.py" <<'PYEOF'
"""Counts the outcomes of the selected tests and writes them to $FASTRNN_GPU_SUMMARY."""
import json
import os

_seen = {}


def pytest_runtest_logreport(report):
    entry = _seen.setdefault(report.nodeid, {"outcome": "passed", "detail": ""})
    if report.failed:
        entry["outcome"] = "failed" if report.when == "call" else "error"
        entry["detail"] = str(report.longrepr)[-600:]
    elif report.skipped and entry["outcome"] == "passed":
        entry["outcome"] = "skipped"
        longrepr = report.longrepr
        entry["detail"] = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)


def pytest_sessionfinish(session, exitstatus):
    counts = {}
    for entry in _seen.values():
        counts[entry["outcome"]] = counts.get(entry["outcome"], 0) + 1
    doc = {"exitstatus": int(exitstatus), "counts": counts,
           "not_passed": {k: v for k, v in _seen.items() if v["outcome"] != "passed"}}
    with open(os.environ["FASTRNN_GPU_SUMMARY"], "w") as f:
        json.dump(doc, f, indent=1)
PYEOF
export PYTHONPATH=$PLUGIN_DIR:$PYTHONPATH
export FASTRNN_GPU_SUMMARY=$SUMMARY

PHASES=",${FASTRNN_GPU_PHASES:-tests,sanitize,strict,tf32,bf16,sweep,train},"
phase() { [[ "$PHASES" == *",$1,"* ]]; }
SELECT=(-k "(cupy or gpu) and not emulated and not nvrtc")
[ "${FASTRNN_GPU_SUITE:-gpu}" = all ] && SELECT=()
PYTEST_ARGS=(-rs -q -p no:cacheprovider -p fastrnn_gpu_suite --durations=15 "${SELECT[@]}")

if [ "$CHECK" = 1 ]; then
  echo "== check: the GPU suite collects"
  "$PY" -m pytest -q -p no:cacheprovider --collect-only "${SELECT[@]}" tests >"$PLUGIN_DIR/collect.txt" 2>&1
  RC=$?
  tail -n 3 "$PLUGIN_DIR/collect.txt"
  if [ "$RC" -ne 0 ] || ! grep -qE "^[0-9]+(/[0-9]+)? tests? collected" "$PLUGIN_DIR/collect.txt"; then
    echo "check: collecting the GPU suite failed (exit $RC)"; grep -E "ERROR|Error" "$PLUGIN_DIR/collect.txt" | head -n 20
    exit 1
  fi
  for script in gpu_bench.py gpu_persist_sweep.py gpu_sanitize.py train_loop.py; do
    echo "== check: bench/$script loads"
    "$PY" bench/$script --help >/dev/null || { echo "check: $script --help failed"; exit 1; }
  done
  echo "check passed: fastrnn imports from this checkout and the GPU suite collects"
  exit 0
fi

TEST_RC=0
if phase tests; then
echo "== GPU tests (log: $LOG)"
TEST_BUDGET=$(($(left) - ${FASTRNN_GPU_BENCH_S:-200}))
[ "$TEST_BUDGET" -gt 300 ] && TEST_BUDGET=300
if "$PY" -c "import pytest_timeout" 2>/dev/null; then
  PYTEST_ARGS+=(--timeout=150)
fi
rm -f "$SUMMARY"
timeout --signal=INT --kill-after=20 "$TEST_BUDGET" "$PY" -m pytest "${PYTEST_ARGS[@]}" tests \
  2>&1 | tee "$LOG"
PYTEST_RC=${PIPESTATUS[0]}
TEST_RC=$("$PY" - "$SUMMARY" "$PYTEST_RC" <<'PYEOF'
import json, sys
path, rc = sys.argv[1], int(sys.argv[2])
try:
    doc = json.load(open(path))
except (OSError, ValueError):
    print(124 if rc in (124, 130, 137) else (rc or 1)); sys.exit()
counts = doc["counts"]
for nodeid, v in sorted(doc["not_passed"].items()):
    print(f"  {v['outcome'].upper():8s} {nodeid}: {v['detail'].splitlines()[-1] if v['detail'] else ''}"[:300],
          file=sys.stderr)
print("counts:", counts, file=sys.stderr)
if rc in (124, 130, 137):
    print(124)
elif rc not in (0, 5) or counts.get("failed") or counts.get("error"):
    print(1)
elif not counts.get("passed"):
    print(4)
elif counts.get("skipped"):
    print(3)
else:
    print(0)
PYEOF
)
TEST_RC=${TEST_RC:-1}
case $TEST_RC in
  0) echo "GPU tests: all passed" ;;
  3) echo "GPU tests: none failed, but some were skipped (above): not a full pass" ;;
  4) echo "GPU tests: no test ran" ;;
  124) echo "GPU tests: stopped at the ${TEST_BUDGET}s budget (pytest exit $PYTEST_RC)" ;;
  *) echo "GPU tests: failures or errors (pytest exit $PYTEST_RC)" ;;
esac
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && cp "$LOG" "$SUMMARY" "$OUT"/ 2>/dev/null; fi
fi

# run_bench NAME SHARE COMMAND...: the command with at most SHARE of what is left (in
# percent, at least 40 s), killed at that limit; the scripts write their own files.
run_bench() {
  local name=$1 share=$2; shift 2
  local budget=$(( $(left) * share / 100 ))
  if [ "$budget" -lt 40 ]; then echo "== $name: skipped, only $(left) s left"; return; fi
  echo "== $name (at most ${budget} s)"
  timeout --signal=INT --kill-after=10 "$budget" "$@" --budget-s $((budget - 25)) \
    || echo "$name: exit $?"
}
if phase sanitize; then
  SAN=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null | head -n 1)
  if [ -n "$SAN" ]; then
    for tool in memcheck racecheck; do
      cells=rnn_tanh,lstm,gru,gru_reset_before,lstmp
      [ "$tool" = racecheck ] && cells=lstm,gru
      echo "== compute-sanitizer --tool $tool ($cells)"
      timeout --signal=INT --kill-after=10 "${FASTRNN_SANITIZE_S:-60}" "$SAN" --tool "$tool" \
        --error-exitcode 9 "$PY" bench/gpu_sanitize.py --cells $cells 2>&1 | tail -n 25
      echo "compute-sanitizer $tool: exit ${PIPESTATUS[0]}"
    done
  else
    echo "== compute-sanitizer: not found"
  fi
fi
phase strict && run_bench "benchmark, strict float32" 45 \
  "$PY" bench/gpu_bench.py --out "$RESULTS" --precision strict --paths
phase tf32 && run_bench "benchmark, TF32 allowed" 35 \
  "$PY" bench/gpu_bench.py --out "$RESULTS" --precision tf32 --quick
phase bf16 && run_bench "benchmark, bfloat16" 45 \
  "$PY" bench/gpu_bench.py --out "$RESULTS" --precision bf16 --quick
phase sweep && run_bench "persistent kernels' splits" 60 \
  "$PY" bench/gpu_persist_sweep.py --out "$RESULTS"
if phase train && [ "$(left)" -gt 40 ]; then
  echo "== char-LM training loop on CUDA"
  timeout --signal=INT --kill-after=10 $(( $(left) - 10 )) "$PY" bench/train_loop.py \
    --device cuda --batch 64 --seq-len 100 --embed 256 --hidden 512 --layers 2 \
    --warmup 3 --steps 10 --rounds 3 --json "$RESULTS/gpu-$SLUG-train-loop.json" \
    || echo "train loop: exit $?"
  [ -n "${OUT:-}" ] && cp "$RESULTS/gpu-$SLUG-train-loop.json" "$OUT"/ 2>/dev/null
fi

echo "== summary"
[ -f "$LOG" ] && grep -E "^(FAILED|ERROR)|passed|failed|error" "$LOG" | tail -n 25
for f in "$RESULTS/gpu-$SLUG.md" "$RESULTS/gpu-$SLUG-tf32.md" "$RESULTS/gpu-$SLUG-bf16.md"; do
  [ -f "$f" ] && grep -E "^Goals met|^Host's share|^Single step|^Not run" "$f" \
    | sed "s|^|$(basename "$f"): |"
done
echo "elapsed $(( $(date +%s) - START )) s; GPU tests exit $TEST_RC (0 = all ran and passed)"
exit "$TEST_RC"
