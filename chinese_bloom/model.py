"""Model loading: a BLOOM / Falcon / GPT-NeoX / LLaMA checkpoint, or the small offline BLOOM.

Only transformers' built-in classes (AutoModelForCausalLM), never trust_remote_code.
  - `--model_name_or_path bigscience/bloom-560m` (or bloomz, bloom-7b1, tiiuae/falcon-7b,
    databricks/dolly-v2-3b, a LLaMA dir, the vocabulary-pruned BLOOM of model_modify, ...)
  - omitted: a 4-layer BLOOM built from SMALL_CONFIG with a tokenizer trained on our data.
"""
import json
import types
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BloomConfig

SUPPORTED = ("bloom", "falcon", "gpt_neox", "llama")
# the offline default: small enough to learn the generated task on 2 CPU cores in minutes
SMALL_CONFIG = dict(hidden_size=128, n_layer=4, n_head=4, hidden_dropout=0.0, attention_dropout=0.0)
TOKENIZER_VOCAB = 800          # the generated task (short templated questions)
USER_DATA_TOKENIZER_VOCAB = 8000  # your own instruction data: real Chinese text needs thousands of tokens


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "BLOOM/Falcon/GPT-NeoX/LLaMA dir or Hub id; omitted = small BLOOM from scratch"})
    template: str = field(default="belle", metadata={"help": "prompt template (dataset.TEMPLATES): belle, alpaca, chatml"})
    use_lora: bool = field(default=False, metadata={"help": "train a LoRA adapter (peft) instead of all weights"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (> 0)"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (> 0)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA input, 0 <= p < 1"})
    lora_target_modules: str = field(default="all-linear", metadata={"help": "comma separated module names, or all-linear"})
    tokenizer_vocab_size: int | None = field(default=None, metadata={"help": "offline default only (no --model_name_or_path): BPE vocabulary trained on the data; default 800 for the generated task, 8000 for your own data"})

    def __post_init__(self):
        from dataset import get_template
        get_template(self.template)
        for name in ("lora_r", "lora_alpha"):
            if getattr(self, name) <= 0:
                raise SystemExit(f"--{name}: must be > 0, got {getattr(self, name)}. Fix: e.g. --lora_r 16 --lora_alpha 32")
        if not 0 <= self.lora_dropout < 1:
            raise SystemExit(f"--lora_dropout: must be in [0, 1), got {self.lora_dropout}. Fix: e.g. --lora_dropout 0.05")
        if self.tokenizer_vocab_size is not None and self.tokenizer_vocab_size < 300:
            raise SystemExit(f"--tokenizer_vocab_size: must be >= 300 (256 bytes + special tokens), got "
                             f"{self.tokenizer_vocab_size}. Fix: e.g. --tokenizer_vocab_size 8000")
        check_model_path(self.model_name_or_path)
        if self.model_name_or_path and Path(self.model_name_or_path).is_dir():
            # absolute, so the adapter_config.json of a LoRA run still finds its base from anywhere
            self.model_name_or_path = str(Path(self.model_name_or_path).resolve())
        if self.use_lora and self.model_name_or_path is None:
            raise SystemExit("--use_lora: LoRA needs a trained base model, and the offline default starts from random "
                             "weights. Fix: train it fully first (python train.py), then pass "
                             "--model_name_or_path outputs/bloom_full --use_lora")


def is_offline_model(model_name_or_path: str | None) -> bool:
    """True for the small BLOOM of SMALL_CONFIG: trained from scratch here (None) or a checkpoint of it."""
    if model_name_or_path is None:
        return True
    config = Path(model_name_or_path) / "config.json"
    if not config.is_file():
        return False
    c = json.loads(config.read_text())
    return c.get("model_type") == "bloom" and all(c.get(k) == v for k, v in SMALL_CONFIG.items() if "dropout" not in k)


def load_tokenizer(model_name_or_path: str | None, texts=None, vocab_size: int = TOKENIZER_VOCAB):
    """The checkpoint's tokenizer, or (offline default) a byte-level BPE trained on `texts`."""
    if model_name_or_path is None:
        from train_tokenizer import train_tokenizer
        return train_tokenizer(texts, vocab_size=vocab_size)
    try:
        tok = AutoTokenizer.from_pretrained(model_name_or_path)
    except OSError as e:
        reason = str(e).splitlines()[0]
        raise SystemExit(f"--model_name_or_path: cannot load a tokenizer from {model_name_or_path!r} ({reason}). "
                         f"Fix: pass a local directory written by save_pretrained, or check the Hub id / network")
    if tok.pad_token is None:  # LLaMA / GPT-NeoX / Falcon ship without one
        tok.pad_token = tok.eos_token
    return tok


