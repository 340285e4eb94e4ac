"""Baichuan / Baichuan2 without remote code: the ALiBi models defined here, the RoPE models as LlamaForCausalLM.

    variant         position  head      what runs here
    baichuan-7b     RoPE      Linear    converted once to transformers' LlamaForCausalLM (convert.py)
    baichuan2-7b    RoPE      NormHead  converted to LlamaForCausalLM, lm_head stored with L2-normalised rows
    baichuan-13b    ALiBi     Linear    BaichuanForCausalLM below, official checkpoint loaded as it is
    baichuan2-13b   ALiBi     NormHead  BaichuanForCausalLM below (norm_head=True)

BaichuanForCausalLM is LLaMA (transformers' LlamaRMSNorm, LlamaMLP, the LlamaDecoderLayer forward) with two
differences, written here: attention has one fused `W_pack` Linear (rows: q; k; v) and no rotary embedding but an
ALiBi bias -slope_h * (i - j) added to the causal mask (standard slopes, the non-power-of-two rule included), and
Baichuan2's NormHead (the logits use L2-normalised rows of lm_head.weight; normalised in the forward pass, the
stored weights are never changed, so save -> load gives the same logits). The state-dict names are the official
ones (model.embed_tokens, model.layers.N.self_attn.W_pack, ...), so official 13B checkpoints load directly.

Packed sequences: pass `position_ids` restarting at 0 for each sample (and attention_mask=None), and the mask is
block-diagonal (transformers' create_causal_mask detects the packing), or pass your own 4D mask (batch, 1, q, kv),
bool (True = attend) or additive float. The ALiBi distance i - j of two tokens of one sample equals the difference
of their position_ids (samples are contiguous), and tokens of different samples are masked: so each sample sees
exactly what it sees alone.

Paths: `--model_name_or_path` is an official Baichuan/Baichuan2 directory (RoPE ones converted once into
data/cache/converted/), a directory saved by this folder (BaichuanForCausalLM or LlamaForCausalLM), a Hub id
(baichuan-inc/Baichuan2-13B-Chat, downloaded without its code), or omitted: the offline default, a tiny
Baichuan2-13B-style model (ALiBi + NormHead) written in the official format (`write_tiny_official`).
"""
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from torch.nn import functional as F
from transformers import (AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedConfig, PreTrainedModel,
                          PreTrainedTokenizerFast)
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import (LlamaDecoderLayer, LlamaMLP, LlamaRMSNorm,
                                                      eager_attention_forward)
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from tokenization import (ASSISTANT_ID, BOS_ID, EOS_ID, MODEL_MAX_LENGTH, PAD_ID, USER_ID, build_tokenizer, prompt_ids,
                          stop_ids)

HERE = Path(__file__).resolve().parent
CACHE_DIR = HERE / "data/cache/converted"
VARIANTS = ("baichuan-7b", "baichuan-13b", "baichuan2-7b", "baichuan2-13b")
BAICHUAN2_VOCAB = 125696  # Baichuan2's tokenizer; Baichuan's has 64000 pieces
# the offline default: a tiny Baichuan2-13B-style model (official config names) that learns the task on 2 CPU cores
SMALL_CONFIG = dict(hidden_size=128, intermediate_size=320, num_hidden_layers=4, num_attention_heads=4,
                    model_max_length=1024)
TOKENIZER_VOCAB = 1000


# ----------------------------------------------------------------------------- the ALiBi model
def variant_defaults(cfg: dict) -> tuple[str, bool]:
    """(position_embedding, norm_head) of a config dict: explicit fields first, else as the official releases:
    7B (hidden_size 4096) RoPE, 13B (hidden_size 5120) ALiBi; NormHead = Baichuan2 (its 125,696-piece vocab or its
    z_loss_weight field)."""
    position = cfg.get("position_embedding") or ("ALIBI" if cfg.get("hidden_size", 5120) >= 5120 else "ROPE")
    norm_head = cfg.get("norm_head")
    if norm_head is None:
        norm_head = cfg.get("vocab_size") == BAICHUAN2_VOCAB or "z_loss_weight" in cfg
    return position.upper(), bool(norm_head)


