"""Pipeline-parallel pretraining of LlamaForCausalLM on torch.distributed.pipelining, one process per rank.

    torchrun --nproc_per_node 2 train.py                                   # offline default: 2 stages, 1F1B, CPU/gloo
    torchrun --nproc_per_node 2 train.py --schedule interleaved1f1b        # 4 stages, 2 per rank
    torchrun --nproc_per_node 4 train.py --resume_from_checkpoint last     # continue exactly where it stopped
    torchrun --nproc_per_node 8 train.py --model_name_or_path /models/Llama-2-7b-hf --data_dir /data/tokens \
        --per_device_train_batch_size 32 --n_microbatches 16 --bf16         # GPUs: NCCL, the same code

Every rank builds the same (seeded) model and keeps only its stages (model.balance_stages: parameter-count balance).
Every rank draws the same batch (batch_indices: a pure function of seed and step): stage 0 needs the inputs, the
last stage the labels. The loss is the sum of per-token cross-entropies divided by the number of valid tokens of
the WHOLE batch, so the sum of the microbatch losses is the batch mean even with -100 labels (scale_grads=False).
Clipping uses the global norm (all_reduce of the squared norms of all stages); each stage has its own AdamW and LR
schedule. Checkpoint: stage-*.safetensors (global HF names) + optimizer/scheduler/RNG per stage, trainer_state.json
written last (the completion marker); at the end merge.py's merge() writes one HF checkpoint into output_dir.
"""
import json
import math
import os
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.distributed.pipelining import (PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B,
                                          ScheduleInterleavedZeroBubble, ScheduleZBVZeroBubble)
from transformers import HfArgumentParser, TrainingArguments, get_scheduler, set_seed

from dataset import DataArguments, load_meta
from merge import merge
from model import (ModelArguments, balance_stages, build_model, build_stage, load_tokenizer, split_table,
                   stage_ids_for_rank, unit_costs)

HERE = Path(__file__).resolve().parent
SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B, "interleaved1f1b": ScheduleInterleaved1F1B,
             "interleavedzb": ScheduleInterleavedZeroBubble, "zbv": ScheduleZBVZeroBubble}
MULTI_STAGE = ("interleaved1f1b", "interleavedzb", "zbv")  # 2 stages per rank
EXIT_AFTER_STEP = "ZERO_NLP_PIPELINE_EXIT_AFTER_STEP"  # tests: os._exit(1) on every rank after this step (a kill)


