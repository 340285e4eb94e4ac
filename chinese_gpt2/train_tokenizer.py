"""Character vocabulary from the clean corpus -> a BertTokenizer (vocab.txt), one token per Han character.

The uer/gpt2-chinese-cluecorpussmall convention: BERT-style WordPiece vocabulary, [PAD] [UNK] [CLS] [SEP] [MASK]
first, then single characters. BERT's pre-tokenizer splits every CJK character off, so each Han character is one
token; digits and Latin letters also get `##x` continuation entries, so `1998` is 1 ##9 ##9 ##8 (one token per
character, never a whole-word [UNK]). train.py calls `train_tokenizer` itself when it trains from scratch; this CLI
builds (and inspects) the tokenizer separately:

    python train_tokenizer.py                                    # data/cache/clean/train.jsonl -> outputs/tokenizer
    python train_tokenizer.py --train_file my/train.jsonl --min_frequency 5 --output_dir outputs/tok
"""
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

HERE = Path(__file__).resolve().parent
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass
class TokenizerArguments:
    train_file: str = field(default=str(HERE / "data/cache/clean/train.jsonl"),
                            metadata={"help": "clean JSONL (clean_data.py): 'text' or 'messages' records"})
    min_frequency: int = field(default=2, metadata={"help": "characters seen fewer times become [UNK]"})
    output_dir: str = field(default=str(HERE / "outputs/tokenizer"))

    def __post_init__(self):
        if self.min_frequency < 1:
            raise SystemExit(f"--min_frequency: {self.min_frequency} must be >= 1. Fix: e.g. --min_frequency 2")
        if not Path(self.train_file).is_file():
            raise SystemExit(f"--train_file: {self.train_file} does not exist. Fix: run `python clean_data.py` first")


def _is_word_char(c: str) -> bool:
    """Characters BERT's pre-tokenizer may keep inside a word (digits, letters, symbols such as ∶ or ℃): they get a
    ##c entry. CJK characters are always split off and never need one (punctuation neither; harmless)."""
    cp = ord(c)
    cjk = 0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0xF900 <= cp <= 0xFAFF or 0x20000 <= cp <= 0x2FA1F
    return not cjk


def train_tokenizer(texts, min_frequency: int = 2, extra_chars: str = ""):
    """A BertTokenizer whose vocabulary is the characters of `texts` seen >= min_frequency times (+ extra_chars)."""
    from transformers import BertTokenizer

    counts = Counter()
    for text in texts:
        counts.update(text)
    chars = sorted(c for c, n in counts.items() if n >= min_frequency and not c.isspace())
    chars = sorted(set(chars) | {c for c in extra_chars if not c.isspace()})
    vocab = SPECIAL_TOKENS + chars + ["##" + c for c in chars if _is_word_char(c)]
    return BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=False, strip_accents=False,
                         tokenize_chinese_chars=True)


def save_tokenizer(tokenizer, output_dir) -> None:
    """save_pretrained (tokenizer.json + config) and a BERT-style vocab.txt, as uer's checkpoints ship it."""
    tokenizer.save_pretrained(output_dir)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    (Path(output_dir) / "vocab.txt").write_text("".join(w + "\n" for w, _ in vocab), encoding="utf-8")


def record_texts(rows: list[dict]):
    """The text of clean records: documents ('text') or dialogues ('messages', with the chat markers)."""
    from dataset import ASSISTANT, USER
    for r in rows:
        if "text" in r:
            yield r["text"]
        else:
            yield "".join((USER if m["role"] == "user" else ASSISTANT) + m["content"] for m in r["messages"])


def main(argv: list[str] | None = None):
    from clean_data import chat_charset
    from dataset import read_jsonl

    (args,) = HfArgumentParser(TokenizerArguments).parse_args_into_dataclasses(args=argv)
    tok = train_tokenizer(record_texts(read_jsonl(args.train_file)), args.min_frequency, extra_chars=chat_charset())
    save_tokenizer(tok, args.output_dir)
    print(json.dumps({"vocab_size": len(tok), "output_dir": args.output_dir}))
    return tok


if __name__ == "__main__":
    main(sys.argv[1:])
