#!/usr/bin/env bash
# The whole chain, each stage waiting (afterok) for the one before: sharded simulation -> merge ->
# training -> evaluation. Run from the repository root:
#   OUT=$SCRATCH/ml NAME=baseline N_PER_CLASS=100000 SHARDS=16 NODES=4 TRAIN_ARGS="--epochs 50" \
#       CPU_SBATCH="--partition=cpu" GPU_SBATCH="--partition=gpu" bash sbatch/pipeline.sh --account=myproj
# Arguments go to every sbatch call; CPU_SBATCH to simulate and merge, GPU_SBATCH to train and
# evaluate. The simulation is skipped when OUT/DATA_NAME already exists.
# LOCAL=1 runs the same stage scripts one after the other on this machine, without SLURM:
#   LOCAL=1 OUT=/tmp/ml NAME=smoke N_PER_CLASS=20 SHARDS=2 GPUS_PER_NODE=1 TRAIN_ARGS="--epochs 1" bash sbatch/pipeline.sh
# Variables: OUT (simulation folder), NAME (run name), DATA_NAME (microlensing.h5), NODES and
# GPUS_PER_NODE (training job shape), RESULTS, plus those of each stage script.
set -euo pipefail
: "${OUT:?set OUT, the simulation folder}"
: "${NAME:?set NAME, the run name}"
SHARDS=${SHARDS:-16}
DATA=$OUT/${DATA_NAME:-microlensing.h5}

if [[ ${LOCAL:-0} == 1 ]]; then
    # what SLURM would set; the fixed job id keeps a rerun of the same NAME resumable
    export SLURM_JOB_ID=local-$NAME SLURM_NNODES=1 SLURM_ARRAY_TASK_COUNT=$SHARDS
    export SLURM_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-1}
    if [[ ! -e $DATA ]]; then
        for ((task = 0; task < SHARDS; task++)); do SLURM_ARRAY_TASK_ID=$task bash sbatch/simulate.sbatch; done
        NAME=$(basename "$DATA") bash sbatch/merge.sbatch
    fi
    DATA=$DATA bash sbatch/train.sbatch
    DATA=$DATA bash sbatch/evaluate.sbatch
    exit 0
fi

mkdir -p logs
merge=
# CPU_SBATCH and GPU_SBATCH are split into words on purpose
if [[ ! -e $DATA ]]; then
    array=$(sbatch --parsable "$@" ${CPU_SBATCH:-} --array=0-$((SHARDS - 1)) --export=ALL sbatch/simulate.sbatch)
    merge=$(sbatch --parsable "$@" ${CPU_SBATCH:-} --dependency=afterok:"$array" \
        --export=ALL,NAME="$(basename "$DATA")" sbatch/merge.sbatch)
    echo "simulate array: $array   merge: $merge   data: $DATA"
fi
train=$(sbatch --parsable "$@" ${GPU_SBATCH:-} ${merge:+--dependency=afterok:$merge} ${NODES:+--nodes=$NODES} \
    ${GPUS_PER_NODE:+--gres=gpu:$GPUS_PER_NODE} --export=ALL,DATA="$DATA",NAME="$NAME" sbatch/train.sbatch)
evaluate=$(sbatch --parsable "$@" ${GPU_SBATCH:-} --dependency=afterok:"$train" \
    --export=ALL,DATA="$DATA",NAME="$NAME" sbatch/evaluate.sbatch)
echo "train: $train   evaluate: $evaluate   run: ${RESULTS:-results}/$NAME"