@strict
class BaichuanConfig(PreTrainedConfig):
    """The official Baichuan/Baichuan2 config fields + `position_embedding` ("ALIBI"/"ROPE") and `norm_head`.
    Built in code, they default to Baichuan2-13B's (ALiBi + NormHead), like every other field. Read from an
    official config.json (it has `auto_map`, and lacks both fields) they follow variant_defaults: by size and
    vocabulary, as the releases. `max_position_embeddings` (Baichuan-7B's name) is an alias of model_max_length.
    Unknown fields are kept and ignored; `auto_map` (remote code) and the official `gradient_checkpointing`
    (Baichuan2 stores the truthy tuple (False,)) are dropped."""
    model_type = "baichuan"
    attribute_map = {"max_position_embeddings": "model_max_length"}
    vocab_size: int = BAICHUAN2_VOCAB
    hidden_size: int = 5120
    intermediate_size: int = 13696
    num_hidden_layers: int = 40
    num_attention_heads: int = 40
    hidden_act: str = "silu"
    model_max_length: int = MODEL_MAX_LENGTH
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = PAD_ID
    bos_token_id: int | None = BOS_ID
    eos_token_id: int | list[int] | None = EOS_ID
    tie_word_embeddings: bool = False
    position_embedding: str | None = None
    norm_head: bool | None = None
    z_loss_weight: float | int = 0.0
    mlp_bias: bool = False  # LlamaMLP reads it; Baichuan has no biases
    attention_dropout: float = 0.0

    def __post_init__(self, **kwargs):
        official = kwargs.pop("auto_map", None) is not None
        kwargs.pop("gradient_checkpointing", None)
        if official:
            self.position_embedding, self.norm_head = variant_defaults(
                {"position_embedding": self.position_embedding, "norm_head": self.norm_head,
                 "hidden_size": self.hidden_size, "vocab_size": self.vocab_size, **kwargs})
        self.position_embedding = (self.position_embedding or "ALIBI").upper()
        self.norm_head = True if self.norm_head is None else bool(self.norm_head)
        self.head_dim = self.hidden_size // self.num_attention_heads
        self.num_key_value_heads = self.num_attention_heads
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                             f"{self.num_attention_heads}")
        if self.position_embedding not in ("ALIBI", "ROPE"):
            raise ValueError(f"position_embedding must be ALIBI or ROPE, got {self.position_embedding!r}")


def alibi_slopes(n_heads: int) -> list[float]:
    """ALiBi's head slopes (Press et al.): 2^(-8/n)^(h+1) for n a power of two; otherwise those of the largest
    power of two below n, then every other slope of twice that."""
    def power_of_2(n):
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]
    if math.log2(n_heads).is_integer():
        return power_of_2(n_heads)
    closest = 2 ** math.floor(math.log2(n_heads))
    return power_of_2(closest) + alibi_slopes(2 * closest)[0::2][:n_heads - closest]


def alibi_bias(slopes: torch.Tensor, q_start: int, q_len: int, kv_len: int) -> torch.Tensor:
    """-slope_h * (i - j) for query i (absolute index q_start..q_start+q_len-1) and key j: (heads, q_len, kv_len)."""
    i = torch.arange(q_start, q_start + q_len, device=slopes.device)[:, None]
    j = torch.arange(kv_len, device=slopes.device)[None, :]
    return -slopes[:, None, None] * (i - j).to(slopes.dtype)


def alibi_mask(mask, slopes: torch.Tensor, q_start: int, q_len: int, dtype) -> torch.Tensor:
    """The causal/padding/packing mask of create_causal_mask (bool: True = attend, or additive float) + ALiBi:
    one additive float mask (batch, heads, q, kv) shared by all layers."""
    if mask.stride(0) == 0:  # the same for every row (no padding): keep it (1, heads, q, kv), broadcast by SDPA
        mask = mask[:1]
    bias = alibi_bias(slopes.float(), q_start, q_len, mask.shape[-1])[None]
    lowest = torch.finfo(dtype).min
    if mask.dtype == torch.bool:
        return bias.masked_fill(~mask, lowest).to(dtype)
    return (bias + mask.float()).clamp_min(lowest).to(dtype)


