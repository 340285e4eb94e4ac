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
import functools
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments, default_data_collator, set_seed

from dataset import DataArguments, EpochShuffleSampler, load_meta, unigram_perplexity
from model import ModelArguments, build_model, load_tokenizer

HERE = Path(__file__).resolve().parent


@dataclass
class CLMTrainingArguments(TrainingArguments):
    # the offline default recipe (bash train.sh passes only paths): small llama, about 10 min on 2 CPU cores
    output_dir: str = field(default=str(HERE / "outputs/clm"))
    per_device_train_batch_size: int = 16
    per_device_eval_batch_size: int = 16
    learning_rate: float = 3e-3
    weight_decay: float = 0.01
    adam_beta2: float = 0.95
    max_steps: int = 600
    num_train_epochs: float = 1.0
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.03
    logging_steps: int = 20
    eval_strategy: str = "steps"
    eval_steps: float = 150
    eval_on_start: bool = field(default=True, metadata={"help": "evaluate the untrained model (init_perplexity); "
                                                                "off when resuming"})
    save_steps: float = 150
    save_total_limit: int | None = 2
    report_to: None | str | list[str] = "tensorboard"
    dataloader_pin_memory: bool = torch.cuda.is_available()
    ddp_find_unused_parameters: bool | None = False
    seed: int = 42
    use_muon: bool | None = field(default=None, metadata={
        "help": "torch.optim.Muon for the weight matrices of the transformer blocks, AdamW (--learning_rate) for "
                "embeddings, head, norms and biases. Default: on from scratch, off when continuing a pretrained "
                "model (--model_name_or_path) or under --deepspeed (which builds its own optimizer)"})
    muon_learning_rate: float = field(default=0.02, metadata={"help": "Muon's lr (follows the same schedule)"})

    def __post_init__(self):
        check_device_flags(self)
        if self.use_muon and self.deepspeed:
            raise SystemExit("--use_muon: DeepSpeed builds its own optimizer from its config, so Muon cannot be used "
                             "with --deepspeed. Fix: --use_muon false, or torchrun without --deepspeed")
        if self.muon_learning_rate <= 0:
            raise SystemExit(f"--muon_learning_rate: {self.muon_learning_rate} must be > 0. Fix: e.g. 0.02")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) <= 0:
                raise SystemExit(f"--{name}: {getattr(self, name)} must be > 0. Fix: e.g. --{name} 16")
        if self.learning_rate <= 0:
            raise SystemExit(f"--learning_rate: {self.learning_rate} must be > 0. Fix: e.g. --learning_rate 3e-3")
        super().__post_init__()
        self.resume_from_checkpoint = resolve_resume(self.resume_from_checkpoint, self.output_dir,
                                                     required=("trainer_state.json", "data_position.json"))
        if self.resume_from_checkpoint:
            self.eval_on_start = False  # the initial model of a resumed run is not the untrained one


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


@functools.cache
def bf16_matmul_is_slow() -> bool:
    """Whether this CPU multiplies bfloat16 matrices slower than float32 ones (timed once, ~0.1 s). Measured with a
    512x1408 matrix: AMD EPYC (Zen 4, avx512_bf16 but no AMX) bf16 80 ms vs fp32 12 ms; Intel Xeon with AMX
    bf16 2.1 ms vs fp32 16 ms."""
    def best_seconds(dtype):
        x = torch.randn(256, 704).to(dtype)
        times = []
        for _ in range(4):
            start = time.perf_counter()
            x @ x.T
            times.append(time.perf_counter() - start)
        return min(times[1:])
    return best_seconds(torch.bfloat16) > best_seconds(torch.float32)