@dataclass
class PipelineTrainingArguments(TrainingArguments):
    # the offline default recipe (bash train.sh passes only paths)
    output_dir: str = field(default=str(HERE / "outputs/pipeline"))
    schedule: str = field(default="1f1b", metadata={"help": "gpipe, 1f1b (1 stage per rank); interleaved1f1b, "
                                                            "interleavedzb, zbv (zero bubble V; 2 stages per rank)"})
    n_microbatches: int = field(default=4, metadata={"help": "microbatches per batch (1f1b: >= number of stages)"})
    stages_per_rank: int | None = field(default=None, metadata={"help": "default: 2 for interleaved/zero-bubble, else 1"})
    n_stages: int | None = field(default=None, metadata={"help": "default: nproc x stages_per_rank (must match)"})
    per_device_train_batch_size: int = field(default=16, metadata={
        "help": "blocks per optimizer step for the whole pipeline (every rank sees this same batch)"})
    per_device_eval_batch_size: int = 16
    learning_rate: float = 3e-3
    weight_decay: float = 0.01
    adam_beta2: float = 0.95
    max_steps: int = 200
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.05
    max_grad_norm: float = 1.0
    logging_steps: int = 10
    eval_steps: float = 50
    save_steps: float = 100
    save_total_limit: int | None = 2
    report_to: None | str | list[str] = "tensorboard"
    dataloader_pin_memory: bool = torch.cuda.is_available()
    seed: int = 42

    def __post_init__(self):
        check_device_flags(self)
        if self.schedule not in SCHEDULES:
            raise SystemExit(f"--schedule: '{self.schedule}' is unknown. Fix: one of {', '.join(SCHEDULES)}")
        for name in ("n_microbatches", "per_device_train_batch_size", "per_device_eval_batch_size", "max_steps",
                     "logging_steps", "eval_steps", "save_steps"):
            if getattr(self, name) <= 0:
                raise SystemExit(f"--{name}: {getattr(self, name)} must be > 0. Fix: e.g. --{name} "
                                 f"{PipelineTrainingArguments.__dataclass_fields__[name].default}")
        for name in ("eval_steps", "save_steps"):  # Trainer's ratios (< 1) are not supported here
            if getattr(self, name) != int(getattr(self, name)):
                raise SystemExit(f"--{name}: {getattr(self, name)} must be a whole number of steps. Fix: e.g. --{name} "
                                 f"{PipelineTrainingArguments.__dataclass_fields__[name].default:g}")
        if self.learning_rate <= 0:
            raise SystemExit(f"--learning_rate: {self.learning_rate} must be > 0. Fix: e.g. --learning_rate 3e-3")
        multi = self.schedule in MULTI_STAGE
        if self.stages_per_rank is None:  # late default
            self.stages_per_rank = 2 if multi else 1
        if multi and self.stages_per_rank != 2:
            raise SystemExit(f"--stages_per_rank: {self.schedule} runs 2 stages per rank, not {self.stages_per_rank}. "
                             "Fix: --stages_per_rank 2 (or --schedule 1f1b for one stage per rank)")
        if not multi and self.stages_per_rank != 1:
            raise SystemExit(f"--stages_per_rank: {self.schedule} runs one stage per rank, not {self.stages_per_rank}. "
                             "Fix: --schedule interleaved1f1b or zbv for 2 stages per rank")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if self.n_stages is not None and self.n_stages != world * self.stages_per_rank:
            raise SystemExit(f"--n_stages: {self.n_stages} stages need {self.n_stages / self.stages_per_rank:g} "
                             f"processes at {self.stages_per_rank} per rank, but {world} were started. Fix: "
                             f"torchrun --nproc_per_node {max(1, self.n_stages // self.stages_per_rank)}, or drop --n_stages")
        self.n_stages = world * self.stages_per_rank
        if self.per_device_train_batch_size % self.n_microbatches or self.per_device_eval_batch_size % self.n_microbatches:
            raise SystemExit(f"--n_microbatches: {self.n_microbatches} does not divide the batch sizes "
                             f"({self.per_device_train_batch_size} train, {self.per_device_eval_batch_size} eval). "
                             "Fix: a divisor of --per_device_train_batch_size / --per_device_eval_batch_size")
        if self.schedule != "gpipe" and self.n_microbatches < self.n_stages:
            raise SystemExit(f"--n_microbatches: {self.schedule} needs at least one microbatch per stage "
                             f"({self.n_stages} stages), got {self.n_microbatches}. Fix: --n_microbatches {self.n_stages}")
        if self.fp16 and torch.cuda.is_available():
            raise SystemExit("--fp16: needs a loss scaler across stages, not implemented here. Fix: --bf16 (autocast)")
        if multi and self.n_microbatches % world:
            raise SystemExit(f"--n_microbatches: {self.schedule} needs a multiple of the {world} ranks, got "
                             f"{self.n_microbatches}. Fix: --n_microbatches {2 * world}")
        super().__post_init__()  # under torchrun this starts the process group (accelerate: gloo on CPU, NCCL on GPU)
        self.resume_from_checkpoint = resolve_resume(self.resume_from_checkpoint, self.output_dir,
                                                     required=("trainer_state.json",))


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


def check_args(model_args: ModelArguments, data_args: DataArguments, args: PipelineTrainingArguments) -> None:
    """Checks across the dataclasses, before anything is loaded (a real checkpoint: its config.json is read)."""
    if model_args.model_name_or_path:
        config = json.loads((Path(model_args.model_name_or_path) / "config.json").read_text())
        n_layers, max_pos = config.get("num_hidden_layers", 0), config.get("max_position_embeddings", 0)
    else:
        n_layers, max_pos = model_args.num_hidden_layers, model_args.max_position_embeddings
    if args.n_stages > n_layers:
        raise SystemExit(f"--n_stages: {args.n_stages} stages but only {n_layers} decoder layers (every stage holds "
                         "at least one). Fix: fewer processes / --stages_per_rank 1, or more --num_hidden_layers")
    if data_args.block_size > max_pos:
        raise SystemExit(f"--block_size: {data_args.block_size} exceeds the model's {max_pos} positions. "
                         f"Fix: --block_size {max_pos}")


