"""Clean jsonl splits -> tokenised `datasets.Dataset`s (Arrow-cached `map`) + dynamic-padding collator."""
import json
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, load_dataset
from transformers import DataCollatorWithPadding


def read_label_map(path) -> dict:
    """label_map.json written by clean_data.py: {"labels": [...], "label2id": {...}, "multi_label": bool}."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"--data_dir: {path} not found. Fix: run `python clean_data.py --output_dir {path.parent}` first")
    return json.loads(path.read_text(encoding="utf-8"))


def build_dataset(files: dict[str, str], tokenizer, label_map: dict, max_length: int = 256,
                  cache_dir: str | None = None, max_samples: dict[str, int] | None = None):
    """files: {"train": path, "valid": path, "test": path} (jsonl with "text" and "label").

    Returns a DatasetDict with input_ids / token_type_ids / attention_mask / labels (+ the text). Labels are class ids,
    or multi-hot float vectors when label_map["multi_label"].
    """
    for split, path in files.items():
        if not Path(path).is_file():
            raise SystemExit(f"--{split}_file: {path} not found. Fix: run clean_data.py or pass an existing jsonl")
    raw = load_dataset("json", data_files=files, cache_dir=cache_dir)
    for split, n in (max_samples or {}).items():
        if n and split in raw and n < len(raw[split]):
            raw[split] = raw[split].shuffle(seed=0).select(range(n))
    label2id, multi = label_map["label2id"], label_map["multi_label"]

    def encode(batch):
        enc = tokenizer(batch["text"], truncation=True, max_length=max_length)
        if multi:
            enc["labels"] = [[float(lab in set(labs)) for lab in label2id] for labs in batch["label"]]
        else:
            enc["labels"] = [label2id[lab] for lab in batch["label"]]
        return enc

    # The Arrow cache is keyed on the function + tokenizer fingerprint: a second run skips tokenisation.
    return raw.map(encode, batched=True, remove_columns=["label"], desc="tokenise")


def build_text_dataset(texts: list[str], labels: list, tokenizer, max_length: int, features):
    """In-memory texts + labels (e.g. teacher probabilities) -> a tokenised Dataset with `features` (the train
    split's columns and types, so the two concatenate)."""
    ds = Dataset.from_dict({"text": texts, "labels": labels})
    ds = ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=max_length), batched=True, desc="tokenise")
    return ds.select_columns(list(features)).cast(features)


def length_stats(ds, tokenizer, max_length: int) -> dict:
    """Token lengths before truncation, to choose --max_length (reviews have a long tail)."""
    lengths = np.array([len(ids) for ids in tokenizer(list(ds["text"]), verbose=False)["input_ids"]])
    pct = np.percentile(lengths, [50, 90, 95, 99]).round().astype(int).tolist()
    return {"n": int(len(lengths)), "mean": round(float(lengths.mean()), 1), "p50": pct[0], "p90": pct[1],
            "p95": pct[2], "p99": pct[3], "max": int(lengths.max()),
            f"truncated_at_{max_length}": round(float((lengths > max_length).mean()), 4)}


def make_collator(tokenizer):
    """Pads each batch to its own longest sequence (dynamic padding); to a multiple of 8 on a GPU (tensor cores),
    exactly on CPU, where the extra padding is pure cost (a quarter of a batch of 12-token clauses)."""
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if torch.cuda.is_available() else None)
