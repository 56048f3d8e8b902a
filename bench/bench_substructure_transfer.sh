#!/usr/bin/env bash
# Substructure across generators (issue 26): train on one simulator configuration, test on another,
# source-only, randomised (deeplense-broad) and adapted (train.py --adapt-data), ~60 min on 2 CPU cores:
#   bash bench/bench_substructure_transfer.sh          # OUT=outputs/substructure_transfer N=1000 per class
#   TINY=1 OUT=/tmp/st bash bench/bench_substructure_transfer.sh   # every step on 6 images per class, 1 epoch
# 1. simulate deeplense-model1, deeplense-common and deeplense-broad (training sets), and for model1 and
#    common an unlabelled adaptation pool and a labelled test set (other seeds: the test images are
#    never adaptation targets);
# 2. ResNet18 (6 epochs, batch 32, AdamW lr 1e-3, D4, best checkpoint by the source's own validation
#    macro AUC) on model1, on common, on broad, on model1 adapted to common's pool, on common adapted
#    to model1's pool, and on common adapted to the public samples (../shared/samples/
#    deeplense_substructure, 9 images: tiny, said so); the adapted runs with ADAPT_ARGS (default
#    --adapt-grl 0.1, train.py's default: the reversal capped at 0.1; 1 collapsed the classifier);
# 3. each run evaluated on the other configuration's test set; one table (evaluate.py --compare of
#    the evaluation folders); the public samples predicted by the source-only, randomised and
#    adapted runs, side by side with their smooth-lens residuals (evaluate.py --residuals);
# 4. (RESIDUAL=1, the default) the same ResNet18 shown smooth-lens residual maps (--input-kind
#    residual): on model1 through its PSF 0.087", on common through 0.2"; each test set fitted
#    through its own generator's PSF (the PSF belongs to the data), the public samples through the
#    PSF measured on them (--psf-fwhm scan); own test split, the other configuration's test set and
#    the public samples. The fits (~1 s per image on 2 cores) are kept in $OUT/fits.
#    With ADAPTED=1 also adapted on residual maps (each pool fitted through the PSF measured on it).
#    The randomised row: deeplense-broad's images each fitted through the PSF it was simulated with
#    (--psf-fwhm params; its PSF is drawn per image).
# 5. (ALIGN=1, the default) every run on the other configuration's test set also with --align-shares
#    uniform (the probabilities aligned to the test set's known class shares: *_aligned rows).
# ADAPTED=0 leaves out the adapted rows. Settings fixed before any run; nothing is tuned on a test
# set or on the public samples' labels.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [[ ${TINY:-0} == 1 ]]; then
    : "${N:=6}" "${NT:=6}" "${EPOCHS:=1}" "${WORKERS:=1}" "${TTA:=1}" "${RESIDUAL:=0}"  # the fits: tests/test_residual_maps.py
fi
WORKERS=${WORKERS:-2}
TTA=${TTA:-8}
OUT=${OUT:-outputs/substructure_transfer}
N=${N:-1000}     # training images per class
NT=${NT:-300}    # adaptation-pool and test images per class
EPOCHS=${EPOCHS:-6}
ADAPTED=${ADAPTED:-1}
RESIDUAL=${RESIDUAL:-1}
ALIGN=${ALIGN:-1}
read -r -a ADAPT <<< "${ADAPT_ARGS:---adapt-grl 0.1}"  # the adapted runs' settings (fixed before any run)
SAMPLES=${SAMPLES:-../shared/samples/deeplense_substructure}
COMMON=(--task substructure --model resnet18 --epochs "$EPOCHS" --batch-size 32 --lr 1e-3 --output "$OUT/results"
        --no-progress)
mkdir -p "$OUT"
sim() {  # config, images per class, seed, folder
    [[ -d $OUT/$4/no ]] || $PY simulate.py --task substructure --config "$1" --n-per-class "$2" --format npy \
        --num-workers "$WORKERS" --seed "$3" --no-progress --output "$OUT/$4"
}
sim deeplense-model1 "$N" 21 model1
sim deeplense-common "$N" 22 common
sim deeplense-broad "$N" 23 broad
if [[ $ADAPTED == 1 ]]; then
    sim deeplense-model1 "$NT" 31 model1_pool
    sim deeplense-common "$NT" 32 common_pool
fi
sim deeplense-model1 "$NT" 41 model1_test
sim deeplense-common "$NT" 42 common_test
train() {  # name, args...
    local name=$1; shift
    [[ -f $OUT/results/$name/best.pt && ! -f $OUT/results/$name/last.pt.tmp ]] && grep -q '"epoch": '"$EPOCHS" \
        "$OUT/results/$name/metrics.jsonl" 2>/dev/null || $PY train.py "${COMMON[@]}" --experiment-name "$name" "$@"
}
train m1_source --data "$OUT/model1"
train common_source --data "$OUT/common"
train broad --data "$OUT/broad"
if [[ $ADAPTED == 1 ]]; then
    train m1_adapt_common --data "$OUT/model1" --adapt-data "$OUT/common_pool" "${ADAPT[@]}"
    train common_adapt_m1 --data "$OUT/common" --adapt-data "$OUT/model1_pool" "${ADAPT[@]}"
