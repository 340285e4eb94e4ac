"""Merge a LoRA adapter into its base model and write a full checkpoint (model.safetensors + tokenizer).

    python chinese_bloom/merge.py   # chinese_bloom/outputs/bloom_lora -> chinese_bloom/outputs/bloom_merged
    python merge.py --adapter_dir outputs/bloom_lora --output_dir outputs/bloom_merged
"""
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from model import load_for_inference

HERE = Path(__file__).resolve().parent


@dataclass
class MergeArguments:
    adapter_dir: str = field(default=str(HERE / "outputs/bloom_lora"), metadata={"help": "a LoRA output dir of train.py"})
    output_dir: str = field(default=str(HERE / "outputs/bloom_merged"))


def main(argv: list[str] | None = None) -> str:
    (args,) = HfArgumentParser(MergeArguments).parse_args_into_dataclasses(argv)
    if not (Path(args.adapter_dir) / "adapter_config.json").exists():
        raise SystemExit(f"--adapter_dir: {args.adapter_dir} has no adapter_config.json. "
                         f"Fix: pass the output_dir of a `train.py --use_lora` run")
    model, tokenizer = load_for_inference(args.adapter_dir)
    merged = model.merge_and_unload()
    merged.save_pretrained(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    print(f"merged model written to {args.output_dir}")
    return args.output_dir


if __name__ == "__main__":
    main(sys.argv[1:])
