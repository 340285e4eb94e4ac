"""ChatGLM2-6B / ChatGLM3-6B without remote code: convert the official checkpoint to transformers' GlmForCausalLM.

The official checkpoints (THUDM/chatglm2-6b, chatglm3-6b, their 32k variants) ship their model as remote code that
no longer loads under transformers 5. Their architecture is transformers' own `GlmForCausalLM` (model_type "glm"):
pre-RMSNorm decoder, rotary embedding on the first half of each head's dims with interleaved pairs
(partial_rotary_factor 0.5), grouped k/v heads (multi_query_group_num), SwiGLU MLP (gate and up in one Linear),
untied output head. The one structural difference: ChatGLM keeps q, k, v in one fused Linear `query_key_value`
(rows: q of all heads, then k of all groups, then v), GLM in three. So converting = renaming + one row split.

    official name (transformer.)                      GlmForCausalLM name               shape (6B)
    embedding.word_embeddings.weight                  model.embed_tokens.weight         [65024, 4096]
    encoder.layers.N.input_layernorm.weight           model.layers.N.input_layernorm.weight        [4096]
    encoder.layers.N.self_attention.query_key_value   model.layers.N.self_attn.{q,k,v}_proj   [4096|256|256, 4096] + bias
    encoder.layers.N.self_attention.dense.weight      model.layers.N.self_attn.o_proj.weight       [4096, 4096]
    encoder.layers.N.post_attention_layernorm.weight  model.layers.N.post_attention_layernorm.weight [4096]
    encoder.layers.N.mlp.dense_h_to_4h.weight         model.layers.N.mlp.gate_up_proj.weight       [27392, 4096]
    encoder.layers.N.mlp.dense_4h_to_h.weight         model.layers.N.mlp.down_proj.weight          [4096, 13696]
    encoder.final_layernorm.weight                    model.norm.weight                 [4096]
    output_layer.weight                               lm_head.weight                    [65024, 4096]
    rotary_pos_emb.inv_freq                           (dropped: GLM computes it from the config)

Paths: `--model_name_or_path` is an official ChatGLM directory (converted once into data/cache/converted/),
a converted/trained GlmForCausalLM directory, a Hub id (downloaded without its code), or omitted: the offline
default, a tiny ChatGLM2 written in the official format (`write_tiny_official`) and converted like the real one.
"""
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GlmConfig

from tokenization import EOS_ID, PAD_ID, build_tokenizer, check_template, detect_template, prompt_ids, stop_ids

HERE = Path(__file__).resolve().parent
CACHE_DIR = HERE / "data/cache/converted"
# the offline default: a tiny ChatGLM2 (official config names) that learns the generated task on 2 CPU cores
SMALL_CONFIG = dict(hidden_size=128, num_layers=4, num_attention_heads=4, kv_channels=32, multi_query_group_num=2,
                    ffn_hidden_size=320, seq_length=1024)
TOKENIZER_VOCAB = 1000
# what every official ChatGLM2/3 config says; anything else is a different architecture
FIXED = dict(rmsnorm=True, post_layer_norm=True, add_bias_linear=False, apply_residual_connection_post_layernorm=False,
             original_rope=True)
