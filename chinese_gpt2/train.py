"""Train a Chinese GPT-2: language modelling on packed documents (--task lm) or a multi-turn chatbot (--task chat).

    python train.py                                      # offline default: small GPT-2 from scratch -> outputs/gpt2
    python train.py --task chat --model_name_or_path outputs/gpt2     # chatbot on top of it -> outputs/gpt2_chat
    python train.py --model_name_or_path uer/gpt2-chinese-cluecorpussmall --learning_rate 5e-5 --bf16
    python train.py --resume_from_checkpoint last        # continue the newest complete checkpoint

lm: held-out perplexity (eval_results.json) next to a character-unigram model's perplexity on the same validation
tokens (add-one smoothing over the vocabulary) and their ratio; a few generated samples at every evaluation
(printed, samples.jsonl, tensorboard text). chat: exact match of the last answer of held-out dialogues (greedy)
before and after training, by kind, plus the validation loss on answer tokens.
"""
import functools
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments, default_data_collator, set_seed

from dataset import (ChatCollator, DataArguments, build_chat_dataset, build_lm_dataset, read_jsonl,
                     unigram_perplexity)
from model import ModelArguments, build_model, chat, generate, load_tokenizer, spaceless
from train_tokenizer import save_tokenizer

HERE = Path(__file__).resolve().parent
TASK_STEPS = {"lm": 400, "chat": 300}  # --max_steps 0 = the task's default


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


# Copied from model_clm/train.py:bf16_matmul_is_slow
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


# Copied from model_clm/train.py:Float32Muon
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


# Copied from model_clm/train.py:MuonWithAdamW
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


class GPT2Trainer(Trainer):
    """Trainer with MuonWithAdamW as its optimizer when --use_muon."""

    def create_optimizer(self, model=None):
        if self.args.use_muon and self.optimizer is None:
            a = self.args
            self.optimizer = MuonWithAdamW(self.model, a.learning_rate, a.muon_learning_rate, a.weight_decay,
                                           betas=(a.adam_beta1, a.adam_beta2))
        return super().create_optimizer(model)


@dataclass
class GPT2TrainingArguments(TrainingArguments):
    # the offline default recipe (bash train.sh passes only paths): small GPT-2 on People's Daily, 2 CPU cores
    task: str = field(default="lm", metadata={"help": "lm: language modelling on documents; chat: dialogues"})
    output_dir: str | None = field(default=None, metadata={"help": "default outputs/gpt2 (lm) or outputs/gpt2_chat"})
    max_steps: int = field(default=0, metadata={"help": f"0 = the task's default {TASK_STEPS}; -1 = use num_train_epochs"})
    per_device_train_batch_size: int = 32
    per_device_eval_batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 0.01
    adam_beta2: float = 0.95
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.05
    logging_steps: float = 20
    eval_strategy: str = "steps"
    eval_steps: float = 0.25
    eval_on_start: bool = field(default=True, metadata={"help": "evaluate (and sample from) the untrained model first"})
    save_steps: float = 0.25
    save_total_limit: int | None = 2
    report_to: None | str | list[str] = "tensorboard"
    seed: int = 42
    dataloader_pin_memory: bool = torch.cuda.is_available()  # pinning without a GPU only warns
    ddp_find_unused_parameters: bool | None = False
    use_muon: bool | None = field(default=None, metadata={
        "help": "torch.optim.Muon for the block matrices, AdamW (--learning_rate) for embeddings, norms, biases "
                "(model_clm's MuonWithAdamW). Default: on for models of the offline size (from scratch, or this "
                "folder's outputs/gpt2), off for pretrained-size checkpoints (uer's 12 x 768) and under --deepspeed"})
    muon_learning_rate: float = field(default=0.02, metadata={"help": "Muon's lr (follows the same schedule)"})

    def __post_init__(self):
        check_device_flags(self)
        if self.use_muon and self.deepspeed:
            raise SystemExit("--use_muon: DeepSpeed builds its own optimizer. Fix: --use_muon false")
        if self.muon_learning_rate <= 0:
            raise SystemExit(f"--muon_learning_rate: {self.muon_learning_rate} must be > 0. Fix: e.g. 0.02")
        if self.task not in ("lm", "chat"):
            raise SystemExit(f"--task: {self.task!r} is not lm or chat. Fix: --task lm or --task chat")
        if self.output_dir is None:  # late default
            self.output_dir = str(HERE / ("outputs/gpt2" if self.task == "lm" else "outputs/gpt2_chat"))
        if self.max_steps == 0:
            self.max_steps = TASK_STEPS[self.task]
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise SystemExit(f"--{name}: {getattr(self, name)} must be >= 1. Fix: e.g. --{name} 32")
        if not self.learning_rate > 0:
            raise SystemExit(f"--learning_rate: {self.learning_rate} must be > 0. Fix: e.g. 2e-3 from scratch, "
                             f"5e-5 on a pretrained checkpoint")
        if self.max_steps < 0 and self.num_train_epochs <= 0:
            raise SystemExit(f"--num_train_epochs: {self.num_train_epochs} must be > 0 with --max_steps -1. Fix: e.g. 3")
        super().__post_init__()
        self.resume_from_checkpoint = resolve_resume(self.resume_from_checkpoint, self.output_dir)
        if self.resume_from_checkpoint:
            self.eval_on_start = False  # the model of a resumed run is not the untrained one


