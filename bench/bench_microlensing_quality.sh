#!/usr/bin/env bash
# The microlensing classifiers against the Δχ² ceiling, on dense Roman and ground-survey data, and
# on the shared real samples (issue 12; ~3 h on 2 CPU cores, most of it the CNN-GRU):
#   bash bench/bench_microlensing_quality.sh     # OUT=outputs/ml_bench, SAMPLES=../shared/samples/microlensing
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
OUT=${OUT:-outputs/ml_bench}
SAMPLES=${SAMPLES:-../shared/samples/microlensing}
GRU_EPOCHS=${GRU_EPOCHS:-3}
mkdir -p "$OUT"
for preset in planetary baseline; do
    [[ -f $OUT/$preset.h5 ]] || $PY simulate.py --output "$OUT/$preset.h5" --n-flat 3000 --n-pspl 3000 --n-binary 3000 \
        --binary-preset $preset --num-workers 2 --seed 12 --no-progress
done
for preset in planetary baseline; do  # fit speed, and what the point / finite-source fits leave
    $PY bench/bench_fit.py --data "$OUT/$preset.h5" --n 600
done
R=$OUT/runs
train() { name=$1; shift; $PY train.py --task microlensing --output "$R" --experiment-name "$name" --no-progress "$@"; }
evaluate() { $PY evaluate.py --run "$R/$1" --no-progress --n-evolution-per-type 1 "${@:2}"; }
for preset in planetary baseline; do
    train pt_$preset --data "$OUT/$preset.h5"
    evaluate pt_$preset
    train pt_full_$preset --data "$OUT/$preset.h5" --truncate-augment 0
    evaluate pt_full_$preset
    train gru_$preset --data "$OUT/$preset.h5" --model cnn_gru --epochs "$GRU_EPOCHS" --truncate-augment 0
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
