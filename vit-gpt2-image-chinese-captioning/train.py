"""Train a ViT + GPT-2 image captioner (VisionEncoderDecoderModel) with Seq2SeqTrainer(predict_with_generate).

    python train.py                                   # offline default: small ViT + small GPT-2 on the synthetic scenes
    python train.py --encoder_name_or_path google/vit-base-patch16-224 \
        --decoder_name_or_path uer/gpt2-chinese-cluecorpussmall --learning_rate 5e-5 --bf16
    python train.py --train_file my/train.jsonl --validation_file my/validation.jsonl --test_file my/test.jsonl
    python train.py --resume_from_checkpoint last     # continue the newest complete checkpoint in --output_dir
    torchrun --nproc_per_node 2 train.py              # data parallel: one process per CPU core (gloo) or GPU (nccl)

Evaluation: character-level BLEU-4 (sacrebleu, tokenize="zh") and BLEU-4 / CIDEr-D-style CIDEr (pycocoevalcap on
space-separated characters, without its Java tokenizer) against all references of each held-out image; the same
metrics for a constant caption (the most frequent train caption); distinct generated vs distinct true captions.
Writes to --output_dir: model.safetensors + config.json + generation_config.json + tokenizer + preprocessor_config,
checkpoint-*/, runs/ (tensorboard), curves.png, eval_results.json, test_results.json, test_predictions.jsonl.
"""
import json
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import HfArgumentParser, Seq2SeqTrainer, Seq2SeqTrainingArguments, set_seed

from dataset import CaptionCollator, DataArguments, load_splits, with_transform
from make_data import BACKGROUNDS, COLOURS, COUNTS, POSITIONS, SHAPES, SIZES
from model import ModelArguments, build_model, decode, load_image_processor, load_tokenizer

HERE = Path(__file__).resolve().parent


# Copied from chinese_classifier/train.py:resolve_resume
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


# Copied from chinese_classifier/train.py:check_device_flags
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


# Copied from chinese_classifier/train.py:plot_curves
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
class CaptionTrainingArguments(Seq2SeqTrainingArguments):
    # Defaults tuned for the offline small ViT + GPT-2 on 2 CPU cores (see README for the measurements).
    output_dir: str = field(default=str(HERE / "outputs/captioner"))
    num_train_epochs: float = 8
    per_device_train_batch_size: int = 32
    per_device_eval_batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: float = 0.05
    lr_scheduler_type: str = "cosine"
    eval_strategy: str = "epoch"
    save_strategy: str = "epoch"
    save_total_limit: int | None = 2
    load_best_model_at_end: bool = True
    # auto: scene_accuracy on make_data.py's captions, else bleu4. BLEU-4 also rewards the phrasing that was drawn:
    # measured, it kept epoch 4 of 8 (validation BLEU-4 80.4, all six attributes right 0.47) over epoch 8 (73.7, 0.71)
    metric_for_best_model: str | None = "auto"
    greater_is_better: bool | None = True
    logging_steps: float = 20
    report_to: None | str | list[str] = "tensorboard"
    predict_with_generate: bool = True
    remove_unused_columns: bool = False  # the lazy transform needs image_path / references
    seed: int = 42
    dataloader_pin_memory: bool = torch.cuda.is_available()  # pinning without a GPU only warns
    ddp_find_unused_parameters: bool | None = False

    def __post_init__(self):
        check_device_flags(self)
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise SystemExit(f"--{name}: {getattr(self, name)} must be >= 1. Fix: e.g. --{name} 32")
        if not self.learning_rate > 0:
            raise SystemExit(f"--learning_rate: {self.learning_rate} must be > 0. Fix: e.g. 1e-3 (offline), 5e-5 "
                             "(pretrained checkpoints)")
        if self.num_train_epochs <= 0 and self.max_steps <= 0:
            raise SystemExit(f"--num_train_epochs: {self.num_train_epochs} must be > 0. Fix: e.g. 6, or --max_steps")
        if self.generation_num_beams is not None and self.generation_num_beams < 1:
            raise SystemExit(f"--generation_num_beams: {self.generation_num_beams} < 1. Fix: 1 (greedy) or 4 (beam)")
        if self.dataloader_num_workers < 0:
            raise SystemExit(f"--dataloader_num_workers: {self.dataloader_num_workers} < 0. Fix: 0 or 2")
        if str(self.eval_strategy) == "no":
            self.load_best_model_at_end = False  # nothing to pick the best from (TrainingArguments would raise)
        super().__post_init__()
        self.resume_from_checkpoint = resolve_resume(self.resume_from_checkpoint, self.output_dir)


