#!/usr/bin/env bash
# One GPU check, for the day a GPU is lent (~8 min on one H100, no downloads):
#   bash bench/gpu_check.sh OUT_DIR          # PY=.venv/bin/python by default
# 1. the test suite's CUDA-marked tests (tests/test_cuda.py: AMP bf16 / fp16 with the GradScaler,
#    flash-attn / SDPA attention, the strong-lens renderer on CUDA against the CPU, NCCL under
#    torchrun --nproc-per-node 1, --compile, the image simulator, training and predict on the GPU);
# 2. bench/gpu_check.py: a few hundred bf16 training steps of each task (samples/s, peak memory),
#    simulator light curves/s and images/s (Model I, lsst), predict.py images/s for convnext_tiny at
#    batch 512.
# Writes OUT_DIR/gpu_check.json, OUT_DIR/gpu_check.md (the table), the tests' JUnit XML and logs.
# Without CUDA it says so in one line and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash bench/gpu_check.sh OUT_DIR}
PY=${PY:-.venv/bin/python}
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing to check"
    exit 0
fi
mkdir -p "$OUT"
"$PY" -c "import torch; print('gpu_check:', torch.cuda.get_device_name(), 'torch', torch.__version__)"
tests=0
timeout "${TEST_TIMEOUT:-240}" "$PY" -m pytest -q -m cuda -p no:cacheprovider --junitxml "$OUT/cuda_tests.xml" \
    tests/test_cuda.py 2>&1 | tee "$OUT/cuda_tests.log" || tests=$?
timeout "${BENCH_TIMEOUT:-300}" "$PY" bench/gpu_check.py --out "$OUT" --tests-xml "$OUT/cuda_tests.xml"
if (( tests != 0 )); then
    echo "gpu_check: the CUDA tests did not all pass (exit $tests): see $OUT/cuda_tests.log"
    exit 1
fi
