"""Merge a LoRA adapter into its base and write a full GlmForCausalLM checkpoint (safetensors + tokenizer).

    python merge.py                                              # outputs/glm_lora -> outputs/glm_merged
    python merge.py --adapter_dir outputs/glm_lora --output_dir outputs/glm_merged
    python merge.py --adapter_dir their_chatglm2_lora --model_name_or_path THUDM/chatglm2-6b

Adapters trained by the original ChatGLM2/3 repos target the fused `query_key_value` (and maybe `dense`,
`dense_h_to_4h`, `dense_4h_to_h`) of the official model. They are converted first (`convert_fused_adapter`) into a
standard peft adapter on q_proj/k_proj/v_proj (...), written to `<output_dir>/adapter_qkv`, usable on its own:
the fused LoRA adds B·A to the fused weight, whose rows are [q | k | v]; so q/k/v each keep the same A and take
their rows of B: B_q·A, B_k·A, B_v·A are exactly the rows of B·A. The other modules are renamed.
"""
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

from model import CACHE_DIR, load_model, load_tokenizer, resolve_model_dir, split_qkv

HERE = Path(__file__).resolve().parent
FUSED_TARGETS = {"query_key_value": ["q_proj", "k_proj", "v_proj"], "dense": ["o_proj"],
                 "dense_h_to_4h": ["gate_up_proj"], "dense_4h_to_h": ["down_proj"]}


@dataclass
class MergeArguments:
    adapter_dir: str = field(default=str(HERE / "outputs/glm_lora"), metadata={"help": "a LoRA dir: train.py --use_lora, or an original ChatGLM2/3 repo's (fused query_key_value)"})
    model_name_or_path: str | None = field(default=None, metadata={"help": "the base (official or converted dir, or Hub id); default: the adapter's base_model_name_or_path"})
    output_dir: str = field(default=str(HERE / "outputs/glm_merged"))
    cache_dir: str = field(default=str(CACHE_DIR), metadata={"help": "where an official base is converted to (once)"})

    def __post_init__(self):
        config = Path(self.adapter_dir) / "adapter_config.json"
        if not config.is_file():
            raise SystemExit(f"--adapter_dir: {self.adapter_dir} has no adapter_config.json. "
                             f"Fix: pass the output_dir of a `train.py --use_lora` run or a peft LoRA directory")
        if self.model_name_or_path is None:
            self.model_name_or_path = json.loads(config.read_text()).get("base_model_name_or_path")
            if not self.model_name_or_path:
                raise SystemExit(f"--model_name_or_path: {config} names no base model. Fix: pass "
                                 f"--model_name_or_path (e.g. THUDM/chatglm2-6b or its directory)")


def is_fused_adapter(adapter_dir) -> bool:
    """True for adapters on the official model's modules (query_key_value, dense, ...)."""
    targets = json.loads((Path(adapter_dir) / "adapter_config.json").read_text()).get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    return any(t.split(".")[-1] in FUSED_TARGETS for t in targets)


def load_adapter_weights(adapter_dir: Path) -> dict:
    if (adapter_dir / "adapter_model.safetensors").is_file():
        from safetensors.torch import load_file
        return load_file(adapter_dir / "adapter_model.safetensors")
    if (adapter_dir / "adapter_model.bin").is_file():
        return torch.load(adapter_dir / "adapter_model.bin", map_location="cpu", weights_only=True)
    raise SystemExit(f"--adapter_dir: {adapter_dir} has no adapter_model.safetensors or adapter_model.bin. "
                     f"Fix: pass the whole adapter directory")


def _dims(config) -> dict:
    """The fields split_qkv needs, from an official config dict or a GlmConfig."""
    if isinstance(config, dict):
        return config
    mqa = config.num_key_value_heads != config.num_attention_heads
    return {"num_attention_heads": config.num_attention_heads, "kv_channels": config.head_dim,
            "multi_query_attention": mqa, "multi_query_group_num": config.num_key_value_heads}


def convert_fused_adapter(adapter_dir, out_dir, config, base_model_name_or_path: str | None = None) -> str:
    """A LoRA adapter on the official fused modules -> a standard peft adapter on GlmForCausalLM's modules."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    src, out = Path(adapter_dir), Path(out_dir)
    cfg = json.loads((src / "adapter_config.json").read_text())
    unsupported = {k: cfg[k] for k in ("enable_lora", "modules_to_save", "layers_to_transform", "rank_pattern",
                                       "alpha_pattern", "use_dora", "fan_in_fan_out") if cfg.get(k)}
    if cfg.get("bias", "none") != "none":
        unsupported["bias"] = cfg["bias"]
    if cfg.get("peft_type", "LORA") != "LORA" or unsupported:
        raise SystemExit(f"--adapter_dir: {src} is not a plain LoRA adapter ({unsupported or cfg.get('peft_type')}): "
                         f"only r/alpha LoRA on query_key_value, dense, dense_h_to_4h, dense_4h_to_h converts. "
                         f"Fix: retrain it with this folder's train.py --use_lora")
    qkv_cfg = _dims(config)
    weights, targets = {}, set()
    for name, t in load_adapter_weights(src).items():
        m = re.fullmatch(r"(?:base_model\.model\.)?transformer\.encoder\.layers\.(\d+)\."
                         r"(self_attention|mlp)\.(\w+)\.(lora_[AB])(?:\.default)?\.weight", name)
        if not m or m[3] not in FUSED_TARGETS:
            raise SystemExit(f"--adapter_dir: unexpected tensor {name} in {src}. Fix: pass a LoRA adapter of "
                             f"ChatGLM2/3 (modules query_key_value, dense, dense_h_to_4h, dense_4h_to_h)")
        layer, block, module, ab = m[1], m[2], m[3], m[4]
        new = FUSED_TARGETS[module]
        parts = split_qkv(t, qkv_cfg) if module == "query_key_value" and ab == "lora_B" else [t] * len(new)
        for part, name_new in zip(parts, new):
            where = "self_attn" if block == "self_attention" else "mlp"
            weights[f"base_model.model.model.layers.{layer}.{where}.{name_new}.{ab}.weight"] = part.clone()  # A: one copy each
            targets.add(name_new)
    out.mkdir(parents=True, exist_ok=True)
    LoraConfig(task_type="CAUSAL_LM", r=cfg["r"], lora_alpha=cfg["lora_alpha"], lora_dropout=cfg.get("lora_dropout", 0.0),
               use_rslora=cfg.get("use_rslora", False), target_modules=sorted(targets),
               base_model_name_or_path=base_model_name_or_path or cfg.get("base_model_name_or_path")).save_pretrained(out)
    save_file(weights, out / "adapter_model.safetensors", metadata={"format": "pt"})
    return str(out)


def main(argv: list[str] | None = None) -> str:
    from peft import PeftModel

    (args,) = HfArgumentParser(MergeArguments).parse_args_into_dataclasses(argv)
    base_dir = resolve_model_dir(args.model_name_or_path, args.cache_dir)
    adapter_dir = args.adapter_dir
    model = load_model(base_dir)
    if is_fused_adapter(adapter_dir):
        adapter_dir = convert_fused_adapter(adapter_dir, Path(args.output_dir) / "adapter_qkv", model.config, base_dir)
        print(f"converted the fused query_key_value adapter to a q/k/v one: {adapter_dir}")
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    merged.save_pretrained(args.output_dir)
    load_tokenizer(base_dir).save_pretrained(args.output_dir)
    print(f"merged model written to {args.output_dir}")
    return args.output_dir


if __name__ == "__main__":
    main(sys.argv[1:])
