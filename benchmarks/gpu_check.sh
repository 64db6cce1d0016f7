#!/usr/bin/env bash
# GPU check (`make gpu-check`): on a machine with an NVIDIA GPU and torch preinstalled, no network.
# Builds the extension in place for this GPU (no build isolation), runs the test suite (the CUDA
# tests included) and the GPU benchmark, and writes logs and results (JSON, Markdown) to $OUT
# (default benchmarks/results). Sized to finish within about 6 minutes on an H200.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
start=$(date +%s)
log() { echo "[gpu-check +$(( $(date +%s) - start ))s] $*"; }

export FORCE_CUDA=1
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader || true
log "building for compute capability $TORCH_CUDA_ARCH_LIST with $MAX_JOBS jobs"
if ! $PY -m pip install --no-build-isolation --no-deps --no-index -e . > "$OUT/gpu_build.log" 2>&1; then
  tail -40 "$OUT/gpu_build.log"
  log "build failed"
  exit 1
fi
log "built: $($PY -c 'import pdcr_ext; print("cuda kernels:", pdcr_ext.has_cuda_kernels)')"

# Errors raised inside the native ops must reach Python as exceptions: one process per probe,
# so that a crash is seen and named (exit 1 = the expected Python exception, 139 = a crash).
probe() {
  timeout 60 $PY -X faulthandler -c "import torch, pdcr_ext; $2" >> "$OUT/gpu_probes.log" 2>&1
  echo "probe $1: exit $?" | tee -a "$OUT/gpu_probes.log"
}
probe cpu-op-error "x = torch.ones(1, 2, 2); p = torch.ones(1, 1, 2, 2); torch.ops.pdcr.dragsaw_loss(x, p, x, p, 0.0)"
probe cuda-op-error "x = torch.ones(1, 2, 2, device='cuda'); p = torch.ones(1, 1, 2, 2, device='cuda'); torch.ops.pdcr.dragsaw_loss(x, p, x, p, 0.0)"
probe cuda-ratio-error "torch.ops.pdcr.foreground_ratios(torch.zeros((1, 2, 2), dtype=torch.long, device='cuda'), torch.zeros(1, 1, 5, dtype=torch.long, device='cuda'), 2, False)"

log "tests"
# pytest-xdist, where installed, runs the tests in worker processes: a crash in one test is
# reported as that test's failure instead of ending the run
xdist=""
$PY -c "import xdist" 2>/dev/null && xdist="-n 4 --max-worker-restart 20"
timeout 150 $PY -m pytest tests -q -p no:cacheprovider -rfE $xdist --junitxml="$OUT/gpu_tests.xml" \
  > "$OUT/gpu_tests.log" 2>&1
tests_rc=$?
grep -E "passed|failed|error" "$OUT/gpu_tests.log" | tail -15

log "benchmark"
timeout 150 $PY benchmarks/bench_ops.py --device cuda --out "$OUT" > "$OUT/gpu_bench.log" 2>&1
bench_rc=$?
tail -22 "$OUT/gpu_bench.log"

log "training step (UNet width 64, B=8, 256x256, bf16 autocast)"
timeout 120 $PY benchmarks/bench_train_step.py --device cuda --amp --out "$OUT" > "$OUT/gpu_train_step.log" 2>&1
step_rc=$?
tail -10 "$OUT/gpu_train_step.log"
log "volumes (3-D ratios, the loss at a 32^3 layer)"
timeout 120 $PY benchmarks/bench_volumes.py --device cuda --out "$OUT" > "$OUT/gpu_volumes.log" 2>&1
volumes_rc=$?
tail -8 "$OUT/gpu_volumes.log"
log "done: tests exit $tests_rc, benchmark exit $bench_rc, training step exit $step_rc, volumes exit $volumes_rc"
exit $(( tests_rc != 0 || bench_rc != 0 || step_rc != 0 || volumes_rc != 0 ))