def check_model_path(model_name_or_path: str | None) -> None:
    if model_name_or_path is None:
        return
    p = Path(model_name_or_path)
    looks_local = p.is_absolute() or model_name_or_path.startswith(".") or model_name_or_path.count("/") > 1
    if looks_local and not p.exists():
        raise SystemExit(f"--model_name_or_path: {model_name_or_path} does not exist. "
                         f"Fix: pass an existing checkpoint directory or a Hub id like bigscience/bloom-560m")
    if p.is_dir():
        if not (p / "config.json").exists():
            raise SystemExit(f"--model_name_or_path: {p} has no config.json. Fix: pass a directory written by "
                             f"save_pretrained (for a LoRA adapter run merge.py first)")
        check_supported(AutoConfig.from_pretrained(p).model_type)


def check_supported(model_type: str) -> None:
    if model_type not in SUPPORTED:
        raise SystemExit(f"--model_name_or_path: model_type {model_type!r} is not supported here. "
                         f"Fix: use a {'/'.join(SUPPORTED)} checkpoint")


def load_model(model_name_or_path: str | None, tokenizer, dtype=torch.float32, device_map=None):
    """A causal LM whose embedding matches the tokenizer."""
    if model_name_or_path is None:
        config = BloomConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                             **SMALL_CONFIG)
        return AutoModelForCausalLM.from_config(config, dtype=dtype)  # init from train.py's set_seed(--seed)
    model = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=dtype, device_map=device_map)
    check_supported(model.config.model_type)
    n_emb = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > n_emb:
        raise SystemExit(f"--model_name_or_path: the tokenizer has {len(tokenizer)} tokens but the model embedding "
                         f"only {n_emb}. Fix: use the tokenizer saved with this checkpoint")
    return model


# ----------------------------------------------------------------------------- packing support
def _alibi_from_packed_mask(self, attention_mask, num_heads, dtype):
    """BLOOM's build_alibi_tensor, also accepting the 4D block-diagonal mask of SFTCollator(packed=True).

    BLOOM builds ALiBi from a 2D mask and adds the 4D mask to its scores itself, so a 4D mask
    would otherwise crash (`too many values to unpack`). In a block-diagonal causal mask, query row
    j attends exactly to keys start..j of its own sample, so the per-sample position of key j is
    (number of allowed keys in row j) - 1: the ALiBi bias is then exactly the unpacked one.
    """
    if attention_mask.ndim != 4:
        return self._build_alibi_2d(attention_mask, num_heads, dtype)
    from transformers.models.bloom.modeling_bloom import _get_alibi_slopes
    batch, _, q_len, kv_len = attention_mask.shape
    if q_len != kv_len:
        raise ValueError("packed 4D masks are for training/scoring without a cache")
    positions = ((attention_mask[:, 0] == 0).sum(-1) - 1).clamp(min=0)  # (batch, kv_len)
    slopes = _get_alibi_slopes(num_heads, attention_mask.device)
    alibi = slopes[None, :, None] * positions[:, None, :].to(slopes.dtype)  # (batch, heads, kv_len)
    return alibi.reshape(batch * num_heads, 1, kv_len).to(dtype)


def enable_packing(model) -> None:
    """Make `model` accept the packed batches of SFTCollator (4D mask + restarted position_ids)."""
    model_type = model.config.model_type
    if model_type == "bloom":
        bloom = model.get_decoder() if hasattr(model, "get_decoder") else model.transformer
        if not hasattr(bloom, "_build_alibi_2d"):
            bloom._build_alibi_2d = bloom.build_alibi_tensor
            bloom.build_alibi_tensor = types.MethodType(_alibi_from_packed_mask, bloom)
    elif model_type == "falcon" and getattr(model.config, "alibi", False):
        raise SystemExit("--packing: Falcon checkpoints with alibi=True (falcon-rw) cannot take packed batches. "
                         "Fix: pass --packing False")
    elif model_type not in SUPPORTED:
        raise SystemExit(f"--packing: no packing support for model_type {model_type!r}. Fix: pass --packing False")


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
        raise SystemExit(f"--lora_target_modules: {e}. Fix: name linear layers of this model, e.g. "
                         f"query_key_value,dense (BLOOM/Falcon/GPT-NeoX) or q_proj,v_proj (LLaMA), or all-linear")


# ----------------------------------------------------------------------------- generation
@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 32, temperature: float = 0.0,
             top_p: float = 1.0, streamer=None) -> list[str]:
    """Greedy (temperature 0) or sampled continuations of `prompts`, stopping at EOS."""
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    sample = temperature > 0
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=sample,
                         temperature=temperature if sample else None, top_p=top_p if sample else None,
                         top_k=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         streamer=streamer)
    return tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


# ----------------------------------------------------------------------------- inference loading
def load_for_inference(model_dir: str, dtype=torch.float32, device_map=None):
    """(model, tokenizer) from a full checkpoint, a merged one, or a LoRA adapter dir (base + adapter)."""
    path = Path(model_dir)
    if not path.is_dir():
        raise SystemExit(f"--model_dir: {path} does not exist. Fix: train first (bash train.sh) or pass a checkpoint dir")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if (path / "adapter_config.json").exists():
        from peft import PeftModel
        base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, device_map=device_map)
        model = PeftModel.from_pretrained(model, path)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=device_map)
    return model.eval(), tokenizer
