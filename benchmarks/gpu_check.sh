#!/usr/bin/env bash
# GPU check (`make gpu-check`): one run, sized for about 8 minutes on an H200, that builds, tests
# and measures the CUDA code on a machine with an NVIDIA GPU and torch preinstalled (no network).
#
# Steps, each under its own time limit, each writing its log as it goes into $RESULTS
# (default runs/gpu-check/<date-time>); summary.txt gets one line per step:
#   environment   versions, the GPU and its shared memory, the packages the steps use (tests that
#                 need a missing optional package are skipped, never stop the collection)
#   build         the extension in place, for this GPU only (SKIP_BUILD=1 keeps an earlier one)
#   diagnosis     $DIAGNOSE (default ../shared/tools/diagnose-cxx-exceptions.sh): the facts behind
#                 the C++-exception crash of the first GPU image; CPU work, beside the CUDA tests
#   cuda-tests    tests/test_cuda.py but the tests marked native_raises, in one run (pytest-xdist
#                 workers where installed: a crash then costs one test, not the run)
#   cuda-raises   each test marked native_raises in a process of its own, four at a time
#   bench-*       bench_ops (its GPU configs), bench_uafr, bench_train_step (bf16 autocast),
#                 bench_volumes; their JSON and Markdown go to $RESULTS
#   suite         the rest of the test suite, in what is left of $BUDGET seconds (480); cut
#                 short by that limit it is reported "partial", not failed
# No step runs past $DEADLINE seconds (570) from the start: limits shrink to fit, and a TERM
# signal stops the running step at once; either way the summary and the archive are written.
# ARCHIVE=path.tar.gz packs $RESULTS into one file at the end (also when stopped early).
# `make gpu-results FROM=<$RESULTS or the archive>` copies the results into benchmarks/results.
#
# DRY_RUN=1, or no usable CUDA device: the same script in a few seconds on the CPU; the CUDA steps
# are reported as skipped and what can be checked without a GPU is (the environment, the build
# command, the test selection, the benchmarks' options, the diagnosis script's presence).
# `make test` runs it (tests/test_gpu_check.py), so that it cannot rot.
set -uo pipefail
cd "$(dirname "$0")/.."
export ROOT=$PWD
export PY=${PYTHON:-python3}
BUDGET=${BUDGET:-480}
DEADLINE=${DEADLINE:-570}
RESULTS=${RESULTS:-runs/gpu-check/$(date +%Y%m%d-%H%M%S)}
DIAGNOSE=${DIAGNOSE:-../shared/tools/diagnose-cxx-exceptions.sh}
ARCHIVE=${ARCHIVE:-}
export PYTHONPATH="$ROOT:$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 DRY_RUN=${DRY_RUN:-0}
if [ -n "$(ls -A "$RESULTS" 2> /dev/null)" ]; then
  echo "gpu-check: $RESULTS holds an earlier run's results; choose another RESULTS folder" >&2
  exit 2
fi
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
export RESULTS
SUMMARY="$RESULTS/summary.txt"
: > "$SUMMARY"
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
say() { echo "[gpu-check +$(elapsed)s] $*"; }

finish() {
  trap - EXIT TERM INT
  if [ -n "${STEP_PID:-}" ]; then  # stopped during a step: end it (timeout passes the signal on)
    kill -TERM "$STEP_PID" 2> /dev/null
    wait "$STEP_PID" 2> /dev/null
    record "$STEP_NAME" stopped $(( $(date +%s) - STEP_T0 )) "stopped with the run; $STEP_NAME.log"
  fi
  if [ -n "${DIAGNOSIS_PID:-}" ]; then
    kill -TERM "$DIAGNOSIS_PID" 2> /dev/null
    wait "$DIAGNOSIS_PID" 2> /dev/null
    record diagnosis stopped 0 "stopped with the run; diagnosis.log"
  fi
  say "done in $(elapsed)s; results in $RESULTS"
  cat "$SUMMARY"
  if [ -n "$ARCHIVE" ]; then
    tar czf "$ARCHIVE" -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")" && say "archive: $ARCHIVE"
  fi
}
trap finish EXIT
trap 'say "stopped by a signal"; exit 130' TERM INT