# ---------------------------------------------------------------- data: the same batch on every rank
def batch_indices(num_blocks: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Block indices of optimizer step `step` (0-based): epoch e is a permutation seeded by (seed, e), cut into
    num_blocks // batch_size batches (the remainder is dropped). A pure function: a resume continues exactly."""
    per_epoch = num_blocks // batch_size
    epoch, k = divmod(step, per_epoch)
    order = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return order[k * batch_size:(k + 1) * batch_size]


def get_batch(dataset, indices) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[int(i)] for i in indices]
    return torch.stack([x["input_ids"] for x in items]), torch.stack([x["labels"] for x in items])


# ---------------------------------------------------------------- the pipeline: stages, schedule, optimizers
class TokenMeanLoss:
    """Per-microbatch loss = sum of its token cross-entropies / valid tokens of the whole batch (set per step), so
    the microbatch losses SUM to the batch's mean (the mean of microbatch means is wrong when they hold different
    numbers of valid tokens). Labels are unshifted, as for LlamaForCausalLM(labels=...)."""

    def __init__(self):
        self.n_tokens = 1

    def set_batch(self, labels: torch.Tensor) -> None:
        self.n_tokens = max(1, int((labels[:, 1:] != -100).sum()))

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits[:, :-1].flatten(0, 1).float()
        return F.cross_entropy(logits, labels[:, 1:].flatten(), ignore_index=-100, reduction="sum") / self.n_tokens


@dataclass
class Pipeline:
    split: list[range]
    stage_ids: list[int]
    modules: list[torch.nn.Module]
    schedule: object
    loss_fn: TokenMeanLoss
    optimizers: list[torch.optim.Optimizer]
    schedulers: list
    device: torch.device
    owners: list[int]  # owners[i]: the rank holding stage i
    hidden_size: int
    writer_rank: int  # the rank holding the last stage: it logs the loss and writes the shared files

    @property
    def has_first(self) -> bool:
        return 0 in self.stage_ids

    @property
    def has_last(self) -> bool:
        return len(self.split) - 1 in self.stage_ids


def make_optimizer(module: torch.nn.Module, args) -> torch.optim.AdamW:
    """AdamW; as Trainer: no weight decay on 1-D parameters (norms). Also used for the single-process reference."""
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": args.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                             eps=args.adam_epsilon)


def make_scheduler(optimizer, args):
    return get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.get_warmup_steps(args.max_steps),
                         num_training_steps=args.max_steps)


def build_pipeline(model, args, device=None) -> Pipeline:
    """This rank's stages of `model` (sliced, moved to `device`) under args.schedule, with their optimizers."""
    rank, world = dist.get_rank(), dist.get_world_size()
    device = device or torch.device("cpu")
    split = balance_stages(unit_costs(model), world * args.stages_per_rank)
    style = "v" if args.schedule == "zbv" else "loop"  # zbv: V shape, the last stage is back on rank 0
    stage_ids = stage_ids_for_rank(rank, world, args.stages_per_rank, style)
    modules = [build_stage(model, split, i).to(device) for i in stage_ids]
    for m in modules:
        m.autocast_dtype = torch.bfloat16 if getattr(args, "bf16", False) else None
    stages = [PipelineStage(m, i, len(split), device) for m, i in zip(modules, stage_ids)]
    loss_fn = TokenMeanLoss()
    schedule = SCHEDULES[args.schedule](stages if args.schedule in MULTI_STAGE else stages[0], args.n_microbatches,
                                        loss_fn=loss_fn, scale_grads=False)
    optimizers = [make_optimizer(m, args) for m in modules]
    owners = {i: r for r in range(world) for i in stage_ids_for_rank(r, world, args.stages_per_rank, style)}
    owners = [owners[i] for i in range(len(split))]
    return Pipeline(split, stage_ids, modules, schedule, loss_fn, optimizers,
                    [make_scheduler(o, args) for o in optimizers], device, owners, model.config.hidden_size, owners[-1])


