#!/usr/bin/env bash
# The one-call GPU check (H100/H200, torch 2.11 cu130, triton 3.6, nvcc 13.0, no network):
#   1. build the CUDA extension in place (parallel, logged; a failed build is reported and the
#      cuda provider then shows as unavailable),
#   2. run the GPU test suite (logged, wall budget),
#   3. tune the Triton launch parameters on the quick benchmark's shapes (bench/tune.py, own
#      budget): kernels/tuned_configs.json of this working copy is rewritten, and copied into
#      $FUSEDNORM_OUT with the report tune.md,
#   4. run the quick benchmark with that table into $FUSEDNORM_OUT (default
#      bench/out/gpu-<date>): wall time (do_bench) and kernel-only time (CUDA graph replay /
#      profiler) per row, then the host cost per eager call,
#   5. print a compact table last: copy bandwidth, then op / pass / provider -> GB/s, % of copy,
#      on wall and on kernel time.
# Installs nothing from the network. The whole run keeps within GPU_CHECK_BUDGET_S (default
# 480 s): each step gets what the earlier ones left, minus what the later ones need (tuning
# GPU_CHECK_TUNE_S, default 90 s; the benchmark at least ~110 s; host cost ~20 s).
# Reruns: GPU_CHECK_TESTS=0 skips the tests, GPU_CHECK_TUNE=0 the tuning (the committed table
# is used), GPU_CHECK_BENCH=0 stops after the tests (no tuning, no benchmark).
#
#   FUSEDNORM_OUT=$OUT FUSEDNORM_COMMIT=<sha> bash bench/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
T0=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-480}
DO_TESTS=${GPU_CHECK_TESTS:-1}
DO_BENCH=${GPU_CHECK_BENCH:-1}
DO_TUNE=${GPU_CHECK_TUNE:-1}
[ "$DO_BENCH" = 0 ] && DO_TUNE=0
TUNE_S=${GPU_CHECK_TUNE_S:-90}
[ "$DO_TUNE" = 0 ] && TUNE_S=0
BENCH_MIN=110   # quick benchmark: ~22 cases x providers x passes, wall + kernel time
HOST_S=20       # bench/bench_host.py
[ "$DO_BENCH" = 0 ] && { BENCH_MIN=0; HOST_S=0; }
# what the steps after the tests need
AFTER_TESTS=$(( TUNE_S + BENCH_MIN + HOST_S + 10 ))
PY=${PYTHON:-python3}
export FUSEDNORM_OUT=${FUSEDNORM_OUT:-bench/out/gpu-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$FUSEDNORM_OUT"
OUTD=$FUSEDNORM_OUT
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1

left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
log() { echo "[gpu_check +$(( $(date +%s) - T0 ))s] $*"; }
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }
max() { if [ "$1" -gt "$2" ]; then echo "$1"; else echo "$2"; fi; }

# ---- 0. environment record ----------------------------------------------------------------
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1
  $PY - <<'EOF' 2>&1
import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda)
try:
    import triton; print("triton", triton.__version__)
except Exception as e: print("triton: not importable:", e)
print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "NO CUDA DEVICE")
EOF
  command -v nvcc >/dev/null && nvcc --version | tail -2
} > "$OUTD/env.txt" 2>&1
log "output folder $OUTD; $(grep -m1 '^device:' "$OUTD/env.txt")"

# Liger-Kernel travels as a pure-Python wheel in the ignored folder .whl/: unpack it beside the
# run (no pip, no network) and put it on PYTHONPATH, so the liger provider can be timed.
LIGER_WHL=$(ls .whl/liger_kernel-*.whl 2>/dev/null | tail -1)
if [ -n "$LIGER_WHL" ]; then
  LIGER_DIR=${TMPDIR:-/tmp}/fusednorm-liger
  rm -rf "$LIGER_DIR" && $PY -m zipfile -e "$LIGER_WHL" "$LIGER_DIR" \
    && export PYTHONPATH="$LIGER_DIR${PYTHONPATH:+:$PYTHONPATH}" \
    && log "liger: $(basename "$LIGER_WHL") on PYTHONPATH"
else
  log "liger: no wheel in .whl/ (the liger provider will report it is not importable)"