class Float32Muon(torch.optim.Muon):
    """torch.optim.Muon with the Newton-Schulz iteration in float32 (torch casts the update to bfloat16 first), for
    CPUs whose bf16 matmul is slow (bf16_matmul_is_slow): on the AMD EPYC the README's qwen2 command spent 310 s in
    its 2 steps with torch's Muon (2.5 s with --use_muon false). step() is torch's _single_tensor_muon: the same
    group hyperparameters and momentum_buffer state, so checkpoints load into either class."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)
            lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
            a, b, c = group["ns_coefficients"]
            for param, grad, buf in zip(params, grads, bufs):
                buf.lerp_(grad, 1 - momentum)
                x = (grad.lerp(buf, momentum) if group["nesterov"] else buf).float()
                tall = x.size(0) > x.size(1)
                x = x.T if tall else x
                x = x / x.norm().clamp(min=group["eps"])  # spectral norm <= 1
                for _ in range(group["ns_steps"]):
                    gram = x @ x.T
                    x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
                x = x.T if tall else x
                A, B = param.shape
                ratio = 0.2 * max(A, B) ** 0.5 if group["adjust_lr_fn"] == "match_rms_adamw" else max(1, A / B) ** 0.5
                param.mul_(1 - lr * wd)
                param.add_(x.to(param.dtype), alpha=-lr * ratio)
        return loss


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon (torch.optim.Muon; Float32Muon on a CPU with slow bf16 matmuls: momentum, then the update matrix orthogonalised by Newton-Schulz)
    for the 2-D weights of Linear layers, AdamW for everything Muon is not meant for: embeddings (and the head tied
    to them), the output head, norms, biases. One optimizer object so that Trainer's lr schedule, checkpoints and
    resume see both."""

    def __init__(self, model, lr: float, muon_lr: float, weight_decay: float, betas=(0.9, 0.95)):
        embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
        head = model.get_output_embeddings()
        embeddings |= {id(head.weight)} if head is not None else set()
        params = [p for p in model.parameters() if p.requires_grad]
        matrices = [p for p in params if p.ndim == 2 and id(p) not in embeddings]
        others = [p for p in params if p.ndim != 2 or id(p) in embeddings]
        on_cpu = all(p.device.type == "cpu" for p in matrices)
        muon = Float32Muon if on_cpu and bf16_matmul_is_slow() else torch.optim.Muon
        # AdamW first: Trainer logs the first group's lr, which is then --learning_rate's
        self.optimizers = [torch.optim.AdamW(others, lr=lr, betas=betas, weight_decay=0.0),
                           muon(matrices, lr=muon_lr, weight_decay=weight_decay, adjust_lr_fn="original")]
        self.param_groups = [g for opt in self.optimizers for g in opt.param_groups]
        self.defaults, self.state = {}, {}
        self._optimizer_step_pre_hooks, self._optimizer_step_post_hooks = {}, {}

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True):
        for opt in self.optimizers:
            opt.zero_grad(set_to_none)

    def state_dict(self):
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict):
        for opt, state in zip(self.optimizers, state_dict["optimizers"]):
            opt.load_state_dict(state)


class CLMTrainer(Trainer):
    """Trainer whose train sampler is the deterministic EpochShuffleSampler(seed), with MuonWithAdamW (--use_muon)."""

    def _get_train_sampler(self, train_dataset=None):
        return EpochShuffleSampler(len(train_dataset or self.train_dataset), self.args.seed)

    def create_optimizer(self, model=None):
        if self.args.use_muon and self.optimizer is None:
            a = self.args
            self.optimizer = MuonWithAdamW(self.model, a.learning_rate, a.muon_learning_rate, a.weight_decay,
                                           betas=(a.adam_beta1, a.adam_beta2))
        return super().create_optimizer(model)


def find_sampler(loader) -> EpochShuffleSampler:
    """Our sampler inside the (accelerate-wrapped, maybe DDP-sharded) train dataloader."""
    seen, todo = set(), [loader]
    while todo:
        obj = todo.pop()
        if isinstance(obj, EpochShuffleSampler):
            return obj
        if obj is not None and id(obj) not in seen:
            seen.add(id(obj))
            todo += [getattr(obj, name, None) for name in ("batch_sampler", "sampler", "base_dataloader")]
    raise RuntimeError("EpochShuffleSampler not found in the train dataloader")


class DataPositionCallback(TrainerCallback):
    """Keeps the sampler's epoch right (also when resuming in DDP) and writes data_position.json."""

    def __init__(self, fingerprint: dict):
        self.fingerprint, self.steps_per_epoch = fingerprint, None

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.steps_per_epoch = max(1, math.ceil(len(train_dataloader) / args.gradient_accumulation_steps))

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        find_sampler(train_dataloader).set_epoch(math.floor(state.epoch + 1e-6) if state.epoch else 0)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            position = data_position(state.global_step, self.steps_per_epoch, self.fingerprint)
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / "data_position.json"
            path.write_text(json.dumps(position, indent=1))


def data_position(global_step: int, steps_per_epoch: int, fp: dict) -> dict:
    epoch = global_step // steps_per_epoch
    return {**fp, "global_step": global_step, "steps_per_epoch": steps_per_epoch, "epoch": epoch,
            # the next block to train on is sampler.order(epoch)[next_index_in_epoch]
            "next_index_in_epoch": (global_step - epoch * steps_per_epoch) * fp["samples_per_step"]}


