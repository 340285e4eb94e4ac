"""Train the offline default's byte-level BPE tokenizer on clean chat records and save it.

train.py calls `train_tokenizer` itself when no --model_name_or_path is given; this CLI is for
building (and inspecting) the tokenizer separately:

    python train_tokenizer.py                                        # generated task, 800 tokens
    python train_tokenizer.py --train_file data/cache/mine/train.jsonl --vocab_size 8000 --output_dir outputs/tok
"""
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

HERE = Path(__file__).resolve().parent
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


@dataclass
class TokenizerArguments:
    train_file: str = field(default=str(HERE / "data/cache/clean/train.jsonl"), metadata={"help": "clean JSONL (clean_data.py)"})
    template: str = field(default="belle", metadata={"help": "the texts are rendered with this chat template"})
    vocab_size: int = field(default=800, metadata={"help": "BPE vocabulary (>= 300); 8000 or more for real Chinese data"})
    output_dir: str = field(default=str(HERE / "outputs/tokenizer"))

    def __post_init__(self):
        from dataset import get_template
        get_template(self.template)  # "--template: unknown template ..." for a bad name
        if self.vocab_size < 300:
            raise SystemExit(f"--vocab_size: must be >= 300 (256 bytes + special tokens), got {self.vocab_size}. "
                             f"Fix: e.g. --vocab_size 8000")
        if not Path(self.train_file).is_file():
            raise SystemExit(f"--train_file: {self.train_file} does not exist. Fix: run `python clean_data.py` first")


def train_tokenizer(texts, vocab_size: int = 800):
    """Byte-level BPE trained on `texts`; digits are split one by one (helps arithmetic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def main(argv: list[str] | None = None):
    from dataset import get_template, read_clean_records, tokenizer_texts

    (args,) = HfArgumentParser(TokenizerArguments).parse_args_into_dataclasses(argv)
    tok = train_tokenizer(tokenizer_texts(read_clean_records(args.train_file), get_template(args.template)),
                          vocab_size=args.vocab_size)
    tok.save_pretrained(args.output_dir)
    print(f"tokenizer with {len(tok)} tokens -> {args.output_dir}")
    return tok


if __name__ == "__main__":
    main(sys.argv[1:])
