#!/usr/bin/env bash
# One call on a GPU machine, from the repository root:  bash bench/gpu_run.sh
#
#  1. installs fastrnn (editable, no dependencies; wheels carried in .whl/ first, if any),
#  2. runs the whole test suite with the cupy backend included (pytest -rs: every skip is
#     listed with its reason; test files whose optional imports are missing are reported
#     as collection errors and the rest still runs),
#  3. runs the GPU benchmark against PyTorch's cuDNN RNNs: strict float32, then TF32.
#
# Writes into bench/results/ and, when $OUT is set (the device tool's output folder), into
# $OUT as well:  gpu-tests-<device>.log, gpu-<device>.json/.md, gpu-<device>-tf32.json/.md
# The device tool allows 600 s per command; FASTRNN_GPU_BUDGET_S (default 570) is the
# total this script plans for. Exit status: that of the test suite (0 = all passed).
set -u -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

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
             "pytest_benchmark", "pytest_timeout", "keras", "rich", "threadpoolctl",
             "matplotlib"):
    try:
        mod = importlib.import_module(name)
        print(f"  {name:17s} {getattr(mod, '__version__', '?')}")
    except Exception as exc:
        print(f"  {name:17s} MISSING ({type(exc).__name__}: {exc})")
PYEOF

echo "== install"
if compgen -G ".whl/*.whl" >/dev/null; then
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
       --target /tmp/fastrnn-site .whl/*.whl; then
    export PYTHONPATH=/tmp/fastrnn-site${PYTHONPATH:+:$PYTHONPATH}
    echo "installed the carried wheels: $(ls .whl | tr '\n' ' ')"
  else
    echo "installing the carried wheels in .whl/ failed; going on without them"
  fi
fi
if "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>/tmp/fastrnn-pip.log; then
  echo "pip install -e . done"
else
  echo "pip install -e . failed ($(tail -n 1 /tmp/fastrnn-pip.log)); using PYTHONPATH=$PWD"
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
"$PY" -c "import fastrnn; print('fastrnn', fastrnn.__version__, 'backends:', fastrnn.available_backends()); print('unavailable:', fastrnn.unavailable_reasons())"

SLUG=$("$PY" bench/gpu_bench.py --print-slug 2>/dev/null) || SLUG=unknown-gpu
LOG="$RESULTS/gpu-tests-$SLUG.log"

echo "== tests (log: $LOG)"
TEST_BUDGET=$(($(left) - 200))
[ "$TEST_BUDGET" -gt 300 ] && TEST_BUDGET=300
PYTEST_ARGS=(-rs -q -p no:cacheprovider --continue-on-collection-errors --durations=15)
if "$PY" -c "import pytest_timeout" 2>/dev/null; then
  PYTEST_ARGS+=(--timeout=150)
fi
timeout --signal=INT --kill-after=20 "$TEST_BUDGET" "$PY" -m pytest "${PYTEST_ARGS[@]}" tests \
  2>&1 | tee "$LOG"
TEST_RC=${PIPESTATUS[0]}
case $TEST_RC in
  0) echo "tests: all passed" ;;
  124|130) echo "tests: stopped at the ${TEST_BUDGET}s budget (exit $TEST_RC)" ;;
  *) echo "tests: exit $TEST_RC (failures or collection errors above)" ;;
esac

echo "== benchmark, strict float32"
BENCH_BUDGET=$(($(left) - 110))
if [ "$BENCH_BUDGET" -gt 40 ]; then
  "$PY" bench/gpu_bench.py --out "$RESULTS" --budget-s "$BENCH_BUDGET" \
    || echo "benchmark (strict) failed with exit $?"
else
  echo "skipped: only $(left) s left"
fi

echo "== benchmark, TF32 allowed"
BENCH_BUDGET=$(($(left) - 40))
if [ "$BENCH_BUDGET" -gt 40 ]; then
  "$PY" bench/gpu_bench.py --tf32 --quick --out "$RESULTS" --budget-s "$BENCH_BUDGET" \
    || echo "benchmark (TF32) failed with exit $?"
else
  echo "skipped: only $(left) s left"
fi

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT" && cp "$LOG" "$OUT"/ 2>/dev/null
  # gpu_bench.py writes its json/md into $OUT itself
fi

echo "== summary"
grep -E "^(FAILED|ERROR)|passed|failed|error" "$LOG" | tail -n 25
for f in "$RESULTS/gpu-$SLUG.md" "$RESULTS/gpu-$SLUG-tf32.md"; do
  [ -f "$f" ] && grep -E "^Goals met|^Single step|^Not run" "$f" | sed "s|^|$(basename "$f"): |"
done
echo "elapsed $(( $(date +%s) - START )) s; tests exit $TEST_RC"
exit "$TEST_RC"
