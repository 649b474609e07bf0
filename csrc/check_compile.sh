#!/usr/bin/env bash
# CPU-only compile check of the CUDA backend (no GPU, no CUDA build of torch needed):
#   * every kernel launcher csrc/*/launch.cu with nvcc for sm_80 and sm_90, -Xptxas -v
#     (prints registers / spills per kernel),
#   * csrc/binding.cpp with g++ -fsyntax-only against the active Python's torch headers.
# Exits non-zero on any error.  Compiles run in parallel (2 at a time by default: JOBS=n), the
# largest translation units first.
# Environment: PYTHON (default: python), NVCC (default: nvcc), CXX (default: g++); FN_KEEP_OBJ=dir
# keeps each launcher's object (both architectures: cuobjdump -sass reads them) and ptxas log
# there as <stem>.o / <stem>.log (tests/test_cuda_compile.py checks the SASS).
set -u -o pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python}"
NVCC="${NVCC:-nvcc}"
CXX="${CXX:-g++}"
JOBS="${JOBS:-2}"
STD="${FN_CXX_STD:-c++17}"          # kernels: the oldest standard torch builds them with
BINDING_STD="${FN_BINDING_STD:-c++20}"  # torch >= 2.13 headers need C++20

command -v "$NVCC" >/dev/null || { echo "check_compile: nvcc not found (NVCC=$NVCC)" >&2; exit 2; }
command -v "$CXX" >/dev/null || { echo "check_compile: $CXX not found" >&2; exit 2; }

TMP="$(mktemp -d "${TMPDIR:-/tmp}/fusednorm_check.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

# CUDA headers: next to the real nvcc (it may be a wrapper script), or CUDA_HOME.
NVCC_BIN="$("$NVCC" --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ _HERE_=//p' | head -n1)"
CUDA_INC=""
for cand in "${CUDA_HOME:-}/include" "$NVCC_BIN/../targets/x86_64-linux/include" \
            "$NVCC_BIN/../targets/sbsa-linux/include" "$NVCC_BIN/../include"; do
  if [ -f "$cand/cuda_runtime_api.h" ]; then CUDA_INC="$(cd "$cand" && pwd)"; break; fi
done
[ -n "$CUDA_INC" ] || { echo "check_compile: CUDA headers not found near nvcc ($NVCC_BIN)" >&2; exit 2; }

TORCH_INC="$("$PYTHON" -c 'from torch.utils.cpp_extension import include_paths; print(" ".join("-I" + p for p in include_paths()))')" \
  || { echo "check_compile: cannot import torch with $PYTHON" >&2; exit 2; }
PY_INC="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"

GENCODE=(-gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90)

# name|command...  (run through bash -c so each job writes its own log).  The binding goes
# first: it is the longest single job.  Host code is not optimized (a check, not a build);
# device code is (cicc/ptxas default to -O3), so the register counts are the real ones.
JOBLIST=()
JOBLIST+=("binding|\"$CXX\" -std=$BINDING_STD -fsyntax-only -Wall $TORCH_INC -I\"$PY_INC\" -I\"$CUDA_INC\" -I\"$HERE/include\" -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE -DTORCH_EXTENSION_NAME=_C \"$HERE/binding.cpp\"")
# largest first (by source size of the launcher and its kernel header), so two jobs end together
for cu in $(for f in "$HERE"/*/launch.cu; do echo "$(cat "$f" "$(dirname "$f")/kernel.cuh" | wc -c) $f"; done | sort -rn | cut -d' ' -f2); do
  stem="$(basename "$(dirname "$cu")")"
  JOBLIST+=("$stem|\"$NVCC\" -std=$STD -lineinfo ${GENCODE[*]} -Xptxas -v -I\"$HERE/include\" -c \"$cu\" -o \"$TMP/$stem.o\"")
done

start=$SECONDS
pids=()
names=()
for job in "${JOBLIST[@]}"; do
  name="${job%%|*}"
  cmd="${job#*|}"
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 0.2; done
  bash -c "$cmd" >"$TMP/$name.log" 2>&1 &
  pids+=($!)
  names+=("$name")
done

fail=0
for i in "${!pids[@]}"; do
  name="${names[$i]}"
  if wait "${pids[$i]}"; then status=ok; else status=FAILED; fail=1; fi
  echo "=== $name: $status"
  if [ "$name" = binding ]; then
    # torch's own headers warn under -Wall; show only what concerns our files, and any error
    grep -E "error|binding.cpp|check.h|fusednorm.h" "$TMP/$name.log" | grep -v "^In file included" || true
  else
    # one line per kernel: arch, registers, spills (names demangled when c++filt exists)
    "$PYTHON" - "$TMP/$name.log" <<'PY' | { if command -v c++filt >/dev/null; then c++filt; else cat; fi; }
import re, sys
fn = arch = spill = None
for line in open(sys.argv[1], errors="replace"):
    m = re.search(r"Compiling entry function '([^']+)' for '(sm_\d+)'", line)
    if m:
        fn, arch = m.groups()
        continue
    m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m:
        spill = "spill st/ld=%s/%s" % m.groups()
        continue
    m = re.search(r"Used (\d+) registers", line)
    if m and fn:
        print("%s regs=%-3s %s  %s" % (arch, m.group(1), spill, fn))
        fn = None
        continue
    if ("error" in line or "warning" in line) and "ptxas info" not in line:
        print(line.rstrip())
PY
    if [ "$status" = FAILED ]; then cat "$TMP/$name.log"; fi
  fi
done

if [ -n "${FN_KEEP_OBJ:-}" ]; then
  mkdir -p "$FN_KEEP_OBJ"
  cp "$TMP"/*.o "$TMP"/*.log "$FN_KEEP_OBJ"/ 2>/dev/null || true
fi

spills=$(cat "$TMP"/*.log | grep -E "[1-9][0-9]* bytes spill (stores|loads)" | wc -l)
echo "=== $((SECONDS - start)) s; kernels with spills: $spills"
if [ "$fail" -ne 0 ]; then echo "check_compile: FAILED" >&2; exit 1; fi
echo "check_compile: OK"
