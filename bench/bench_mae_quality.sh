#!/usr/bin/env bash
# Label efficiency of MAE pretraining, as a user would run it (~45 min on 2 CPU cores):
#   bash bench/bench_mae_quality.sh        # OUT=outputs/mae_bench, DATA: the substructure benchmark's set
#   TINY=1 OUT=/tmp/mae DATA=/tmp/mae/sim bash bench/bench_mae_quality.sh   # every step on 10 images per class,
#                                                                          # 1 epoch (the tests run it)
# 1. the substructure benchmark's simulated set (deeplense-common, 1,500 per class; made here when
#    missing), split once (val 20%, test 10%, seed 42) exactly as bench_substructure_quality.sh splits it;
# 2. an MAE pretrained on the training split's images (labels ignored; MAE_EPOCHS epochs, defaults
#    otherwise: 15-pixel patches, 75 of 100 masked, ViT 192 wide / 6 deep), its held-out
#    reconstruction evaluated;
# 3. on FRACTION (10%) of the training labels, stratified and fixed by the seed, with the same
#    validation split (model selection) and test split (figures): the MAE encoder fine-tuned, the
#    same ViT from random weights, a linear probe of the frozen encoder, and ResNet18 from scratch;
#    each test split evaluated (TTA x8), one table by evaluate.py --compare.
# Settings are fixed before any run (one recipe for every fine-tuning: EPOCHS epochs, batch 32,
# AdamW LR 5e-4, weight decay 0.05; the probe LR 3e-3), not tuned on the test split.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [[ ${TINY:-0} == 1 ]]; then
    : "${N:=10}" "${MAE_EPOCHS:=1}" "${EPOCHS:=1}" "${FRACTION:=0.5}" "${WORKERS:=1}" "${TTA:=1}"
fi
N=${N:-1500}
WORKERS=${WORKERS:-2}
TTA=${TTA:-8}
OUT=${OUT:-outputs/mae_bench}
DATA=${DATA:-outputs/substructure_bench/sim}
MAE_EPOCHS=${MAE_EPOCHS:-60}
EPOCHS=${EPOCHS:-40}
FRACTION=${FRACTION:-0.1}
mkdir -p "$OUT"
[[ -d $DATA/no ]] || $PY simulate.py --task substructure --config deeplense-common --n-per-class "$N" --format npy \
    --num-workers "$WORKERS" --seed 7 --no-progress --output "$DATA"
$PY train.py --task mae --data "$DATA" --epochs "$MAE_EPOCHS" --output "$OUT/results" --experiment-name mae \
    --no-progress
$PY evaluate.py --run "$OUT/results/mae" --no-progress
FT=(--task substructure --data "$DATA" --epochs "$EPOCHS" --batch-size 32 --weight-decay 0.05 --warmup-epochs 3
    --label-fraction "$FRACTION" --output "$OUT/results" --no-progress)
$PY train.py "${FT[@]}" --lr 5e-4 --init-from "$OUT/results/mae" --experiment-name vit_mae_f$FRACTION
$PY train.py "${FT[@]}" --lr 5e-4 --model vit --experiment-name vit_scratch_f$FRACTION
$PY train.py "${FT[@]}" --lr 3e-3 --init-from "$OUT/results/mae" --linear-probe --experiment-name vit_probe_f$FRACTION
$PY train.py "${FT[@]}" --lr 5e-4 --model resnet18 --experiment-name resnet18_f$FRACTION
runs=()
for name in vit_mae vit_scratch vit_probe resnet18; do
    $PY evaluate.py --run "$OUT/results/${name}_f$FRACTION" --tta "$TTA" --no-progress
    runs+=("$OUT/results/${name}_f$FRACTION")
done
$PY evaluate.py --compare "${runs[@]}" --out-dir "$OUT"