OFFICIAL_AUTO_MAP = {
    "AutoConfig": "configuration_chatglm.ChatGLMConfig",
    "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForSequenceClassification": "modeling_chatglm.ChatGLMForSequenceClassification",
}


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "official ChatGLM2/3 dir or Hub id (THUDM/chatglm2-6b, THUDM/chatglm3-6b), or a converted GlmForCausalLM dir; omitted = tiny ChatGLM2 from scratch"})
    template: str | None = field(default=None, metadata={"help": "prompt template: chatglm2 or chatglm3; default: detected from the tokenizer (chatglm3 if it has role tokens)"})
    use_lora: bool | None = field(default=None, metadata={"help": "train a LoRA adapter (peft) instead of all weights; default: on with --model_name_or_path, off for the offline model (random weights: trained fully)"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (> 0)"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (> 0)"})
    lora_dropout: float = field(default=0.1, metadata={"help": "dropout on the LoRA input, 0 <= p < 1"})
    lora_target_modules: str = field(default="q_proj,k_proj,v_proj", metadata={"help": "comma separated: q_proj,k_proj,v_proj,o_proj,gate_up_proj,down_proj, or all-linear"})
    tokenizer_vocab_size: int | None = field(default=None, metadata={"help": f"offline default only: SentencePiece vocabulary trained on the data (default {TOKENIZER_VOCAB})"})
    cache_dir: str = field(default=str(CACHE_DIR), metadata={"help": "where official checkpoints are converted to (once)"})

    def __post_init__(self):
        if self.template is not None:
            check_template(self.template)
        for name in ("lora_r", "lora_alpha"):
            if getattr(self, name) <= 0:
                raise SystemExit(f"--{name}: must be > 0, got {getattr(self, name)}. Fix: e.g. --lora_r 8 --lora_alpha 32")
        if not 0 <= self.lora_dropout < 1:
            raise SystemExit(f"--lora_dropout: must be in [0, 1), got {self.lora_dropout}. Fix: e.g. --lora_dropout 0.1")
        names = [t.strip() for t in self.lora_target_modules.split(",")]
        known = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"}
        if self.lora_target_modules != "all-linear" and (not all(names) or set(names) - known):
            raise SystemExit(f"--lora_target_modules: unknown {sorted(set(names) - known) or names} "
                             f"(GlmForCausalLM has {', '.join(sorted(known))}). Fix: e.g. --lora_target_modules "
                             f"q_proj,k_proj,v_proj (fused query_key_value adapters: convert them with merge.py)")
        if self.tokenizer_vocab_size is not None:
            if self.model_name_or_path is not None:
                raise SystemExit("--tokenizer_vocab_size: only for the offline default; a checkpoint brings its "
                                 "tokenizer. Fix: drop --tokenizer_vocab_size or --model_name_or_path")
            if self.tokenizer_vocab_size < 300:
                raise SystemExit(f"--tokenizer_vocab_size: must be >= 300 (256 bytes + specials), got "
                                 f"{self.tokenizer_vocab_size}. Fix: e.g. --tokenizer_vocab_size 1000")
        check_model_path(self.model_name_or_path)
        if self.use_lora is None:
            self.use_lora = self.model_name_or_path is not None
        elif self.use_lora and self.model_name_or_path is None:
            raise SystemExit("--use_lora: LoRA needs a trained base, and the offline default starts from random "
                             "weights (a low-rank update cannot train them). Fix: train it fully first (python "
                             "train.py), then pass --model_name_or_path outputs/glm_full --use_lora true")
        if self.model_name_or_path and Path(self.model_name_or_path).is_dir():
            # absolute, so a LoRA adapter_config.json still finds its base from anywhere
            self.model_name_or_path = str(Path(self.model_name_or_path).resolve())


def looks_local(path: str) -> bool:
    return Path(path).is_absolute() or path.startswith(".") or path.count("/") != 1 or Path(path).exists()


def check_model_path(path: str | None) -> None:
    if path is None:
        return
    p = Path(path)
    if looks_local(path) and not p.exists():
        raise SystemExit(f"--model_name_or_path: {path} does not exist. Fix: pass a ChatGLM2/3 checkpoint directory "
                         f"or a Hub id like THUDM/chatglm2-6b")
    if p.is_dir():
        if not (p / "config.json").is_file():
            hint = " (a LoRA adapter: pass its base, or run merge.py)" if (p / "adapter_config.json").exists() else ""
            raise SystemExit(f"--model_name_or_path: {p} has no config.json{hint}. Fix: pass an official ChatGLM2/3 "
                             f"directory or one written by convert_chatglm / save_pretrained")
        model_type = json.loads((p / "config.json").read_text()).get("model_type")
        if model_type not in ("chatglm", "glm"):
            raise SystemExit(f"--model_name_or_path: model_type {model_type!r} in {p}. Fix: pass a ChatGLM2/ChatGLM3 "
                             f"checkpoint (model_type chatglm) or a converted one (model_type glm)")