class BaichuanAttention(nn.Module):
    """Multi-head attention with the fused W_pack (q; k; v) and no rotary embedding (ALiBi is in the mask)."""

    def __init__(self, config: BaichuanConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.num_key_value_groups = 1
        self.scaling = self.head_dim ** -0.5
        self.is_causal = True
        self.W_pack = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(self, hidden_states, attention_mask=None, cache: Cache | None = None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        qkv = self.W_pack(hidden_states).view(*input_shape, 3, -1, self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(-3))  # (batch, heads, seq, head_dim)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        kwargs.pop("position_embeddings", None)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, weights = attention(self, q, k, v, attention_mask, scaling=self.scaling,
                                 dropout=self.config.attention_dropout if self.training else 0.0, **kwargs)
        return self.o_proj(out.reshape(*input_shape, -1).contiguous()), weights


class BaichuanDecoderLayer(LlamaDecoderLayer):
    """LlamaDecoderLayer (pre-RMSNorm, residuals, SwiGLU MLP, its forward) with BaichuanAttention."""

    def __init__(self, config: BaichuanConfig, layer_idx: int):
        nn.Module.__init__(self)
        self.hidden_size = config.hidden_size
        self.self_attn = BaichuanAttention(config, layer_idx)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)


class NormHead(nn.Linear):
    """Baichuan2's output head: logits = h @ normalize(W)^T, computed as (h @ W^T) / ||W_row|| (same values, no
    normalised copy of the [vocab, hidden] weight). The stored weight is never changed. The row norms are recomputed
    on every call (vocab x hidden, small next to the matmul): optimizers update the weight in place without always
    bumping its version counter, so a cache keyed on it served stale norms after training."""

    def __init__(self, hidden_size: int, vocab_size: int):
        super().__init__(hidden_size, vocab_size, bias=False)

    def forward(self, hidden_states):
        norms = torch.linalg.vector_norm(self.weight, dim=-1, dtype=torch.float32).clamp_min(1e-12)
        logits = F.linear(hidden_states, self.weight)
        return (logits.float() / norms).to(logits.dtype)


class BaichuanPreTrainedModel(PreTrainedModel):
    config: BaichuanConfig
    config_class = BaichuanConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BaichuanDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = False  # ALiBi is an additive bias: SDPA or eager
    _supports_flex_attn = False
    _supports_attention_backend = False
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.inv_freq", r"decoder\.version"]
    _can_record_outputs = {"hidden_states": BaichuanDecoderLayer, "attentions": BaichuanAttention}


class BaichuanModel(BaichuanPreTrainedModel):
    def __init__(self, config: BaichuanConfig):
        super().__init__(config)
        if config.position_embedding != "ALIBI":
            raise ValueError("BaichuanModel is the ALiBi model; RoPE Baichuan checkpoints convert to "
                             "LlamaForCausalLM (convert.py / load_baichuan)")
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(BaichuanDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.slopes = alibi_slopes(config.num_attention_heads)  # a list, not a buffer: from_pretrained builds on meta
        self.gradient_checkpointing = False
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @merge_with_config_defaults
    @capture_outputs
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache: Cache | None = None,
                inputs_embeds=None, use_cache: bool | None = None, **kwargs) -> BaseModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past = cache.get_seq_length() if cache is not None else 0
        q_len = inputs_embeds.shape[1]
        if position_ids is None:
            position_ids = (torch.arange(q_len, device=inputs_embeds.device) + past).unsqueeze(0)
        # an empty DynamicCache changes nothing in the mask but would hide packed position_ids from it
        empty = past == 0 and type(cache) is DynamicCache
        mask = create_causal_mask(config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  cache=None if empty else cache, position_ids=position_ids, allow_is_causal_skip=False)
        slopes = torch.tensor(self.slopes, device=inputs_embeds.device)
        mask = alibi_mask(mask, slopes, past, q_len, inputs_embeds.dtype)
        hidden_states = inputs_embeds
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask=mask, position_ids=position_ids, cache=cache,
                                  use_cache=use_cache, **kwargs)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states), cache=cache)