def clip_global_norm(modules, max_norm: float, device) -> float:
    """torch.nn.utils.clip_grad_norm_ over ALL stages: every rank adds its squared norms, all_reduce, same coef."""
    grads = [p.grad for m in modules for p in m.parameters() if p.grad is not None]
    sq = torch.zeros((), device=device, dtype=torch.float32)
    for g in grads:
        sq += g.detach().float().pow(2).sum()
    dist.all_reduce(sq)
    norm = sq.sqrt()
    if max_norm and max_norm > 0:
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.to(g.dtype))
    return float(norm)


def train_step(pipe: Pipeline, input_ids, labels, max_grad_norm: float) -> tuple[float | None, float]:
    """One optimizer step of the whole pipeline. Returns (batch loss on the last stage's rank else None, grad norm)."""
    for opt in pipe.optimizers:
        opt.zero_grad(set_to_none=True)
    pipe.loss_fn.set_batch(labels)
    losses = [] if pipe.has_last else None
    inputs = (input_ids.to(pipe.device),) if pipe.has_first else ()
    pipe.schedule.step(*inputs, target=labels.to(pipe.device) if pipe.has_last else None, losses=losses)
    norm = clip_global_norm(pipe.modules, max_grad_norm, pipe.device)
    for opt, sched in zip(pipe.optimizers, pipe.schedulers):
        opt.step()
        sched.step()
    return (float(sum(l.detach().float() for l in losses)) if losses is not None else None), norm


@torch.no_grad()
def forward_logits(pipe: Pipeline, input_ids: torch.Tensor) -> torch.Tensor | None:
    """The whole batch through the stages in order (no schedule, no microbatches: forward only; the runtime schedules
    of torch 2.13 cannot run `eval()` for interleaved/zero-bubble). Logits on the last stage's rank, else None."""
    rank, hidden = dist.get_rank(), input_ids.to(pipe.device)
    dtype = next(pipe.modules[0].parameters()).dtype
    for i, owner in enumerate(pipe.owners):
        if owner != rank:
            continue
        if i > 0 and pipe.owners[i - 1] != rank:
            hidden = torch.empty(*input_ids.shape, pipe.hidden_size, dtype=dtype, device=pipe.device)
            dist.recv(hidden, pipe.owners[i - 1])
        hidden = pipe.modules[pipe.stage_ids.index(i)](hidden)
        if i + 1 < len(pipe.owners) and pipe.owners[i + 1] != rank:
            dist.send(hidden.contiguous(), pipe.owners[i + 1])
    return hidden if pipe.has_last else None


@torch.no_grad()
def evaluate(pipe: Pipeline, dataset, batch_size: int) -> float | None:
    """Mean token loss over the dataset's full batches, on the last stage's rank (None elsewhere)."""
    total = count = 0.0
    for start in range(0, len(dataset) - batch_size + 1, batch_size):
        input_ids, labels = get_batch(dataset, range(start, start + batch_size))
        logits = forward_logits(pipe, input_ids)
        if logits is not None:
            pipe.loss_fn.set_batch(labels)
            total += float(pipe.loss_fn(logits, labels.to(pipe.device))) * pipe.loss_fn.n_tokens
            count += pipe.loss_fn.n_tokens
    return total / count if count else None


def benchmark_step(model, args, input_ids, labels, steps: int = 3, device=None) -> dict:
    """For benchmark.py (under torchrun, process group started): `steps` timed training steps of `model` under
    args.schedule / args.n_microbatches (after one untimed warm-up step). Returns this rank's stages, the median step
    time and the peak memory (CUDA: max allocated; CPU: the process's peak RSS)."""
    pipe = build_pipeline(model, args, device)
    train_step(pipe, input_ids, labels, args.max_grad_norm)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        dist.barrier()
        start = time.perf_counter()
        train_step(pipe, input_ids, labels, args.max_grad_norm)
        dist.barrier()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"rank": dist.get_rank(), "stages": pipe.stage_ids, "step_time_s": sorted(times)[len(times) // 2],
            "peak_memory_mb": peak / 2**20, "params": sum(p.numel() for m in pipe.modules for p in m.parameters())}


