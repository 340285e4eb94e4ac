#!/usr/bin/env bash
# Default (no arguments): generate + clean the offline task, build a tiny Baichuan2-13B-style model (ALiBi + NormHead)
# in the official format, train it fully, then a LoRA adapter on top, merge it, and print held-out exact match.
# Real run:
#   MODEL=/models/Baichuan2-7B-Chat TRAIN_FILE=data/belle.json NPROC=8 DEEPSPEED=ds_zero2.json bash train.sh --bf16
# Extra arguments go to train.py (every stage): bash train.sh --num_train_epochs 1
set -euo pipefail
cd "$(dirname "$0")"

MODEL=${MODEL:-}                 # empty = offline default; else an official Baichuan/Baichuan2 dir (7B converted once), or a dir written here
TRAIN_FILE=${TRAIN_FILE:-}       # raw JSON/JSONL/parquet (Alpaca/BELLE, sharegpt, OpenAI messages); empty = generated task
ENCODING=${ENCODING:-utf-8}      # TRAIN_FILE's encoding, e.g. gb18030 for GBK files
DATA=${DATA:-data/cache/clean}   # where clean_data.py writes train/validation/test.jsonl
FULL=${FULL:-}                   # 1 (with MODEL): full fine-tuning of MODEL instead of a LoRA adapter
OUT=${OUT:-outputs}              # baichuan_full, baichuan_lora, baichuan_merged are written here
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
if [ -n "$FULL" ] && [ -z "$MODEL" ]; then
  echo "FULL=1: needs MODEL=<checkpoint dir> to fine-tune (the offline default already trains fully, then LoRA). Fix: set MODEL, or drop FULL" >&2
  exit 2
fi

if [ -n "$TRAIN_FILE" ]; then
  "${RUN[@]}" python clean_data.py --input "$TRAIN_FILE" --encoding "$ENCODING" --output_dir "$DATA"
else
  "${RUN[@]}" python clean_data.py --output_dir "$DATA"
fi

BASE="$MODEL"
if [ -z "$MODEL" ] || [ -n "$FULL" ]; then  # offline: from scratch first; FULL=1: all weights of MODEL
  "${RUN[@]}" "${LAUNCH[@]}" train.py ${MODEL:+--model_name_or_path "$MODEL" --use_lora false} --data_dir "$DATA" \
    --output_dir "$OUT/baichuan_full" ${DEEPSPEED:+--deepspeed "$DEEPSPEED"} "$@"
  BASE="$OUT/baichuan_full"
fi
if [ -z "$FULL" ]; then
  "${RUN[@]}" "${LAUNCH[@]}" train.py --model_name_or_path "$BASE" --use_lora true --data_dir "$DATA" \
    --output_dir "$OUT/baichuan_lora" ${DEEPSPEED:+--deepspeed "$DEEPSPEED"} "$@"
  "${RUN[@]}" python merge.py --adapter_dir "$OUT/baichuan_lora" --output_dir "$OUT/baichuan_merged"
fi
[ -n "$DRY_RUN" ] || python - "$OUT" <<'PY'
import json, sys
for run in ("baichuan_full", "baichuan_lora"):
    try:
        m = json.load(open(f"{sys.argv[1]}/{run}/test_results.json"))
    except FileNotFoundError:
        continue
    print(f"{run}: held-out exact match {m['exact_match_before']:.3f} -> {m['exact_match_after']:.3f}",
          m["exact_match_by_task_after"], f"test perplexity {m['test_perplexity']:.2f}")
PY