class BaichuanForCausalLM(BaichuanPreTrainedModel, GenerationMixin):
    def __init__(self, config: BaichuanConfig):
        super().__init__(config)
        self.model = BaichuanModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = (NormHead(config.hidden_size, config.vocab_size) if config.norm_head
                        else nn.Linear(config.hidden_size, config.vocab_size, bias=False))
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache: Cache | None = None,
                inputs_embeds=None, labels=None, use_cache: bool | None = None, logits_to_keep: int = 0,
                **kwargs) -> CausalLMOutputWithPast:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                         inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
            if self.config.z_loss_weight:  # Baichuan2's z-loss (0 in the releases): mean max-logit^2, every position
                loss = loss + self.config.z_loss_weight * logits[:, :-1].float().amax(-1).pow(2).mean()
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache, hidden_states=out.hidden_states,
                                      attentions=out.attentions)


AutoConfig.register("baichuan", BaichuanConfig, exist_ok=True)
AutoModelForCausalLM.register(BaichuanConfig, BaichuanForCausalLM, exist_ok=True)


# ----------------------------------------------------------------------------- arguments
@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "official Baichuan/Baichuan2 dir or Hub id (baichuan-inc/Baichuan2-13B-Chat, baichuan-inc/Baichuan2-7B-Chat, ...), or a dir saved by this folder; omitted = tiny Baichuan2-13B-style model (ALiBi + NormHead) from scratch"})
    use_lora: bool | None = field(default=None, metadata={"help": "train a LoRA adapter (peft) instead of all weights; default: on with --model_name_or_path, off for the offline model (random weights: trained fully)"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (> 0)"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (> 0)"})
    lora_dropout: float = field(default=0.1, metadata={"help": "dropout on the LoRA input, 0 <= p < 1"})
    lora_target_modules: str = field(default="auto", metadata={"help": "comma separated Linear names, or auto (W_pack for the ALiBi model, q_proj,k_proj,v_proj for a converted Llama one), or all-linear; o_proj,gate_proj,up_proj,down_proj optional"})
    tokenizer_vocab_size: int | None = field(default=None, metadata={"help": f"offline default only: SentencePiece vocabulary trained on the data (default {TOKENIZER_VOCAB})"})
    cache_dir: str = field(default=str(CACHE_DIR), metadata={"help": "where official RoPE checkpoints (7B) are converted to LlamaForCausalLM (once)"})

    def __post_init__(self):
        for name in ("lora_r", "lora_alpha"):
            if getattr(self, name) <= 0:
                raise SystemExit(f"--{name}: must be > 0, got {getattr(self, name)}. Fix: e.g. --lora_r 8 --lora_alpha 32")
        if not 0 <= self.lora_dropout < 1:
            raise SystemExit(f"--lora_dropout: must be in [0, 1), got {self.lora_dropout}. Fix: e.g. --lora_dropout 0.1")
        names = [t.strip() for t in self.lora_target_modules.split(",")]
        known = set(LORA_TARGETS["baichuan"]) | set(LORA_TARGETS["llama"])
        if self.lora_target_modules not in ("auto", "all-linear") and (not all(names) or set(names) - known):
            raise SystemExit(f"--lora_target_modules: unknown {sorted(set(names) - known) or names} (Linear layers: "
                             f"W_pack or q_proj,k_proj,v_proj, and o_proj,gate_proj,up_proj,down_proj). Fix: e.g. "
                             f"--lora_target_modules auto")
        if self.tokenizer_vocab_size is not None:
            from train_tokenizer import check_vocab_size
            if self.model_name_or_path is not None:
                raise SystemExit("--tokenizer_vocab_size: only for the offline default; a checkpoint brings its "
                                 "tokenizer. Fix: drop --tokenizer_vocab_size or --model_name_or_path")
            check_vocab_size(self.tokenizer_vocab_size, "--tokenizer_vocab_size")
        check_model_path(self.model_name_or_path)
        if self.use_lora is None:
            self.use_lora = self.model_name_or_path is not None
        elif self.use_lora and self.model_name_or_path is None:
            raise SystemExit("--use_lora: LoRA needs a trained base, and the offline default starts from random "
                             "weights (a low-rank update cannot train them). Fix: train it fully first (python "
                             "train.py), then pass --model_name_or_path outputs/baichuan_full --use_lora true")
        if self.model_name_or_path and Path(self.model_name_or_path).is_dir():
            # absolute, so a LoRA adapter_config.json still finds its base from anywhere
            self.model_name_or_path = str(Path(self.model_name_or_path).resolve())


