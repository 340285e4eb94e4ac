"""Merge a LoRA adapter into its base and write a full checkpoint (BaichuanForCausalLM or LlamaForCausalLM).

    python merge.py                                              # outputs/baichuan_lora -> outputs/baichuan_merged
    python merge.py --adapter_dir outputs/baichuan_lora --output_dir outputs/baichuan_merged
    python merge.py --adapter_dir their_w_pack_lora --model_name_or_path baichuan-inc/Baichuan2-7B-Chat

Adapters trained with the official fine-tune.py target the fused `W_pack`. On an ALiBi (13B) base they apply as
they are (same module names). A RoPE (7B) base is converted to LlamaForCausalLM, whose q/k/v are the thirds of
W_pack's rows, so the adapter is converted first (`convert_w_pack_adapter`, written to `<output_dir>/adapter_qkv`):
the LoRA adds B·A to W_pack, so q/k/v each keep the same A and take their third of B's rows.
"""
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

from model import CACHE_DIR, load_baichuan, load_model, load_tokenizer

HERE = Path(__file__).resolve().parent


@dataclass
class MergeArguments:
    adapter_dir: str = field(default=str(HERE / "outputs/baichuan_lora"), metadata={"help": "a LoRA dir: train.py --use_lora, or one of the official fine-tune.py (W_pack)"})
    model_name_or_path: str | None = field(default=None, metadata={"help": "the base (official or saved dir, or Hub id); default: the adapter's base_model_name_or_path"})
    output_dir: str = field(default=str(HERE / "outputs/baichuan_merged"))
    cache_dir: str = field(default=str(CACHE_DIR), metadata={"help": "where an official RoPE base is converted to (once)"})

    def __post_init__(self):
        config = Path(self.adapter_dir) / "adapter_config.json"
        if not config.is_file():
            raise SystemExit(f"--adapter_dir: {self.adapter_dir} has no adapter_config.json. "
                             f"Fix: pass the output_dir of a `train.py --use_lora` run or a peft LoRA directory")
        if self.model_name_or_path is None:
            self.model_name_or_path = json.loads(config.read_text()).get("base_model_name_or_path")
            if not self.model_name_or_path:
                raise SystemExit(f"--model_name_or_path: {config} names no base model. Fix: pass "
                                 f"--model_name_or_path (e.g. baichuan-inc/Baichuan2-13B-Chat or its directory)")


def targets_w_pack(adapter_dir) -> bool:
    targets = json.loads((Path(adapter_dir) / "adapter_config.json").read_text()).get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    return any(t.split(".")[-1] == "W_pack" for t in targets)


# Copied from chatglm_v2_6b_lora/merge.py:load_adapter_weights
def load_adapter_weights(adapter_dir: Path) -> dict:
    if (adapter_dir / "adapter_model.safetensors").is_file():
        from safetensors.torch import load_file
        return load_file(adapter_dir / "adapter_model.safetensors")
    if (adapter_dir / "adapter_model.bin").is_file():
        return torch.load(adapter_dir / "adapter_model.bin", map_location="cpu", weights_only=True)
    raise SystemExit(f"--adapter_dir: {adapter_dir} has no adapter_model.safetensors or adapter_model.bin. "
                     f"Fix: pass the whole adapter directory")


def convert_w_pack_adapter(adapter_dir, out_dir, base_model_name_or_path: str | None = None) -> str:
    """A LoRA adapter on W_pack (+ other modules) -> a standard peft adapter on LlamaForCausalLM's q/k/v_proj."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    src, out = Path(adapter_dir), Path(out_dir)
    cfg = json.loads((src / "adapter_config.json").read_text())
    unsupported = {k: cfg[k] for k in ("modules_to_save", "layers_to_transform", "rank_pattern", "alpha_pattern",
                                       "use_dora", "fan_in_fan_out") if cfg.get(k)}
    if cfg.get("peft_type", "LORA") != "LORA" or cfg.get("bias", "none") != "none" or unsupported:
        raise SystemExit(f"--adapter_dir: {src} is not a plain LoRA adapter ({unsupported or cfg.get('peft_type')}). "
                         f"Fix: retrain it with this folder's train.py --use_lora")
    weights, targets = {}, set()
    for name, t in load_adapter_weights(src).items():
        m = re.fullmatch(r"(.*\.self_attn\.)W_pack\.(lora_[AB])(?:\.default)?\.weight", name)
        if not m:
            weights[name.replace(".default.", ".")] = t
            targets.add(name.split(".lora_")[0].rsplit(".", 1)[-1])
            continue
        parts = t.chunk(3, dim=0) if m[2] == "lora_B" else [t] * 3
        for part, proj in zip(parts, ("q_proj", "k_proj", "v_proj")):
            weights[f"{m[1]}{proj}.{m[2]}.weight"] = part.clone()  # A: one copy each
            targets.add(proj)
    out.mkdir(parents=True, exist_ok=True)
    LoraConfig(task_type="CAUSAL_LM", r=cfg["r"], lora_alpha=cfg["lora_alpha"], lora_dropout=cfg.get("lora_dropout", 0.0),
               use_rslora=cfg.get("use_rslora", False), target_modules=sorted(targets),
               base_model_name_or_path=base_model_name_or_path or cfg.get("base_model_name_or_path")).save_pretrained(out)
    save_file(weights, out / "adapter_model.safetensors", metadata={"format": "pt"})
    return str(out)


def main(argv: list[str] | None = None) -> str:
    from peft import PeftModel

    (args,) = HfArgumentParser(MergeArguments).parse_args_into_dataclasses(argv)
    base_dir = load_baichuan(args.model_name_or_path, args.cache_dir)
    adapter_dir = args.adapter_dir
    model = load_model(base_dir)
    if model.config.model_type == "llama" and targets_w_pack(adapter_dir):
        adapter_dir = convert_w_pack_adapter(adapter_dir, Path(args.output_dir) / "adapter_qkv", base_dir)
        print(f"converted the W_pack adapter to a q/k/v one for the Llama base: {adapter_dir}")
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    merged.save_pretrained(args.output_dir)
    load_tokenizer(base_dir).save_pretrained(args.output_dir)
    print(f"merged model written to {args.output_dir}")
    return args.output_dir


if __name__ == "__main__":
    main(sys.argv[1:])
