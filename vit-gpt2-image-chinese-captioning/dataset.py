"""Clean jsonl splits -> model-ready data. Images are loaded lazily, in the dataset's transform (`set_transform`),
never all into memory: each batch opens its images with clean_data.load_rgb, runs the image processor (its PIL
version: torchvision is not installed) and tokenises the captions; the collator pads the labels with -100."""
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset

from clean_data import load_rgb

HERE = Path(__file__).resolve().parent
DEFAULT_DATA_DIR = str(HERE / "data/cache/clean")


@dataclass
class DataArguments:
    data_dir: str = field(default=DEFAULT_DATA_DIR, metadata={
        "help": "clean_data.py's --output_dir: train/validation/test(/test_unseen).jsonl ({image_path, text})."})
    train_file: str | None = field(default=None, metadata={"help": "Overrides <data_dir>/train.jsonl."})
    validation_file: str | None = field(default=None, metadata={"help": "Overrides <data_dir>/validation.jsonl."})
    test_file: str | None = field(default=None, metadata={"help": "Overrides <data_dir>/test.jsonl."})
    test_unseen_file: str | None = field(default=None, metadata={
        "help": "Overrides <data_dir>/test_unseen.jsonl (held-out attribute combinations; evaluated when present)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "First N train pairs (quick runs)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "First N validation/test images."})
    num_examples_to_print: int = 8

    def __post_init__(self):
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise SystemExit(f"--{name}: {getattr(self, name)} < 1. Fix: drop it or pass a positive number")
        if self.test_unseen_file and not Path(self.test_unseen_file).is_file():
            raise SystemExit(f"--test_unseen_file: {self.test_unseen_file} not found. Fix: pass an existing file")
        for split in ("train", "validation", "test"):
            path = self.split_file(split)
            if not Path(path).is_file():
                arg = f"--{split}_file" if getattr(self, f"{split}_file") else "--data_dir"
                raise SystemExit(f"{arg}: {path} not found. Fix: run `python make_data.py && python clean_data.py` "
                                 "(or bash train.sh), or pass the clean_data.py output dir")

    def split_file(self, split: str) -> str:
        return getattr(self, f"{split}_file") or str(Path(self.data_dir) / f"{split}.jsonl")


    def eval_splits(self) -> list[str]:
        """validation, test, and test_unseen when its file exists."""
        return ["validation", "test"] + (["test_unseen"] if Path(self.split_file("test_unseen")).is_file() else [])


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def group_by_image(pairs: list[dict]) -> list[dict]:
    """[{image_path, text}] -> [{image_path, references: [text, ...]}] in first-seen order (evaluation sets)."""
    groups = OrderedDict()
    for p in pairs:
        groups.setdefault(p["image_path"], []).append(p["text"])
    return [{"image_path": k, "references": v} for k, v in groups.items()]


def load_splits(data_args: DataArguments) -> dict:
    """train: one row per (image, caption) pair; validation/test(/test_unseen): one row per image with all its
    references (in file order; the first is the label of the evaluation loss)."""
    train = read_jsonl(data_args.split_file("train"))[:data_args.max_train_samples]
    out = {"train": Dataset.from_list([{"image_path": p["image_path"], "references": [p["text"]]} for p in train])}
    for split in data_args.eval_splits():
        out[split] = Dataset.from_list(group_by_image(read_jsonl(data_args.split_file(split)))[:data_args.max_eval_samples])
    return out


def tokenize_captions(texts: list[str], tokenizer, max_target_length: int) -> list[list[int]]:
    """Caption -> ids + [SEP] (eos); the model prepends [CLS] (decoder_start) when it shifts the labels right."""
    ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_target_length - 1).input_ids
    return [x + [tokenizer.sep_token_id] for x in ids]


def make_transform(image_processor, tokenizer, max_target_length: int, max_pixels: int = 4096 * 4096):
    """The lazy transform: a batch of rows -> pixel_values + labels (the first reference), opened only now."""
    def transform(batch):
        images = [load_rgb(p, max_pixels, min_side=1) for p in batch["image_path"]]
        out = {"pixel_values": image_processor(images, return_tensors="pt").pixel_values}
        out["labels"] = tokenize_captions([refs[0] for refs in batch["references"]], tokenizer, max_target_length)
        return out
    return transform


def with_transform(ds: Dataset, image_processor, tokenizer, max_target_length: int) -> Dataset:
    ds = ds.with_transform(make_transform(image_processor, tokenizer, max_target_length))
    return ds


class CaptionCollator:
    """Stacks pixel_values; pads labels with -100 (the loss ignores them: the original zero_nlp captioner did not,
    and learned to predict padding)."""

    def __call__(self, features: list[dict]) -> dict:
        pixels = torch.stack([torch.as_tensor(f["pixel_values"]) for f in features])
        longest = max(len(f["labels"]) for f in features)
        labels = torch.full((len(features), longest), -100, dtype=torch.long)
        for i, f in enumerate(features):
            labels[i, :len(f["labels"])] = torch.as_tensor(f["labels"], dtype=torch.long)
        return {"pixel_values": pixels, "labels": labels}