LORA_TARGETS = {"baichuan": ["W_pack", "o_proj", "gate_proj", "up_proj", "down_proj"],
                "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}


# Copied from chatglm_v2_6b_lora/model.py:looks_local
def looks_local(path: str) -> bool:
    return Path(path).is_absolute() or path.startswith(".") or path.count("/") != 1 or Path(path).exists()


def check_model_path(path: str | None) -> None:
    if path is None:
        return
    p = Path(path)
    if looks_local(path) and not p.exists():
        raise SystemExit(f"--model_name_or_path: {path} does not exist. Fix: pass a Baichuan/Baichuan2 checkpoint "
                         f"directory or a Hub id like baichuan-inc/Baichuan2-13B-Chat")
    if p.is_dir():
        if not (p / "config.json").is_file():
            hint = " (a LoRA adapter: pass its base, or run merge.py)" if (p / "adapter_config.json").exists() else ""
            raise SystemExit(f"--model_name_or_path: {p} has no config.json{hint}. Fix: pass an official "
                             f"Baichuan/Baichuan2 directory or one written by this folder (save_pretrained)")
        model_type = json.loads((p / "config.json").read_text()).get("model_type")
        if model_type not in ("baichuan", "llama"):
            raise SystemExit(f"--model_name_or_path: model_type {model_type!r} in {p}. Fix: pass a Baichuan/"
                             f"Baichuan2 checkpoint (model_type baichuan) or one converted to Llama (model_type llama)")


# ----------------------------------------------------------------------------- the official format
def official_config(variant: str, vocab_size: int, **small_config) -> dict:
    """A complete official-format config.json for `variant` (the released config's fields, the released sizes unless
    small_config overrides them) + this folder's explicit position_embedding / norm_head (ignored by the official
    code; real checkpoints lack them and get them from their size, variant_defaults)."""
    check_variant(variant)
    v2, big = variant.startswith("baichuan2"), variant.endswith("13b")
    cls = "BaiChuan" if variant == "baichuan-7b" else "Baichuan"
    cfg = dict(architectures=[f"{cls}ForCausalLM"],
               auto_map={"AutoConfig": f"configuration_baichuan.{cls}Config",
                         "AutoModelForCausalLM": f"modeling_baichuan.{cls}ForCausalLM"},
               tokenizer_class="BaichuanTokenizer", bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
               hidden_act="silu", hidden_size=5120 if big else 4096, initializer_range=0.02,
               intermediate_size=13696 if big else 11008, model_type="baichuan",
               num_attention_heads=40 if big else 32, num_hidden_layers=40 if big else 32, rms_norm_eps=1e-6,
               tie_word_embeddings=False, torch_dtype="float32", transformers_version="4.29.2", use_cache=True,
               vocab_size=vocab_size, gradient_checkpointing=False)
    length = small_config.pop("model_max_length", MODEL_MAX_LENGTH)
    if not big:  # the 7B releases: max_position_embeddings (Baichuan2-7B also model_max_length); 13B: model_max_length
        cfg["max_position_embeddings"] = length
    if big or v2:
        cfg["model_max_length"] = length
    if v2:
        cfg["z_loss_weight"] = 0
    cfg |= small_config
    cfg |= dict(position_embedding="ALIBI" if big else "ROPE", norm_head=v2)
    return cfg


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise SystemExit(f"--variant: unknown {variant!r}. Fix: one of {', '.join(VARIANTS)}")


def official_shapes(cfg: dict) -> dict[str, tuple]:
    """Names and shapes of an official Baichuan/Baichuan2 state dict (any variant)."""
    h, ffn, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    rope = variant_defaults(cfg)[0] == "ROPE"
    shapes = {"model.embed_tokens.weight": (vocab, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {p + "self_attn.W_pack.weight": (3 * h, h), p + "self_attn.o_proj.weight": (h, h),
                   p + "mlp.gate_proj.weight": (ffn, h), p + "mlp.down_proj.weight": (h, ffn),
                   p + "mlp.up_proj.weight": (ffn, h), p + "input_layernorm.weight": (h,),
                   p + "post_attention_layernorm.weight": (h,)}
        if rope and not cfg.get("norm_head", False) and "z_loss_weight" not in cfg:
            shapes[p + "self_attn.rotary_emb.inv_freq"] = (h // cfg["num_attention_heads"] // 2,)  # Baichuan-7B
    return shapes | {"model.norm.weight": (h,), "lm_head.weight": (vocab, h)}


def write_tiny_official(out_dir, variant: str, tokenizer_model_path, seed: int = 0, num_shards: int = 2,
                        std: float = 0.02, **small_config) -> str:
    """A tiny Baichuan/Baichuan2 checkpoint with random weights on disk in the OFFICIAL format: config.json
    (model_type baichuan, auto_map), sharded pytorch_model-*.bin + index, tokenizer.model, tokenizer_config.json,
    generation_config.json (Baichuan2: user/assistant token ids, as Baichuan2-Chat's). Dims: SMALL_CONFIG,
    overridden by small_config (official names)."""
    from train_tokenizer import chat_generation_config

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tokenizer_model_path, out / "tokenizer.model")
    n_tokens = len(build_tokenizer(out / "tokenizer.model"))
    cfg = official_config(variant, n_tokens, **(SMALL_CONFIG | small_config))
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    special = {"__type": "AddedToken", "lstrip": False, "normalized": True, "rstrip": False, "single_word": True}
    (out / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": False, "add_eos_token": False,
        "auto_map": {"AutoTokenizer": ["tokenization_baichuan.BaichuanTokenizer", None]},
        "bos_token": special | {"content": "<s>"}, "eos_token": special | {"content": "</s>"},
        "pad_token": special | {"content": "<unk>"}, "unk_token": special | {"content": "<unk>"},
        "clean_up_tokenization_spaces": False, "model_max_length": cfg.get("model_max_length", MODEL_MAX_LENGTH),
        "sp_model_kwargs": {}, "tokenizer_class": "BaichuanTokenizer"}, indent=2))
    gen = chat_generation_config() if variant.startswith("baichuan2") else \
        {"pad_token_id": PAD_ID, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID}
    (out / "generation_config.json").write_text(json.dumps(gen | {"max_new_tokens": 2048}, indent=2))
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in official_shapes(cfg).items():
        if name.endswith("inv_freq"):
            hd = 2 * shape[0]
            tensors[name] = 1.0 / (10000 ** (torch.arange(0, hd, 2, dtype=torch.float) / hd))
        elif "norm" in name:
            tensors[name] = 1.0 + std * torch.randn(shape, generator=g)
        else:
            tensors[name] = std * torch.randn(shape, generator=g)
    write_bin_shards(tensors, out, num_shards)
    return str(out)


# Copied from chatglm_v2_6b_lora/model.py:write_bin_shards
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


# ----------------------------------------------------------------------------- resolving a path
def is_official_baichuan(path) -> bool:
    """An official checkpoint (model_type baichuan, as released), not one saved by this folder."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    cfg = json.loads(config.read_text())
    return cfg.get("model_type") == "baichuan" and "auto_map" in cfg


def needs_conversion(path) -> bool:
    cfg = json.loads((Path(path) / "config.json").read_text())
    return cfg.get("model_type") == "baichuan" and variant_defaults(cfg)[0] == "ROPE"


# Copied from chatglm_v2_6b_lora/model.py:checkpoint_hash
def checkpoint_hash(src: Path) -> str:
    """Changes when the config or any weight file changes (name, size, mtime)."""
    h = hashlib.sha256((src / "config.json").read_bytes())
    for f in sorted(src.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def load_baichuan(path, cache_dir=None) -> str:
    """The directory to load: an official RoPE (7B) checkpoint is converted once into cache_dir and that
    LlamaForCausalLM directory returned; an official ALiBi (13B) one, or a directory saved by this folder, is
    returned as it is (BaichuanForCausalLM / LlamaForCausalLM load it); a Hub id is downloaded first, without code."""
    path, name = str(path), Path(str(path)).resolve().name
    if not Path(path).exists() and not looks_local(path):
        path, name = download(path), path.replace("/", "--")
    check_model_path(path)
    src = Path(path)
    if not needs_conversion(src):
        return str(src)
    from convert import convert_baichuan
    out = Path(cache_dir or CACHE_DIR) / f"{name}-{checkpoint_hash(src)}"
    if (out / "config.json").is_file():
        print(f"using the converted {src} in {out}")
        return str(out)
    print(f"converting the official RoPE Baichuan checkpoint {src} to LlamaForCausalLM (once) -> {out}")
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    convert_baichuan(src, tmp)
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
    """The fast tokenizer of a directory: its tokenizer.json, or built from the official tokenizer.model."""
    path = Path(model_dir)
    config = path / "tokenizer_config.json"
    official = config.is_file() and json.loads(config.read_text()).get("tokenizer_class") == "BaichuanTokenizer"
    if (path / "tokenizer.json").is_file() and not official:
        return PreTrainedTokenizerFast.from_pretrained(path)
    if (path / "tokenizer.model").is_file():
        length = json.loads(config.read_text()).get("model_max_length", MODEL_MAX_LENGTH) if config.is_file() \
            else MODEL_MAX_LENGTH
        return build_tokenizer(path / "tokenizer.model", model_max_length=min(length, 1 << 30))
    raise SystemExit(f"--model_name_or_path: {path} has no tokenizer.json or tokenizer.model. Fix: pass the "
                     f"directory load_baichuan() returns")


def load_model(model_dir, dtype=torch.float32, device_map=None):
    """BaichuanForCausalLM (ALiBi) or LlamaForCausalLM (converted RoPE) from load_baichuan()'s directory. The
    official auto_map is never used (trust_remote_code=False); Baichuan2-Chat's user/assistant ids stay in
    model.generation_config (and are saved with it)."""
    if needs_conversion(model_dir):
        raise SystemExit(f"--model_name_or_path: {model_dir} is an official RoPE Baichuan (7B) checkpoint. Fix: "
                         f"load the directory load_baichuan() returns (converted to LlamaForCausalLM)")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, device_map=device_map,
                                                 trust_remote_code=False)
    if model.config.model_type not in ("baichuan", "llama"):
        raise SystemExit(f"--model_name_or_path: {model_dir} holds model_type {model.config.model_type!r}. "
                         f"Fix: pass a Baichuan/Baichuan2 checkpoint or a directory converted from one")
    return model


# ----------------------------------------------------------------------------- LoRA
def lora_targets(model, target_modules: str):
    """auto: W_pack (ALiBi model) or q_proj,k_proj,v_proj (converted Llama), as the official fine-tune.py's W_pack."""
    if target_modules == "all-linear":
        return "all-linear"
    if target_modules == "auto":
        return ["W_pack"] if model.config.model_type == "baichuan" else ["q_proj", "k_proj", "v_proj"]
    return [t.strip() for t in target_modules.split(",")]


def add_lora(model, r: int, alpha: int, dropout: float, target_modules: str, gradient_checkpointing: bool):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=lora_targets(model, target_modules))
    if gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        kind = model.config.model_type
        raise SystemExit(f"--lora_target_modules: {e}. Fix: name {kind} Linear layers: "
                         f"{','.join(LORA_TARGETS['baichuan' if kind == 'baichuan' else 'llama'])}, auto or all-linear")


