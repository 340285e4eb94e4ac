"""Causal-LM (continued) pretraining on the packed memmap tokens written by dataset.py.

    python train.py                                                   # offline default: small llama, CPU
    torchrun --nproc_per_node 8 train.py --model_name_or_path Qwen/Qwen2-0.5B --data_dir /data/tokens \
        --tokenizer_name_or_path Qwen/Qwen2-0.5B --bf16 --deepspeed ds_zero2.json      # GPUs, NCCL
    python train.py --resume_from_checkpoint last                     # continue exactly where it stopped

Data order: block permutation = f(seed, epoch) (EpochShuffleSampler), identical on every rank. On resume
the Trainer skips the batches already trained (index-level, nothing is read); data_position.json in each
checkpoint records where that is, and a resume with a different dataset / seed / batch layout is refused
because it could not continue exactly.
"""
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (AutoTokenizer, HfArgumentParser, Trainer, TrainerCallback, TrainingArguments,
                          default_data_collator, set_seed)
from transformers.integrations.integration_utils import TensorBoardCallback, default_logdir
from transformers.trainer_utils import get_last_checkpoint

from dataset import EpochShuffleSampler, PackedDataset, load_meta, unigram_perplexity
from model import ModelArguments, build_model

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE / "data/cache/people_daily/tokens"
DEFAULT_TOKENIZER = HERE / "data/cache/people_daily/tokenizer"


@dataclass
class DataArguments:
    data_dir: str = field(default=str(DEFAULT_DATA), metadata={"help": "dataset.py output (meta.json + *.bin)"})
    block_size: int | None = field(default=None, metadata={"help": "default: block_size in meta.json"})
    max_train_blocks: int | None = field(default=None, metadata={"help": "use only the first N train blocks"})
    max_eval_blocks: int | None = field(default=None, metadata={"help": "use only the first N valid blocks"})


@dataclass
class CLMTrainingArguments(TrainingArguments):
    output_dir: str = field(default=str(HERE / "outputs/clm"))
    per_device_train_batch_size: int = 16
    per_device_eval_batch_size: int = 16
    learning_rate: float = 2e-3
    weight_decay: float = 0.01
    num_train_epochs: float = 1.0
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.05
    logging_steps: int = 10
    eval_strategy: str = "steps"
    eval_steps: float = 50
    save_steps: float = 100
    save_total_limit: int | None = 2
    report_to: None | str | list[str] = "tensorboard"
    dataloader_pin_memory: bool = torch.cuda.is_available()
    seed: int = 42


class CLMTrainer(Trainer):
    """Trainer whose train sampler is the deterministic EpochShuffleSampler."""

    def _get_train_sampler(self, train_dataset=None):
        return self.train_sampler


class DataPositionCallback(TrainerCallback):
    """Keeps the sampler's epoch right (also when resuming in DDP) and writes data_position.json."""

    def __init__(self, sampler: EpochShuffleSampler, fingerprint: dict):
        self.sampler, self.fingerprint = sampler, fingerprint

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        steps = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
        assert steps == self.fingerprint["steps_per_epoch"], (steps, self.fingerprint)

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.sampler.set_epoch(math.floor(state.epoch + 1e-6) if state.epoch else 0)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            position = data_position(state.global_step, state.max_steps, state.num_train_epochs, self.fingerprint)
            (ckpt / "data_position.json").write_text(json.dumps(position, indent=1))


def data_position(global_step: int, max_steps: int, num_epochs: float, fp: dict) -> dict:
    steps_per_epoch = fp["steps_per_epoch"]
    epoch = global_step // steps_per_epoch
    return {**fp, "global_step": global_step, "epoch": epoch,
            # the next block to train on is sampler.order(epoch)[next_index_in_epoch]
            "next_index_in_epoch": (global_step - epoch * steps_per_epoch) * fp["samples_per_step"]}


def check_args(argv: list[str]) -> None:
    """Fail early, with one line, on settings that would crash deep inside torch/accelerate."""
    has_gpu = torch.cuda.is_available()
    if not has_gpu and any(a.startswith("--deepspeed") for a in argv):
        raise SystemExit("--deepspeed: DeepSpeed needs CUDA GPUs and none is visible. "
                         "Fix: drop --deepspeed on CPU (plain DDP: torchrun --nproc_per_node N train.py).")
    for flag in ("--fp16", "--bf16"):
        on = False
        for i, a in enumerate(argv):
            if a == flag:
                on = i + 1 >= len(argv) or argv[i + 1].startswith("--") or argv[i + 1].lower() in ("true", "1", "yes")
            elif a.startswith(flag + "="):
                on = a.split("=", 1)[1].lower() in ("true", "1", "yes")
        if on and not has_gpu:
            raise SystemExit(f"{flag}: half precision needs a GPU; this machine has none. Fix: drop {flag} (CPU trains in fp32).")