# time_left LIMIT: LIMIT, or less to end by $DEADLINE (15 s kept for the summary and archive)
time_left() {
  local left=$(( DEADLINE - 15 - $(elapsed) ))
  echo $(( $1 < left ? $1 : left ))
}

# record NAME STATUS SECONDS DETAIL: one line of summary.txt
record() { printf '%-16s %-10s %5ss  %s\n' "$1" "$2" "$3" "$4" | tee -a "$SUMMARY"; }
skip_step() { record "$1" skipped 0 "$2"; echo "$2" > "$RESULTS/$1.log"; }

# run_step NAME LIMIT COMMAND...: COMMAND (a program or a function of this script) with its output
# in $RESULTS/NAME.log, stopped after LIMIT seconds; records passed, failed or timed-out.
# The step runs in the background and the script waits for it, so that a TERM signal reaches the
# script's trap at once (bash defers traps until a foreground command ends).
run_step() {
  local name=$1 limit rc status
  limit=$(time_left "$2")
  shift 2
  local log="$RESULTS/$name.log"
  if [ "$limit" -lt 10 ]; then
    skip_step "$name" "skipped: the ${DEADLINE}s deadline is near"
    return 1
  fi
  STEP_NAME=$name
  STEP_T0=$(date +%s)
  say "$name (limit ${limit}s): $*"
  echo "\$ $*" > "$log"
  if declare -F "$1" > /dev/null; then
    timeout --kill-after=10 "$limit" bash -c "$(declare -f "$1"); $(printf '%q ' "$@")" >> "$log" 2>&1 &
  else
    timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1 &
  fi
  STEP_PID=$!
  wait "$STEP_PID"
  rc=$?
  STEP_PID=
  case $rc in
    0) status=passed ;;
    124 | 137) status=${TIMEOUT_STATUS:-timed-out} ;;
    *) status=failed ;;
  esac
  record "$name" "$status" $(( $(date +%s) - STEP_T0 )) "exit $rc; $name.log"
  tail -n 3 "$log" | sed 's/^/    /'
  return $rc
}

# 1. environment -------------------------------------------------------------------------------
environment() {
  date -u
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  uname -a
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  if command -v nvcc > /dev/null; then nvcc --version | tail -2; else echo "nvcc: not on PATH"; fi
  "${CXX:-c++}" --version 2> /dev/null | head -1
  "$PY" - << 'EOF'
import importlib.metadata as metadata, importlib.util, json, os, sys
print("python", sys.version.split()[0], sys.executable)
import torch
sys.path.insert(0, "benchmarks")
from bench_ops import machine_name

cuda = torch.cuda.is_available() and os.environ.get("DRY_RUN", "0") != "1"
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "machine": machine_name("cuda" if cuda else "cpu")}
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    info.update(device=props.name, capability=f"{props.major}.{props.minor}",
                shared_memory_per_block_optin=getattr(props, "shared_memory_per_block_optin", None))
print(json.dumps(info))
with open(os.path.join(os.environ["RESULTS"], "machine.txt"), "w") as f:
    f.write(info["machine"] + "\n")
# import name -> (distribution, what needs it): present or not, without importing them all
required = {"numpy": "numpy", "pytest": "pytest", "hypothesis": "hypothesis", "setuptools": "setuptools",
            "ninja": "ninja", "pybind11": "pybind11"}
seg = "; tests that need it skip"
optional = {"xdist": ("pytest-xdist", "test workers: a crash costs one test; without it, one process"),
            "tqdm": ("tqdm", "progress bars"), "monai": ("monai", "pdcr_seg" + seg),
            "yaml": ("PyYAML", "pdcr_seg configs" + seg), "PIL": ("pillow", "pdcr_seg images" + seg),
            "scipy": ("scipy", "pdcr_seg data and metrics" + seg), "matplotlib": ("matplotlib", "figures" + seg),
            "tifffile": ("tifffile", "nuclei data" + seg), "nibabel": ("nibabel", "volume data" + seg),
            "skimage": ("scikit-image", "lung CT data" + seg), "pydicom": ("pydicom", "lung CT data" + seg)}
missing = []
for name, (dist, use) in [(n, (d, "required")) for n, d in required.items()] + list(optional.items()):
    if importlib.util.find_spec(name) is None:
        state = "MISSING"
        missing += [name] if name in required else []
    else:
        try:
            state = metadata.version(dist)
        except metadata.PackageNotFoundError:
            state = "present"
    note = use if name in required else f"optional: {use}"
    print(f"  {name:12s} {state:12s} {note}")
