#!/usr/bin/env bash
# Pretraining -> fine-tuning -> evaluation, each stage waiting for the one before: an MAE (NAME_mae)
# pretrained on PRETRAIN_DATA (default DATA; labels ignored) -> one fine-tuning job per VARIANT on
# DATA (FT_TASK: substructure, lens or superres), after the MAE -> each run's test split evaluated
# after its training -> one comparison table when all are done. From the repository root:
#   DATA=$SCRATCH/common NAME=common FT_ARGS="--label-fraction 0.1 --epochs 50" MAE_ARGS="--epochs 400" \
#       GPU_SBATCH="--partition=gpu --gres=gpu:1" bash sbatch/mae_pipeline.sh --account=myproj
#   # super-resolution from an MAE pretrained on the HR images:
#   DATA=$SCRATCH/sr PRETRAIN_DATA=$SCRATCH/sr/HR FT_TASK=superres NAME=sr bash sbatch/mae_pipeline.sh
# VARIANTS (default "finetune probe scratch"): finetune = the MAE encoder with a new head
# (--init-from), probe = its frozen encoder (--linear-probe), scratch = the same ViT from random
# weights (the control: --model vit, or mae_sr for superres). ARCH_ARGS (e.g. "--embed-dim 384
# --depth 12 --num-heads 6") go to pretraining and to the scratch control alike; MAE_ARGS to
# pretraining only, FT_ARGS to every fine-tuning run. The same --seed and split fractions (the
# defaults) keep the fine-tuning test split out of pretraining; train.py checks it.
# Arguments go to every sbatch call, GPU_SBATCH to training and evaluation. LOCAL=1 runs the stages
# here, one after another, without SLURM.
# Variables: DATA, PRETRAIN_DATA, NAME (runs NAME_mae, NAME_<variant>), FT_TASK, VARIANTS, ARCH_ARGS,
# MAE_ARGS, FT_ARGS, EVAL_ARGS, RESULTS (results), COMPARE_DIR (RESULTS/NAME_comparison), VENV (.venv).
set -euo pipefail
: "${DATA:?set DATA, the data to fine-tune on}"
: "${NAME:?set NAME, the prefix of the run names}"
FT_TASK=${FT_TASK:-substructure}
RESULTS=${RESULTS:-results}
COMPARE_DIR=${COMPARE_DIR:-$RESULTS/${NAME}_comparison}
read -ra variants <<< "${VARIANTS:-finetune probe scratch}"
mae_run=$RESULTS/${NAME}_mae
scratch_model=$([[ $FT_TASK == superres ]] && echo mae_sr || echo vit)
variant_args() {
    case $1 in
        finetune) echo "--init-from $mae_run" ;;
        probe) echo "--init-from $mae_run --linear-probe" ;;
        scratch) echo "--model $scratch_model ${ARCH_ARGS:-}" ;;
        *) echo "unknown variant $1 (finetune, probe, scratch)" >&2; exit 2 ;;
    esac
}
for v in "${variants[@]}"; do variant_args "$v" > /dev/null; done
runs=()
for v in "${variants[@]}"; do runs+=("$RESULTS/${NAME}_$v"); done
export RESULTS

if [[ ${LOCAL:-0} == 1 ]]; then
    export SLURM_JOB_ID=local-$NAME
    TASK=mae DATA=${PRETRAIN_DATA:-$DATA} NAME=${NAME}_mae TRAIN_ARGS="${ARCH_ARGS:-} ${MAE_ARGS:-}" bash sbatch/train.sbatch
    for v in "${variants[@]}"; do
        TASK=$FT_TASK NAME=${NAME}_$v TRAIN_ARGS="$(variant_args "$v") ${FT_ARGS:-}" bash sbatch/train.sbatch
        NAME=${NAME}_$v DATA= bash sbatch/evaluate.sbatch  # the run's own test split
    done
    source "${VENV:-.venv}/bin/activate"
    python evaluate.py --compare "${runs[@]}" --out-dir "$COMPARE_DIR"
    exit 0
fi

mkdir -p logs
# GPU_SBATCH is split into words on purpose
mae=$(sbatch --parsable "$@" ${GPU_SBATCH:-} --export=ALL,TASK=mae,DATA="${PRETRAIN_DATA:-$DATA}",NAME="${NAME}_mae",TRAIN_ARGS="${ARCH_ARGS:-} ${MAE_ARGS:-}" \
    sbatch/train.sbatch)
evaluations=()
for v in "${variants[@]}"; do
    train=$(sbatch --parsable "$@" ${GPU_SBATCH:-} --dependency=afterok:"$mae" \
        --export=ALL,TASK="$FT_TASK",NAME="${NAME}_$v",TRAIN_ARGS="$(variant_args "$v") ${FT_ARGS:-}" sbatch/train.sbatch)
    evaluations+=("$(sbatch --parsable "$@" ${GPU_SBATCH:-} --dependency=afterok:"$train" \
        --export=ALL,NAME="${NAME}_$v",DATA= sbatch/evaluate.sbatch)")
    echo "$v: train $train, evaluate ${evaluations[-1]}"
done
compare=$(sbatch --parsable "$@" --dependency=afterok:"$(IFS=:; echo "${evaluations[*]}")" --job-name=compare \
    --ntasks=1 --time=00:15:00 --output=logs/compare-%j.out --export=ALL \
    --wrap="source ${VENV:-.venv}/bin/activate && python evaluate.py --compare ${runs[*]} --out-dir $COMPARE_DIR")
echo "pretrain: $mae   compare: $compare   table: $COMPARE_DIR/comparison.md"
