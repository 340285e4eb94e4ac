"""Convert an official RoPE Baichuan checkpoint (Baichuan-7B, Baichuan2-7B) to transformers' LlamaForCausalLM.

Baichuan-7B and Baichuan2-7B are the LLaMA architecture with one fused Linear `W_pack` for q, k, v (rows: q of all
heads; k; v, each hidden_size rows). Baichuan2 adds NormHead: the logits use the L2-normalised rows of lm_head.
So converting = one row split + (Baichuan2) normalising lm_head's rows once; the names stay:

    official name                              LlamaForCausalLM name                      shape (7B)
    model.embed_tokens.weight                  model.embed_tokens.weight                  [vocab, 4096]
    model.layers.N.self_attn.W_pack.weight     model.layers.N.self_attn.{q,k,v}_proj.weight   3 x [4096, 4096]
    model.layers.N.self_attn.rotary_emb.inv_freq   (dropped: Llama computes it, base 10000)
    model.layers.N.self_attn.o_proj / mlp.* / *_layernorm, model.norm.weight   the same
    lm_head.weight                             lm_head.weight  (Baichuan2: rows / ||row||)

The converted model gives the same logits (tests/test_convert.py). One difference: full fine-tuning of a converted
Baichuan2 no longer renormalises the head at every step (LoRA leaves the head frozen: unaffected).
The ALiBi models (13B) are not converted: model.BaichuanForCausalLM loads them as they are.

    python convert.py --src_dir path/to/Baichuan2-7B-Chat --output_dir outputs/baichuan2-7b-llama
"""
import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn import functional as F
from transformers import GenerationConfig, HfArgumentParser, LlamaConfig

from model import variant_defaults
from tokenization import BOS_ID, EOS_ID, MODEL_MAX_LENGTH, PAD_ID, build_tokenizer

HERE = Path(__file__).resolve().parent


@dataclass
class ConvertArguments:
    src_dir: str = field(metadata={"help": "an official Baichuan-7B / Baichuan2-7B(-Chat) directory"})
    output_dir: str = field(default=str(HERE / "outputs/converted"), metadata={"help": "where the LlamaForCausalLM directory is written"})

    def __post_init__(self):
        if not (Path(self.src_dir) / "config.json").is_file():
            raise SystemExit(f"--src_dir: {self.src_dir} has no config.json. Fix: pass an official Baichuan-7B or "
                             f"Baichuan2-7B directory")


def check_official_config(cfg: dict, src) -> None:
    """One clear line for what is not a RoPE Baichuan checkpoint."""
    if cfg.get("model_type") != "baichuan":
        raise SystemExit(f"{src}: model_type {cfg.get('model_type')!r}, not an official Baichuan checkpoint "
                         f"(model_type baichuan). Fix: pass a baichuan-inc Baichuan-7B / Baichuan2-7B directory")
    missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                           "num_attention_heads") if k not in cfg]
    if missing:
        raise SystemExit(f"{src}: config.json lacks Baichuan fields {missing}. Fix: pass an official directory")
    if variant_defaults(cfg)[0] != "ROPE":
        raise SystemExit(f"{src}: an ALiBi Baichuan (13B) checkpoint: it does not convert to Llama. Fix: load it "
                         f"directly (model.load_baichuan returns it as it is; BaichuanForCausalLM)")
    if cfg.get("quantization_config"):
        raise SystemExit(f"{src}: a quantized checkpoint (quantization_config) cannot be converted. Fix: use the "
                         f"full-precision baichuan-inc release")


def llama_config(cfg: dict) -> LlamaConfig:
    """The LlamaConfig of an official RoPE Baichuan config.json (every field set; RoPE base 10000)."""
    length = cfg.get("max_position_embeddings") or cfg.get("model_max_length") or MODEL_MAX_LENGTH
    return LlamaConfig(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_attention_heads"], hidden_act=cfg.get("hidden_act", "silu"),
        max_position_embeddings=length, initializer_range=cfg.get("initializer_range", 0.02),
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-6), use_cache=True, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, attention_bias=False, mlp_bias=False,
        pad_token_id=cfg.get("pad_token_id", PAD_ID), bos_token_id=cfg.get("bos_token_id", BOS_ID),
        eos_token_id=cfg.get("eos_token_id", EOS_ID), dtype=cfg.get("torch_dtype", "float32"),
        architectures=["LlamaForCausalLM"])


