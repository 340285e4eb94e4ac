#!/usr/bin/env bash
# bash train.sh  ->  draw the synthetic shapes (make_data.py), clean them (clean_data.py), train the offline small
#                    ChineseCLIPModel (= python train.py): held-out R@1/5/10 both ways + zero-shot (CPU; README has the time).
# Real run: MODEL=OFA-Sys/chinese-clip-vit-base-patch16 INPUT="my/pairs.csv" IMAGE_ROOT=my/images \
#             bash train.sh --learning_rate 2e-5 --bf16
# Extra arguments go to train.py: bash train.sh --num_train_epochs 2
set -euo pipefail
cd "$(dirname "$0")"
MODEL=${MODEL:-}               # "" = the offline small ChineseCLIP; or OFA-Sys/chinese-clip-vit-base-patch16 / a dir
INPUT=${INPUT:-}               # "" = generate the synthetic shapes; or space-separated .csv/.jsonl files (image_path,text)
IMAGE_ROOT=${IMAGE_ROOT:-}     # folder the relative image paths of INPUT start from ("" = each file's folder)
SHAPES_DIR=${SHAPES_DIR:-data/cache/shapes}  # make_data.py writes the images + jsonl here (INPUT="" only)
DATA_DIR=${DATA_DIR:-data/cache/clean}       # clean_data.py writes train/validation/test[/test_unseen].jsonl here
OUTPUT_DIR=${OUTPUT_DIR:-outputs/clip}       # train.py --output_dir
BATCH=${BATCH:-64}             # global batch = NPROC x per-device batch = the in-batch negatives (gathered under DDP)
# Processes: one per GPU; on CPU 1 (a data-loading worker already uses the second core). NPROC=2 = gloo DDP.
NPROC=${NPROC:-$(python -c "import torch; print(torch.cuda.device_count() or 1)")}
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
  "${RUN[@]}" python make_data.py --output_dir "$SHAPES_DIR" --odd_images
  INPUT="$SHAPES_DIR/train.jsonl $SHAPES_DIR/validation.jsonl $SHAPES_DIR/test.jsonl $SHAPES_DIR/test_unseen.jsonl"
fi
"${RUN[@]}" python clean_data.py --output_dir "$DATA_DIR" --input $INPUT ${IMAGE_ROOT:+--image_root "$IMAGE_ROOT"}
"${RUN[@]}" "${LAUNCH[@]}" train.py --data_dir "$DATA_DIR" --output_dir "$OUTPUT_DIR" ${MODEL:+--model_name_or_path "$MODEL"} \
  --per_device_train_batch_size $(( BATCH / NPROC > 0 ? BATCH / NPROC : 1 )) ${DEEPSPEED:+--deepspeed "$DEEPSPEED"} "$@"
