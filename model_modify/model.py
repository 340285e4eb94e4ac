"""Models for model_modify: tiny BLOOM / LLaMA built from config (tests, offline default), the real shapes
(bloom-560m, llama-7b) as config dicts, and loading a directory with the stock Auto classes (never remote code).

    build_tiny_model("bloom", vocab_size=3000, tie_word_embeddings=True)   # BloomForCausalLM, random weights
    build_tiny_model("llama", vocab_size=2000, tie_word_embeddings=False)  # LlamaForCausalLM, untied lm_head
    BLOOM_560M / LLAMA_7B                                                  # real shapes (benchmark, meta device)
    load_model_and_tokenizer(path)                                         # AutoModelForCausalLM + AutoTokenizer

    python model_modify/model.py --kind bloom --tokenizer_name_or_path DIR --output_dir DIR   # a tiny model dir
"""
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BloomConfig, HfArgumentParser, LlamaConfig

HERE = Path(__file__).resolve().parent

# bigscience/bloom-560m's config.json (the fields that set the shapes); 559,214,592 parameters (lm_head tied)
BLOOM_560M = dict(model_type="bloom", vocab_size=250880, hidden_size=1024, n_layer=24, n_head=16,
                  tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=3)
# huggyllama/llama-7b's config.json; 6,738,415,616 parameters (lm_head untied)
LLAMA_7B = dict(model_type="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048,
                rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=None)
# tiny dims: a forward pass on 2 CPU cores in milliseconds
TINY = {"bloom": dict(hidden_size=64, n_layer=2, n_head=4),
        "llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=512)}
CONFIGS = {"bloom": BloomConfig, "llama": LlamaConfig}


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "a causal LM directory (config.json, "
                                           "weights, tokenizer files) saved by save_pretrained, e.g. bloom-560m"})
    torch_dtype: str = field(default="float32", metadata={"help": "dtype the model is loaded in: float32, bfloat16, "
                             "float16 (the pruned copy keeps it; the logit check needs float32)"})

    def __post_init__(self):
        if self.model_name_or_path is None:
            raise SystemExit("--model_name_or_path: required. Fix: pass a model directory, e.g. "
                             "--model_name_or_path outputs/tiny_bloom (bash run.sh builds one)")
        path = Path(self.model_name_or_path)
        if not path.is_dir():
            raise SystemExit(f"--model_name_or_path: {path} is not a directory (pruning edits local files; the Hub "
                             f"is not reached). Fix: download/save the model first, then pass its directory")
        if not (path / "config.json").is_file():
            raise SystemExit(f"--model_name_or_path: {path} has no config.json. Fix: pass a directory written by "
                             f"save_pretrained (config.json + model.safetensors + tokenizer files)")
        if self.torch_dtype not in ("float32", "bfloat16", "float16"):
            raise SystemExit(f"--torch_dtype: {self.torch_dtype!r} is not one of float32, bfloat16, float16. "
                             f"Fix: --torch_dtype float32")


def build_tiny_model(kind: str = "bloom", vocab_size: int = 3000, tie_word_embeddings: bool = True, seed: int = 0,
                     **dims):
    """A BloomForCausalLM / LlamaForCausalLM with random weights from config (TINY dims unless given). The
    norm weights are perturbed, so a wrongly copied one would show in the logits."""
    if kind not in CONFIGS:
        raise ValueError(f"kind must be one of {sorted(CONFIGS)}, got {kind!r}")
    config = CONFIGS[kind](**{**TINY[kind], **dims, "vocab_size": vocab_size,
                              "tie_word_embeddings": tie_word_embeddings})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def config_from_dict(shape: dict, **overrides):
    """BloomConfig / LlamaConfig of a shape dict (BLOOM_560M, LLAMA_7B), e.g. fewer layers for a logit check."""
    cfg = {**shape, **overrides}
    return CONFIGS[cfg.pop("model_type")](**cfg)