# ----------------------------------------------------------------------------- the official format
def official_shapes(cfg: dict) -> dict[str, tuple]:
    """Names and shapes of an official ChatGLM2/3 state dict (ChatGLMForConditionalGeneration)."""
    h, heads, groups, hd = cfg["hidden_size"], cfg["num_attention_heads"], cfg["multi_query_group_num"], cfg["kv_channels"]
    if not cfg.get("multi_query_attention", True):
        groups = heads
    vocab, ffn = cfg["padded_vocab_size"], cfg["ffn_hidden_size"]
    shapes = {"transformer.embedding.word_embeddings.weight": (vocab, h),
              "transformer.rotary_pos_emb.inv_freq": (hd // 4,)}
    for i in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (h,),
                   p + "self_attention.query_key_value.weight": ((heads + 2 * groups) * hd, h),
                   p + "self_attention.query_key_value.bias": ((heads + 2 * groups) * hd,),
                   p + "self_attention.dense.weight": (h, heads * hd),
                   p + "post_attention_layernorm.weight": (h,),
                   p + "mlp.dense_h_to_4h.weight": (2 * ffn, h),
                   p + "mlp.dense_4h_to_h.weight": (h, ffn)}
    shapes |= {"transformer.encoder.final_layernorm.weight": (h,), "transformer.output_layer.weight": (vocab, h)}
    return shapes


def official_config(n_tokens: int, template: str = "chatglm2", **small_config) -> dict:
    """A complete official-format config.json (ChatGLMConfig fields) for a tiny model."""
    cfg = dict(_name_or_path=f"tiny-{template}", model_type="chatglm", architectures=["ChatGLMModel"],
               auto_map=OFFICIAL_AUTO_MAP, add_qkv_bias=True, apply_query_key_layer_scaling=True,
               attention_dropout=0.0, attention_softmax_in_fp32=True, bias_dropout_fusion=True,
               fp32_residual_connection=False, hidden_dropout=0.0, layernorm_epsilon=1e-5, multi_query_attention=True,
               padded_vocab_size=-(-n_tokens // 64) * 64, use_cache=True, torch_dtype="float32",
               tie_word_embeddings=False, eos_token_id=EOS_ID, pad_token_id=PAD_ID, **FIXED)
    return cfg | SMALL_CONFIG | small_config


def write_tiny_official(out_dir, tokenizer_model_path, template: str = "chatglm2", seed: int = 0,
                        num_shards: int = 2, std: float = 0.02, **small_config) -> str:
    """A tiny ChatGLM2/3 checkpoint with random weights on disk in the OFFICIAL format: config.json
    (model_type chatglm, auto_map), sharded pytorch_model-*.bin + index, tokenizer.model, tokenizer_config.json."""
    check_template(template)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tokenizer_model_path, out / "tokenizer.model")
    n_tokens = len(build_tokenizer(out / "tokenizer.model", "chatglm3"))  # room for the role tokens either way
    cfg = official_config(n_tokens, template, **small_config)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "name_or_path": cfg["_name_or_path"], "remove_space": False, "do_lower_case": False,
        "tokenizer_class": "ChatGLMTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]},
    }, indent=2))
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in official_shapes(cfg).items():
        if name.endswith("inv_freq"):
            hd = cfg["kv_channels"] // 2
            tensors[name] = 1.0 / (10000 ** (torch.arange(0, hd, 2, dtype=torch.float) / hd))
        elif "layernorm" in name:
            tensors[name] = 1.0 + std * torch.randn(shape, generator=g)
        else:
            tensors[name] = std * torch.randn(shape, generator=g)
    write_bin_shards(tensors, out, num_shards)
    return str(out)


def write_bin_shards(tensors: dict, out: Path, num_shards: int) -> None:
    names = list(tensors)
    per = -(-len(names) // num_shards)
    weight_map = {}
    for k in range(num_shards):
        file = f"pytorch_model-{k + 1:05d}-of-{num_shards:05d}.bin"
        part = {n: tensors[n] for n in names[k * per:(k + 1) * per]}
        torch.save(part, out / file)
        weight_map |= dict.fromkeys(part, file)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (out / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}, indent=2))


# ----------------------------------------------------------------------------- conversion
def is_official_chatglm(path) -> bool:
    config = Path(path) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == "chatglm"


