#!/usr/bin/env bash
# Lens finding, each stage waiting (afterok) for the one before: simulate (or ingest challenge FITS
# roots) -> train -> evaluate with a ranked candidate catalogue and inspection grid. From the repository root:
#   OUT=$SCRATCH/lsst NAME=lens_r18 N=50000 SHARDS=16 TRAIN_ARGS="--model resnet18 --epochs 30" \
#       CPU_SBATCH="--partition=cpu" GPU_SBATCH="--partition=gpu" bash sbatch/lens_pipeline.sh --account=myproj
#   # the challenge's own cutouts instead of simulations (nothing is simulated):
#   POS_ROOTS="$D/hsc_lenses $D/slsim_lenses" NEG_ROOTS="$D/hsc_nonlenses $D/slsim_nonlenses" NAME=convnext_tiny \
#       TRAIN_ARGS="--model convnext_tiny --num-workers 8 --index-cache $SCRATCH/index.json" bash sbatch/lens_pipeline.sh
# Arguments go to every sbatch call; CPU_SBATCH to the simulation, GPU_SBATCH to train and evaluate.
# The simulation is skipped when OUT/lenses already exists. LOCAL=1 runs the stages here, without SLURM:
#   LOCAL=1 OUT=/tmp/lsst NAME=smoke N=40 SHARDS=2 TRAIN_ARGS="--epochs 1 --batch-size 16" bash sbatch/lens_pipeline.sh
# Variables: OUT, NAME, N (lenses and non-lenses each), SHARDS, CONFIG (lsst), NODES, GPUS_PER_NODE,
# CANDIDATES (100), RESULTS, POS_ROOTS / NEG_ROOTS, plus those of each stage script.
set -euo pipefail
: "${NAME:?set NAME, the run name}"
SHARDS=${SHARDS:-16}
export TASK=lens CONFIG=${CONFIG:-lsst} FORMAT=fits N=${N:-10000}
export EVAL_ARGS="--candidates ${CANDIDATES:-100} ${EVAL_ARGS:-}"
if [[ -n ${POS_ROOTS:-} ]]; then
    : "${NEG_ROOTS:?set NEG_ROOTS with POS_ROOTS}"
    export TRAIN_ARGS="--train-roots $POS_ROOTS --train-roots-neg $NEG_ROOTS ${TRAIN_ARGS:-}"
    unset DATA
    simulate=0
else
    : "${OUT:?set OUT, the simulation folder (or POS_ROOTS and NEG_ROOTS)}"
    export DATA=$OUT
    simulate=$([[ -d $OUT/lenses ]] && echo 0 || echo 1)
fi

if [[ ${LOCAL:-0} == 1 ]]; then
    export SLURM_JOB_ID=local-$NAME SLURM_ARRAY_TASK_COUNT=$SHARDS SLURM_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-1}
    if (( simulate )); then
        for ((task = 0; task < SHARDS; task++)); do SLURM_ARRAY_TASK_ID=$task bash sbatch/simulate_images.sbatch; done
    fi
    bash sbatch/train.sbatch
    DATA= bash sbatch/evaluate.sbatch  # the run's own test split
    exit 0
fi

mkdir -p logs
array=
if (( simulate )); then
    array=$(sbatch --parsable "$@" ${CPU_SBATCH:-} --array=0-$((SHARDS - 1)) --export=ALL sbatch/simulate_images.sbatch)
    echo "simulate array: $array   data: $OUT"
fi
# CPU_SBATCH and GPU_SBATCH are split into words on purpose
train=$(sbatch --parsable "$@" ${GPU_SBATCH:-} ${array:+--dependency=afterok:$array} ${NODES:+--nodes=$NODES} \
    ${GPUS_PER_NODE:+--gres=gpu:$GPUS_PER_NODE} --export=ALL sbatch/train.sbatch)
evaluate=$(sbatch --parsable "$@" ${GPU_SBATCH:-} --dependency=afterok:"$train" --export=ALL,DATA= sbatch/evaluate.sbatch)
echo "train: $train   evaluate: $evaluate   run: ${RESULTS:-results}/$NAME (candidates in eval_test/)"
