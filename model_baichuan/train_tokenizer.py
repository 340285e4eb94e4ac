"""Train the offline default's SentencePiece tokenizer with Baichuan2's layout, and save it.

Like the official Baichuan2 `tokenizer.model`: SentencePiece BPE, byte fallback (no unknown characters), digits
split one by one, identity normalization, NO dummy prefix, whitespace kept; ids 0/1/2 = <unk>/<s>/</s>, then
user-defined (reserved) pieces up to id 196, so that `user_token_id` 195 and `assistant_token_id` 196 are reserved
pieces exactly as in Baichuan2-Chat (written into generation_config.json the same way as the real one), then the
256 byte pieces, then the learned pieces. train.py calls `train_tokenizer` itself for the offline default; this CLI
builds (and lets you inspect) the tokenizer separately:

    python train_tokenizer.py                                          # clean training data, 1000 pieces
    python train_tokenizer.py --train_file data/cache/mine/train.jsonl --vocab_size 8000 --output_dir outputs/tok
"""
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from tokenization import ASSISTANT_ID, BOS_ID, EOS_ID, PAD_ID, USER_ID, build_tokenizer

HERE = Path(__file__).resolve().parent
RESERVED = [f"<reserved_{i}>" for i in range(ASSISTANT_ID - 2)]  # ids 3..196: 195/196 = user/assistant
MIN_VOCAB = 3 + len(RESERVED) + 256 + 50  # specials, reserved, bytes, some learned pieces


@dataclass
class TokenizerArguments:
    train_file: str = field(default=str(HERE / "data/cache/clean/train.jsonl"), metadata={"help": "clean JSONL (clean_data.py); every string in it is training text"})
    vocab_size: int = field(default=1000, metadata={"help": f"SentencePiece pieces (>= {MIN_VOCAB}: 3 specials, {len(RESERVED)} reserved, 256 bytes, learned ones); 8000 or more for real Chinese data"})
    output_dir: str = field(default=str(HERE / "outputs/tokenizer"))

    def __post_init__(self):
        check_vocab_size(self.vocab_size, "--vocab_size")
        if not Path(self.train_file).is_file():
            raise SystemExit(f"--train_file: {self.train_file} does not exist. Fix: run `python clean_data.py` first")


def check_vocab_size(vocab_size: int, arg: str) -> None:
    if vocab_size < MIN_VOCAB:
        raise SystemExit(f"{arg}: must be >= {MIN_VOCAB} (3 specials + {len(RESERVED)} reserved ids up to "
                         f"assistant_token_id {ASSISTANT_ID} + 256 bytes + learned pieces), got {vocab_size}. "
                         f"Fix: e.g. {arg} 1000")


def chat_generation_config() -> dict:
    """generation_config.json fields of Baichuan2-Chat's that name the ids (the sampling ones are not copied)."""
    return {"pad_token_id": PAD_ID, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID,
            "user_token_id": USER_ID, "assistant_token_id": ASSISTANT_ID}


def train_tokenizer(texts, vocab_size: int = 1000, out_dir=None):
    """A Baichuan2-layout fast tokenizer trained on `texts`; with out_dir, saved there with its tokenizer.model and
    a generation_config.json naming user_token_id / assistant_token_id."""
    import sentencepiece as spm

    check_vocab_size(vocab_size, "vocab_size")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([t for t in texts if t.strip()]), model_writer=model, model_type="bpe",
        vocab_size=vocab_size, hard_vocab_limit=False, byte_fallback=True, split_digits=True,
        normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, character_coverage=0.9995, max_sentence_length=1 << 16,
        user_defined_symbols=RESERVED, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    out = Path(out_dir) if out_dir else None
    if out is None:
        import tempfile
        out = Path(tempfile.mkdtemp(prefix="baichuan_tok_"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(model.getvalue())
    tok = build_tokenizer(out / "tokenizer.model")
    assert tok.convert_ids_to_tokens([USER_ID, ASSISTANT_ID]) == RESERVED[-2:]
    tok.save_pretrained(out)
    (out / "generation_config.json").write_text(json.dumps(chat_generation_config(), indent=2))
    return tok


# Copied from chatglm_v2_6b_lora/train_tokenizer.py:jsonl_texts
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
    tok = train_tokenizer(jsonl_texts(args.train_file), args.vocab_size, args.output_dir)
    print(f"tokenizer with {len(tok)} tokens (user/assistant ids {USER_ID}/{ASSISTANT_ID}) -> {args.output_dir}")
    return tok


if __name__ == "__main__":
    main(sys.argv[1:])