def official_template(src: Path) -> str:
    """chatglm3 if the official tokenizer code (read as text, never run) or the name says so, else chatglm2."""
    code = src / "tokenization_chatglm.py"
    if code.is_file():
        return "chatglm3" if "<|observation|>" in code.read_text(errors="replace") else "chatglm2"
    names = json.dumps([json.loads((src / f).read_text()).get(k) for f in ("config.json", "tokenizer_config.json")
                        if (src / f).is_file() for k in ("_name_or_path", "name_or_path")])
    return "chatglm3" if "chatglm3" in names.lower() else "chatglm2"


def check_official_config(cfg: dict, src) -> None:
    """One clear line for checkpoints that are not ChatGLM2/3 (ChatGLM-6B v1, GLM-4, p-tuning, int4)."""
    if "inner_hidden_size" in cfg or "position_encoding_2d" in cfg:
        raise SystemExit(f"{src}: this is a ChatGLM-6B (v1) checkpoint (config has inner_hidden_size / "
                         f"position_encoding_2d, 2D positions, post-LayerNorm GLM blocks); only ChatGLM2/ChatGLM3 "
                         f"convert to GlmForCausalLM. Fix: use THUDM/chatglm2-6b or THUDM/chatglm3-6b")
    missing = [k for k in ("padded_vocab_size", "num_layers", "kv_channels", "ffn_hidden_size", "multi_query_group_num")
               if k not in cfg]
    if missing:
        raise SystemExit(f"{src}: config.json lacks ChatGLM2/3 fields {missing}. Fix: pass an official "
                         f"THUDM/chatglm2-6b or chatglm3-6b directory")
    wrong = {k: cfg.get(k) for k, v in FIXED.items() if cfg.get(k, v) != v}
    if cfg.get("pre_seq_len"):
        wrong["pre_seq_len"] = cfg["pre_seq_len"]
    if cfg.get("quantization_bit"):
        wrong["quantization_bit"] = cfg["quantization_bit"]
    if wrong:
        raise SystemExit(f"{src}: not a plain ChatGLM2/3 model (config {wrong}; p-tuning prefixes and int4 "
                         f"weights cannot be converted). Fix: use the full-precision THUDM/chatglm2-6b or chatglm3-6b")


def rope_parameters(cfg: dict, template: str = "chatglm2", modeling_code: str | None = None) -> dict:
    """RoPE of the 32k variants, which use `rope_ratio` in two different ways (official modeling_chatglm.py):
    ChatGLM3-6B-32k raises the base (`base = base * rope_ratio`), ChatGLM2-6B-32k interpolates the positions
    (`seq_idx / rope_ratio`: transformers' "linear" RoPE). Without the code, the template decides."""
    ratio = cfg.get("rope_ratio", 1)
    rope = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    if ratio == 1:
        return rope
    linear = "/ self.rope_ratio" in modeling_code if modeling_code else template == "chatglm2"
    return rope | ({"rope_type": "linear", "factor": float(ratio)} if linear else {"rope_theta": 10000.0 * ratio})


def convert_config(cfg: dict, eos_token_id: int | list[int] = EOS_ID, rope: dict | None = None) -> GlmConfig:
    """The GlmConfig of an official config.json. Every field is set: GlmConfig's defaults are GLM-4-9B's."""
    heads = cfg["num_attention_heads"]
    return GlmConfig(
        vocab_size=cfg["padded_vocab_size"], hidden_size=cfg["hidden_size"], intermediate_size=cfg["ffn_hidden_size"],
        num_hidden_layers=cfg["num_layers"], num_attention_heads=heads,
        num_key_value_heads=cfg["multi_query_group_num"] if cfg.get("multi_query_attention", True) else heads,
        head_dim=cfg["kv_channels"], hidden_act="silu", attention_dropout=cfg.get("attention_dropout", 0.0),
        max_position_embeddings=cfg["seq_length"], initializer_range=0.02, rms_norm_eps=cfg["layernorm_epsilon"],
        use_cache=True, tie_word_embeddings=False, attention_bias=cfg.get("add_qkv_bias", True),
        rope_parameters=rope or rope_parameters(cfg),
        pad_token_id=PAD_ID, eos_token_id=eos_token_id, bos_token_id=None, dtype=cfg.get("torch_dtype", "float32"),
        architectures=["GlmForCausalLM"])


