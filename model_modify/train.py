"""The second stage of vocabulary expansion: train the embeddings and the head of an expanded model, the rest frozen.

    python train.py                                                   # offline default: outputs/expanded_llama (bash train.sh)
    python train.py --model_name_or_path outputs/expanded_llama --use_lora true     # + LoRA, modules_to_save=[embed, head]
    python train.py --model_name_or_path outputs/base_llama --trainable all --output_dir outputs/base_llama_trained
    torchrun --nproc_per_node 8 train.py --model_name_or_path /models/chinese-llama-7b-expanded --bf16 --train_file ...

Like Chinese-LLaMA's first pre-training stage: after expand_vocab.py the new rows are only mean-initialised, so the
embeddings and the head (the whole matrices, tied or untied) learn on Chinese text while every transformer weight
stays frozen; --use_lora true also trains LoRA adapters on the attention and keeps the embeddings and head as
modules_to_save (peft). --trainable all trains everything (bash train.sh uses it to give the tiny random base model
some Chinese before expansion, so that "the expanded model's loss stays close to the original's" means something).
Reports the held-out loss per character (nats, comparable across tokenizers) before and after (test_results.json).
"""
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, HfArgumentParser, Trainer, TrainingArguments,
                          default_data_collator, set_seed)

from dataset import DataArguments, pack_blocks, read_texts
from expand_vocab import nll_per_char

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
class StageArguments:
    model_name_or_path: str = field(default=str(HERE / "outputs/expanded_llama"), metadata={"help": "an expanded model dir (expand_vocab.py)"})
    trainable: str = field(default="embeddings", metadata={"help": "embeddings (embeddings + head, the rest frozen) or all"})
    use_lora: bool = field(default=False, metadata={"help": "LoRA on the attention + modules_to_save=[embeddings, head]"})
    lora_r: int = 8
    lora_alpha: int = 16
    lora_target_modules: str | None = field(default=None, metadata={"help": "comma-separated; default: the attention projections"})

    def __post_init__(self):
        if not (Path(self.model_name_or_path) / "config.json").is_file():
            raise SystemExit(f"--model_name_or_path: {self.model_name_or_path} has no config.json. Fix: run "
                             f"expand_vocab.py first (bash train.sh does), or pass a saved model directory")
        if self.trainable not in ("embeddings", "all"):
            raise SystemExit(f"--trainable: {self.trainable!r} is not embeddings or all. Fix: --trainable embeddings")
        if self.use_lora and self.trainable == "all":
            raise SystemExit("--use_lora: with --trainable all every weight trains already. Fix: drop one of them")
        if self.lora_r <= 0 or self.lora_alpha <= 0:
            raise SystemExit(f"--lora_r: lora_r {self.lora_r} and lora_alpha {self.lora_alpha} must be > 0. Fix: e.g. --lora_r 8")


@dataclass
class ExpandTrainingArguments(TrainingArguments):
    output_dir: str = field(default=str(HERE / "outputs/stage2"))
    num_train_epochs: float = field(default=1)
    max_steps: int = field(default=300)
    per_device_train_batch_size: int = field(default=16)
    per_device_eval_batch_size: int = field(default=16)
    learning_rate: float = field(default=3e-3)
    warmup_steps: float = field(default=20)
    lr_scheduler_type: str = field(default="cosine")
    weight_decay: float = field(default=0.0)
    logging_steps: float = field(default=20)
    eval_strategy: str = field(default="steps")
    eval_steps: float = field(default=100)
    save_strategy: str = field(default="steps")
    save_steps: float = field(default=100)
    save_total_limit: int | None = field(default=2)
    report_to: str | None = field(default="tensorboard")
    dataloader_pin_memory: bool = field(default=torch.cuda.is_available())  # no pin_memory warning on CPU
    ddp_find_unused_parameters: bool | None = field(default=False)  # the frozen weights are not in the optimizer
    seed: int = field(default=42)

    def __post_init__(self):
        check_device_flags(self)
        super().__post_init__()
        if self.learning_rate <= 0:
            raise SystemExit(f"--learning_rate: must be > 0, got {self.learning_rate}. Fix: e.g. --learning_rate 3e-3")
        if self.max_steps == 0 or (self.max_steps < 0 and self.num_train_epochs <= 0):
            raise SystemExit("--max_steps: nothing to train (max_steps 0, or no max_steps and num_train_epochs <= 0). "
                             "Fix: e.g. --max_steps 300")
        self.resume_from_checkpoint = resolve_resume(self.resume_from_checkpoint, self.output_dir)


def embedding_modules(model) -> list[str]:
    """Names of the input embedding and (when untied) the head modules, e.g. ["embed_tokens", "lm_head"]."""
    names = {id(m): n for n, m in model.named_modules()}
    head = model.get_output_embeddings()
    tied = head is None or head.weight is model.get_input_embeddings().weight
    return [names[id(model.get_input_embeddings())]] + ([] if tied else [names[id(head)]])