# ---------------------------------------------------------------- checkpoints: a shard per stage, marker last
def save_stage(module: torch.nn.Module, path: Path, stage_idx: int, n_stages: int) -> Path:
    """A stage's weights under their global HF names (merge.py takes the union of these files)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    file = path / f"stage-{stage_idx:02d}-of-{n_stages:02d}.safetensors"
    save_file(tensors, file, metadata={"stage": str(stage_idx)})
    return file


def save_checkpoint(pipe: Pipeline, path: Path, step: int, state: dict, config, tokenizer) -> None:
    path.mkdir(parents=True, exist_ok=True)
    n = len(pipe.split)
    for i, module, opt, sched in zip(pipe.stage_ids, pipe.modules, pipe.optimizers, pipe.schedulers):
        save_stage(module, path, i, n)
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, path / f"optimizer-stage-{i:02d}.pt")
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, path / f"rng-rank-{dist.get_rank():02d}.pt")
    if dist.get_rank() == 0:
        config.save_pretrained(path)
        tokenizer.save_pretrained(path)
    dist.barrier()  # every shard is on disk
    if dist.get_rank() == pipe.writer_rank:
        tmp = path / "trainer_state.json.tmp"
        tmp.write_text(json.dumps({**state, "global_step": step}, indent=1))
        os.replace(tmp, path / "trainer_state.json")  # the completion marker, last


def rotate_checkpoints(output_dir: Path, keep: int | None) -> None:
    done = sorted((int(p.name.split("-")[1]), p) for p in output_dir.glob("checkpoint-*")
                  if p.name.split("-")[1].isdigit() and (p / "trainer_state.json").is_file())
    for _, path in done[:-keep] if keep else []:
        shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(pipe: Pipeline, path: Path, layout: dict) -> dict:
    state = json.loads((path / "trainer_state.json").read_text())
    saved = {k: state.get(k) for k in layout}
    if saved != layout:
        raise SystemExit(f"--resume_from_checkpoint: {path} was saved with {saved}, this run is {layout}. Fix: resume "
                         "with the same nproc / --schedule / --per_device_train_batch_size / data / seed (or merge.py "
                         "it and start a new run with --model_name_or_path)")
    n = len(pipe.split)
    for i, module, opt, sched in zip(pipe.stage_ids, pipe.modules, pipe.optimizers, pipe.schedulers):
        module.load_state_dict(load_file(path / f"stage-{i:02d}-of-{n:02d}.safetensors"))
        saved_opt = torch.load(path / f"optimizer-stage-{i:02d}.pt", map_location="cpu", weights_only=True)
        opt.load_state_dict(saved_opt["optimizer"])
        sched.load_state_dict(saved_opt["scheduler"])
    rng_file = path / f"rng-rank-{dist.get_rank():02d}.pt"
    if rng_file.is_file():
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return state


# ---------------------------------------------------------------- main
def init_distributed(args) -> torch.device:
    """TrainingArguments already started the process group under torchrun (accelerate: gloo on CPU, NCCL on GPU, and
    the rank's GPU selected); a plain `python train.py` gets a 1-process group (the whole model is one stage)."""
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", store=dist.HashStore(), rank=0,
                                world_size=1)
    return args.device if args.device.type == "cuda" else torch.device("cpu")  # accelerate says "cpu:0"


def log(pipe: Pipeline, entry: dict, history: list, tb) -> None:
    if dist.get_rank() == pipe.writer_rank:
        history.append(entry)
        print(json.dumps(entry), flush=True)
        if tb is not None:
            for k, v in entry.items():
                if k != "step":
                    tb.add_scalar(("train/" if not k.startswith("eval_") else "eval/") + k.removeprefix("eval_"),
                                  v, entry["step"])