def split_qkv(t: torch.Tensor, cfg: dict) -> tuple:
    """Rows of query_key_value -> q, k, v. Multi-query (every released ChatGLM2/3): [q of all heads | k of all
    groups | v of all groups], views. Without it the official code views the rows as (heads, 3, head_dim)."""
    heads, hd = cfg["num_attention_heads"], cfg["kv_channels"]
    if cfg.get("multi_query_attention", True):
        groups = cfg["multi_query_group_num"]
        return t.split([heads * hd, groups * hd, groups * hd], dim=0)
    per_head = t.reshape(heads, 3, hd, *t.shape[1:])
    return tuple(per_head[:, i].reshape(heads * hd, *t.shape[1:]) for i in range(3))


def convert_state(sd: dict, cfg: dict) -> dict:
    """Official names -> GlmForCausalLM names, splitting query_key_value into q/k/v."""
    out = {}
    for name, t in sd.items():
        if name.endswith("rotary_pos_emb.inv_freq"):
            continue
        if name == "transformer.word_embeddings.weight":
            raise SystemExit("found transformer.word_embeddings (the ChatGLM-6B v1 layout); only ChatGLM2/ChatGLM3 "
                             "convert to GlmForCausalLM. Fix: use THUDM/chatglm2-6b or THUDM/chatglm3-6b")
        m = re.fullmatch(r"transformer\.encoder\.layers\.(\d+)\.(.+)", name)
        if m:
            p, rest = f"model.layers.{m[1]}.", m[2]
            if rest.startswith("self_attention.query_key_value."):
                kind = rest.rsplit(".", 1)[1]
                q, k, v = split_qkv(t, cfg)
                out |= {p + f"self_attn.q_proj.{kind}": q, p + f"self_attn.k_proj.{kind}": k, p + f"self_attn.v_proj.{kind}": v}
                continue
            new = LAYER_NAMES.get(rest)
            if new:
                out[p + new] = t
                continue
        elif name in TOP_NAMES:
            out[TOP_NAMES[name]] = t
            continue
        raise SystemExit(f"unexpected tensor {name} {tuple(t.shape)} in the checkpoint (not ChatGLM2/3: p-tuning "
                         f"prefix, int4 weights or another model). Fix: use the full-precision THUDM/chatglm2-6b or chatglm3-6b")
    return out


LAYER_NAMES = {"input_layernorm.weight": "input_layernorm.weight",
               "post_attention_layernorm.weight": "post_attention_layernorm.weight",
               "self_attention.dense.weight": "self_attn.o_proj.weight",
               "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",
               "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight"}
TOP_NAMES = {"transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
             "transformer.encoder.final_layernorm.weight": "model.norm.weight",
             "transformer.output_layer.weight": "lm_head.weight"}


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


def load_shard(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(path)  # memory-mapped
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) pickles cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True)


