#!/usr/bin/env bash
# Substructure model comparison, each stage waiting for the one before: simulate (deeplense-common,
# npy class folders; skipped when DATA is given or OUT/no exists) -> train MODELS as a job array ->
# evaluate each run on its own test split (aftercorr: task i after task i) -> one comparison
# table and AUC-vs-training-time plot when all are done. From the repository root:
#   OUT=$SCRATCH/substructure NAME=sub N=10000 SHARDS=8 MODELS="resnet18 convnext_tiny efficientnet_b0 lens_pinn" \
#       TRAIN_ARGS="--epochs 30" CPU_SBATCH="--partition=cpu" GPU_SBATCH="--partition=gpu --gres=gpu:1" \
#       bash sbatch/substructure_pipeline.sh --account=myproj
#   # the public Common Test I set instead (train/ and val/ folders; val/ is the held-out test split):
#   DATA=$SCRATCH/dataset NAME=common MODELS="resnet18 convnextv2_tiny" bash sbatch/substructure_pipeline.sh
# Arguments go to every sbatch call; CPU_SBATCH to the simulation, GPU_SBATCH to training and evaluation.
# LOCAL=1 runs the stages here, one after another, without SLURM:
#   LOCAL=1 OUT=/tmp/sub NAME=smoke N=20 SHARDS=2 MODELS="resnet18 mobilenetv3_small_100" \
#       TRAIN_ARGS="--epochs 1 --batch-size 8" bash sbatch/substructure_pipeline.sh
# Variables: OUT, DATA, NAME (runs are NAME_<model>), MODELS, N (images per class), SHARDS, CONFIG
# (deeplense-common), RESULTS (results), COMPARE_DIR (RESULTS/NAME_comparison), plus those of each stage.
set -euo pipefail
: "${NAME:?set NAME, the prefix of the run names}"
: "${MODELS:?set MODELS, the models to compare, e.g. \"resnet18 convnext_tiny lens_pinn\"}"
SHARDS=${SHARDS:-8}
RESULTS=${RESULTS:-results}
COMPARE_DIR=${COMPARE_DIR:-$RESULTS/${NAME}_comparison}
read -ra model_list <<< "$MODELS"
export TASK=substructure CONFIG=${CONFIG:-deeplense-common} FORMAT=npy N=${N:-10000} MODELS NAME RESULTS
if [[ -n ${DATA:-} ]]; then
    simulate=0
else
    : "${OUT:?set OUT, the simulation folder (or DATA, data to train on)}"
    export DATA=$OUT
    simulate=$([[ -d $OUT/no ]] && echo 0 || echo 1)
fi
runs=()
for model in "${model_list[@]}"; do runs+=("$RESULTS/${NAME}_$model"); done

if [[ ${LOCAL:-0} == 1 ]]; then
    export SLURM_JOB_ID=local-$NAME SLURM_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-1}
    if (( simulate )); then
        for ((task = 0; task < SHARDS; task++)); do
            SLURM_ARRAY_TASK_ID=$task SLURM_ARRAY_TASK_COUNT=$SHARDS bash sbatch/simulate_images.sbatch
        done
    fi
    for ((task = 0; task < ${#model_list[@]}; task++)); do
        SLURM_ARRAY_TASK_ID=$task bash sbatch/train.sbatch
        SLURM_ARRAY_TASK_ID=$task DATA= bash sbatch/evaluate.sbatch  # the run's own test split
    done
    source "${VENV:-.venv}/bin/activate"
    python evaluate.py --compare "${runs[@]}" --out-dir "$COMPARE_DIR"
    exit 0
fi

mkdir -p logs
array=
if (( simulate )); then
    array=$(sbatch --parsable "$@" ${CPU_SBATCH:-} --array=0-$((SHARDS - 1)) --export=ALL sbatch/simulate_images.sbatch)
    echo "simulate array: $array   data: $OUT"
fi
last=$((${#model_list[@]} - 1))
# CPU_SBATCH and GPU_SBATCH are split into words on purpose
train=$(sbatch --parsable "$@" ${GPU_SBATCH:-} ${array:+--dependency=afterok:$array} --array=0-$last \
    --export=ALL sbatch/train.sbatch)
evaluate=$(sbatch --parsable "$@" ${GPU_SBATCH:-} --dependency=aftercorr:"$train" --array=0-$last \
    --export=ALL,DATA= sbatch/evaluate.sbatch)
compare=$(sbatch --parsable "$@" --dependency=afterok:"$evaluate" --job-name=compare --ntasks=1 --time=00:15:00 \
    --output=logs/compare-%j.out --export=ALL \
    --wrap="source ${VENV:-.venv}/bin/activate && python evaluate.py --compare ${runs[*]} --out-dir $COMPARE_DIR")
echo "train array: $train   evaluate array: $evaluate   compare: $compare   table: $COMPARE_DIR/comparison.md"