def check_args(model_args: ModelArguments, data_args: DataArguments, args: GPT2TrainingArguments) -> None:
    """Checks that need two dataclasses; right after parsing, before anything is loaded."""
    data_args.resolve(args.task)
    if model_args.model_name_or_path is None and data_args.block_size > model_args.n_positions:
        raise SystemExit(f"--block_size: {data_args.block_size} > --n_positions {model_args.n_positions}. "
                         f"Fix: --block_size {model_args.n_positions} or a larger --n_positions")
    if args.task == "chat" and model_args.model_name_or_path is None and data_args.max_chat_tokens > model_args.n_positions:
        raise SystemExit(f"--max_chat_tokens: {data_args.max_chat_tokens} > --n_positions {model_args.n_positions}. "
                         f"Fix: --max_chat_tokens {model_args.n_positions}")


# ----------------------------------------------------------------------------- evaluation helpers
def chat_exact_match(model, tokenizer, records: list[dict], max_new_tokens: int = 16) -> dict:
    """Greedy answer to the last user turn of each held-out dialogue == the reference answer."""
    model.eval()
    hits, by_kind, examples = 0, {}, []
    for r in records:
        history, reference = r["messages"][:-1], r["messages"][-1]["content"]
        answer = chat(model, tokenizer, history, max_new_tokens=max_new_tokens)
        ok = answer.strip() == reference.strip()
        hits += ok
        kind = r.get("kind", "all")
        n, h = by_kind.get(kind, (0, 0))
        by_kind[kind] = (n + 1, h + ok)
        if len(examples) < 6:
            examples.append({"history": history, "reference": reference, "answer": answer})
    return {"exact_match": hits / max(1, len(records)),
            "exact_match_by_kind": {k: round(h / n, 4) for k, (n, h) in sorted(by_kind.items())}, "examples": examples}


class SampleCallback(TrainerCallback):
    """At every evaluation: a few generations (lm: the prompts continued greedily; chat: held-out dialogues) ->
    stdout, samples.jsonl in output_dir and the tensorboard run (text 'samples')."""

    def __init__(self, tokenizer, task: str, prompts: list[str], chats: list[dict], max_new_tokens: int):
        self.tokenizer, self.task, self.prompts, self.chats = tokenizer, task, prompts, chats
        self.max_new_tokens, self.trainer = max_new_tokens, None

    def samples(self, model) -> list[dict]:
        was_training = model.training
        model.eval()
        if self.task == "lm":
            out = [{"prompt": p, "text": generate(model, self.tokenizer, p, max_new_tokens=self.max_new_tokens,
                                                  repetition_penalty=1.2)[0]} for p in self.prompts]
        else:
            out = [{"history": c["messages"][:-1], "text": chat(model, self.tokenizer, c["messages"][:-1])}
                   for c in self.chats]
        model.train(was_training)
        return out

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero or model is None:
            return
        samples = self.samples(model)
        lines = [f"  {s.get('prompt', s.get('history', [{}])[-1].get('content', ''))} -> {s['text']}" for s in samples]
        print(f"samples at step {state.global_step}:\n" + "\n".join(lines), flush=True)
        with open(Path(args.output_dir) / "samples.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": state.global_step, "samples": samples}, ensure_ascii=False) + "\n")
        for cb in (self.trainer.callback_handler.callbacks if self.trainer else []):
            writer = getattr(cb, "tb_writer", None)
            if writer is not None:
                writer.add_text("samples", "\n\n".join(lines), state.global_step)


