#!/usr/bin/env bash
# The GPU check of issue 14: one prepared run of at most 8 minutes whenever a CUDA GPU is lent.
#
#   bash benchmarks/gpu_check.sh            # on a CUDA machine (H100/H200: about 6 minutes)
#   bash benchmarks/gpu_check.sh --smoke    # on a CPU: every step with tiny sizes (~1-2 min)
#
# Steps, each under its own time limit so that one hang cannot eat the others' time:
#   1. Triton lerp bandwidth against a device copy and torch.lerp (benchmarks/kernels_gpu.py);
#   2. `safebasin merge lerp --device cuda` on a generated Llama-3.2-1B-shaped pair, against
#      the I/O floor (benchmarks/gpu_merge.py);
#   3. one EMA update of a 1B-shaped model on the GPU (fp32 and bf16), against
#      torch._foreach_lerp_ (benchmarks/gpu_ema.py);
#   4. keyword-ASR generation throughput in bf16 at batch 1 / 16 / 64 on a random 1B-shaped
#      Llama (benchmarks/gpu_generation.py).
# Everything printed is also written to $OUT/gpu_check.log (OUT defaults to the current
# folder). Exit status: the number of steps that failed or ran out of time. Nothing in CI runs
# this script; copy its figures into the README with the date and the device.
set -u
SMOKE=""
if [ "${1:-}" = "--smoke" ]; then SMOKE="--smoke"; fi
PYTHON=${PYTHON:-python}
LOG="${OUT:-.}/gpu_check.log"
cd "$(dirname "$0")/.." || exit 99
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
failed=0

step() {  # step NAME LIMIT_S COMMAND...
    local name=$1 limit=$2 start rc
    shift 2
    echo "=== $name (limit ${limit} s): $*"
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    echo "=== $name: exit $rc after $(( $(date +%s) - start )) s"
    if [ "$rc" -ne 0 ]; then failed=$((failed + 1)); fi
}

{
    echo "gpu_check $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    if [ -z "$SMOKE" ]; then
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
    fi
    "$PYTHON" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
    if [ -n "$SMOKE" ]; then
        step kernels 120 "$PYTHON" benchmarks/kernels_gpu.py --smoke
        step merge 120 "$PYTHON" benchmarks/gpu_merge.py --smoke --runs 1
        step ema 60 "$PYTHON" benchmarks/gpu_ema.py --smoke --repeats 3
        step generation 120 "$PYTHON" benchmarks/gpu_generation.py --smoke --prompts 8 --new-tokens 4 --repeats 1
    else
        step kernels 150 "$PYTHON" benchmarks/kernels_gpu.py --repeats 10
        step merge 150 "$PYTHON" benchmarks/gpu_merge.py --runs 3
        step ema 60 "$PYTHON" benchmarks/gpu_ema.py --repeats 20
        step generation 100 "$PYTHON" benchmarks/gpu_generation.py --prompts 64 --new-tokens 64 --repeats 2
    fi
    echo "gpu_check: $failed step(s) failed"
    exit "$failed"
} 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
