"""LoRA (or full) instruction fine-tuning of Baichuan-7B / 13B and Baichuan2-7B / 13B (-Chat), without remote code.

    python train.py                                     # offline default: tiny ALiBi + NormHead model from scratch (full)
    python train.py --model_name_or_path outputs/baichuan_full --output_dir outputs/baichuan_lora   # LoRA on it
    python train.py --model_name_or_path /models/Baichuan2-7B-Chat --bf16 --train_file ... 
    torchrun --nproc_per_node 8 train.py --model_name_or_path /models/Baichuan2-13B-Chat --bf16 --deepspeed ds_zero2.json ...

--model_name_or_path takes an OFFICIAL Baichuan / Baichuan2 directory (model_type baichuan, remote code) or a
directory this folder wrote (converted or saved): model.load_baichuan converts the RoPE models (7B) once into a
cache directory as transformers' LlamaForCausalLM, and loads the ALiBi models (13B) directly with this folder's
BaichuanForCausalLM; no trust_remote_code anywhere.

Offline default (no --model_name_or_path): a small SentencePiece tokenizer is trained on the data
(train_tokenizer.py), a tiny random Baichuan2-13B-style checkpoint (ALiBi + NormHead) is written in the official
format (model.write_tiny_official) and loaded through model.load_baichuan like a real one; then it is trained fully
on the generated task. bash train.sh then trains a LoRA adapter on top.
Reports held-out exact match (greedy generation) before and after training, the validation loss/perplexity
(eval_results.json), the test loss / perplexity / exact match (test_results.json) and a few answers.
"""
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, SchedulerType, Trainer, TrainingArguments, set_seed

from dataset import (DataArguments, SFTCollator, build_sft_dataset, check_dropped, default_max_length,
                     is_generated_task, left_pad, read_clean_records, tokenizer_texts)
from model import (SMALL_CONFIG, TOKENIZER_VOCAB, ModelArguments, add_lora, load_baichuan, load_model, load_tokenizer,
                   write_tiny_official)
from tokenization import chat_ids, prompt_ids, stop_ids

HERE = Path(__file__).resolve().parent
OFFLINE_VARIANT = "baichuan2-13b"  # the offline default: ALiBi + NormHead, the model this folder defines
LR_OFFLINE = 2e-3                # the offline tiny Baichuan (model.SMALL_CONFIG), full or LoRA (measured: README)
EPOCHS_FULL, EPOCHS_LORA = 6, 2  # offline: from scratch / LoRA on it
USER_DATA_TOKENIZER_VOCAB = 8000  # offline model on your own data: real Chinese text needs thousands of pieces


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
class SFTTrainingArguments(TrainingArguments):
    output_dir: str = field(default=str(HERE / "outputs/baichuan_full"))
    num_train_epochs: float | None = field(default=None, metadata={"help": "default: EPOCHS_FULL for the offline model from scratch, EPOCHS_LORA for LoRA on it, 3 on a real checkpoint"})
    per_device_train_batch_size: int = field(default=8)
    per_device_eval_batch_size: int = field(default=8)
    learning_rate: float | None = field(default=None, metadata={"help": "default: LR_OFFLINE for the offline tiny Baichuan (full or LoRA), 2e-5 full / 2e-4 LoRA on a real checkpoint"})
    warmup_steps: float = field(default=30)
    lr_scheduler_type: str | None = field(default=None, metadata={"help": "default: constant_with_warmup for the offline tiny Baichuan (it learned the task several times faster than with cosine decay, README), cosine on a real checkpoint"})
    weight_decay: float = field(default=0.01)
    logging_steps: float = field(default=10)
    save_strategy: str = field(default="steps")
    save_steps: float = field(default=200)
    save_total_limit: int | None = field(default=2)
    report_to: str | None = field(default="tensorboard")
    remove_unused_columns: bool = field(default=False)
    dataloader_num_workers: int = field(default=0)
    dataloader_pin_memory: bool = field(default=torch.cuda.is_available())  # no pin_memory warning on CPU
    ddp_find_unused_parameters: bool | None = field(default=False)  # every parameter gets a gradient
    seed: int = field(default=42)

    def __post_init__(self):
        check_device_flags(self)
        lr, self.learning_rate = self.learning_rate, (self.learning_rate or 1e-3)
        epochs, self.num_train_epochs = self.num_train_epochs, (self.num_train_epochs or 1)
        schedule, self.lr_scheduler_type = self.lr_scheduler_type, (self.lr_scheduler_type or "linear")
        super().__post_init__()
        # check_args fills the defaults that depend on the model
        self.learning_rate, self.num_train_epochs = lr, epochs
        self.lr_scheduler_type = schedule and self.lr_scheduler_type
        if epochs is not None and epochs <= 0:
            raise SystemExit(f"--num_train_epochs: must be > 0, got {epochs}. Fix: e.g. --num_train_epochs 3")
        if lr is not None and lr <= 0:
            raise SystemExit(f"--learning_rate: must be > 0, got {lr}. Fix: e.g. --learning_rate 2e-4")
        self.resume_from_checkpoint = resolve_resume(self.resume_from_checkpoint, self.output_dir)


