"""Instruction fine-tuning (SFT) of BLOOM / Falcon (and GPT-NeoX, LLaMA): full or LoRA, packed.

    python train.py                                            # offline default: small BLOOM from scratch
    python train.py --model_name_or_path outputs/bloom_full --use_lora   # LoRA on top of it
    torchrun --nproc_per_node 8 train.py --model_name_or_path bigscience/bloom-7b1 --bf16 \
        --deepspeed ds_zero3.json --train_file data/belle.jsonl ...

Multi-GPU training = torchrun/deepspeed launchers (data parallel / ZeRO). Naive model parallelism
(device_map.py) is for single-process inference only; the two are never combined.
Reports held-out exact match (greedy generation) before and after training.
"""
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from dataset import SFTCollator, build_prompt, build_sft_dataset, get_template, read_clean_records, render_segments
from model import add_lora, check_model_path, enable_packing, generate, load_model, load_tokenizer

HERE = Path(__file__).resolve().parent


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "BLOOM/Falcon/GPT-NeoX/LLaMA dir or Hub id; omitted = small BLOOM from scratch"})
    template: str = field(default="belle", metadata={"help": "prompt template (dataset.TEMPLATES): belle, alpaca, chatml"})
    use_lora: bool = field(default=False, metadata={"help": "train a LoRA adapter (peft) instead of all weights"})
    lora_r: int = field(default=16)
    lora_alpha: int = field(default=32)
    lora_dropout: float = field(default=0.05)
    lora_target_modules: str = field(default="all-linear", metadata={"help": "comma separated module names, or all-linear"})


@dataclass
class DataArguments:
    data_dir: str = field(default=str(HERE / "data/cache/clean"), metadata={"help": "clean_data.py output (train/validation/test.jsonl)"})
    train_file: str | None = field(default=None)
    validation_file: str | None = field(default=None)
    test_file: str | None = field(default=None)
    max_length: int | None = field(default=None, metadata={"help": "tokens per sample and per packed row; default 128 offline, 1024 for a checkpoint"})
    packing: bool = field(default=True, metadata={"help": "pack several samples per row (block-diagonal attention)"})
    tasks: str | None = field(default=None, metadata={"help": "comma separated 'task' values to keep (generated data), e.g. unit,date"})
    max_train_samples: int | None = field(default=None)
    eval_samples: int = field(default=200, metadata={"help": "test questions used for exact match"})
    max_new_tokens: int = field(default=24)


@dataclass
class SFTTrainingArguments(TrainingArguments):
    output_dir: str = field(default=str(HERE / "outputs/bloom_full"))
    num_train_epochs: float = field(default=15)
    per_device_train_batch_size: int = field(default=8)
    per_device_eval_batch_size: int = field(default=8)
    learning_rate: float = field(default=1e-3)  # offline default; use ~2e-5 (full) / 2e-4 (LoRA) on real checkpoints
    warmup_steps: float = field(default=30)
    lr_scheduler_type: str = field(default="cosine")
    weight_decay: float = field(default=0.01)
    logging_steps: float = field(default=10)
    save_strategy: str = field(default="steps")
    save_steps: float = field(default=200)
    save_total_limit: int | None = field(default=2)
    report_to: str | None = field(default="tensorboard")
    remove_unused_columns: bool = field(default=False)
    dataloader_num_workers: int = field(default=0)
    seed: int = field(default=42)


def check_cpu_flags(argv: list[str]) -> None:
    """Fail early, with one message, on flags that need a GPU (transformers would raise deep inside)."""
    if torch.cuda.is_available():
        return
    for flag in ("--deepspeed", "--bf16", "--fp16"):
        for i, a in enumerate(argv):
            value = a.split("=", 1)[1] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else "")
            if a.split("=", 1)[0] == flag and (flag == "--deepspeed" or value.lower() not in ("false", "0", "no")):
                raise SystemExit(f"{flag}: needs a CUDA GPU, and none is visible (DeepSpeed ZeRO and bf16/fp16 "
                                 f"do not run on CPU here). Fix: drop {flag}; on CPU training runs in fp32")


def exact_match(model, tokenizer, records, template, max_new_tokens: int, batch_size: int = 32) -> dict:
    """Greedy answers to the first user turn (plus any system message) of each record vs its reference answer."""
    model.eval()
    firsts = [next(i for i, m in enumerate(r["messages"]) if m["role"] == "assistant") for r in records]
    prompts = [build_prompt(r["messages"][:i], template, tokenizer.eos_token) for r, i in zip(records, firsts)]
    refs = [r["messages"][i]["content"] for r, i in zip(records, firsts)]
    preds = []
    for i in range(0, len(prompts), batch_size):
        preds += generate(model, tokenizer, prompts[i:i + batch_size], max_new_tokens=max_new_tokens)
    hits = [p.strip() == ref for p, ref in zip(preds, refs)]
    by_task = {}
    for r, h in zip(records, hits):
        by_task.setdefault(r.get("task", "all"), []).append(h)
    return {"exact_match": sum(hits) / max(len(hits), 1),
            "exact_match_by_task": {k: round(sum(v) / len(v), 4) for k, v in sorted(by_task.items())},
            "examples": [{"prompt": p, "pred": x, "ref": y} for p, x, y in list(zip(prompts, preds, refs))[:5]]}