def freeze_all_but_embeddings(model) -> list[str]:
    """requires_grad only on the embeddings and the head -> the names of the trainable parameters."""
    keep = {id(model.get_input_embeddings().weight)}
    if model.get_output_embeddings() is not None:
        keep.add(id(model.get_output_embeddings().weight))
    for p in model.parameters():
        p.requires_grad = id(p) in keep
    return [n for n, p in model.named_parameters() if p.requires_grad]


def add_lora(model, args: StageArguments):
    from peft import LoraConfig, get_peft_model

    attention = {"llama": "q_proj,k_proj,v_proj,o_proj", "bloom": "query_key_value,dense"}
    targets = args.lora_target_modules or attention.get(model.config.model_type, "q_proj,v_proj")
    config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
                        target_modules=targets.split(","),
                        modules_to_save=[n.split(".")[-1] for n in embedding_modules(model)])
    return get_peft_model(model, config)


def main(argv: list[str] | None = None) -> dict:
    # Arguments: every check runs while parsing, before anything is loaded
    parser = HfArgumentParser((StageArguments, DataArguments, ExpandTrainingArguments))
    stage_args, data_args, training_args = parser.parse_args_into_dataclasses(sys.argv[1:] if argv is None else argv)
    set_seed(training_args.seed)
    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:  # train.sh sets it
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))

    # Model
    tokenizer = AutoTokenizer.from_pretrained(stage_args.model_name_or_path)
    model = AutoModelForCausalLM.from_pretrained(stage_args.model_name_or_path, dtype=torch.float32)
    if stage_args.trainable == "embeddings":
        trainable = freeze_all_but_embeddings(model)
        print(f"trainable: {trainable} ({sum(p.numel() for p in model.parameters() if p.requires_grad):,} of "
              f"{sum(p.numel() for p in model.parameters()):,} parameters)")
    if stage_args.use_lora:
        model = add_lora(model, stage_args)
        model.print_trainable_parameters()

    # Data
    train_texts = read_texts(data_args.train_file, data_args.max_train_samples)
    validation_texts = read_texts(data_args.validation_file, data_args.max_eval_samples, "--validation_file")
    test_texts = read_texts(data_args.test_file, data_args.max_eval_samples, "--test_file")
    train_set = pack_blocks(train_texts, tokenizer, data_args.block_size)
    validation_set = pack_blocks(validation_texts, tokenizer, data_args.block_size)

    # Training
    before = nll_per_char(model, tokenizer, test_texts)
    print(f"held-out loss per character before training: {before:.4f} nats")
    trainer = Trainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=validation_set,
                      processing_class=tokenizer, data_collator=default_data_collator)  # equal-length blocks
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    # Evaluation: validation loss; held-out loss per character (comparable across tokenizers)
    eval_metrics = trainer.evaluate()
    eval_metrics["eval_perplexity"] = math.exp(min(eval_metrics["eval_loss"], 50))
    after = nll_per_char(model, tokenizer, test_texts)
    test_metrics = {"test_nll_per_char_before": round(before, 4), "test_nll_per_char_after": round(after, 4),
                    "test_texts": len(test_texts), "trainable": stage_args.trainable, "use_lora": stage_args.use_lora}
    print(f"held-out loss per character: {before:.4f} -> {after:.4f} nats; validation loss {eval_metrics['eval_loss']:.4f}")

    # Saving (LoRA: merged, so that the output loads with stock AutoModelForCausalLM)
    if stage_args.use_lora:
        trainer.model = trainer.model.merge_and_unload()
    trainer.save_model()
    sp_model = Path(stage_args.model_name_or_path) / "tokenizer.model"  # save_pretrained does not write it
    if sp_model.is_file() and trainer.is_world_process_zero():
        shutil.copy(sp_model, Path(training_args.output_dir) / "tokenizer.model")
    train_metrics = {"train_loss": train_result.training_loss, "global_step": trainer.state.global_step,
                     "first_logged_loss": next((h["loss"] for h in trainer.state.log_history if "loss" in h), None),
                     "train_blocks": len(train_set), "base_model_dir": stage_args.model_name_or_path}
    if trainer.is_world_process_zero():
        trainer.save_metrics("train", train_metrics)
        trainer.save_metrics("eval", eval_metrics)
        trainer.save_metrics("test", test_metrics)
        plot_curves(trainer.state.log_history, Path(training_args.output_dir) / "curves.png")
    # data parallel: every rank waits for rank 0's files, then leaves the process group (see CONVENTIONS.md §8)
    trainer.accelerator.wait_for_everyone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return {**train_metrics, **eval_metrics, **test_metrics}


if __name__ == "__main__":
    main()