def caption_metrics(hyps: list[str], refs: list[list[str]]) -> dict:
    """Character-level BLEU-4 (sacrebleu tokenize="zh", 0-100), BLEU-1..4 and CIDEr (pycocoevalcap on space-separated
    characters; its Java PTBTokenizer is skipped: Chinese needs none). CIDEr's idf comes from these references."""
    import sacrebleu
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    streams = [[r[i] if i < len(r) else None for r in refs] for i in range(max(map(len, refs)))]
    out = {"bleu4": sacrebleu.corpus_bleu(hyps, streams, tokenize="zh").score}
    gts = {i: [" ".join(x) for x in r] for i, r in enumerate(refs)}
    res = {i: [" ".join(h) if h else "[EMPTY]"] for i, h in enumerate(hyps)}
    coco, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out.update({f"coco_bleu{n}": 100 * coco[n - 1] for n in (1, 4)})
    out["cider"] = float(Cider().compute_score(gts, res)[0])
    return out


SCENE_VALUES = {"background": list(BACKGROUNDS), "colour": list(COLOURS), "shape": SHAPES, "position": POSITIONS,
                "size": SIZES}
COUNT_WORD = re.compile("([" + "".join(COUNTS.values()) + "])个")  # 「两个」; not the 三 of 三角形 or the 一 of 一共


def parse_scene(text: str) -> dict:
    """The six attributes a make_data.py caption names; None for one it does not name exactly once."""
    scene = {}
    for key, values in SCENE_VALUES.items():
        found = [v for v in values if v in text]
        scene[key] = found[0] if len(found) == 1 and text.count(found[0]) == 1 else None
    counts = COUNT_WORD.findall(text)
    scene["count"] = counts[0] if len(counts) == 1 else None
    return scene


def scene_metrics(hyps: list[str], refs: list[list[str]]) -> dict:
    """With make_data.py's captions (every reference names all six attributes): the share of images whose caption
    gets each attribute right, all six right (scene_accuracy), and the number of distinct true scenes. {} for other
    data (a reference that does not parse)."""
    truth = [parse_scene(r[0]) for r in refs]
    if not truth or any(None in t.values() for t in truth):
        return {}
    pred = [parse_scene(h) for h in hyps]
    out = {f"{k}_accuracy": float(np.mean([p[k] == t[k] for p, t in zip(pred, truth)])) for k in truth[0]}
    out["scene_accuracy"] = float(np.mean([p == t for p, t in zip(pred, truth)]))
    out["distinct_scenes"] = len({tuple(sorted(t.items())) for t in truth})
    return out


def best_model_metric(refs: list[list[str]]) -> str:
    """`--metric_for_best_model auto`: scene_accuracy when the validation captions parse into attributes, else bleu4."""
    return "scene_accuracy" if scene_metrics([r[0] for r in refs], refs) else "bleu4"


def distinct_true_captions(refs: list[list[str]]) -> int:
    """Images linked by a shared reference caption form one group; the groups are the distinct true captions (one
    caption can describe every image of a group). With make_data.py's data: about the distinct scenes."""
    group = list(range(len(refs)))

    def root(i: int) -> int:
        while group[i] != i:
            i = group[i] = group[group[i]]
        return i
    first_image = {}
    for i, captions in enumerate(refs):
        for c in captions:
            group[root(i)] = root(first_image.setdefault(c, i))
    return len({root(i) for i in range(len(refs))})


