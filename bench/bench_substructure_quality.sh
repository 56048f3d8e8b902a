#!/usr/bin/env bash
# Benchmark-scale substructure classification on simulations, as a user would run it (~45 min on
# 2 CPU cores with the defaults; 150x150 training is the cost):
#   bash bench/bench_substructure_quality.sh          # OUT=outputs/substructure_bench N=1500 per class
#   (~70 min with PINN_AUX=1, the default: LensPINN once more with --lens-param-weight 0.1)
#   TINY=1 OUT=/tmp/sub bash bench/bench_substructure_quality.sh   # every step on 6 images per class, 1 epoch,
#                                                                   # ResNet18 and LensPINN (the tests run it)
# 1. one simulated set (deeplense-common, the default config), split once (val 20%, test 10%, seed 42);
# 2. ResNet18, a ConvNeXt V2, an EfficientNet, a MobileNetV3 and LensPINN trained on that split at
#    equal budget (the same images, EPOCHS epochs, batch 32, AdamW lr 1e-3 from scratch, D4 augmentation,
#    best checkpoint by validation macro AUC), each test split evaluated, one table and an
#    AUC-vs-training-time plot by evaluate.py --compare;
# 3. the best-by-validation run (the test split is not used to choose it) on the public samples in
#    ../shared/samples/deeplense_substructure: predictions, and the image statistics of simulated vs
#    public images with those predictions (bench/bench_substructure_realism.py).
# Settings are fixed before any run, not tuned on the test split or on the public samples.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
REALISM_EXTRA=()
if [[ ${TINY:-0} == 1 ]]; then
    : "${N:=6}" "${EPOCHS:=1}" "${WORKERS:=1}" "${TTA:=1}" "${MODELS:=resnet18 lens_pinn}"
    REALISM_EXTRA=(--tiny)
fi
WORKERS=${WORKERS:-2}
TTA=${TTA:-8}
OUT=${OUT:-outputs/substructure_bench}
N=${N:-1500}
EPOCHS=${EPOCHS:-6}
CONFIG=${CONFIG:-deeplense-common}
MODELS=${MODELS:-resnet18 convnextv2_atto efficientnet_b0 mobilenetv3_large_100 lens_pinn}
SAMPLES=${SAMPLES:-../shared/samples/deeplense_substructure}
COMMON=(--task substructure --data "$OUT/sim" --epochs "$EPOCHS" --batch-size 32 --lr 1e-3 --output "$OUT/results"
        --no-progress)
mkdir -p "$OUT"
[[ -d $OUT/sim/no ]] || $PY simulate.py --task substructure --config "$CONFIG" --n-per-class "$N" --format npy \
    --num-workers "$WORKERS" --seed 7 --no-progress --output "$OUT/sim"
runs=()
for model in $MODELS; do
    $PY train.py "${COMMON[@]}" --model "$model" --experiment-name "sub_$model"
    $PY evaluate.py --run "$OUT/results/sub_$model" --tta "$TTA" --no-progress
    runs+=("$OUT/results/sub_$model")
done
if [[ ${PINN_AUX:-1} == 1 ]]; then  # LensPINN again, with the auxiliary loss on the simulator's true lens parameters
    $PY train.py "${COMMON[@]}" --model lens_pinn --lens-param-weight 0.1 --experiment-name sub_lens_pinn_aux
    $PY evaluate.py --run "$OUT/results/sub_lens_pinn_aux" --tta "$TTA" --no-progress
    runs+=("$OUT/results/sub_lens_pinn_aux")
fi
$PY evaluate.py --compare "${runs[@]}" --out-dir "$OUT"
# the run with the best validation macro AUC (from its own metrics.jsonl, never the test split)
best=$($PY - "${runs[@]}" <<'PYEOF'
import json, sys
best = max(sys.argv[1:], key=lambda r: max(json.loads(l)["val_macro_auc"] for l in open(f"{r}/metrics.jsonl")))
print(best)
PYEOF
)
echo "best by validation: $best"
if [[ -d $SAMPLES ]]; then
    $PY predict.py --runs "$best" --input "$SAMPLES" --output "$OUT/public_samples.csv" --tta "$TTA" --no-progress
    cat "$OUT/public_samples.csv"
    $PY bench/bench_substructure_realism.py --out "$OUT/realism" --predictions "$OUT/public_samples.csv" \
        --public "$SAMPLES" ${REALISM_EXTRA[@]+"${REALISM_EXTRA[@]}"}
fi