def is_offline_model(model_name_or_path: str | None) -> bool:
    """True for the tiny Baichuan of model.SMALL_CONFIG: built here (None), or a checkpoint of it."""
    if model_name_or_path is None:
        return True
    config = Path(model_name_or_path) / "config.json"
    if not config.is_file():
        return False
    c = json.loads(config.read_text())
    return (c.get("hidden_size"), c.get("num_hidden_layers")) == (SMALL_CONFIG["hidden_size"],
                                                                   SMALL_CONFIG["num_hidden_layers"])


def check_args(model_args: ModelArguments, data_args: DataArguments, training_args: SFTTrainingArguments) -> None:
    """Late defaults that need two argument groups."""
    offline = is_offline_model(model_args.model_name_or_path)
    if training_args.lr_scheduler_type is None:
        training_args.lr_scheduler_type = SchedulerType("constant_with_warmup" if offline else "cosine")
    if training_args.learning_rate is None:
        training_args.learning_rate = LR_OFFLINE if offline else 2e-4 if model_args.use_lora else 2e-5
    if training_args.num_train_epochs is None:
        training_args.num_train_epochs = (EPOCHS_LORA if model_args.use_lora else EPOCHS_FULL) if offline else 3


def build_offline_base(texts, out_dir: Path, vocab_size: int, seed: int) -> str:
    """tokenizer (SentencePiece) -> tiny official Baichuan2-13B-style checkpoint (ALiBi + NormHead) -> load_baichuan.

    The official-format checkpoint (random init from `seed`) goes through the same model.load_baichuan as a real
    one. Returns the directory that load_model / load_tokenizer read.
    """
    from train_tokenizer import train_tokenizer
    train_tokenizer(list(texts), vocab_size, out_dir / "tokenizer")
    official = write_tiny_official(out_dir / "official", OFFLINE_VARIANT, out_dir / "tokenizer" / "tokenizer.model",
                                   seed=seed)
    return str(load_baichuan(official))


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list[list[int]], template: tuple, max_new_tokens: int) -> list[str]:
    """Greedy continuations of left-padded prompt ids, stopping at EOS (and the next user turn's id)."""
    enc = {k: v.to(model.device) for k, v in left_pad(prompts, tokenizer.pad_token_id).items()}
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, top_k=None, top_p=None,
                         temperature=None, eos_token_id=stop_ids(tokenizer, *template),
                         pad_token_id=tokenizer.pad_token_id)
    return tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def exact_match(model, tokenizer, records, template: tuple, max_new_tokens: int, batch_size: int = 32) -> dict:
    """Greedy answers to the first user turn (plus any system message) of each record vs its reference answer."""
    model.eval()
    firsts = [next(i for i, m in enumerate(r["messages"]) if m["role"] == "assistant") for r in records]
    prompts = [prompt_ids(tokenizer, r["messages"][:i], *template) for r, i in zip(records, firsts)]
    refs = [r["messages"][i]["content"] for r, i in zip(records, firsts)]
    preds = []
    for i in range(0, len(prompts), batch_size):
        preds += greedy_answers(model, tokenizer, prompts[i:i + batch_size], template, max_new_tokens)
    hits = [p.strip() == ref for p, ref in zip(preds, refs)]
    by_task = {}
    for r, h in zip(records, hits):
        by_task.setdefault(r.get("task", "all"), []).append(h)
    questions = [r["messages"][i - 1]["content"] for r, i in zip(records, firsts)]
    return {"exact_match": sum(hits) / max(len(hits), 1),
            "exact_match_by_task": {k: round(sum(v) / len(v), 4) for k, v in sorted(by_task.items())},
            "examples": [{"prompt": q, "pred": x, "ref": y} for q, x, y in list(zip(questions, preds, refs))[:5]]}