def distinct_counts(hyps: list[str], refs: list[list[str]]) -> dict:
    """No 'same caption for every image': distinct generated captions vs distinct true ones."""
    return {"distinct_generated": len(set(hyps)), "distinct_true": distinct_true_captions(refs),
            "distinct_reference_sets": len({tuple(sorted(r)) for r in refs}),
            "most_common_share": Counter(hyps).most_common(1)[0][1] / len(hyps) if hyps else 0.0}


def constant_caption(train_ds) -> str:
    """The baseline's caption for every image: the most frequent train caption."""
    return Counter(r[0] for r in train_ds["references"]).most_common(1)[0][0]


class CaptionTrainer(Seq2SeqTrainer):
    """Seq2SeqTrainer whose checkpoint loading (--resume_from_checkpoint, load_best_model_at_end) goes through
    from_pretrained. transformers 5.24 saves ViT weights under their original names (encoder.encoder.layer.0.
    attention.attention.query...) while the module holds encoder.layers.0.attention.q_proj...: Trainer's plain
    load_state_dict(strict=False) skipped every encoder weight with a warning, so a resumed or best-reloaded
    model silently kept the wrong encoder (measured)."""

    def _load_weights(self, checkpoint: str, model=None) -> None:
        from transformers import VisionEncoderDecoderModel
        model = model if model is not None else self.model
        loaded = VisionEncoderDecoderModel.from_pretrained(checkpoint).state_dict()
        missing, _ = model.load_state_dict(loaded, strict=False)  # the reloaded ViT has an unused pooler
        if missing:
            raise SystemExit(f"--resume_from_checkpoint: {checkpoint} lacks {len(missing)} weights of this model "
                             f"(e.g. {missing[0]}). Fix: resume with the same model arguments")

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        self._load_weights(resume_from_checkpoint, model)

    def _load_best_model(self):
        self._load_weights(self.state.best_model_checkpoint)


def check_args(model_args: ModelArguments, data_args: DataArguments, args: CaptionTrainingArguments) -> None:
    if args.generation_max_length is not None and args.generation_max_length < 2:
        raise SystemExit(f"--generation_max_length: {args.generation_max_length} < 2. Fix: e.g. "
                         f"--generation_max_length {model_args.max_target_length + 1}")


def parse_args(argv: list[str] | None):
    parser = HfArgumentParser((ModelArguments, DataArguments, CaptionTrainingArguments))
    model_args, data_args, args = parser.parse_args_into_dataclasses(args=argv)
    check_args(model_args, data_args, args)
    return model_args, data_args, args


def make_compute_metrics(tokenizer, refs: list[list[str]]):
    def compute_metrics(eval_pred):
        preds = np.where(eval_pred.predictions < 0, tokenizer.pad_token_id, eval_pred.predictions)
        hyps = decode(tokenizer, preds)
        refs_ = refs[:len(hyps)]
        return {**caption_metrics(hyps, refs_), **distinct_counts(hyps, refs_), **scene_metrics(hyps, refs_)}
    return compute_metrics


def main(argv: list[str] | None = None) -> dict:
    # -- arguments: every check runs here, before anything is loaded
    model_args, data_args, args = parse_args(sys.argv[1:] if argv is None else list(argv))
    set_seed(args.seed)
    log = print if args.process_index == 0 else (lambda *a, **k: None)

    # -- data: jsonl rows only; images are opened lazily by the transform, batch by batch
    raw = load_splits(data_args)
    tokenizer = load_tokenizer(model_args, [r[0] for r in raw["train"]["references"]])
    image_processor = load_image_processor(model_args)
    ds = {split: with_transform(d, image_processor, tokenizer, model_args.max_target_length)
          for split, d in raw.items()}
    log(f"train {len(raw['train'])} pairs; " + ", ".join(f"{s} {len(raw[s])} images" for s in data_args.eval_splits())
        + f"; vocab {len(tokenizer)}")

    # -- model
    model = build_model(model_args, tokenizer)
    log(f"model: ViT {model.encoder.num_parameters() / 1e6:.2f}M + GPT-2 {model.decoder.num_parameters() / 1e6:.2f}M "
        f"parameters, decoder_start={model.generation_config.decoder_start_token_id} "
        f"eos={model.generation_config.eos_token_id} pad={model.generation_config.pad_token_id}")

    # -- train
    val_refs = list(raw["validation"]["references"])
    if args.metric_for_best_model == "auto":
        args.metric_for_best_model = best_model_metric(val_refs)
    trainer = CaptionTrainer(model=model, args=args, train_dataset=ds["train"], eval_dataset=ds["validation"],
                             processing_class=tokenizer, data_collator=CaptionCollator(),
                             compute_metrics=make_compute_metrics(tokenizer, val_refs))
    start = time.time()
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    train_seconds = time.time() - start
    trainer.save_model(args.output_dir)  # the best checkpoint (by validation BLEU-4)
    metrics = {}
    if trainer.is_world_process_zero():
        image_processor.save_pretrained(args.output_dir)
        metrics = evaluate_and_report(trainer, data_args, args, raw, ds, tokenizer, train_seconds)
    trainer.accelerator.wait_for_everyone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return metrics