fi
evals=()
evaluate() {  # run, test set, evaluate.py options...
    local run=$1 data=$2; shift 2
    $PY evaluate.py --run "$OUT/results/$run" --data "$OUT/$data" --tta "$TTA" --no-progress \
        --out-dir "$OUT/eval/${run}_on_$data" "$@"
    evals+=("$OUT/eval/${run}_on_$data")
}
across() {  # a run on the other configuration's test set; with ALIGN=1 also aligned to its known shares
    evaluate "$@"
    if [[ $ALIGN == 1 ]]; then  # the test sets hold NT images per class: 'uniform' is their truth
        local run=$1 data=$2; shift 2
        $PY evaluate.py --run "$OUT/results/$run" --data "$OUT/$data" --tta "$TTA" --no-progress \
            --out-dir "$OUT/eval/${run}_on_${data}_aligned" --align-shares uniform "$@"
        evals+=("$OUT/eval/${run}_on_${data}_aligned")
    fi
}
across m1_source common_test
across broad common_test
across common_source model1_test
across broad model1_test
if [[ $ADAPTED == 1 ]]; then
    across m1_adapt_common common_test
    across common_adapt_m1 model1_test
fi
if [[ $RESIDUAL == 1 ]]; then
    FIT=(--fit-cache "$OUT/fits")
    train m1_residual --data "$OUT/model1" --input-kind residual --psf-fwhm 0.087 "${FIT[@]}"
    train common_residual --data "$OUT/common" --input-kind residual --psf-fwhm 0.2 "${FIT[@]}"
    for run in m1_residual common_residual; do  # the own test split: through the run's PSF
        $PY evaluate.py --run "$OUT/results/$run" --tta "$TTA" --no-progress "${FIT[@]}" --out-dir "$OUT/eval/${run}_own"
        evals+=("$OUT/eval/${run}_own")
    done
    across m1_residual common_test --psf-fwhm 0.2 "${FIT[@]}"
    evaluate m1_residual model1_test --psf-fwhm 0.087 "${FIT[@]}"
    across common_residual model1_test --psf-fwhm 0.087 "${FIT[@]}"
    evaluate common_residual common_test --psf-fwhm 0.2 "${FIT[@]}"
    # randomised: deeplense-broad, each image fitted through the PSF it was simulated with
    train broad_residual --data "$OUT/broad" --input-kind residual --psf-fwhm params "${FIT[@]}"
    across broad_residual common_test --psf-fwhm 0.2 "${FIT[@]}"
    across broad_residual model1_test --psf-fwhm 0.087 "${FIT[@]}"
    if [[ $ADAPTED == 1 ]]; then  # the pools are fitted through the PSF measured on them
        train m1_residual_adapt_common --data "$OUT/model1" --input-kind residual --psf-fwhm 0.087 "${FIT[@]}" \
            --adapt-data "$OUT/common_pool" "${ADAPT[@]}"
        train common_residual_adapt_m1 --data "$OUT/common" --input-kind residual --psf-fwhm 0.2 "${FIT[@]}" \
            --adapt-data "$OUT/model1_pool" "${ADAPT[@]}"
        across m1_residual_adapt_common common_test --psf-fwhm 0.2 "${FIT[@]}"
        across common_residual_adapt_m1 model1_test --psf-fwhm 0.087 "${FIT[@]}"
    fi
fi
$PY evaluate.py --compare "${evals[@]}" --out-dir "$OUT"
if [[ -d $SAMPLES && $RESIDUAL == 1 ]]; then  # through the PSF measured on the 9 images
    for run in m1_residual common_residual broad_residual; do
        $PY predict.py --runs "$OUT/results/$run" --input "$SAMPLES" --output "$OUT/public_samples_$run.csv" \
            --tta "$TTA" --no-progress "${FIT[@]}"
        $PY evaluate.py --run "$OUT/results/$run" --data "$SAMPLES" --tta "$TTA" --no-progress "${FIT[@]}" \
            --out-dir "$OUT/eval/${run}_on_public"
    done
    if [[ $ADAPTED == 1 ]]; then  # adapted with the 9 public images as the only target (tiny)
        train common_residual_adapt_public --data "$OUT/common" --input-kind residual --psf-fwhm 0.2 "${FIT[@]}" \
            --adapt-data "$SAMPLES" "${ADAPT[@]}"
        $PY predict.py --runs "$OUT/results/common_residual_adapt_public" --input "$SAMPLES" --tta "$TTA" \
            --output "$OUT/public_samples_common_residual_adapt_public.csv" --no-progress "${FIT[@]}"
    fi
fi
if [[ -d $SAMPLES && $ADAPTED == 1 ]]; then
    train common_adapt_public --data "$OUT/common" --adapt-data "$SAMPLES" "${ADAPT[@]}"
    for run in common_source broad common_adapt_public; do
        $PY predict.py --runs "$OUT/results/$run" --input "$SAMPLES" --output "$OUT/public_samples_$run.csv" \
            --tta "$TTA" --no-progress
    done
    $PY evaluate.py --run "$OUT/results/common_source" --data "$SAMPLES" --tta "$TTA" --no-progress --residuals \
        --out-dir "$OUT/eval/public_residuals"
    paste -d, "$OUT/public_samples_common_source.csv" <(cut -d, -f5 "$OUT/public_samples_broad.csv") \
        <(cut -d, -f5 "$OUT/public_samples_common_adapt_public.csv") <(cut -d, -f3-6 "$OUT/eval/public_residuals/residuals.csv")
fi
