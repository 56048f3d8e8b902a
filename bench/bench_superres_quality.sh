#!/usr/bin/env bash
# Super-resolution on simulated 75x75 -> 150x150 pairs, as a user would run it (~40 min on 2 CPU cores):
#   bash bench/bench_superres_quality.sh   # OUT=outputs/superres_bench; MAE: bench_mae_quality.sh's MAE run
#   TINY=1 OUT=/tmp/sr MAE=/tmp/mae/results/mae bash bench/bench_superres_quality.sh   # 8 pairs, 1 epoch (the tests)
# 1. N pairs of the simulator's superres config (Model I scenes, HR 0.05"/px, LR 0.1"/px with its own
#    PSF and noise), split once (val 10%, test 10%, seed 42);
# 2. EDSR (32 features, 6 residual blocks: a CPU-sized one), and mae_sr initialised from the MAE (when
#    that run exists) and from random weights, EPOCHS epochs each, L1, AdamW 2e-4 (the task's
#    defaults), best by validation PSNR;
# 3. every run's test split evaluated against bicubic on the same pairs (PSNR / SSIM on each HR
#    image's data range), one table by evaluate.py --compare.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [[ ${TINY:-0} == 1 ]]; then
    : "${N:=8}" "${EPOCHS:=1}"
fi
OUT=${OUT:-outputs/superres_bench}
N=${N:-1500}
EPOCHS=${EPOCHS:-15}
MAE=${MAE:-outputs/mae_bench/results/mae}
mkdir -p "$OUT"
[[ -d $OUT/sim/LR ]] || $PY simulate.py --task superres --n "$N" --format npy --seed 11 --no-progress \
    --output "$OUT/sim"
COMMON=(--task superres --data "$OUT/sim" --epochs "$EPOCHS" --output "$OUT/results" --no-progress)
$PY train.py "${COMMON[@]}" --model edsr --sr-features 32 --sr-blocks 6 --experiment-name edsr
runs=("$OUT/results/edsr")
if [[ -f $MAE/best.pt ]]; then  # the MAE's encoder, and the same model from random weights
    $PY train.py "${COMMON[@]}" --init-from "$MAE" --experiment-name mae_sr
    $PY train.py "${COMMON[@]}" --model mae_sr --experiment-name mae_sr_scratch
    runs+=("$OUT/results/mae_sr" "$OUT/results/mae_sr_scratch")
fi
for run in "${runs[@]}"; do
    $PY evaluate.py --run "$run" --no-progress
done
$PY evaluate.py --compare "${runs[@]}" --out-dir "$OUT"
