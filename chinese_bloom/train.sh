#!/usr/bin/env bash
# Offline default (no arguments): generate + clean the task data, train a small BLOOM from scratch
# (full fine-tuning), then a LoRA adapter on top of it, merge it, and report held-out exact match.
#
# Real training: set the variables below, e.g.
#   MODEL=bigscience/bloom-560m TRAIN_FILE=data/belle_cn.json bash train.sh
#   MODEL=tiiuae/falcon-7b LORA_ONLY=1 NPROC=8 DEEPSPEED=ds_zero2.json PRECISION=--bf16 bash train.sh
set -euo pipefail
cd "$(dirname "$0")"

MODEL=${MODEL:-}                 # empty = offline default; else a Hub id or a local checkpoint dir
TRAIN_FILE=${TRAIN_FILE:-}       # raw JSON/JSONL (Alpaca/BELLE, sharegpt or OpenAI messages)
TEMPLATE=${TEMPLATE:-belle}
NPROC=${NPROC:-1}                # >1: torchrun data parallel (GPU)
DEEPSPEED=${DEEPSPEED:-}         # ds_zero2.json | ds_zero3.json | ds_zero2_offload.json | ds_zero3_offload.json
PRECISION=${PRECISION:-}         # --bf16 or --fp16 on GPU; empty = fp32 (CPU)
LORA_ONLY=${LORA_ONLY:-}         # 1: skip full fine-tuning, train LoRA on MODEL directly
FULL_EPOCHS=${FULL_EPOCHS:-15}
LORA_EPOCHS=${LORA_EPOCHS:-4}
OUT=${OUT:-outputs}
MAX_LENGTH=${MAX_LENGTH:-$([ -z "$MODEL" ] && echo 128 || echo 1024)}   # tokens per sample / packed row

if [ -n "$TRAIN_FILE" ]; then
  python clean_data.py --input "$TRAIN_FILE" --output_dir data/cache/clean
else
  python clean_data.py --output_dir data/cache/clean
fi

LAUNCH="python"
if [ "$NPROC" -gt 1 ]; then LAUNCH="torchrun --nproc_per_node $NPROC"; fi
EXTRA=(--template "$TEMPLATE" --data_dir data/cache/clean --max_length "$MAX_LENGTH" $PRECISION)
if [ -n "$DEEPSPEED" ]; then EXTRA+=(--deepspeed "$DEEPSPEED"); fi

BASE="$MODEL"
if [ -z "$LORA_ONLY" ]; then
  MODEL_ARG=(); if [ -n "$MODEL" ]; then MODEL_ARG=(--model_name_or_path "$MODEL"); fi
  $LAUNCH train.py "${MODEL_ARG[@]}" "${EXTRA[@]}" --output_dir "$OUT/bloom_full" --num_train_epochs "$FULL_EPOCHS"
  BASE="$OUT/bloom_full"
fi
$LAUNCH train.py --model_name_or_path "$BASE" --use_lora "${EXTRA[@]}" --output_dir "$OUT/bloom_lora" \
  --num_train_epochs "$LORA_EPOCHS" --learning_rate 1e-3
python merge.py --adapter_dir "$OUT/bloom_lora" --output_dir "$OUT/bloom_merged"
python - "$OUT" <<'PY'
import json, sys
for run in ("bloom_full", "bloom_lora"):
    try:
        m = json.load(open(f"{sys.argv[1]}/{run}/test_results.json"))
    except FileNotFoundError:
        continue
    print(f"{run}: held-out exact match {m['exact_match_before']:.3f} -> {m['exact_match_after']:.3f}",
          m["exact_match_by_task_after"])
PY