def main(argv: list[str] | None = None) -> dict:
    # ---- arguments (all checks before anything is loaded)
    model_args, data_args, args = HfArgumentParser(
        (ModelArguments, DataArguments, PipelineTrainingArguments)).parse_args_into_dataclasses(args=argv)
    check_args(model_args, data_args, args)
    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:  # train.sh sets it
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.world_size))
    device = init_distributed(args)
    rank, out = dist.get_rank(), Path(args.output_dir)

    # ---- data: the same blocks on every rank
    train_ds, eval_ds = data_args.datasets()
    if len(train_ds) < args.per_device_train_batch_size:
        raise SystemExit(f"--per_device_train_batch_size: {args.per_device_train_batch_size} > the {len(train_ds)} "
                         "train blocks. Fix: a smaller batch or more data")

    # ---- model: the same seeded init everywhere, then this rank's stages
    tokenizer = load_tokenizer(model_args)
    meta = load_meta(data_args.data_dir)
    if len(tokenizer) != meta["vocab_size"]:
        raise SystemExit(f"--tokenizer_name_or_path: {model_args.tokenizer_name_or_path} has {len(tokenizer)} tokens "
                         f"but {data_args.data_dir} was built with {meta['vocab_size']} ({meta['tokenizer']}). "
                         "Fix: use the same tokenizer")
    set_seed(args.seed)
    model = build_model(model_args, tokenizer)
    config, costs = model.config, unit_costs(model)
    pipe = build_pipeline(model, args, device)
    del model  # only this rank's stages stay referenced
    if rank == pipe.writer_rank:
        print(f"{args.schedule}, {args.n_microbatches} microbatches, {len(pipe.split)} stages on "
              f"{dist.get_world_size()} ranks:\n{split_table(pipe.split, costs)}", flush=True)
    layout = {"split": [[r.start, r.stop] for r in pipe.split], "schedule": args.schedule, "seed": args.seed,
              "batch_size": args.per_device_train_batch_size, "num_blocks": len(train_ds),
              "block_size": data_args.block_size}

    # ---- training
    history, start_step = [], 0
    if args.resume_from_checkpoint:
        state = load_checkpoint(pipe, Path(args.resume_from_checkpoint), layout)
        history, start_step = state["log_history"], state["global_step"]
        if rank == pipe.writer_rank:
            print(f"resumed from {args.resume_from_checkpoint} at step {start_step}", flush=True)
    tb = None
    if rank == pipe.writer_rank and args.report_to and "tensorboard" in args.report_to:
        from torch.utils.tensorboard import SummaryWriter
        tb = SummaryWriter(str(out / "runs"))
    if start_step == 0:
        log(pipe, {"step": 0, "eval_loss": evaluate(pipe, eval_ds, args.per_device_eval_batch_size)}, history, tb)
    window, seconds = [], 0.0
    for step in range(start_step, args.max_steps):
        input_ids, labels = get_batch(train_ds, batch_indices(len(train_ds), args.per_device_train_batch_size,
                                                              args.seed, step))
        tic = time.perf_counter()
        loss, norm = train_step(pipe, input_ids, labels, args.max_grad_norm)
        seconds += time.perf_counter() - tic
        window.append(loss)
        done = step + 1
        if done % args.logging_steps == 0 or done == args.max_steps:
            entry = {"step": done, "grad_norm": norm, "learning_rate": pipe.schedulers[0].get_last_lr()[0],
                     "step_time_s": seconds / len(window)}
            if pipe.has_last:
                entry["loss"] = sum(window) / len(window)
            log(pipe, entry, history, tb)
            window, seconds = [], 0.0
        if done % int(args.eval_steps) == 0 or done == args.max_steps:
            log(pipe, {"step": done, "eval_loss": evaluate(pipe, eval_ds, args.per_device_eval_batch_size)}, history, tb)
        if done % int(args.save_steps) == 0 or done == args.max_steps:
            save_checkpoint(pipe, out / f"checkpoint-{done}", done, {**layout, "log_history": history},
                            config, tokenizer)
            if rank == pipe.writer_rank:
                rotate_checkpoints(out, args.save_total_limit)
        if os.environ.get(EXIT_AFTER_STEP) == str(done):
            os._exit(1)  # tests: a kill between two saves

    # ---- the merged HF checkpoint + curves (every shard is on disk: save_checkpoint ended with a barrier)
    last_ckpt = out / f"checkpoint-{args.max_steps}"
    result = {"global_step": args.max_steps, "log_history": history}
    if rank == 0:  # save_pretrained writes only on rank 0 of a process group
        merge(last_ckpt, out)
    if rank == pipe.writer_rank:
        plot_curves(history, out / "curves.png", loss_label="cross-entropy (nats/token)")
        if tb is not None:
            tb.close()
        evals = [h["eval_loss"] for h in history if "eval_loss" in h]
        result.update(eval_loss=evals[-1], init_eval_loss=evals[0] if history[0]["step"] == 0 else None)
        (out / "eval_results.json").write_text(json.dumps(
            {"eval_loss": evals[-1], "perplexity": math.exp(evals[-1]), "global_step": args.max_steps}, indent=1))
        print(json.dumps({k: v for k, v in result.items() if k != "log_history"}), flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main()
