#!/usr/bin/env bash
# Benchmark-scale lens finding on simulations, as a user would run it (~35 min on 2 CPU cores):
#   bash bench/bench_lens_quality.sh                 # OUT=outputs/lens_bench N=10000 (lenses and non-lenses each)
#   TINY=1 OUT=/tmp/lens bash bench/bench_lens_quality.sh   # every step on 16 images per class, 1 epoch (the tests run it)
# 1. lsst (grizy 41x41, FITS): ResNet18 and a ConvNeXt trained on the same split (val 20%, test 10%,
#    best checkpoint by validation AUC), each test split evaluated, one table by evaluate.py --compare;
# 2. learnability: a ResNet18 on lens-finding-64 (gri 64x64, min-max per channel) evaluated on its
#    held-out split and run on the shared DeepLense lens-finding samples (../shared/samples) when present;
# 3. transfer (with the samples): the same ResNet18 recipe on those simulations plus lenses painted into
#    the samples' non-lenses (simulate.py --hosts), both scored on the samples' lenses.
# From scratch (no ImageNet weights), lr 1e-3, batch 128: fixed before any run, not tuned on the test split.
# NEGATIVES=hard simulates the look-alike-rich non-lens mix instead of the sky's (the default).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [[ ${TINY:-0} == 1 ]]; then
    : "${N:=16}" "${N64:=16}" "${EPOCHS_R18:=1}" "${EPOCHS_CNX:=1}" "${WORKERS:=0}" "${BOOTSTRAP:=10}"
fi
WORKERS=${WORKERS:-2}
BOOTSTRAP=${BOOTSTRAP:-100}
NEGATIVES=${NEGATIVES:-sky}  # the simulated non-lens mix (sky, or hard: look-alike-rich)
OUT=${OUT:-outputs/lens_bench}
N=${N:-10000}
N64=${N64:-4000}
EPOCHS_R18=${EPOCHS_R18:-10}
EPOCHS_CNX=${EPOCHS_CNX:-10}
CONVNEXT=${CONVNEXT:-convnext_nano}
SAMPLES=${SAMPLES:-../shared/samples/deeplense_lens_finding}
COMMON=(--task lens --lr 1e-3 --batch-size 128 --output "$OUT/results" --no-progress)
mkdir -p "$OUT"
SIM_WORKERS=$((WORKERS > 0 ? WORKERS : 1))
[[ -d $OUT/lsst/lenses ]] || $PY simulate.py --task lens --config lsst --n-lens "$N" --n-nonlens "$N" --format fits \
    --negatives "$NEGATIVES" --num-workers "$SIM_WORKERS" --seed 1 --no-progress --output "$OUT/lsst" \
    --preview "$OUT/lsst_preview.png"
for model in resnet18 "$CONVNEXT"; do
    epochs=$EPOCHS_R18; [[ $model == resnet18 ]] || epochs=$EPOCHS_CNX
    $PY train.py "${COMMON[@]}" --data "$OUT/lsst" --model "$model" --epochs "$epochs" --num-workers "$WORKERS" \
        --experiment-name "lsst_$model"
    $PY evaluate.py --run "$OUT/results/lsst_$model" --candidates 64 --no-progress
done
$PY evaluate.py --compare "$OUT/results/lsst_resnet18" "$OUT/results/lsst_$CONVNEXT" --out-dir "$OUT"

[[ -d $OUT/lf64/lenses ]] || $PY simulate.py --task lens --config lens-finding-64 --n-lens "$N64" \
    --n-nonlens "$N64" --format npy --negatives "$NEGATIVES" --num-workers "$SIM_WORKERS" --seed 2 --no-progress \
    --output "$OUT/lf64" --preview "$OUT/lf64_preview.png"
$PY train.py "${COMMON[@]}" --data "$OUT/lf64" --model resnet18 --epochs "$EPOCHS_R18" --norm none \
    --experiment-name lf64_resnet18
$PY evaluate.py --run "$OUT/results/lf64_resnet18" --no-progress
if [[ -d $SAMPLES ]]; then
    $PY evaluate.py --run "$OUT/results/lf64_resnet18" --data "$SAMPLES" --out-dir "$OUT/deeplense_samples" \
        --no-progress --n-bootstrap "$BOOTSTRAP"
    $PY predict.py --runs "$OUT/results/lf64_resnet18" --input "$SAMPLES" --output "$OUT/deeplense_samples.csv" \
        --extra-columns --no-progress
    cat "$OUT/deeplense_samples.csv"
    # 3. transfer: the same recipe on these simulations plus lenses painted into the samples' non-lenses
    #    (the only real hosts here); both runs scored on the samples' lenses, never seen in training
    [[ -d $OUT/painted/lenses ]] || $PY simulate.py --task lens --hosts "$SAMPLES/nonlenses" --n-lens "$((N64 / 2))" \
        --n-nonlens "$((N64 / 2))" --format npy --num-workers "$SIM_WORKERS" --seed 3 --no-progress \
        --output "$OUT/painted" --preview "$OUT/painted_preview.png"
    $PY train.py "${COMMON[@]}" --train-roots "$OUT/lf64/lenses" "$OUT/painted/lenses" \
        --train-roots-neg "$OUT/lf64/nonlenses" "$OUT/painted/nonlenses" --model resnet18 --epochs "$EPOCHS_R18" \
        --norm none --experiment-name lf64_painted_resnet18
    $PY predict.py --runs "$OUT/results/lf64_painted_resnet18" --input "$SAMPLES/lenses" \
        --output "$OUT/painted_samples.csv" --no-progress
    echo "scores of the sample lenses: simulations only | simulations + painted"
    paste -d, <(grep lenses "$OUT/deeplense_samples.csv" | grep -v nonlenses | cut -d, -f1,2) \
        <(tail -n +2 "$OUT/painted_samples.csv" | cut -d, -f2)
fi
