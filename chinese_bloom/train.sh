#!/usr/bin/env bash
# Default (no arguments): generate + clean the offline task, train a small BLOOM from scratch (full fine-tuning),
# then a LoRA adapter on top of it, merge it, and print held-out exact match.   # Real run:
#   MODEL=bigscience/bloom-560m TRAIN_FILE=data/belle_cn.json NPROC=8 DEEPSPEED=ds_zero2.json bash train.sh --bf16
# Extra arguments go to train.py (both stages): bash train.sh --num_train_epochs 1
set -euo pipefail
cd "$(dirname "$0")"

MODEL=${MODEL:-}                 # empty = offline default; else a Hub id or a local checkpoint dir
TRAIN_FILE=${TRAIN_FILE:-}       # raw JSON/JSONL/parquet (Alpaca/BELLE, sharegpt or OpenAI messages); empty = generated task
ENCODING=${ENCODING:-utf-8}      # TRAIN_FILE's encoding, e.g. gb18030 for GBK files
DATA=${DATA:-data/cache/clean}   # where clean_data.py writes train/validation/test.jsonl
LORA_ONLY=${LORA_ONLY:-}         # 1: skip full fine-tuning, train LoRA on MODEL directly
OUT=${OUT:-outputs}              # bloom_full, bloom_lora, bloom_merged are written here
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
if [ -n "$LORA_ONLY" ] && [ -z "$MODEL" ]; then
  echo "LORA_ONLY=1: needs MODEL=<checkpoint dir or Hub id> to put the adapter on. Fix: set MODEL, or drop LORA_ONLY" >&2
  exit 2
fi

if [ -n "$TRAIN_FILE" ]; then
  "${RUN[@]}" python clean_data.py --input "$TRAIN_FILE" --encoding "$ENCODING" --output_dir "$DATA"
else
  "${RUN[@]}" python clean_data.py --output_dir "$DATA"
fi

BASE="$MODEL"
if [ -z "$LORA_ONLY" ]; then
  "${RUN[@]}" "${LAUNCH[@]}" train.py ${MODEL:+--model_name_or_path "$MODEL"} --data_dir "$DATA" --output_dir "$OUT/bloom_full" \
    ${DEEPSPEED:+--deepspeed "$DEEPSPEED"} "$@"
  BASE="$OUT/bloom_full"
fi
"${RUN[@]}" "${LAUNCH[@]}" train.py --model_name_or_path "$BASE" --use_lora --data_dir "$DATA" --output_dir "$OUT/bloom_lora" \
  ${DEEPSPEED:+--deepspeed "$DEEPSPEED"} "$@"
"${RUN[@]}" python merge.py --adapter_dir "$OUT/bloom_lora" --output_dir "$OUT/bloom_merged"
[ -n "$DRY_RUN" ] || python - "$OUT" <<'PY'
import json, sys
for run in ("bloom_full", "bloom_lora"):
    try:
        m = json.load(open(f"{sys.argv[1]}/{run}/test_results.json"))
    except FileNotFoundError:
        continue
    print(f"{run}: held-out exact match {m['exact_match_before']:.3f} -> {m['exact_match_after']:.3f}",
          m["exact_match_by_task_after"], f"test perplexity {m['test_perplexity']:.2f}")
PY