fi

# ---- 1. build the CUDA extension ----------------------------------------------------------
BUILD_LOG=$OUTD/build.log
TEST_MIN=60; [ "$DO_TESTS" = 0 ] && TEST_MIN=0
BUILD_T=$(min 240 $(max 60 $(( $(left) - AFTER_TESTS - TEST_MIN ))))
export MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
log "build: editable install with the CUDA extension (limit ${BUILD_T}s) -> $BUILD_LOG"
BUILD=failed
FUSEDNORM_BUILD_CUDA=1 timeout "$BUILD_T" $PY -m pip install --no-build-isolation --no-deps \
  --no-index -e . > "$BUILD_LOG" 2>&1 && BUILD="ok (pip install -e .)"
if [ "$BUILD" = failed ]; then
  T=$(max 30 $(min "$BUILD_T" $(( $(left) - AFTER_TESTS - TEST_MIN ))))
  log "build: editable install failed (rc in log); falling back to setup.py build_ext --inplace (limit ${T}s)"
  echo "==== fallback: setup.py build_ext --inplace" >> "$BUILD_LOG"
  FUSEDNORM_BUILD_CUDA=1 timeout "$T" $PY setup.py build_ext --inplace >> "$BUILD_LOG" 2>&1 \
    && BUILD="ok (build_ext --inplace)"
  # Make the package importable without pip: stage python/fusednorm (with the in-place _C,
  # if it was built) and kernels/ as fusednorm.kernels, as setup.py's package_dir would.
  STAGE=${TMPDIR:-/tmp}/fusednorm-stage
  rm -rf "$STAGE" && mkdir -p "$STAGE" && cp -r python/fusednorm "$STAGE/" \
    && cp -r kernels "$STAGE/fusednorm/kernels" \
    && export PYTHONPATH="$STAGE${PYTHONPATH:+:$PYTHONPATH}" \
    && log "build: package staged at $STAGE (PYTHONPATH)"
fi
CUDA_AVAIL=$($PY -c "import fusednorm; print(fusednorm.available_backends())" 2>&1 | tail -1)
log "build: $BUILD; available_backends: $CUDA_AVAIL"
[ "$BUILD" = failed ] && { echo "---- last lines of $BUILD_LOG"; grep -E -m 15 "error|Error" "$BUILD_LOG"; tail -5 "$BUILD_LOG"; }

# ---- 2. GPU test suite ----------------------------------------------------------------------
TEST_LOG=$OUTD/pytest.log
TEST_RC=skipped; TEST_LINE="(GPU_CHECK_TESTS=0)"
if [ "$DO_TESTS" != 0 ]; then
  TEST_T=$(min ${GPU_TEST_LIMIT_S:-300} $(max 30 $(( $(left) - AFTER_TESTS ))))
  PT_TIMEOUT=""
  $PY -c "import pytest_timeout" 2>/dev/null && PT_TIMEOUT="--timeout=120"
  log "tests: pytest tests (wall limit ${TEST_T}s) -> $TEST_LOG"
  # By default only the cases that exercise the GPU (`-m gpu`, see tests/conftest.py): the
  # CPU-only suites (nvcc/Triton compile checks for sm_80/sm_90, gloo SyncBatchNorm on CPU, the
  # ICS example, the bench harness, CPU torch.compile, the reference on CPU) run in CI and would
  # only spend device time here. GPU_PYTEST_ARGS (word-split) replaces this selection.
  if [ -n "${GPU_PYTEST_ARGS+x}" ]; then
    read -r -a PT_SEL <<< "$GPU_PYTEST_ARGS"
  else
    PT_SEL=(-m gpu)
  fi
  timeout "$TEST_T" $PY -m pytest tests -q -p no:cacheprovider -rfEs $PT_TIMEOUT "${PT_SEL[@]}" \
    > "$TEST_LOG" 2>&1
  TEST_RC=$?
  [ $TEST_RC -eq 124 ] && echo "!!!! pytest stopped by the ${TEST_T}s wall limit" >> "$TEST_LOG"
  TEST_LINE=$(grep -E "(passed|failed|error|no tests ran)" "$TEST_LOG" | tail -1)
  log "tests: rc=$TEST_RC ${TEST_LINE:-(no summary line: see log)}"
  grep -E "^(FAILED|ERROR) " "$TEST_LOG" | head -20
