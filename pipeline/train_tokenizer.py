# Copied from model_clm/train_tokenizer.py
"""Train a byte-level BPE tokenizer (`tokenizers` library) on the clean corpus, for from-scratch pretraining.

    python train_tokenizer.py                                        # offline default, 8k vocab
    python train_tokenizer.py --input /data/clean --output_dir /data/tok --vocab_size 64000

Reads the train-*.jsonl shards written by clean_data.py as a stream (use --max_docs to train on a sample).
Byte-level BPE never produces <unk>: any character of any script is at worst a few byte tokens.
Saves a `PreTrainedTokenizerFast` directory (tokenizer.json + tokenizer_config.json) for AutoTokenizer.
"""
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import HfArgumentParser, PreTrainedTokenizerFast

from clean_data import iter_records

HERE = Path(__file__).resolve().parent
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}  # ids 0, 1, 2


@dataclass
class TokenizerArguments:
    input: str = field(default=str(HERE / "data/cache/people_daily/clean"), metadata={"help": "clean_data.py output"})
    output_dir: str = field(default=str(HERE / "data/cache/people_daily/tokenizer"))
    vocab_size: int = 8192
    min_frequency: int = 2
    max_docs: int | None = field(default=None, metadata={"help": "train on the first N documents only"})
    text_field: str = "text"

    def __post_init__(self):
        if self.vocab_size < 300:
            raise SystemExit(f"--vocab_size: {self.vocab_size} is below 256 bytes + specials. Fix: e.g. --vocab_size 8192")
        if not any(Path(self.input).glob("train-*.jsonl")):
            raise SystemExit(f"--input: no train-*.jsonl under {self.input}. Fix: run clean_data.py first.")


def iter_texts(input_dir, text_field="text"):
    for path in sorted(Path(input_dir).glob("train-*.jsonl")):
        for _, text, err, _ in iter_records(path, text_field):
            if err is None:
                yield text


def main(argv: list[str] | None = None) -> PreTrainedTokenizerFast:
    (args,) = HfArgumentParser(TokenizerArguments).parse_args_into_dataclasses(args=argv)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=args.vocab_size, min_frequency=args.min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=True)
    tok.train_from_iterator(islice(iter_texts(args.input, args.text_field), args.max_docs), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=1 << 20, **SPECIAL_TOKENS)
    fast.save_pretrained(args.output_dir)
    print(f"vocab {len(fast)} -> {args.output_dir}")
    return fast


if __name__ == "__main__":
    main()