def main(argv: list[str] | None = None) -> dict:
    # Arguments
    model_args, data_args, args = HfArgumentParser(
        (ModelArguments, DataArguments, GPT2TrainingArguments)).parse_args_into_dataclasses(args=argv)
    check_args(model_args, data_args, args)
    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:  # train.sh sets it
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.world_size))

    # Data
    train_rows = read_jsonl(data_args.train_file, data_args.max_train_docs)
    valid_rows = read_jsonl(data_args.validation_file)
    key = "text" if args.task == "lm" else "messages"
    for name, rows in (("train_file", train_rows), ("validation_file", valid_rows)):
        if key not in rows[0]:
            raise SystemExit(f"--{name}: records have {sorted(rows[0])}, not '{key}' (--task {args.task}). "
                             f"Fix: clean_data.py{' --task chat' if args.task == 'chat' else ''} output, or the other --task")

    # Model
    if model_args.model_name_or_path:
        tokenizer = load_tokenizer(model_args.model_name_or_path)
    else:
        from clean_data import chat_charset
        from train_tokenizer import record_texts, train_tokenizer
        tokenizer = spaceless(train_tokenizer(record_texts(train_rows), model_args.min_char_frequency,
                                              extra_chars=chat_charset()))
    set_seed(args.seed)  # the from-scratch init is reproducible too (Trainer seeds only after the model exists)
    model = build_model(model_args, tokenizer)
    if args.use_muon is None:  # late default: Muon for the small offline size; a pretrained model keeps AdamW
        args.use_muon = not args.deepspeed and model.config.n_embd <= 256 and model.config.n_layer <= 4
    positions = model.config.n_positions
    if args.task == "lm" and data_args.block_size > positions:
        raise SystemExit(f"--block_size: {data_args.block_size} > the model's {positions} positions. Fix: --block_size {positions}")
    print(f"GPT-2: {model.config.n_layer} layers x {model.config.n_embd}, {model.num_parameters() / 1e6:.2f}M "
          f"parameters, vocabulary {len(tokenizer)}")

    # Preprocessing
    extra = {}
    if args.task == "lm":
        train_ds, train_acc = build_lm_dataset([r["text"] for r in train_rows], tokenizer, data_args.block_size)
        eval_ds, eval_acc = build_lm_dataset([r["text"] for r in valid_rows], tokenizer, data_args.block_size)
        if data_args.max_eval_blocks:
            eval_ds = eval_ds.select(range(min(len(eval_ds), data_args.max_eval_blocks)))
        if len(train_ds) == 0 or len(eval_ds) == 0:
            raise SystemExit(f"--block_size: {len(train_ds)} train / {len(eval_ds)} validation blocks of "
                             f"{data_args.block_size} tokens. Fix: more data or a smaller --block_size")
        extra.update(train_tokens=train_acc, validation_tokens=eval_acc)
        collator, eval_chats = default_data_collator, []
        train_ds = train_ds.map(lambda b: {"labels": b["input_ids"]}, batched=True, desc="labels")
        eval_ds = eval_ds.map(lambda b: {"labels": b["input_ids"]}, batched=True, desc="labels")
    else:
        limit = min(positions, data_args.max_chat_tokens)
        train_ds, dropped = build_chat_dataset(train_rows, tokenizer, limit)
        eval_ds, _ = build_chat_dataset(valid_rows, tokenizer, limit)
        collator, eval_chats = ChatCollator(tokenizer.pad_token_id), valid_rows[:data_args.eval_chats]
        extra["dropped_too_long"] = dropped
    print(json.dumps({"train": len(train_ds), "validation": len(eval_ds), **extra}, ensure_ascii=False))

    # Training
    sampler = SampleCallback(tokenizer, args.task, [p for p in data_args.sample_prompts.split(",") if p],
                             eval_chats[:4], data_args.sample_max_new_tokens)
    before = chat_exact_match(model, tokenizer, eval_chats) if args.task == "chat" else None
    trainer = GPT2Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, data_collator=collator,
                      processing_class=tokenizer, callbacks=[sampler])
    sampler.trainer = trainer
    train_result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model()
    if trainer.is_world_process_zero():
        save_tokenizer(tokenizer, args.output_dir)  # + vocab.txt, as uer's checkpoints ship it

    # Evaluation
    metrics = trainer.evaluate()
    metrics["perplexity"] = math.exp(min(metrics["eval_loss"], 50))
    start = [h for h in trainer.state.log_history if "eval_loss" in h and h["step"] == 0]
    if start and not args.resume_from_checkpoint:  # a resumed run's history holds the first run's step 0
        metrics["init_eval_loss"] = start[0]["eval_loss"]
        metrics["init_perplexity"] = math.exp(min(start[0]["eval_loss"], 50))
    if args.task == "lm":
        metrics["unigram_perplexity"] = unigram_perplexity(train_ds, eval_ds, len(tokenizer))
        metrics["perplexity_ratio_to_unigram"] = metrics["perplexity"] / metrics["unigram_perplexity"]
        metrics["eval_blocks"], metrics["block_size"] = len(eval_ds), data_args.block_size
    else:
        after = chat_exact_match(model, tokenizer, eval_chats)
        metrics.update(exact_match_before=before["exact_match"], exact_match_after=after["exact_match"],
                       exact_match_by_kind_after=after["exact_match_by_kind"], exact_match_dialogues=len(eval_chats))
        print("held-out answers:\n" + "\n".join(f"  {e['history'][-1]['content']} -> {e['answer']} "
                                                f"(reference {e['reference']})" for e in after["examples"]))
    train_metrics = {**train_result.metrics, "global_step": trainer.state.global_step, "task": args.task,
                     "use_muon": args.use_muon,
                     "train_examples": len(train_ds), **extra}
    if trainer.is_world_process_zero():
        trainer.save_metrics("train", train_metrics)
        trainer.save_metrics("eval", metrics)
        plot_curves(trainer.state.log_history, Path(args.output_dir) / "curves.png",
                    loss_label="cross-entropy (nats/token)" if args.task == "lm" else "loss (answer tokens)")
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()},
                         ensure_ascii=False))
    # data parallel: every rank waits for rank 0's files, then leaves the process group (see CONVENTIONS.md §8)
    trainer.accelerator.wait_for_everyone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return {**train_metrics, **metrics, "log_history": trainer.state.log_history}


if __name__ == "__main__":
    main(sys.argv[1:])
