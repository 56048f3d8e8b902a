#!/usr/bin/env bash
# Submit the sharded simulation and its merge, chained with afterok.
#   OUT=$SCRATCH/ml N_PER_CLASS=100000 SHARDS=16 bash sbatch/simulate_pipeline.sh [extra sbatch args]
# Extra arguments (e.g. --partition=cpu --account=myproj) go to every sbatch call.
set -euo pipefail
: "${OUT:?set OUT, the output folder}"
SHARDS=${SHARDS:-16}
mkdir -p logs
array=$(sbatch --parsable "$@" --array=0-$((SHARDS - 1)) --export=ALL sbatch/simulate.sbatch)
merge=$(sbatch --parsable "$@" --dependency=afterok:"$array" --export=ALL sbatch/merge.sbatch)
echo "simulate array: $array   merge: $merge   output: $OUT/${NAME:-microlensing.h5}"