def evaluate_split(trainer, raw_split, ds_split, tokenizer, const: str, split: str) -> tuple[dict, list[str]]:
    refs = list(raw_split["references"])
    preds = trainer.predict(ds_split, metric_key_prefix=split).predictions
    hyps = decode(tokenizer, np.where(preds < 0, tokenizer.pad_token_id, preds))
    scores = {**caption_metrics(hyps, refs), **distinct_counts(hyps, refs), **scene_metrics(hyps, refs)}
    metrics = {f"{split}_{k}": v for k, v in scores.items()}
    constant = {**caption_metrics([const] * len(refs), refs), **scene_metrics([const] * len(refs), refs)}
    metrics.update({f"{split}_constant_{k}": v for k, v in constant.items()})
    metrics[f"{split}_images"] = len(refs)
    return metrics, hyps


def evaluate_and_report(trainer, data_args, args, raw, ds, tokenizer, train_seconds) -> dict:
    """Rank 0: curves; on each held-out split the model vs the constant-caption baseline; predictions; a summary."""
    out = Path(args.output_dir)
    plot_curves(trainer.state.log_history, out / "curves.png", metrics=("bleu4", "cider"))
    const = constant_caption(raw["train"])
    trainer.compute_metrics = None  # it scores the validation references; each split is scored here
    metrics = {"constant_caption": const, "train_seconds": round(train_seconds, 1)}
    with open(out / "test_predictions.jsonl", "w", encoding="utf-8") as f:
        for split in [s for s in data_args.eval_splits() if s != "validation"]:
            m, hyps = evaluate_split(trainer, raw[split], ds[split], tokenizer, const, split)
            metrics.update(m)
            for path, h, r in zip(raw[split]["image_path"], hyps, raw[split]["references"]):
                f.write(json.dumps({"split": split, "image_path": path, "caption": h, "references": r},
                                   ensure_ascii=False) + "\n")
            print(f"\n== {split} ({len(hyps)} images) ==")
            for k in ("bleu4", "cider"):
                print(f"{k:6s} model {m[f'{split}_{k}']:8.3f}   constant caption {m[f'{split}_constant_{k}']:8.3f}")
            print(f"distinct captions: generated {m[f'{split}_distinct_generated']}, "
                  f"true {m[f'{split}_distinct_true']} (reference sets {m[f'{split}_distinct_reference_sets']})")
            if f"{split}_scene_accuracy" in m:
                keys = ["scene"] + list(SCENE_VALUES) + ["count"]
                print("accuracy " + ", ".join(f"{k} {m[f'{split}_{k}_accuracy']:.3f}" for k in keys)
                      + f"; constant caption scene {m[f'{split}_constant_scene_accuracy']:.3f}; "
                      f"distinct scenes {m[f'{split}_distinct_scenes']}")
            for path, h, r in list(zip(raw[split]["image_path"], hyps, raw[split]["references"]))[
                    :data_args.num_examples_to_print]:
                print(f"  {Path(path).name}: {h} | true: {r[0]}")
    trainer.save_metrics("test", metrics)
    print(f"\nconstant caption: {const}; train {metrics['train_seconds']} s; saved to {out}")
    return metrics


if __name__ == "__main__":
    main()
