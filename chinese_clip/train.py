"""Train (or fine-tune) a Chinese CLIP with Trainer: symmetric contrastive loss over in-batch negatives (gathered
across processes under DDP), a learnable temperature clamped like CLIP's, recall@1/5/10 both ways, zero-shot.

    python train.py                                   # offline default: small ChineseCLIPModel on the synthetic shapes
    python train.py --model_name_or_path OFA-Sys/chinese-clip-vit-base-patch16 --learning_rate 2e-5 --bf16
    python train.py --model_type dual_encoder --vision_model_name_or_path google/vit-base-patch16-224 \\
        --text_model_name_or_path hfl/chinese-roberta-wwm-ext --freeze_vision --learning_rate 5e-5 --bf16
    python train.py --resume_from_checkpoint last     # continue the newest complete checkpoint in --output_dir
    torchrun --nproc_per_node 2 train.py              # data parallel; features are gathered: 2 x 64 negatives

A run whose loss turns NaN/inf, stays at chance (ln of the global batch) or whose embeddings collapse is flagged:
health.json says why, the final model is NOT saved and the script exits with one line (lower --learning_rate).
Writes to --output_dir: model.safetensors + config.json + processor/tokenizer, checkpoint-*/, runs/ (tensorboard),
curves.png, health.json, eval_results.json, test_results.json (test and test_unseen: R@1/5/10, zero-shot).
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
import torch.distributed as dist
from torch.utils.data import DataLoader
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments, set_seed

from dataset import (EVAL_SPLITS, CLIPCollator, DataArguments, load_images_table, recall_at_k, with_images,
                     zero_shot_accuracy)
from model import MAX_LOGIT_SCALE, PROMPT_TEMPLATES, ModelArguments, build_model, embed_texts, zero_shot_classifier

HERE = Path(__file__).resolve().parent
PRETRAINED_EXAMPLE = "OFA-Sys/chinese-clip-vit-base-patch16"


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
class CLIPTrainingArguments(TrainingArguments):
    # Defaults tuned for the offline small ChineseCLIP on 2 CPU cores (see README for the measurements).
    output_dir: str = field(default=str(HERE / "outputs/clip"))
    num_train_epochs: float = 10
    per_device_train_batch_size: int = 64
    per_device_eval_batch_size: int = 256
    # The original zero_nlp CLIP fine-tune collapsed at ln(batch) with a far too high learning rate: 1e-3 with
    # warmup for the from-scratch model; 1e-5 to 5e-5 for a pretrained checkpoint.
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: float = 0.1
    lr_scheduler_type: str = "cosine"
    max_grad_norm: float = 1.0
    eval_strategy: str = "epoch"
    save_strategy: str = "epoch"
    save_total_limit: int | None = 2
    load_best_model_at_end: bool = True
    metric_for_best_model: str | None = "r_mean"
    greater_is_better: bool | None = True
    logging_steps: float = 10
    logging_nan_inf_filter: bool = False  # a NaN loss must show in the logs (the filter would hide it)
    report_to: None | str | list[str] = "tensorboard"
    remove_unused_columns: bool = False  # the image transform needs image_path / captions
    dataloader_drop_last: bool = True    # every step has the full batch of negatives (and equal ranks under DDP)
    dataloader_num_workers: int = 1      # images decode in a worker while the main process trains (benchmark.py)
    seed: int = 42
    dataloader_pin_memory: bool = torch.cuda.is_available()  # pinning without a GPU only warns
    ddp_find_unused_parameters: bool | None = False
    collapse_ratio: float = field(default=0.9, metadata={
        "help": "Flag the run as collapsed when its final train loss is >= this x ln(global batch) (chance)."})

    def __post_init__(self):
        check_device_flags(self)
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise SystemExit(f"--{name}: {getattr(self, name)} must be >= 1. Fix: e.g. --{name} 64")
        if self.per_device_train_batch_size < 2:
            raise SystemExit("--per_device_train_batch_size: 1 leaves no in-batch negative. Fix: e.g. 64")
        if not self.learning_rate > 0:
            raise SystemExit(f"--learning_rate: {self.learning_rate} must be > 0. Fix: e.g. 1e-3 (offline), 2e-5 "
                             "(a pretrained checkpoint)")
        if self.num_train_epochs <= 0 and self.max_steps <= 0:
            raise SystemExit(f"--num_train_epochs: {self.num_train_epochs} must be > 0. Fix: e.g. 20, or --max_steps")
        if not 0 < self.collapse_ratio <= 1:
            raise SystemExit(f"--collapse_ratio: {self.collapse_ratio} not in (0, 1]. Fix: e.g. 0.9")
        if self.dataloader_num_workers < 0:
            raise SystemExit(f"--dataloader_num_workers: {self.dataloader_num_workers} < 0. Fix: 0 = main process")
        if str(self.eval_strategy) == "no":
            self.load_best_model_at_end = False  # nothing to pick the best from (TrainingArguments would raise)
        super().__post_init__()
        self.resume_from_checkpoint = resolve_resume(self.resume_from_checkpoint, self.output_dir)


def check_args(model_args: ModelArguments, data_args: DataArguments, args: CLIPTrainingArguments) -> None:
    """Checks that need two dataclasses."""
    batch = args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
    if data_args.max_train_samples is not None and data_args.max_train_samples < batch:
        raise SystemExit(f"--max_train_samples: {data_args.max_train_samples} images < one global batch of {batch} "
                         "(the last incomplete batch is dropped: no step). Fix: more images or a smaller "
                         "--per_device_train_batch_size")
    pretrained = model_args.model_name_or_path or model_args.vision_model_name_or_path or \
        model_args.text_model_name_or_path
    if (model_args.freeze_vision or model_args.freeze_text) and not pretrained:
        flag = "--freeze_vision" if model_args.freeze_vision else "--freeze_text"
        raise SystemExit(f"{flag}: would freeze a randomly initialised tower (nothing pretrained is loaded). Fix: "
                         "use it with --model_name_or_path or --vision_model_name_or_path/--text_model_name_or_path")


class GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each rank the summed gradient of its own slice (works on gloo and nccl)."""

    @staticmethod
    def forward(ctx, x):
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every rank's loss depends on every rank's features
        n = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * n:(dist.get_rank() + 1) * n]


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor, gather: bool = True) -> torch.Tensor:
    """Symmetric InfoNCE over in-batch negatives: (CE(image->texts) + CE(text->images)) / 2. Under DDP the
    negatives are every rank's batch (features gathered with gradient), so the loss and its gradient equal the
    single-process loss on the global batch; DDP's gradient averaging then matches it exactly. gather=False: this
    process's pairs only (evaluation, where every rank holds all the embeddings)."""
    offset = 0
    all_img, all_txt = image_emb, text_emb
    if gather and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        all_img, all_txt = GatherWithGrad.apply(image_emb), GatherWithGrad.apply(text_emb)
        offset = dist.get_rank() * image_emb.shape[0]
    labels = torch.arange(image_emb.shape[0], device=image_emb.device) + offset
    loss_i = torch.nn.functional.cross_entropy(scale * image_emb @ all_txt.T, labels)
    loss_t = torch.nn.functional.cross_entropy(scale * text_emb @ all_img.T, labels)
    return (loss_i + loss_t) / 2


