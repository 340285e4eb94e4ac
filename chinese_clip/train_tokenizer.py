"""The offline default's tokenizer: a BertTokenizerFast with one token per character of the training captions.

    python train_tokenizer.py --train_file data/cache/clean/train.jsonl --output_dir outputs/char_tokenizer

train.py calls train_tokenizer() itself (no separate step needed); this CLI saves the same tokenizer on its own.
The bert-base-chinese convention (BertTokenizer splits every CJK character into its own token), so a real
Chinese-CLIP checkpoint's tokenizer and this one are used the same way.
"""
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from transformers import BertTokenizerFast, HfArgumentParser

HERE = Path(__file__).resolve().parent
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass
class TokenizerArguments:
    train_file: str = field(default=str(HERE / "data/cache/clean/train.jsonl"), metadata={
        "help": "jsonl with a \"text\" field (clean_data.py's train.jsonl)."})
    output_dir: str = field(default=str(HERE / "outputs/char_tokenizer"))
    min_freq: int = field(default=1, metadata={"help": "Characters seen fewer times become [UNK]."})
    max_length: int = field(default=32, metadata={"help": "Longest caption in tokens, [CLS]/[SEP] included."})

    def __post_init__(self):
        if not Path(self.train_file).is_file():
            raise SystemExit(f"--train_file: {self.train_file} not found. Fix: run `python clean_data.py` first")
        if self.min_freq < 1 or self.max_length < 3:
            raise SystemExit("--min_freq/--max_length: min_freq >= 1 and max_length >= 3. Fix: e.g. --min_freq 1 "
                             "--max_length 32")


def train_tokenizer(texts, min_freq: int = 1, max_length: int = 32) -> BertTokenizerFast:
    """Vocabulary = the special tokens + every character seen >= min_freq times (lower-cased); Latin letters and
    digits also get a "##x" piece so WordPiece spells unknown words char by char instead of one [UNK]."""
    counts = Counter(ch for t in texts for ch in t.lower() if not ch.isspace())
    chars = sorted(ch for ch, n in counts.items() if n >= min_freq)
    vocab = SPECIAL_TOKENS + chars + ["##" + ch for ch in chars if ch.isascii() and ch.isalnum()]
    # transformers 5: BertTokenizerFast is BertTokenizer, backed by the `tokenizers` library
    return BertTokenizerFast(vocab={tok: i for i, tok in enumerate(vocab)}, do_lower_case=True,
                             tokenize_chinese_chars=True, model_max_length=max_length)


def main(argv: list[str] | None = None):
    (args,) = HfArgumentParser(TokenizerArguments).parse_args_into_dataclasses(args=argv)
    with open(args.train_file, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    tokenizer = train_tokenizer(texts, args.min_freq, args.max_length)
    tokenizer.save_pretrained(args.output_dir)
    print(f"{len(tokenizer)} tokens from {len(texts)} texts -> {args.output_dir}")
    return tokenizer


if __name__ == "__main__":
    main(sys.argv[1:])
