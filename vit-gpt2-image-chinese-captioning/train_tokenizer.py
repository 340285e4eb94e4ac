"""The offline default's tokenizer: one token per Han character, vocabulary from the training captions
(the convention of uer/gpt2-chinese-cluecorpussmall: a BertTokenizer, [CLS] starts a caption, [SEP] ends it).

    python train_tokenizer.py --train_file data/cache/clean/train.jsonl --output_dir outputs/char_tokenizer

train.py calls train_tokenizer() itself (no separate step needed); this CLI saves the same tokenizer on its own.
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

    def __post_init__(self):
        if not Path(self.train_file).is_file():
            raise SystemExit(f"--train_file: {self.train_file} not found. Fix: run `python clean_data.py` first")
        if self.min_freq < 1:
            raise SystemExit(f"--min_freq: {self.min_freq} < 1. Fix: e.g. --min_freq 1")


def train_tokenizer(texts, min_freq: int = 1, max_length: int = 64) -> BertTokenizerFast:
    """Vocabulary = [PAD] [UNK] [CLS] [SEP] [MASK] + every character seen >= min_freq times (lower-cased)."""
    counts = Counter(ch for t in texts for ch in t.lower() if not ch.isspace())
    chars = sorted(ch for ch, n in counts.items() if n >= min_freq)
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + chars)}
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return BertTokenizerFast(tokenizer_object=backend, model_max_length=max_length, unk_token="[UNK]",
                             pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def main(argv: list[str] | None = None):
    (args,) = HfArgumentParser(TokenizerArguments).parse_args_into_dataclasses(args=argv)
    with open(args.train_file, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    tokenizer = train_tokenizer(texts, args.min_freq)
    tokenizer.save_pretrained(args.output_dir)
    print(f"{len(tokenizer)} tokens from {len(texts)} texts -> {args.output_dir}")
    return tokenizer


if __name__ == "__main__":
    main(sys.argv[1:])