def plot_curves(log_history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("loss", "train loss"), ("eval_loss", "valid loss")):
        pts = [(h["step"], h[key]) for h in log_history if key in h]
        if pts:
            ax.plot(*zip(*pts), marker="." if key == "eval_loss" else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    check_args(argv)
    model_args, data_args, args = HfArgumentParser(
        (ModelArguments, DataArguments, CLMTrainingArguments)).parse_args_into_dataclasses(args=argv)
    meta = load_meta(data_args.data_dir)
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.world_size))

    tok_path = model_args.tokenizer_name_or_path or model_args.model_name_or_path or str(DEFAULT_TOKENIZER)
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_path)
    except (OSError, ValueError) as e:
        raise SystemExit(f"--tokenizer_name_or_path: cannot load {tok_path} ({e}). Fix: run train_tokenizer.py "
                         "or pass the tokenizer the data was built with.")
    if len(tokenizer) != meta["vocab_size"]:
        raise SystemExit(f"--tokenizer_name_or_path: {tok_path} has {len(tokenizer)} tokens but {data_args.data_dir} "
                         f"was built with {meta['vocab_size']} ({meta['tokenizer']}). Fix: use the same tokenizer.")
    set_seed(args.seed)  # the from-scratch init must be reproducible too (Trainer seeds only after it exists)
    model = build_model(model_args, tokenizer)
    block_size = data_args.block_size or meta["block_size"]
    max_pos = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if max_pos and block_size > max_pos:
        raise SystemExit(f"--block_size: {block_size} exceeds the model's {max_pos} positions. Fix: --block_size {max_pos}")

    train_ds = PackedDataset(data_args.data_dir, "train", block_size, data_args.max_train_blocks)
    eval_ds = PackedDataset(data_args.data_dir, "valid", block_size, data_args.max_eval_blocks)
    if len(train_ds) == 0 or len(eval_ds) == 0:
        raise SystemExit(f"--data_dir: {len(train_ds)} train / {len(eval_ds)} valid blocks of {block_size} tokens. "
                         "Fix: more data, a larger --valid_ratio in clean_data.py, or a smaller --block_size.")
    sampler = EpochShuffleSampler(len(train_ds), args.seed)
    samples_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    batches = len(train_ds) // args.per_device_train_batch_size if args.dataloader_drop_last \
        else math.ceil(len(train_ds) / args.per_device_train_batch_size)
    per_rank = batches // args.world_size if args.dataloader_drop_last else math.ceil(batches / args.world_size)
    fingerprint = {"num_blocks": len(train_ds), "block_size": block_size, "seed": args.seed,
                   "train_tokens": meta["splits"]["train"]["tokens"], "samples_per_step": samples_per_step,
                   "steps_per_epoch": max(1, math.ceil(per_rank / args.gradient_accumulation_steps))}

    resume = args.resume_from_checkpoint
    if resume == "last":
        resume = get_last_checkpoint(args.output_dir) if os.path.isdir(args.output_dir) else None
        if resume is None:
            raise SystemExit(f"--resume_from_checkpoint: no checkpoint-* in {args.output_dir}. Fix: train first, or drop it.")
    if resume:
        pos_file = Path(resume) / "data_position.json"
        if not pos_file.exists():
            raise SystemExit(f"--resume_from_checkpoint: {pos_file} missing. Fix: resume from a checkpoint written by this train.py.")
        saved = json.loads(pos_file.read_text())
        diff = {k: (saved.get(k), v) for k, v in fingerprint.items() if saved.get(k) != v}
        if diff:
            raise SystemExit(f"--resume_from_checkpoint: the data or batch layout changed since the checkpoint "
                             f"(saved, now): {diff}. Fix: resume with the same data_dir, block_size, seed and batch sizes.")

    trainer = CLMTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                         data_collator=default_data_collator, processing_class=tokenizer,
                         callbacks=[DataPositionCallback(sampler, fingerprint)])
    trainer.train_sampler = sampler
    for cb in trainer.callback_handler.callbacks:
        # the initial evaluate() logs before on_train_begin would place the writer: keep it under output_dir/runs
        if isinstance(cb, TensorBoardCallback) and cb.logging_dir is None:
            cb.logging_dir = os.path.join(args.output_dir, default_logdir())
    metrics = {}
    if not resume:
        metrics["init_eval_loss"] = trainer.evaluate(metric_key_prefix="init")["init_loss"]
        metrics["init_perplexity"] = math.exp(metrics["init_eval_loss"])
    train_result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()
    trainer.save_metrics("train", train_result.metrics)
    eval_metrics = trainer.evaluate()
    eval_metrics["perplexity"] = math.exp(eval_metrics["eval_loss"])
    eval_metrics["unigram_perplexity"] = unigram_perplexity(train_ds, eval_ds, len(tokenizer))
    eval_metrics.update({k: v for k, v in metrics.items()})
    trainer.save_metrics("eval", eval_metrics)
    if trainer.is_world_process_zero():
        (Path(args.output_dir) / "data_config.json").write_text(json.dumps(
            {"data_dir": str(Path(data_args.data_dir).resolve()), "block_size": block_size,
             "max_eval_blocks": data_args.max_eval_blocks}, indent=1))
        plot_curves(trainer.state.log_history, Path(args.output_dir) / "curves.png")
        print(json.dumps({k: round(v, 4) for k, v in eval_metrics.items() if isinstance(v, float)}))
    return {**eval_metrics, "train_loss": train_result.training_loss, "global_step": trainer.state.global_step,
            "log_history": trainer.state.log_history}


if __name__ == "__main__":
    main()
