#!/usr/bin/env bash
# The microlensing classifiers against the Δχ² ceiling, on dense Roman and ground-survey data, and
# on the shared real samples (issue 12; ~3 h on 2 CPU cores, most of it the CNN-GRU):
#   bash bench/bench_microlensing_quality.sh     # OUT=outputs/ml_bench, SAMPLES=../shared/samples/microlensing
#   TINY=1 OUT=/tmp/ml bash bench/bench_microlensing_quality.sh   # every step on 12 events per class, tiny
#                                                                  # models, 1 epoch (the tests run it)
# 1. `planetary` and `baseline` sets, 3,000 events per class (seeds 12);
# 2. on each set: patch_transformer with the defaults (30 epochs, residual features from point- or
#    finite-source fits, truncated copies), the same without truncated copies, and the CNN-GRU
#    without them (3 epochs: ~5 min each on this CPU), each test split evaluated: accuracy, recall
#    per class and per Δχ² bin, the oracle, early detection (10-100% of the season); the dense
#    transformer on ground versions;
# 3. patch_transformer on `planetary` with --survey-augment 0.5: its test split as simulated and as
#    ground-survey versions held out from training (evaluate --survey ground);
# 4. predict.py of each run on the real samples.
# Classes are those of each run's operating point (train.py --binary-false-alarm, chosen on its
# validation split); evaluation summaries hold the argmax figures too.
# Settings are fixed before any run, not tuned on a test split.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TRAIN_EXTRA=()
EVAL_EXTRA=()
if [[ ${TINY:-0} == 1 ]]; then
    : "${N_PER_CLASS:=12}" "${FIT_N:=3}" "${GRU_EPOCHS:=1}" "${WORKERS:=1}"
    TRAIN_EXTRA=(--epochs 1 --d-model 16 --n-layers 1 --features basic)
    EVAL_EXTRA=(--fractions 0.5 1.0 --n-bootstrap 10)
fi
N_PER_CLASS=${N_PER_CLASS:-3000}
FIT_N=${FIT_N:-600}
WORKERS=${WORKERS:-2}
OUT=${OUT:-outputs/ml_bench}
SAMPLES=${SAMPLES:-../shared/samples/microlensing}
GRU_EPOCHS=${GRU_EPOCHS:-3}
mkdir -p "$OUT"
for preset in planetary baseline; do
    [[ -f $OUT/$preset.h5 ]] || $PY simulate.py --output "$OUT/$preset.h5" --n-flat "$N_PER_CLASS" \
        --n-pspl "$N_PER_CLASS" --n-binary "$N_PER_CLASS" --binary-preset $preset --population thesis \
        --num-workers "$WORKERS" --seed 12 \
        --no-progress
done
for preset in planetary baseline; do  # fit speed, and what the point / finite-source fits leave
    $PY bench/bench_fit.py --data "$OUT/$preset.h5" --n "$FIT_N"
done
R=$OUT/runs
train() {
    name=$1; shift
    $PY train.py --task microlensing --output "$R" --experiment-name "$name" --no-progress "$@" \
        ${TRAIN_EXTRA[@]+"${TRAIN_EXTRA[@]}"}
}
evaluate() {
    $PY evaluate.py --run "$R/$1" --no-progress --n-evolution-per-type 1 "${@:2}" ${EVAL_EXTRA[@]+"${EVAL_EXTRA[@]}"}
}
for preset in planetary baseline; do
    train pt_$preset --data "$OUT/$preset.h5"
    evaluate pt_$preset
    train pt_full_$preset --data "$OUT/$preset.h5" --truncate-augment 0
    evaluate pt_full_$preset
    train gru_$preset --data "$OUT/$preset.h5" --model cnn_gru --truncate-augment 0 --epochs "$GRU_EPOCHS"
    evaluate gru_$preset
done
evaluate pt_full_planetary --survey ground
train pt_ground_planetary --data "$OUT/planetary.h5" --survey-augment 0.5
evaluate pt_ground_planetary
evaluate pt_ground_planetary --survey ground
if [[ -d $SAMPLES ]]; then
    for run in pt_planetary gru_planetary pt_baseline gru_baseline pt_ground_planetary; do
        $PY predict.py --runs "$R/$run" --input "$SAMPLES" --output "$OUT/samples_$run.csv" --no-progress
    done
fi
$PY evaluate.py --compare "$R"/* --out-dir "$OUT"