def convert_state(sd: dict, norm_head: bool) -> dict:
    """Official names -> LlamaForCausalLM names: W_pack split in thirds; NormHead rows normalised."""
    out = {}
    for name, t in sd.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        m = re.fullmatch(r"(model\.layers\.\d+\.self_attn\.)W_pack\.weight", name)
        if m:
            q, k, v = t.chunk(3, dim=0)
            out |= {m[1] + "q_proj.weight": q, m[1] + "k_proj.weight": k, m[1] + "v_proj.weight": v}
        elif name == "lm_head.weight" and norm_head:
            out[name] = F.normalize(t.float(), dim=-1).to(t.dtype)
        elif re.fullmatch(r"model\.(embed_tokens|norm)\.weight|lm_head\.weight|model\.layers\.\d+\.("
                          r"self_attn\.o_proj|mlp\.(gate|up|down)_proj|input_layernorm|post_attention_layernorm)"
                          r"\.weight", name):
            out[name] = t
        else:
            raise SystemExit(f"unexpected tensor {name} {tuple(t.shape)} in the checkpoint (not a plain Baichuan "
                             f"7B: quantized weights or another model). Fix: use the full-precision baichuan-inc release")
    return out


# Copied from chatglm_v2_6b_lora/model.py:weight_files
def weight_files(src: Path) -> list[Path]:
    """The checkpoint's weight shards, in index order: safetensors preferred, else pytorch .bin."""
    for index, single in (("model.safetensors.index.json", "model.safetensors"),
                          ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if (src / index).is_file():
            files = dict.fromkeys(json.loads((src / index).read_text())["weight_map"].values())
            return [src / f for f in files]
        if (src / single).is_file():
            return [src / single]
    raise SystemExit(f"{src}: no weights (model.safetensors[.index.json] or pytorch_model*.bin[.index.json]). "
                     f"Fix: download the whole checkpoint, not only its config")


# Copied from chatglm_v2_6b_lora/model.py:load_shard
def load_shard(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(path)  # memory-mapped
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) pickles cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True)


def expected_names(config: LlamaConfig) -> set[str]:
    names = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        names |= {p + f"self_attn.{n}_proj.weight" for n in "qkvo"}
        names |= {p + f"mlp.{n}_proj.weight" for n in ("gate", "up", "down")}
        names |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
    return names


def convert_baichuan(src_dir, out_dir) -> str:
    """Official RoPE Baichuan checkpoint -> LlamaForCausalLM directory (config, safetensors shards, tokenizer,
    generation_config). Reads one shard at a time and writes its converted shard before reading the next."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    src, out = Path(src_dir), Path(out_dir)
    if not (src / "config.json").is_file():
        raise SystemExit(f"{src}: no config.json. Fix: pass an official Baichuan-7B / Baichuan2-7B directory")
    cfg = json.loads((src / "config.json").read_text())
    check_official_config(cfg, src)
    if not (src / "tokenizer.model").is_file():
        raise SystemExit(f"{src}: no tokenizer.model. Fix: download the checkpoint's tokenizer.model too")
    tokenizer = build_tokenizer(src / "tokenizer.model", model_max_length=cfg.get("model_max_length", MODEL_MAX_LENGTH))
    if len(tokenizer) > cfg["vocab_size"]:
        raise SystemExit(f"{src}: the tokenizer has {len(tokenizer)} tokens but vocab_size is {cfg['vocab_size']}. "
                         f"Fix: use the tokenizer.model of this checkpoint")
    norm_head = variant_defaults(cfg)[1]
    config = llama_config(cfg)
    files = weight_files(src)
    out.mkdir(parents=True, exist_ok=True)
    names = [f"model-{k + 1:05d}-of-{len(files):05d}.safetensors" for k in range(len(files))] \
        if len(files) > 1 else ["model.safetensors"]
    weight_map, total = {}, 0
    for file, name in zip(tqdm(files, desc=f"converting {src.name}", unit="shard"), names):
        state = convert_state(load_shard(file), norm_head)
        save_file({k: v.contiguous() for k, v in state.items()}, out / name, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(state, name)
        total += sum(v.numel() * v.element_size() for v in state.values())
        del state
    expected = expected_names(config)
    if set(weight_map) != expected:
        raise SystemExit(f"{src}: the weights do not match config.json (missing {sorted(expected - set(weight_map))[:3]}, "
                         f"unexpected {sorted(set(weight_map) - expected)[:3]}). Fix: re-download the checkpoint")
    if len(files) > 1:
        (out / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
    config.save_pretrained(out)
    gen = json.loads((src / "generation_config.json").read_text()) if (src / "generation_config.json").is_file() \
        else {"pad_token_id": PAD_ID, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID}
    GenerationConfig(**{k: v for k, v in gen.items() if k != "transformers_version"}).save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.copyfile(src / "tokenizer.model", out / "tokenizer.model")  # the source of tokenizer.json, for reference
    return str(out)


def main(argv: list[str] | None = None) -> str:
    (args,) = HfArgumentParser(ConvertArguments).parse_args_into_dataclasses(argv)
    out = convert_baichuan(args.src_dir, args.output_dir)
    print(f"converted {args.src_dir} -> {out} (LlamaForCausalLM)")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