# ----------------------------------------------------------------------------- chat
# Copied from chatglm_v2_6b_lora/model.py:as_messages
def as_messages(history) -> list[dict]:
    """OpenAI-style messages; the official ChatGLM2 history [(query, response), ...] is converted."""
    out = []
    for item in history or []:
        if isinstance(item, (tuple, list)) and len(item) == 2:
            out += [{"role": "user", "content": item[0]}, {"role": "assistant", "content": item[1]}]
        else:
            out.append(item)
    return out


def model_chat_ids(model) -> tuple[int, int]:
    """(user_token_id, assistant_token_id) of the model's generation_config; Baichuan2-Chat's if it has none."""
    gen = model.generation_config
    user, assistant = getattr(gen, "user_token_id", None), getattr(gen, "assistant_token_id", None)
    return (user, assistant) if isinstance(user, int) and isinstance(assistant, int) else (USER_ID, ASSISTANT_ID)


def _chat_inputs(model, tokenizer, query, history, max_new_tokens):
    user, assistant = model_chat_ids(model)
    messages = [*as_messages(history), {"role": "user", "content": query}]
    length = getattr(model.config, "model_max_length", None) or model.config.max_position_embeddings
    ids = prompt_ids(tokenizer, messages, user, assistant, max_new_tokens=max_new_tokens, model_max_length=length)
    return messages, torch.tensor([ids], device=model.device)