def convert_chatglm(src_dir, out_dir, template: str | None = None) -> str:
    """Official ChatGLM2/3 checkpoint -> GlmForCausalLM directory (config, safetensors shards, tokenizer,
    generation_config). Reads one shard at a time and writes its converted shard before reading the next."""
    from safetensors.torch import save_file
    from tqdm import tqdm
    from transformers import GenerationConfig

    src, out = Path(src_dir), Path(out_dir)
    cfg = json.loads((src / "config.json").read_text())
    if cfg.get("model_type") != "chatglm":
        raise SystemExit(f"{src}: model_type {cfg.get('model_type')!r}, not an official ChatGLM2/3 checkpoint "
                         f"(model_type chatglm). Fix: pass the THUDM/chatglm2-6b or chatglm3-6b directory")
    check_official_config(cfg, src)
    if not (src / "tokenizer.model").is_file():
        raise SystemExit(f"{src}: no tokenizer.model. Fix: download the checkpoint's tokenizer.model too")
    template = template or official_template(src)
    check_template(template)
    tokenizer = build_tokenizer(src / "tokenizer.model", template)
    if len(tokenizer) > cfg["padded_vocab_size"]:
        raise SystemExit(f"{src}: the tokenizer has {len(tokenizer)} tokens but padded_vocab_size is "
                         f"{cfg['padded_vocab_size']}. Fix: use the tokenizer.model of this checkpoint")
    files = weight_files(src)
    out.mkdir(parents=True, exist_ok=True)
    names = [f"model-{k + 1:05d}-of-{len(files):05d}.safetensors" for k in range(len(files))] \
        if len(files) > 1 else ["model.safetensors"]
    weight_map, total = {}, 0
    for file, name in zip(tqdm(files, desc=f"converting {src.name}", unit="shard"), names):
        state = convert_state(load_shard(file), cfg)
        save_file({k: v.contiguous() for k, v in state.items()}, out / name, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(state, name)
        total += sum(v.numel() * v.element_size() for v in state.values())
        del state
    expected = set(convert_state({n: torch.empty(s, device="meta") for n, s in official_shapes(cfg).items()}, cfg))
    if set(weight_map) != expected:
        raise SystemExit(f"{src}: the weights do not match config.json (missing {sorted(expected - set(weight_map))[:3]}, "
                         f"unexpected {sorted(set(weight_map) - expected)[:3]}). Fix: re-download the checkpoint")
    if len(files) > 1:
        (out / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
    eos = stop_ids(tokenizer, template) if template == "chatglm3" else EOS_ID  # official chat's eos_token_id
    code = src / "modeling_chatglm.py"  # read as text to tell the two 32k RoPEs apart, never run
    rope = rope_parameters(cfg, template, code.read_text(errors="replace") if code.is_file() else None)
    config = convert_config(cfg, eos, rope)
    config.save_pretrained(out)
    GenerationConfig(eos_token_id=config.eos_token_id, pad_token_id=PAD_ID, do_sample=False).save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.copyfile(src / "tokenizer.model", out / "tokenizer.model")  # the source of tokenizer.json, for reference
    return str(out)


def checkpoint_hash(src: Path) -> str:
    """Changes when the config or any weight file changes (name, size, mtime)."""
    h = hashlib.sha256((src / "config.json").read_bytes())
    for f in sorted(src.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def resolve_model_dir(path, cache_dir=None) -> str:
    """A directory GlmForCausalLM loads: an official one is converted once into cache_dir; a converted one is itself;
    a Hub id (e.g. THUDM/chatglm2-6b) is downloaded first, without its code."""
    path, name = str(path), Path(str(path)).resolve().name
    if not Path(path).exists() and not looks_local(path):
        path, name = download(path), path.replace("/", "--")
    src = Path(path)
    if not is_official_chatglm(src):
        check_model_path(path)
        return str(src)
    out = Path(cache_dir or CACHE_DIR) / f"{name}-{checkpoint_hash(src)}"
    if (out / "config.json").is_file():
        print(f"using the converted {src} in {out}")
        return str(out)
    print(f"converting the official ChatGLM checkpoint {src} to GlmForCausalLM (once) -> {out}")
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    convert_chatglm(src, tmp)
    try:
        tmp.rename(out)  # only complete conversions get the final name
    except OSError:  # another process (e.g. a torchrun rank) finished first: use its copy
        if not (out / "config.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def download(repo_id: str) -> str:
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(repo_id, allow_patterns=["*.json", "*.model", "*.safetensors", "*.bin"])
    except Exception as e:  # offline, no such repo, gated
        raise SystemExit(f"--model_name_or_path: cannot download {repo_id} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}). Fix: download it and pass the directory")


# ----------------------------------------------------------------------------- loading
def load_tokenizer(model_dir):
    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise SystemExit(f"--model_name_or_path: cannot load a tokenizer from {model_dir} "
                         f"({str(e).splitlines()[0]}). Fix: pass resolve_model_dir()'s directory")


def load_model(model_dir, dtype=torch.float32, device_map=None):
    """GlmForCausalLM from a converted directory (resolve_model_dir)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, device_map=device_map)
    if model.config.model_type != "glm":
        raise SystemExit(f"--model_name_or_path: {model_dir} holds model_type {model.config.model_type!r}. "
                         f"Fix: pass an official ChatGLM2/3 checkpoint or a directory converted from one")
    return model


# ----------------------------------------------------------------------------- LoRA
def add_lora(model, r: int, alpha: int, dropout: float, target_modules: str, gradient_checkpointing: bool):
    from peft import LoraConfig, get_peft_model

    targets = "all-linear" if target_modules == "all-linear" else [t.strip() for t in target_modules.split(",")]
    config = LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)
    if gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        raise SystemExit(f"--lora_target_modules: {e}. Fix: name GlmForCausalLM linear layers, e.g. "
                         f"q_proj,k_proj,v_proj (add o_proj,gate_up_proj,down_proj for more), or all-linear")


# ----------------------------------------------------------------------------- chat
def as_messages(history) -> list[dict]:
    """OpenAI-style messages; the official ChatGLM2 history [(query, response), ...] is converted."""
    out = []
    for item in history or []:
        if isinstance(item, (tuple, list)) and len(item) == 2:
            out += [{"role": "user", "content": item[0]}, {"role": "assistant", "content": item[1]}]
        else:
            out.append(item)
    return out


def _chat_inputs(model, tokenizer, query, history, template):
    template = template or detect_template(tokenizer)
    messages = [*as_messages(history), {"role": "user", "content": query}]
    ids = torch.tensor([prompt_ids(tokenizer, messages, template)], device=model.device)
    return messages, template, ids


def _generate_kwargs(tokenizer, template, ids, max_new_tokens, do_sample, temperature, top_p, gen):
    sample = do_sample and temperature > 0
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=sample,
                temperature=temperature if sample else None, top_p=top_p if sample else None, top_k=None,
                eos_token_id=stop_ids(tokenizer, template), pad_token_id=tokenizer.pad_token_id, **gen)


@torch.no_grad()
def chat(model, tokenizer, query: str, history: list[dict] | None = None, template: str | None = None,
         max_new_tokens: int = 256, do_sample: bool = False, temperature: float = 0.8, top_p: float = 0.8, **gen):
    """(response, history) like the official model.chat. history: OpenAI-style messages ({"role": "system"|"user"|
    "assistant", "content": str}; the official ChatGLM2 [(query, response)] tuples are accepted too); the returned
    history is messages, ending with this turn."""
    messages, template, ids = _chat_inputs(model, tokenizer, query, history, template)
    out = model.generate(**_generate_kwargs(tokenizer, template, ids, max_new_tokens, do_sample, temperature, top_p, gen))
    response = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
    return response, messages + [{"role": "assistant", "content": response}]


def stream_chat(model, tokenizer, query: str, history: list[dict] | None = None, template: str | None = None,
                max_new_tokens: int = 256, do_sample: bool = False, temperature: float = 0.8, top_p: float = 0.8, **gen):
    """Yields (response_so_far, history) like the official model.stream_chat; the last one equals chat()'s.

    Like the official one, it decodes everything generated so far at each step and skips texts that end in an
    incomplete character ("\ufffd"), so a character split over byte tokens never shows up half."""
    from queue import Queue
    from threading import Thread

    from transformers.generation.streamers import BaseStreamer

    class Ids(BaseStreamer):  # hands generate()'s new token ids to this thread
        def __init__(self):
            self.queue, self.prompt_seen = Queue(), False

        def put(self, value):
            if self.prompt_seen:
                self.queue.put(value.reshape(-1).tolist())
            self.prompt_seen = True

        def end(self):
            self.queue.put(None)

    messages, template, ids = _chat_inputs(model, tokenizer, query, history, template)
    streamer, errors = Ids(), []
    kwargs = _generate_kwargs(tokenizer, template, ids, max_new_tokens, do_sample, temperature, top_p, gen)

    def run():
        try:
            with torch.no_grad():
                model.generate(**kwargs, streamer=streamer)
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)
            streamer.end()

    Thread(target=run, daemon=True).start()
    new, shown = [], None
    while (step := streamer.queue.get()) is not None:
        new += step
        text = tokenizer.decode(new, skip_special_tokens=True).strip()
        if text and not text.endswith("\ufffd") and text != shown:
            shown = text
            yield text, messages + [{"role": "assistant", "content": text}]
    if errors:
        raise errors[0]
    text = tokenizer.decode(new, skip_special_tokens=True).strip()
    if text != shown:  # the end (possibly an incomplete character, or empty), exactly as chat() returns it
        yield text, messages + [{"role": "assistant", "content": text}]
