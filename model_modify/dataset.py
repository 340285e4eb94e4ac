"""Clean Chinese text -> packed causal-LM blocks for the second stage (train.py).

Each text is tokenised with the (expanded) tokenizer, followed by EOS, and the stream is cut into blocks of
--block_size ids (the last partial block dropped); labels = input ids (the model shifts them).
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLEAN = HERE / "data/cache/clean"


@dataclass
class DataArguments:
    train_file: str = field(default=str(CLEAN / "train.jsonl"), metadata={"help": "clean jsonl (clean_data.py)"})
    validation_file: str = field(default=str(CLEAN / "validation.jsonl"))
    test_file: str = field(default=str(CLEAN / "test.jsonl"), metadata={"help": "held-out text: loss per character before/after"})
    block_size: int = field(default=128, metadata={"help": "ids per packed training block"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use the first N training texts"})
    max_eval_samples: int | None = field(default=200, metadata={"help": "validation / test texts used"})

    def __post_init__(self):
        for name in ("train_file", "validation_file", "test_file"):
            if not Path(getattr(self, name)).is_file():
                raise SystemExit(f"--{name}: {getattr(self, name)} is not a file. Fix: run `python clean_data.py` "
                                 f"first (or bash train.sh)")
        if self.block_size < 8:
            raise SystemExit(f"--block_size: {self.block_size} must be >= 8. Fix: e.g. --block_size 128")
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise SystemExit(f"--{name}: {getattr(self, name)} must be > 0. Fix: drop it to use every text")


def read_texts(path, limit: int | None = None, arg: str = "--train_file") -> list[str]:
    """The "text" of every line of a clean jsonl file (the first `limit`); none is a clear error naming `arg`."""
    with open(path, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()][:limit]
    if not texts:
        raise SystemExit(f"{arg}: {path} has no texts. Fix: a bigger corpus, or a larger --validation_ratio / "
                         "--test_ratio in clean_data.py (its summary.json counts the documents per split)")
    return texts


def pack_blocks(texts: list[str], tokenizer, block_size: int):
    """A datasets.Dataset of {"input_ids", "labels"} blocks: texts + EOS, concatenated, cut every block_size."""
    from datasets import Dataset

    stream = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream += ids + [tokenizer.eos_token_id]
    blocks = [stream[i:i + block_size] for i in range(0, len(stream) - block_size + 1, block_size)]
    if not blocks:
        raise SystemExit(f"--block_size: {block_size} ids is more than the {len(stream)} of the data. Fix: a smaller --block_size")
    return Dataset.from_dict({"input_ids": blocks, "labels": blocks})