def count_parameters(model) -> int:
    """Parameters of a model, a tied embedding/head counted once (as model.num_parameters())."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def shape_parameters(shape: dict, vocab_size: int | None = None) -> int:
    """Parameter count of a shape dict at `vocab_size` (default its own), from a meta-device model: no memory."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config_from_dict(shape, **(
            {"vocab_size": vocab_size} if vocab_size else {})))
    return count_parameters(model)


def load_model_and_tokenizer(path, torch_dtype: str = "float32"):
    """Stock AutoModelForCausalLM + AutoTokenizer of a local directory (no remote code)."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, torch_dtype)).eval()
    return model, tokenizer


@dataclass
class TinyModelArguments:
    kind: str = field(default="bloom", metadata={"help": "bloom (BloomForCausalLM) or llama (LlamaForCausalLM)"})
    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "tokenizer directory (copied in)"})
    output_dir: str = field(default=str(HERE / "outputs/tiny_model"), metadata={"help": "the model directory"})
    tie_word_embeddings: bool | None = field(default=None, metadata={"help": "default: bloom tied, llama untied"})
    vocab_size: int | None = field(default=None, metadata={"help": "embedding rows, >= len(tokenizer); default "
                                   "len(tokenizer)"})
    seed: int = field(default=0, metadata={"help": "random init seed"})

    def __post_init__(self):
        if self.kind not in CONFIGS:
            raise SystemExit(f"--kind: {self.kind!r} is not one of {', '.join(CONFIGS)}. Fix: --kind bloom")
        if self.tokenizer_name_or_path is None or not Path(self.tokenizer_name_or_path).is_dir():
            raise SystemExit(f"--tokenizer_name_or_path: {self.tokenizer_name_or_path} is not a directory. Fix: "
                             f"python train_tokenizer.py first, then --tokenizer_name_or_path outputs/tokenizers/bpe")
        if not any((Path(self.tokenizer_name_or_path) / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
            raise SystemExit(f"--tokenizer_name_or_path: {self.tokenizer_name_or_path} has no tokenizer.json or "
                             f"tokenizer.model. Fix: pass the directory train_tokenizer.py wrote, e.g. "
                             f"outputs/tokenizers/bpe")
        if self.vocab_size is not None and self.vocab_size <= 0:
            raise SystemExit(f"--vocab_size: must be > 0, got {self.vocab_size}. Fix: omit it (len(tokenizer))")
        if self.tie_word_embeddings is None:
            self.tie_word_embeddings = self.kind == "bloom"


def save_tiny_model(kind: str, tokenizer_dir, out_dir, tie_word_embeddings: bool = True,
                    vocab_size: int | None = None, seed: int = 0, **dims) -> Path:
    """A tiny random model + the tokenizer's files (tokenizer.model too) in `out_dir`; config and generation_config
    carry the tokenizer's bos/eos/pad ids."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    vocab_size = vocab_size or len(tokenizer)
    if vocab_size < len(tokenizer):
        raise SystemExit(f"--vocab_size: {vocab_size} < the tokenizer's {len(tokenizer)} tokens. Fix: omit it")
    model = build_tiny_model(kind, vocab_size, tie_word_embeddings, seed, **dims)
    for cfg in (model.config, model.generation_config):
        cfg.bos_token_id, cfg.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        cfg.pad_token_id = tokenizer.pad_token_id
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in Path(tokenizer_dir).iterdir():
        if f.is_file() and (f.name.startswith(("tokenizer", "special_tokens", "chat_template")) or f.suffix == ".model"):
            shutil.copy(f, out / f.name)
    model.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> Path:
    (args,) = HfArgumentParser(TinyModelArguments).parse_args_into_dataclasses(argv)
    out = save_tiny_model(args.kind, args.tokenizer_name_or_path, args.output_dir, args.tie_word_embeddings,
                          args.vocab_size, args.seed)
    print(f"{args.kind} ({'tied' if args.tie_word_embeddings else 'untied'} head) -> {out}")
    return out


if __name__ == "__main__":
    main()