if missing:
    sys.exit(f"missing required packages: {', '.join(missing)}")
EOF
}

run_step environment 60 environment || exit 1
CUDA_OK=0
if [ "${DRY_RUN:-0}" != 1 ] && "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2> /dev/null; then
  CUDA_OK=1
fi
[ $CUDA_OK = 1 ] || say "dry run (DRY_RUN=${DRY_RUN:-0}; CUDA available: no): the CUDA steps are skipped"

# 2. build -------------------------------------------------------------------------------------
# In place: the steps import pdcr_ext from this folder (PYTHONPATH). setuptools >= 77 reads
# pyproject.toml's PEP 639 `license`; an older one rejects it, so then the extension is built from
# a copy of setup.py, csrc/ and pdcr_ext/ without pyproject.toml (an in-place build_ext needs none
# of the package metadata), and the log says so.
build() {
  local version copy
  version=$("$PY" -c "import setuptools; print(setuptools.__version__)")
  if "$PY" -c "import sys, setuptools; sys.exit(int(setuptools.__version__.split('.')[0]) < 77)"; then
    echo "setuptools $version: $PY setup.py build_ext --inplace (TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-})"
    [ "${PLAN_ONLY:-0}" = 1 ] && return 0
    "$PY" setup.py build_ext --inplace || return 1
  else
    echo "setuptools $version < 77 cannot read pyproject.toml's license field: building from a copy" \
      "of setup.py, csrc/ and pdcr_ext/ without pyproject.toml (TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-})"
    [ "${PLAN_ONLY:-0}" = 1 ] && return 0
    copy=$(mktemp -d)
    cp -r setup.py csrc pdcr_ext "$copy"/ && (cd "$copy" && "$PY" setup.py build_ext --inplace) || return 1
    cp "$copy"/pdcr_ext/_C*.so pdcr_ext/ || return 1
  fi
  "$PY" -c "import pdcr_ext, sys; print('CUDA kernels:', pdcr_ext.has_cuda_kernels); sys.exit(not pdcr_ext.has_cuda_kernels)"
}

if [ $CUDA_OK = 1 ]; then
  export FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}
  if [ "${SKIP_BUILD:-0}" = 1 ]; then  # a second run on the same machine: keep the first build
    skip_step build "SKIP_BUILD=1: the extension built in place before"
  else
    run_step build 300 build || { say "the build failed: nothing else can run"; exit 1; }
  fi
else
  PLAN_ONLY=1 build > "$RESULTS/build.log" 2>&1
  record build skipped 0 "no CUDA; would run: $(head -1 "$RESULTS/build.log")"
fi

# 3. diagnosis of the C++-exception crash, in the background -----------------------------------
if [ ! -f "$DIAGNOSE" ]; then
  skip_step diagnosis "skipped: $DIAGNOSE not found (DIAGNOSE=path/to/diagnose-cxx-exceptions.sh)"
elif [ $CUDA_OK = 1 ]; then
  DIAGNOSIS_LIMIT=$(time_left 240)
  say "diagnosis (limit ${DIAGNOSIS_LIMIT}s, in the background): $DIAGNOSE"
  DIAGNOSIS_T0=$(date +%s)
  PY="$PY" timeout --kill-after=10 "$DIAGNOSIS_LIMIT" bash "$DIAGNOSE" > "$RESULTS/diagnosis.log" 2>&1 &
  DIAGNOSIS_PID=$!
else
  skip_step diagnosis "skipped (no CUDA build to diagnose); $DIAGNOSE is there"
fi

# 4. CUDA tests --------------------------------------------------------------------------------
PYTEST=("$PY" -m pytest -p no:cacheprovider -rfEs)
XDIST=()
"$PY" -c "import xdist" 2> /dev/null && XDIST=(-n 4 --max-worker-restart 100)
"${PYTEST[@]}" tests/test_cuda.py -m native_raises --collect-only -q > "$RESULTS/cuda-raises-list.log" 2>&1
export RAISING=$(grep '::' "$RESULTS/cuda-raises-list.log")
COLLECTED=$(grep -E 'tests? collected' "$RESULTS/cuda-raises-list.log" | tail -1)
say "tests/test_cuda.py: $COLLECTED; those selected are marked native_raises (each in its own process)"