def plot_curves(log_history, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (answer tokens)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    check_cpu_flags(argv)
    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1 and "--use_cpu" not in argv:
        argv.append("--use_cpu")  # torchrun on CPU: without it Trainer silently runs every rank alone (no gloo DDP)
    parser = HfArgumentParser((ModelArguments, DataArguments, SFTTrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(argv)
    template = get_template(model_args.template)
    check_model_path(model_args.model_name_or_path)
    if model_args.model_name_or_path and Path(model_args.model_name_or_path).is_dir():
        # absolute, so the adapter_config.json of a LoRA run still finds its base from anywhere
        model_args.model_name_or_path = str(Path(model_args.model_name_or_path).resolve())
    if model_args.use_lora and model_args.model_name_or_path is None:
        raise SystemExit("--use_lora: LoRA needs a trained base model, and the offline default starts from random "
                         "weights. Fix: train it fully first (python train.py), then pass "
                         "--model_name_or_path outputs/bloom_full --use_lora")
    if data_args.max_length is None:
        data_args.max_length = 128 if model_args.model_name_or_path is None else 1024
    set_seed(training_args.seed)
    if not torch.cuda.is_available():  # more threads than half the cores mostly spin-wait on a busy CPU
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))

    data_dir = Path(data_args.data_dir)
    train_records = read_clean_records(data_args.train_file or data_dir / "train.jsonl")
    val_records = read_clean_records(data_args.validation_file or data_dir / "validation.jsonl")
    test_records = read_clean_records(data_args.test_file or data_dir / "test.jsonl")
    if data_args.tasks:
        keep = set(data_args.tasks.split(","))
        train_records, val_records, test_records = ([r for r in rs if r.get("task") in keep]
                                                    for rs in (train_records, val_records, test_records))
        if not train_records:
            raise SystemExit(f"--tasks: no training record has task in {sorted(keep)}. "
                             f"Fix: use values of the 'task' field of the generated data")
    if data_args.max_train_samples:
        train_records = train_records[:data_args.max_train_samples]

    texts = ("".join(t for t, _ in render_segments(r["messages"], template, "")) for r in train_records)
    tokenizer = load_tokenizer(model_args.model_name_or_path, texts)
    dtype = torch.bfloat16 if training_args.bf16 and model_args.use_lora else torch.float32
    model = load_model(model_args.model_name_or_path, tokenizer, dtype=dtype)
    if data_args.packing:
        enable_packing(model)
    if model_args.use_lora:
        model = add_lora(model, model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout,
                         model_args.lora_target_modules, training_args.gradient_checkpointing)
        model.print_trainable_parameters()

    eval_records = test_records[:data_args.eval_samples]
    before = exact_match(model, tokenizer, eval_records, template, data_args.max_new_tokens)
    print(f"held-out exact match before training: {before['exact_match']:.3f}")

    train_ds, dropped = build_sft_dataset(train_records, tokenizer, template, data_args.max_length, data_args.packing)
    val_ds, _ = build_sft_dataset(val_records, tokenizer, template, data_args.max_length, packing=False)
    trainer = Trainer(model=model, args=training_args, train_dataset=train_ds, eval_dataset=val_ds,
                      data_collator=SFTCollator(tokenizer.pad_token_id, packed=data_args.packing),
                      processing_class=tokenizer)

    resume = training_args.resume_from_checkpoint
    if resume == "last":
        resume = get_last_checkpoint(training_args.output_dir)
        if resume is None:
            raise SystemExit(f"--resume_from_checkpoint: no checkpoint-* in {training_args.output_dir}. "
                             f"Fix: drop the flag or point it at a checkpoint directory")
    train_result = trainer.train(resume_from_checkpoint=resume)

    trainer.data_collator = SFTCollator(tokenizer.pad_token_id, packed=False)  # validation is unpacked
    eval_metrics = trainer.evaluate()
    after = exact_match(model, tokenizer, eval_records, template, data_args.max_new_tokens)
    print(f"held-out exact match after training: {after['exact_match']:.3f} {after['exact_match_by_task']}")

    trainer.save_model()  # LoRA: only adapter_model.safetensors + adapter_config.json
    tokenizer.save_pretrained(training_args.output_dir)
    metrics = {
        "train_loss": train_result.training_loss,
        "first_logged_loss": next((h["loss"] for h in trainer.state.log_history if "loss" in h), None),
        "eval_loss": eval_metrics["eval_loss"],
        "eval_perplexity": math.exp(min(eval_metrics["eval_loss"], 50)),
        "exact_match_before": before["exact_match"],
        "exact_match_after": after["exact_match"],
        "exact_match_by_task_after": after["exact_match_by_task"],
        "global_step": trainer.state.global_step,
        "train_samples": len(train_records) - dropped,
        "train_rows": len(train_ds),
        "dropped_too_long": dropped,
        "template": template.name,
        "use_lora": model_args.use_lora,
        "packing": data_args.packing,
    }
    if trainer.is_world_process_zero():
        trainer.save_metrics("test", metrics)
        (Path(training_args.output_dir) / "examples.json").write_text(
            json.dumps(after["examples"], ensure_ascii=False, indent=2))
        plot_curves(trainer.state.log_history, Path(training_args.output_dir) / "curves.png")
    return metrics


if __name__ == "__main__":
    main()