else
  log "tests: skipped (GPU_CHECK_TESTS=0)"
fi

# GPU_CHECK_BENCH=0: a rerun of the tests alone
if [ "$DO_BENCH" = 0 ]; then
  echo "build: $BUILD | tests: rc=$TEST_RC ${TEST_LINE:-?} | tune, bench: not run (GPU_CHECK_BENCH=0) | $(( $(date +%s) - T0 ))s" \
    | tee "$OUTD/summary.txt"
  exit 0
fi

# ---- 3. tune the Triton launch parameters (bench/tune.py) -----------------------------------
# Writes kernels/tuned_configs.json of this working copy (the installed package reads it: an
# editable install, or FUSEDNORM_TUNED_CONFIGS below when the package was staged) and, in
# $OUTD, tune.md (heuristic vs best config per family and key), tune.json and a copy of the
# table, so the table comes back with the call.
TUNE_LOG=$OUTD/tune.log
TUNE_RC=skipped; TUNE_LINE="(GPU_CHECK_TUNE=0: the committed table)"
if [ "$DO_TUNE" != 0 ]; then
  TUNE_B=$(min "$TUNE_S" $(max 30 $(( $(left) - BENCH_MIN - HOST_S - 10 ))))
  TUNE_SWEEP=$(max 10 $(( TUNE_B - 15 )))   # less the process start and the writing
  log "tune: bench/tune.py (sweep budget ${TUNE_SWEEP}s, limit $(( TUNE_B + 40 ))s) -> $TUNE_LOG"
  timeout $(( TUNE_B + 40 )) $PY bench/tune.py --budget-s "$TUNE_SWEEP" --out "$OUTD" \
    > "$TUNE_LOG" 2>&1
  TUNE_RC=$?
  TUNE_LINE=$(grep -E "^tune summary:" "$TUNE_LOG" | tail -1)
  log "tune: rc=$TUNE_RC ${TUNE_LINE:-(no summary line: see log)}"
  grep -E "^(Table:|Nothing tuned)|^  skip:|no tune_targets|Traceback|Error" "$TUNE_LOG" | head -12
fi
cp kernels/tuned_configs.json "$OUTD/tuned_configs.json" 2>/dev/null
export FUSEDNORM_TUNED_CONFIGS="$PWD/kernels/tuned_configs.json"

# ---- 4. quick benchmark with the tuned table ------------------------------------------------
BENCH_LOG=$OUTD/bench.log
BENCH_B=$(max 60 $(( $(left) - HOST_S - 10 )))
log "bench: quick run (budget ${BENCH_B}s; wall + kernel-only time) -> $OUTD"
timeout $(( BENCH_B + 45 )) $PY bench/run.py --quick --out "$OUTD" --budget-s "$BENCH_B" \
  --no-progress > "$BENCH_LOG" 2>&1
BENCH_RC=$?
log "bench: rc=$BENCH_RC; $(grep -c '' "$BENCH_LOG") log lines"
grep -E "provider |tuned configs|copy bandwidth|error:|Traceback|kernel time by" "$BENCH_LOG" | head -24

# ---- 4b. host cost per eager call, real launches (bench/bench_host.py; ~20 s) ---------------
if [ "$(left)" -gt 30 ]; then
  timeout $(min 60 $(( $(left) - 10 ))) $PY bench/bench_host.py --rounds 5 --calls 500 \
    --json "$OUTD/host.json" > "$OUTD/host.md" 2>&1
  log "host cost: rc=$?"; cat "$OUTD/host.md"
fi

# ---- 5. compact table (last) ----------------------------------------------------------------
{
  echo "build: $BUILD | tests: rc=$TEST_RC ${TEST_LINE:-?} | tune: rc=$TUNE_RC ${TUNE_LINE:-?} | bench: rc=$BENCH_RC | $(( $(date +%s) - T0 ))s"
  $PY bench/summary.py "$OUTD" 2>&1 || tail -20 "$BENCH_LOG"
} | tee "$OUTD/summary.txt"
