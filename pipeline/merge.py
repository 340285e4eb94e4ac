"""Stage shards of a pipeline checkpoint -> one Hugging Face checkpoint (config + model.safetensors + tokenizer).

    python merge.py --checkpoint outputs/pipeline/checkpoint-200 --output_dir outputs/pipeline/merged

The shard tensors already carry the global LlamaForCausalLM names (model.LlamaStage), so merging is a union of the
shards, checked against the model's own parameter names (nothing missing, nothing twice, nothing unknown).
train.py calls merge() at the end of a run, into its output_dir.
"""
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoTokenizer, HfArgumentParser, LlamaConfig, LlamaForCausalLM


@dataclass
class MergeArguments:
    checkpoint: str = field(metadata={"help": "a complete checkpoint-N directory written by train.py"})
    output_dir: str | None = field(default=None, metadata={"help": "default: <checkpoint>/merged"})

    def __post_init__(self):
        if not (Path(self.checkpoint) / "trainer_state.json").is_file():
            raise SystemExit(f"--checkpoint: {self.checkpoint} is not a complete pipeline checkpoint (no "
                             "trainer_state.json). Fix: pass a checkpoint-N directory of a train.py run")
        if self.output_dir is None:
            self.output_dir = str(Path(self.checkpoint) / "merged")


def read_shards(checkpoint) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(Path(checkpoint).glob("stage-*-of-*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                if name in tensors:
                    raise ValueError(f"{name} is in two stage shards ({path.name} and an earlier one)")
                tensors[name] = f.get_tensor(name)
    return tensors


def merge(checkpoint, output_dir) -> Path:
    """Write output_dir/{config.json, model.safetensors, tokenizer files}; returns output_dir."""
    checkpoint, output_dir = Path(checkpoint), Path(output_dir)
    config = LlamaConfig.from_pretrained(checkpoint)
    tensors = read_shards(checkpoint)
    with torch.device("meta"):
        expected = set(LlamaForCausalLM(config).state_dict())
    if set(tensors) != expected:
        raise ValueError(f"{checkpoint}: shards miss {sorted(expected - set(tensors))[:5]} / have unknown "
                         f"{sorted(set(tensors) - expected)[:5]}")
    model = LlamaForCausalLM(config)
    model.load_state_dict(tensors, strict=True)
    model.save_pretrained(output_dir)
    AutoTokenizer.from_pretrained(checkpoint).save_pretrained(output_dir)
    return output_dir


def main(argv: list[str] | None = None) -> Path:
    (args,) = HfArgumentParser(MergeArguments).parse_args_into_dataclasses(args=argv)
    out = merge(args.checkpoint, args.output_dir)
    print(f"merged {args.checkpoint} -> {out}")
    return out


if __name__ == "__main__":
    main()
