"""Train the offline default's SentencePiece tokenizer with ChatGLM's layout, and save it.

Like the official ChatGLM2/3 `tokenizer.model`: SentencePiece BPE, byte fallback (no unknown characters), digits
split one by one, identity normalization, a dummy prefix, whitespace kept; ids 0/1/2 = <unk>/<s>/</s>. Then the
same special tokens as the official tokenizer after the pieces (tokenization.build_tokenizer): `[MASK] [gMASK]
[sMASK] sop eop` (+ the ChatGLM3 role tokens). train.py calls `train_tokenizer` itself for the offline default;
this CLI builds (and lets you inspect) the tokenizer separately:

    python train_tokenizer.py                                          # clean training data, 1000 pieces
    python train_tokenizer.py --train_file data/cache/mine/train.jsonl --vocab_size 8000 --output_dir outputs/tok
"""
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from tokenization import build_tokenizer, check_template

HERE = Path(__file__).resolve().parent


@dataclass
class TokenizerArguments:
    train_file: str = field(default=str(HERE / "data/cache/clean/train.jsonl"), metadata={"help": "clean JSONL (clean_data.py); every string in it is training text"})
    template: str = field(default="chatglm2", metadata={"help": "special-token layout: chatglm2 (5 specials) or chatglm3 (+4 role tokens)"})
    vocab_size: int = field(default=1000, metadata={"help": "SentencePiece pieces (>= 300); 8000 or more for real Chinese data"})
    output_dir: str = field(default=str(HERE / "outputs/tokenizer"))

    def __post_init__(self):
        check_template(self.template)
        if self.vocab_size < 300:
            raise SystemExit(f"--vocab_size: must be >= 300 (256 bytes + specials), got {self.vocab_size}. "
                             f"Fix: e.g. --vocab_size 1000")
        if not Path(self.train_file).is_file():
            raise SystemExit(f"--train_file: {self.train_file} does not exist. Fix: run `python clean_data.py` first")


def train_tokenizer(texts, vocab_size: int = 1000, out_dir=None, template: str = "chatglm2"):
    """A ChatGLM-layout fast tokenizer trained on `texts`; with out_dir, saved there with its tokenizer.model."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([t for t in texts if t.strip()]), model_writer=model, model_type="bpe",
        vocab_size=vocab_size, hard_vocab_limit=False, byte_fallback=True, split_digits=True,
        normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, character_coverage=0.9995, max_sentence_length=1 << 16,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    out = Path(out_dir) if out_dir else None
    if out is None:
        import tempfile
        out = Path(tempfile.mkdtemp(prefix="chatglm_tok_"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(model.getvalue())
    tok = build_tokenizer(out / "tokenizer.model", template)
    tok.save_pretrained(out)
    return tok


def jsonl_texts(path) -> list[str]:
    """Every string value of every JSON line (content, summary, messages[].content, ...)."""
    def strings(x):
        if isinstance(x, str):
            yield x
        elif isinstance(x, dict):
            for v in x.values():
                yield from strings(v)
        elif isinstance(x, list):
            for v in x:
                yield from strings(v)
    with open(path, encoding="utf-8") as f:
        return [s for line in f if line.strip() for s in strings(json.loads(line))]


def main(argv: list[str] | None = None):
    (args,) = HfArgumentParser(TokenizerArguments).parse_args_into_dataclasses(argv)
    tok = train_tokenizer(jsonl_texts(args.train_file), args.vocab_size, args.output_dir, args.template)
    print(f"tokenizer with {len(tok)} tokens ({args.template} specials) -> {args.output_dir}")
    return tok


if __name__ == "__main__":
    main(sys.argv[1:])