def check_resume(resume: str | None, fingerprint: dict) -> None:
    """A resume continues exactly only with the same blocks, seed and global batch."""
    if resume:
        saved = json.loads((Path(resume) / "data_position.json").read_text())
        diff = {k: (saved.get(k), v) for k, v in fingerprint.items() if saved.get(k) != v}
        if diff:
            raise SystemExit(f"--resume_from_checkpoint: the data or batch layout changed since the checkpoint "
                             f"(saved, now): {diff}. Fix: resume with the same data_dir, block_size, seed and batch sizes.")


def check_args(model_args: ModelArguments, data_args: DataArguments, args: CLMTrainingArguments, meta: dict,
               tokenizer, model) -> None:
    """Checks that need the data's meta.json, the tokenizer or the model config."""
    if len(tokenizer) != meta["vocab_size"]:
        raise SystemExit(f"--tokenizer_name_or_path: {tokenizer.name_or_path} has {len(tokenizer)} tokens but "
                         f"{data_args.data_dir} was built with {meta['vocab_size']} ({meta['tokenizer']}). "
                         "Fix: use the same tokenizer.")
    max_pos = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if max_pos and data_args.block_size > max_pos:
        raise SystemExit(f"--block_size: {data_args.block_size} exceeds the model's {max_pos} positions. "
                         f"Fix: --block_size {max_pos}")


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, args = HfArgumentParser(
        (ModelArguments, DataArguments, CLMTrainingArguments)).parse_args_into_dataclasses(args=argv)
    if args.use_muon is None:  # late default: Muon trains from scratch; a pretrained model keeps its AdamW recipe
        args.use_muon = model_args.model_name_or_path is None and not args.deepspeed
    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:  # train.sh sets it
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.world_size))

    # ---- tokenizer, model
    meta = load_meta(data_args.data_dir)
    tokenizer = load_tokenizer(model_args)
    set_seed(args.seed)  # the from-scratch init must be reproducible too (Trainer seeds only after it exists)
    model = build_model(model_args, tokenizer)
    check_args(model_args, data_args, args, meta, tokenizer, model)

    # ---- data: packed blocks, and where a resume continues
    train_ds, eval_ds = data_args.datasets()
    fingerprint = {"num_blocks": len(train_ds), "block_size": data_args.block_size, "seed": args.seed,
                   "train_tokens": meta["splits"]["train"]["tokens"],
                   "samples_per_step": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size}
    check_resume(args.resume_from_checkpoint, fingerprint)

    # ---- training (eval_on_start measures the untrained model)
    trainer = CLMTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                         data_collator=default_data_collator, processing_class=tokenizer,
                         callbacks=[DataPositionCallback(fingerprint)])
    train_result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model()
    trainer.save_metrics("train", train_result.metrics)

    # ---- evaluation: perplexity against the untrained model and a unigram model of the train tokens
    metrics = trainer.evaluate()
    metrics["perplexity"] = math.exp(metrics["eval_loss"])
    metrics["unigram_perplexity"] = unigram_perplexity(train_ds, eval_ds, len(tokenizer))
    metrics["perplexity_ratio_to_unigram"] = metrics["perplexity"] / metrics["unigram_perplexity"]
    start = [h for h in trainer.state.log_history if "eval_loss" in h and h["step"] == 0]
    if start and not args.resume_from_checkpoint:
        metrics["init_eval_loss"] = start[0]["eval_loss"]
        metrics["init_perplexity"] = math.exp(metrics["init_eval_loss"])
    trainer.save_metrics("eval", metrics)

    # ---- artefacts for infer.ipynb / serve.py
    if trainer.is_world_process_zero():
        (Path(args.output_dir) / "data_config.json").write_text(json.dumps(
            {"data_dir": str(Path(data_args.data_dir).resolve()), "block_size": data_args.block_size,
             "max_eval_blocks": data_args.max_eval_blocks}, indent=1))
        plot_curves(trainer.state.log_history, Path(args.output_dir) / "curves.png",
                    loss_label="cross-entropy (nats/token)")
        print(json.dumps({k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}))
    # data parallel: every rank waits for rank 0's files, then leaves the process group (see CONVENTIONS.md §8)
    trainer.accelerator.wait_for_everyone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return {**metrics, "train_loss": train_result.training_loss, "global_step": trainer.state.global_step,
            "log_history": trainer.state.log_history}


if __name__ == "__main__":
    main()