# Copied from chinese_bloom/train.py:load_splits
def load_splits(data_args: DataArguments) -> dict[str, list[dict]]:
    splits = {name: read_clean_records(getattr(data_args, f"{name}_file")) for name in ("train", "validation", "test")}
    if data_args.tasks:
        keep = set(data_args.tasks.split(","))
        splits = {k: [r for r in rs if r.get("task") in keep] for k, rs in splits.items()}
        if not splits["train"]:
            raise SystemExit(f"--tasks: no training record has task in {sorted(keep)}. "
                             f"Fix: use values of the 'task' field of the generated data")
    if data_args.max_train_samples:
        splits["train"] = splits["train"][:data_args.max_train_samples]
    return splits


# Copied from chinese_bloom/train.py:print_answers
def print_answers(title: str, result: dict, n: int = 3) -> None:
    print(f"{title}: exact match {result['exact_match']:.3f} {result['exact_match_by_task']}")
    for ex in result["examples"][:n]:
        print(f"  Q: {ex['prompt'].strip()!r}\n  A: {ex['pred'].strip()!r}\n  reference: {ex['ref']!r}")


def main(argv: list[str] | None = None) -> dict:
    # Arguments: every check runs while parsing, before anything is loaded
    parser = HfArgumentParser((ModelArguments, DataArguments, SFTTrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(sys.argv[1:] if argv is None else argv)
    check_args(model_args, data_args, training_args)
    set_seed(training_args.seed)
    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:  # train.sh sets it
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))  # more mostly spin-wait on a busy CPU

    # Data
    splits = load_splits(data_args)
    generated = is_generated_task(splits["train"])

    # Model: an official Baichuan dir (RoPE: converted once into a cache; ALiBi: direct), a saved dir, or the offline tiny one
    if model_args.model_name_or_path is None:
        vocab = model_args.tokenizer_vocab_size or (TOKENIZER_VOCAB if generated else USER_DATA_TOKENIZER_VOCAB)
        base = Path(training_args.output_dir) / "offline_base"
        with training_args.main_process_first(desc="offline base"):  # DDP: rank 0 builds it, the others load it
            model_dir = (build_offline_base(tokenizer_texts(splits["train"]), base, vocab, training_args.seed)
                         if training_args.process_index == 0 else str(load_baichuan(base / "official")))
    else:
        model_dir = str(load_baichuan(model_args.model_name_or_path, model_args.cache_dir))
    tokenizer = load_tokenizer(model_dir)
    template = chat_ids(model_dir)  # (user_token_id, assistant_token_id) of generation_config.json
    dtype = torch.bfloat16 if training_args.bf16 and model_args.use_lora else torch.float32
    model = load_model(model_dir, dtype=dtype)
    if model_args.use_lora:
        model = add_lora(model, model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout,
                         model_args.lora_target_modules, training_args.gradient_checkpointing)
        model.print_trainable_parameters()

    # Preprocessing: tokenise (Baichuan2-Chat's format, loss on every answer), drop what does not fit (said loudly), pack
    if data_args.max_length is None:
        data_args.max_length = default_max_length(splits["train"], tokenizer, template)
        print(f"--max_length {data_args.max_length} (default: {'the generated task' if generated else '99th percentile of the training conversations, rounded up to 64'})")
    datasets, dropped = {}, {}
    for name, records in splits.items():
        datasets[name], dropped[name] = build_sft_dataset(records, tokenizer, template, data_args.max_length,
                                                          packing=data_args.packing and name == "train")
        check_dropped(dropped[name], len(records), data_args.max_length, name)

    # Training (one collator: packed rows and single unpacked samples alike)
    eval_records = splits["test"][:data_args.eval_samples]
    model.to(training_args.device)  # generate where training will run (Trainer would move it only later)
    before = exact_match(model, tokenizer, eval_records, template, data_args.max_new_tokens)
    print(f"held-out exact match before training: {before['exact_match']:.3f}")
    trainer = Trainer(model=model, args=training_args, train_dataset=datasets["train"],
                      eval_dataset=datasets["validation"], processing_class=tokenizer,
                      data_collator=SFTCollator(tokenizer.pad_token_id, packed=data_args.packing))
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    # Evaluation: validation loss/perplexity, test loss/perplexity, exact match and a few answers
    eval_metrics = trainer.evaluate()
    eval_metrics["eval_perplexity"] = math.exp(min(eval_metrics["eval_loss"], 50))
    test_metrics = trainer.evaluate(datasets["test"], metric_key_prefix="test")
    test_metrics["test_perplexity"] = math.exp(min(test_metrics["test_loss"], 50))
    after = exact_match(model, tokenizer, eval_records, template, data_args.max_new_tokens)
    print(f"validation loss {eval_metrics['eval_loss']:.4f}, perplexity {eval_metrics['eval_perplexity']:.2f}; "
          f"test loss {test_metrics['test_loss']:.4f}, perplexity {test_metrics['test_perplexity']:.2f}")
    print(f"held-out exact match: {before['exact_match']:.3f} before -> {after['exact_match']:.3f} after training "
          f"{after['exact_match_by_task']}")
    print_answers(f"a few of the {len(eval_records)} test answers", after)

    # Saving
    trainer.save_model()  # + the tokenizer (processing_class); LoRA: only adapter_model.safetensors + adapter_config.json
    train_metrics = {"train_loss": train_result.training_loss,
                     "first_logged_loss": next((h["loss"] for h in trainer.state.log_history if "loss" in h), None),
                     "global_step": trainer.state.global_step, "train_samples": len(splits["train"]) - dropped["train"],
                     "train_rows": len(datasets["train"]), "dropped_too_long": dropped["train"],
                     "max_length": data_args.max_length, "learning_rate": training_args.learning_rate,
                     "chat_ids": list(template), "use_lora": model_args.use_lora, "packing": data_args.packing,
                     "base_model_dir": str(model_dir)}
    test_metrics.update({"exact_match_before": before["exact_match"], "exact_match_after": after["exact_match"],
                         "exact_match_by_task_after": after["exact_match_by_task"],
                         "exact_match_samples": len(eval_records), "test_dropped_too_long": dropped["test"]})
    eval_metrics["eval_dropped_too_long"] = dropped["validation"]
    if trainer.is_world_process_zero():
        trainer.save_metrics("train", train_metrics)
        trainer.save_metrics("eval", eval_metrics)
        trainer.save_metrics("test", test_metrics)
        (Path(training_args.output_dir) / "examples.json").write_text(
            json.dumps(after["examples"], ensure_ascii=False, indent=2))
        plot_curves(trainer.state.log_history, Path(training_args.output_dir) / "curves.png",
                    loss_label="loss (answer tokens)")
    # data parallel: every rank waits for rank 0's files, then leaves the process group (see CONVENTIONS.md §8)
    trainer.accelerator.wait_for_everyone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return {**train_metrics, **eval_metrics, **test_metrics}


if __name__ == "__main__":
    main()