cuda_raises() {  # every test of $RAISING in its own process, four at a time
  local i=0 test
  while read -r test; do
    i=$((i + 1))
    (
      timeout --foreground --kill-after=5 90 "$PY" -m pytest -p no:cacheprovider -q -rfE "$test" > "$RESULTS/cuda-raises-$i.log" 2>&1
      echo "exit $? $test (cuda-raises-$i.log)"
    ) &
    while [ "$(jobs -rp | wc -l)" -ge 4 ]; do sleep 0.5; done
  done <<< "$RAISING"
  wait
}

if [ $CUDA_OK = 1 ]; then
  run_step cuda-tests 200 "${PYTEST[@]}" tests/test_cuda.py -m "not native_raises" -v "${XDIST[@]}" \
    --junitxml="$RESULTS/cuda-tests.xml"
  run_step cuda-raises 150 cuda_raises
  failed=$(grep -c '^exit [^0]' "$RESULTS/cuda-raises.log")
  [ "$failed" = 0 ] || record cuda-raises failed 0 "$failed of them failed or crashed (exit 139: a crash)"
else
  skip_step cuda-tests "no CUDA: $COLLECTED, none run"
  skip_step cuda-raises "no CUDA: $(grep -c '::' <<< "$RAISING") tests listed in cuda-raises-list.log"
fi
if [ -n "${DIAGNOSIS_PID:-}" ]; then  # the benchmarks want a quiet machine
  wait "$DIAGNOSIS_PID"
  rc=$?
  DIAGNOSIS_PID=
  # it prints facts: its exit status is no verdict, but a timeout is
  record diagnosis "$([ $rc = 124 ] && echo timed-out || echo ran)" $(( $(date +%s) - DIAGNOSIS_T0 )) "exit $rc; diagnosis.log"
fi

# 5. benchmarks --------------------------------------------------------------------------------
BENCHES=(
  "bench-ops 120 benchmarks/bench_ops.py --device cuda --out $RESULTS"
  "bench-uafr 60 benchmarks/bench_uafr.py --device cuda --out $RESULTS"
  "bench-train-step 120 benchmarks/bench_train_step.py --device cuda --amp --out $RESULTS"
  "bench-volumes 90 benchmarks/bench_volumes.py --device cuda --out $RESULTS"
)
for bench in "${BENCHES[@]}"; do
  read -r name limit script args <<< "$bench"
  if [ $CUDA_OK = 1 ]; then
    run_step "$name" "$limit" "$PY" "$script" $args
  else  # the script and its options are still there
    missing=""
    for option in $args; do
      case $option in --*) grep -q "\"$option\"" "$script" 2> /dev/null || missing="$missing $option" ;; esac
    done
    if [ -f "$script" ] && [ -z "$missing" ]; then
      skip_step "$name" "skipped (no CUDA): $script $args"
    else
      record "$name" failed 0 "$script, or its options$missing, not found"
    fi
  fi
done

# 6. the rest of the suite, in the time left ----------------------------------------------------
LEFT=$(time_left $(( BUDGET - $(elapsed) )))
[ "$LEFT" -gt 0 ] || LEFT=0
SUITE_XDIST=()
[ ${#XDIST[@]} -gt 0 ] && SUITE_XDIST=(-n 8 --max-worker-restart 100)
if [ $CUDA_OK != 1 ]; then
  skip_step suite "skipped (dry run: make test runs the suite)"
elif [ $LEFT -lt 60 ]; then
  skip_step suite "skipped: ${LEFT}s left of the ${BUDGET}s budget"
else  # stopped by its limit it is "partial", no failure: suite.log lists the tests that ran
  TIMEOUT_STATUS=partial run_step suite "$LEFT" "${PYTEST[@]}" tests -v "${SUITE_XDIST[@]}" \
    --ignore=tests/test_cuda.py --ignore=tests/test_gpu_check.py --junitxml="$RESULTS/suite.xml"
fi

# exit status: 1 when a step failed or timed out (skipped steps are no failures)
! grep -qE '^[^ ]+ +(failed|timed-out|stopped) ' "$SUMMARY"
