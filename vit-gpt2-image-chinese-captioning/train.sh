#!/usr/bin/env bash
# bash train.sh  ->  draw the synthetic scenes (make_data.py), validate/clean them (clean_data.py), train the offline
#                    small ViT + GPT-2 captioner (= python train.py), print held-out BLEU-4/CIDEr vs a constant caption.
# Real run: ENCODER=google/vit-base-patch16-224 DECODER=uer/gpt2-chinese-cluecorpussmall INPUT="my/pairs.csv" \
#             IMAGE_ROOT=my/images bash train.sh --learning_rate 5e-5 --bf16
# Extra arguments go to train.py: bash train.sh --num_train_epochs 1
set -euo pipefail
cd "$(dirname "$0")"
ENCODER=${ENCODER:-}            # "" = small ViT from config; or google/vit-base-patch16-224 / a local dir
DECODER=${DECODER:-}            # "" = small GPT-2 + char vocab; or uer/gpt2-chinese-cluecorpussmall / a local dir
MODEL=${MODEL:-}                # a whole VisionEncoderDecoderModel (dir or Hub id) instead of ENCODER/DECODER
INPUT=${INPUT:-}                # "" = make_data.py's scenes; or space-separated .csv/.jsonl files (image_path,text)
IMAGE_ROOT=${IMAGE_ROOT:-}      # where INPUT's relative image paths start (default: each file's folder)
RAW_DIR=${RAW_DIR:-data/cache/shapes}      # make_data.py --output_dir (only without INPUT)
DATA_DIR=${DATA_DIR:-data/cache/clean}     # clean_data.py writes train/validation/test(/test_unseen).jsonl here
OUTPUT_DIR=${OUTPUT_DIR:-outputs/captioner} # train.py --output_dir
BATCH=${BATCH:-32}              # global batch = NPROC x per-device batch (python train.py: 1 x 32, the same)
NPROC=${NPROC:-1}               # processes: 1 = plain python (the default on CPU), or one per GPU
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

if [ -z "$INPUT" ]; then
  "${RUN[@]}" python make_data.py --output_dir "$RAW_DIR"
  INPUT="$RAW_DIR/train.jsonl $RAW_DIR/validation.jsonl $RAW_DIR/test.jsonl $RAW_DIR/test_unseen.jsonl"
fi
"${RUN[@]}" python clean_data.py --output_dir "$DATA_DIR" --input $INPUT ${IMAGE_ROOT:+--image_root "$IMAGE_ROOT"}
"${RUN[@]}" "${LAUNCH[@]}" train.py --data_dir "$DATA_DIR" --output_dir "$OUTPUT_DIR" \
  ${MODEL:+--model_name_or_path "$MODEL"} ${ENCODER:+--encoder_name_or_path "$ENCODER"} \
  ${DECODER:+--decoder_name_or_path "$DECODER"} \
  --per_device_train_batch_size $(( BATCH / NPROC > 0 ? BATCH / NPROC : 1 )) ${DEEPSPEED:+--deepspeed "$DEEPSPEED"} "$@"