class HealthCallback(TrainerCallback):
    """Stops training at the first non-finite loss (there is nothing to save after it)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer.nonfinite_steps:
            control.should_training_stop = True


class CLIPTrainer(Trainer):
    """Trainer + the contrastive loss (clamped learnable temperature, gathered negatives) + retrieval/zero-shot
    evaluation in `evaluate` (what eval_strategy, best-model selection and early stopping see)."""

    def __init__(self, *args, eval_tables=None, data_args=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False  # a per-pair mean: no token-count rescaling
        self.eval_tables, self.data_args = eval_tables or {}, data_args
        self.nonfinite_steps, self.first_nonfinite_step = 0, None
        self.add_callback(HealthCallback(self))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)  # CLIP's clamp: the temperature stays >= 0.01
        # forward through the (DDP-)wrapped model: its outputs carry normalised image_embeds / text_embeds
        outputs = model(**inputs, return_loss=False)
        loss = clip_loss(outputs.image_embeds.float(), outputs.text_embeds.float(), self.model.logit_scale.exp())
        if not torch.isfinite(loss):
            self.nonfinite_steps += 1
            self.first_nonfinite_step = self.first_nonfinite_step or self.state.global_step + 1
        return (loss, outputs) if return_outputs else loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        name = "validation" if metric_key_prefix == "eval" else metric_key_prefix
        metrics = evaluate_split(self.model, self.processing_class, self.eval_tables[name], self.data_args, self.args)
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in metrics.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


@torch.no_grad()
def embed_split(model, processor, table, data_args, batch_size: int, num_workers: int = 0):
    """-> (image embeddings, caption embeddings, caption -> image index). Images load lazily through the dataset
    transform in `num_workers` DataLoader workers."""
    model.eval()
    device = next(model.parameters()).device
    ds = with_images(table, processor.image_processor, train=False, data_args=data_args)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers,
                        collate_fn=lambda ex: torch.stack([e["pixel_values"] for e in ex]))
    from model import encode_images
    image_emb = torch.cat([encode_images(model, pixels.to(device)).cpu() for pixels in loader])
    captions = list(table["captions"])
    texts = [c for caps in captions for c in caps]
    caption_image = torch.tensor([i for i, caps in enumerate(captions) for _ in caps])
    text_emb = embed_texts(texts, model, processor, batch_size=batch_size).cpu()
    return image_emb, text_emb, caption_image


def evaluate_split(model, processor, table, data_args, args, tasks=None) -> dict:
    """R@1/5/10 both ways, their ratio to chance, zero-shot accuracy per attribute, the contrastive loss on
    batches of (image, first caption) of the training batch size, and the embedding spread (collapse check)."""
    was_training = model.training
    image_emb, text_emb, caption_image = embed_split(model, processor, table, data_args, args.per_device_eval_batch_size,
                                                     args.dataloader_num_workers)
    metrics = recall_at_k(text_emb @ image_emb.T, caption_image)
    metrics["i2t_r1_x_chance"] = metrics["i2t_r1"] / metrics["chance_r1"]
    metrics["t2i_r1_x_chance"] = metrics["t2i_r1"] / metrics["chance_r1"]
    first = torch.tensor([int((caption_image == i).nonzero()[0]) for i in range(len(image_emb))])
    scale = float(model.logit_scale.detach().clamp(0, MAX_LOGIT_SCALE).exp())
    b = args.per_device_train_batch_size * args.world_size
    losses = [float(clip_loss(image_emb[i:i + b], text_emb[first[i:i + b]], torch.tensor(scale), gather=False))
              for i in range(0, len(image_emb) - b + 1, b)] or [
        float(clip_loss(image_emb, text_emb[first], torch.tensor(scale), gather=False))]
    metrics["loss"] = float(np.mean(losses))
    metrics["chance_loss"] = math.log(min(b, len(image_emb)))
    metrics["logit_scale"] = scale
    n = min(len(image_emb), 256)
    cos = image_emb[:n] @ image_emb[:n].T
    metrics["image_emb_mean_cos"] = float((cos.sum() - cos.diagonal().sum()) / max(n * (n - 1), 1))
    attrs = [json.loads(a) for a in table["attributes"]]
    for task in (data_args.tasks if tasks is None else tasks):
        labels = [a.get(task) for a in attrs]
        if any(lab is None for lab in labels):
            continue
        labels = [str(lab) if task != "count" else COUNT_WORDS.get(lab, str(lab)) for lab in labels]
        names = sorted(set(labels))
        if len(names) < 2:
            continue
        zs = zero_shot_accuracy(image_emb, labels, zero_shot_classifier(names, model, processor), names)
        metrics[f"zs_{task}_acc"], metrics[f"zs_{task}_majority"] = zs["accuracy"], zs["majority"]
    model.train(was_training)
    return metrics


COUNT_WORDS = {1: "一个", 2: "两个", 3: "三个"}


def assess_health(trainer: CLIPTrainer, args: CLIPTrainingArguments) -> dict:
    """ok / nan / collapsed, with the evidence. Chance for the contrastive loss is ln(global batch)."""
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    global_batch = args.per_device_train_batch_size * args.world_size
    chance = math.log(global_batch)
    tail = losses[-max(1, len(losses) // 10):] if losses else []
    final = float(np.mean(tail)) if tail else float("nan")
    evals = [h for h in history if "eval_image_emb_mean_cos" in h]
    health = {"status": "ok", "reason": "", "final_train_loss": final, "chance_loss": chance,
              "collapse_threshold": args.collapse_ratio * chance, "nonfinite_steps": trainer.nonfinite_steps,
              "first_nonfinite_step": trainer.first_nonfinite_step, "steps": trainer.state.global_step}
    bad_params = [n for n, p in trainer.model.named_parameters() if not torch.isfinite(p).all()]
    if trainer.nonfinite_steps or bad_params or any(not math.isfinite(x) for x in losses):
        where = trainer.first_nonfinite_step or next((h["step"] for h in history if "loss" in h
                                                      and not math.isfinite(h["loss"])), None)
        health.update(status="nan", reason=f"the loss became NaN/inf (first at step {where}); "
                                           f"{len(bad_params)} parameter tensors are non-finite")
    elif not tail:
        health.update(status="collapsed", reason="no training loss was logged (lower --logging_steps)")
    elif final >= args.collapse_ratio * chance:
        health.update(status="collapsed", reason=f"the final train loss {final:.3f} stayed at chance: >= "
                                                 f"{args.collapse_ratio} x ln({global_batch}) = "
                                                 f"{args.collapse_ratio * chance:.3f}")
    elif evals and evals[-1]["eval_image_emb_mean_cos"] > 0.98:
        health.update(status="collapsed", reason="the image embeddings collapsed to one direction (mean cosine "
                                                 f"{evals[-1]['eval_image_emb_mean_cos']:.3f} between images)")
    return health


def parse_args(argv: list[str] | None):
    parser = HfArgumentParser((ModelArguments, DataArguments, CLIPTrainingArguments))
    model_args, data_args, args = parser.parse_args_into_dataclasses(args=argv)
    check_args(model_args, data_args, args)
    return model_args, data_args, args


def load_data(data_args: DataArguments, log) -> dict:
    """One row per image for every split there is (images are loaded later, lazily)."""
    tables = {}
    for split in ("train", *EVAL_SPLITS):
        path = data_args.split_file(split)
        if path:
            limit = data_args.max_train_samples if split == "train" else data_args.max_eval_samples
            tables[split] = load_images_table(path, limit)
    log(", ".join(f"{s} {len(t)} images / {sum(len(c) for c in t['captions'])} captions" for s, t in tables.items()))
    return tables


def main(argv: list[str] | None = None) -> dict:
    # -- arguments: every check runs here, before anything is loaded
    model_args, data_args, args = parse_args(sys.argv[1:] if argv is None else list(argv))
    set_seed(args.seed)
    log = print if args.process_index == 0 else (lambda *a, **k: None)  # data parallel: rank 0 speaks

    # -- data: one row per image; the captions build the char vocabulary of the offline model
    tables = load_data(data_args, log)
    train_texts = [c for caps in tables["train"]["captions"] for c in caps]

    # -- model + processor (a resumed run takes the checkpoint's weights)
    model, processor = build_model(model_args, train_texts, data_args.max_length)
    processor.tokenizer.model_max_length = data_args.max_length  # saved: inference truncates the same
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"model: {type(model).__name__}, {model.num_parameters() / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M "
        f"trainable), {'from ' + model_args.model_name_or_path if model_args.model_name_or_path else 'from scratch'}; "
        f"image processor {type(processor.image_processor).__name__}")

    # -- train
    trainer = CLIPTrainer(model=model, args=args, processing_class=processor,
                          train_dataset=with_images(tables["train"], processor.image_processor, True, data_args),
                          eval_dataset=tables["validation"], eval_tables=tables, data_args=data_args,
                          data_collator=CLIPCollator(processor.tokenizer, data_args.max_length))
    start = time.time()
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    train_seconds = time.time() - start

    # -- health: a NaN / chance-level / collapsed run is reported and not saved as the model
    health = assess_health(trainer, args)
    out = Path(args.output_dir)
    if trainer.is_world_process_zero():
        out.mkdir(parents=True, exist_ok=True)
        (out / "health.json").write_text(json.dumps(health, indent=2), encoding="utf-8")
        plot_curves(trainer.state.log_history, out / "curves.png", metrics=("i2t_r1", "t2i_r1", "r_mean"),
                    loss_label="contrastive loss")
    metrics = {}
    if health["status"] == "ok":
        trainer.save_model(args.output_dir)  # the best checkpoint (by r_mean), loaded at the end of training
        if trainer.is_world_process_zero():
            metrics = test_and_report(trainer, model_args, data_args, args, tables, train_seconds, health)
    # data parallel: rank 0 alone evaluates on test; the others wait, then every rank leaves the process group
    trainer.accelerator.wait_for_everyone()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if health["status"] != "ok":
        raise SystemExit(f"training failed ({health['status']}): {health['reason']}; the model was NOT saved "
                         f"(health.json in {out}). Fix: lower --learning_rate (now {args.learning_rate:g}; e.g. 1e-3 "
                         "from scratch, 2e-5 for a pretrained checkpoint) and keep --warmup_steps")
    return metrics


def test_and_report(trainer, model_args, data_args, args, tables, train_seconds, health) -> dict:
    """Rank 0: validation + held-out metrics -> eval_results.json / test_results.json, the printed summary."""
    model, processor = trainer.model, trainer.processing_class
    val = evaluate_split(model, processor, tables["validation"], data_args, args)
    trainer.save_metrics("eval", {f"eval_{k}": v for k, v in val.items()})
    metrics = {"train_seconds": round(train_seconds, 1), "final_train_loss": health["final_train_loss"],
               "chance_train_loss": health["chance_loss"]}
    for split in ("test", "test_unseen"):
        if split in tables:
            metrics.update({f"{split}_{k}": v for k, v in
                            evaluate_split(model, processor, tables[split], data_args, args).items()})
    trainer.save_metrics("test", metrics)
    print("\n== held-out retrieval (R@K; chance R@1 = 1 / images) ==")
    for split in ("test", "test_unseen"):
        if f"{split}_i2t_r1" in metrics:
            m = {k[len(split) + 1:]: v for k, v in metrics.items() if k.startswith(split + "_")}
            print(f"{split:12s} images {round(1 / m['chance_r1'])}: image->text R@1/5/10 {m['i2t_r1']:.3f} / "
                  f"{m['i2t_r5']:.3f} / {m['i2t_r10']:.3f} ({m['i2t_r1_x_chance']:.1f}x chance), text->image "
                  f"{m['t2i_r1']:.3f} / {m['t2i_r5']:.3f} / {m['t2i_r10']:.3f} ({m['t2i_r1_x_chance']:.1f}x chance)")
            for task in data_args.tasks:
                if f"zs_{task}_acc" in m:
                    print(f"{'':12s} zero-shot {task}: {m[f'zs_{task}_acc']:.3f} (majority {m[f'zs_{task}_majority']:.3f}; "
                          f"prompts {PROMPT_TEMPLATES})")
    print(f"train loss {health['final_train_loss']:.3f} vs chance ln(batch) {health['chance_loss']:.3f}; "
          f"{train_seconds:.0f} s")
    print(f"saved to {args.output_dir}")
    return metrics


if __name__ == "__main__":
    main()