def _generate_kwargs(tokenizer, ids, max_new_tokens, do_sample, temperature, top_p, gen):
    sample = do_sample and temperature > 0
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=sample,
                temperature=temperature if sample else None, top_p=top_p if sample else None, top_k=None,
                eos_token_id=stop_ids(tokenizer), pad_token_id=tokenizer.pad_token_id, **gen)


@torch.no_grad()
def chat(model, tokenizer, query: str, history: list[dict] | None = None, max_new_tokens: int = 256,
         do_sample: bool = False, temperature: float = 0.3, top_p: float = 0.85, **gen):
    """(response, history) like the official model.chat (its prompt: tokenization.prompt_ids). history: OpenAI-style
    messages ({"role": "system"|"user"|"assistant", "content": str}; [(query, response)] tuples are accepted too);
    the returned history is messages, ending with this turn."""
    messages, ids = _chat_inputs(model, tokenizer, query, history, max_new_tokens)
    out = model.generate(**_generate_kwargs(tokenizer, ids, max_new_tokens, do_sample, temperature, top_p, gen))
    response = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    return response, messages + [{"role": "assistant", "content": response}]


def stream_chat(model, tokenizer, query: str, history: list[dict] | None = None, max_new_tokens: int = 256,
                do_sample: bool = False, temperature: float = 0.3, top_p: float = 0.85, **gen):
    """Yields (response_so_far, history); the last one equals chat()'s.

    It decodes everything generated so far at each step and skips texts that end in an incomplete character
    ("\ufffd"), so a character split over byte tokens never shows up half."""
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

    messages, ids = _chat_inputs(model, tokenizer, query, history, max_new_tokens)
    streamer, errors = Ids(), []
    kwargs = _generate_kwargs(tokenizer, ids, max_new_tokens, do_sample, temperature, top_p, gen)

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
        text = tokenizer.decode(new, skip_special_tokens=True)
        if text and not text.endswith("\ufffd") and text != shown:
            shown = text
            yield text, messages + [{"role": "assistant", "content": text}]
    if errors:
        raise errors[0]
    text = tokenizer.decode(new, skip_special_tokens=True)
    if text != shown:  # the end (possibly an incomplete character, or empty), exactly as chat() returns it
        yield text, messages + [{"role": "assistant", "content": text}]
