# Sourced by train.sbatch and evaluate.sbatch: in a job array over MODELS (space-separated model
# names), task i works on MODELS[i] as the run NAME_<model> (train.py gets --model <model>).
if [[ -n ${MODELS:-} && -n ${SLURM_ARRAY_TASK_ID:-} ]]; then
    read -ra model_list <<< "$MODELS"
    (( SLURM_ARRAY_TASK_ID < ${#model_list[@]} )) || { echo "array task $SLURM_ARRAY_TASK_ID: MODELS has ${#model_list[@]} models" >&2; exit 2; }
    MODEL=${model_list[$SLURM_ARRAY_TASK_ID]}
    NAME=${NAME}_${MODEL}
    TRAIN_ARGS="--model $MODEL ${TRAIN_ARGS:-}"
fi
