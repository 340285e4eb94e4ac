"""Any AutoModelForCausalLM: a real checkpoint (--model_name_or_path) or a config built from scratch.

From scratch: --model_type (llama by default; also gpt2, bloom, qwen2, ...) or --config_name (a config.json
directory / Hub id), then --config_overrides "num_hidden_layers=8,hidden_size=512". The offline default is
the small llama below, sized for a 2-core CPU.
"""
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, CONFIG_MAPPING

HERE = Path(__file__).resolve().parent
DEFAULT_TOKENIZER = HERE / "data/cache/people_daily/tokenizer"

SMALL_LLAMA = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=True)


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "local dir or Hub id to continue pretraining (e.g. Qwen/Qwen2-0.5B); omit to train from scratch"})
    model_type: str = field(default="llama", metadata={"help": "from scratch: llama, gpt2, bloom, qwen2, ..."})
    config_name: str | None = field(default=None, metadata={"help": "from scratch: config dir / Hub id"})
    config_overrides: str | None = field(default=None, metadata={"help": 'e.g. "num_hidden_layers=2,hidden_size=128"'})
    tokenizer_name_or_path: str | None = field(default=None, metadata={
        "help": "default: the checkpoint's tokenizer, or data/cache/people_daily/tokenizer from scratch"})

    def __post_init__(self):
        for name in ("model_name_or_path", "config_name", "tokenizer_name_or_path"):
            value = getattr(self, name)
            if value and looks_local(value) and not Path(value).exists():
                raise SystemExit(f"--{name}: {value} does not exist. Fix: pass a directory saved with "
                                 "save_pretrained (or a Hub id such as Qwen/Qwen2-0.5B, with network access)")
        if self.model_name_or_path and (self.config_name or self.config_overrides):
            name = "config_name" if self.config_name else "config_overrides"
            raise SystemExit(f"--{name}: only for training from scratch; --model_name_or_path loads its own config. "
                             f"Fix: drop --{name} (or --model_name_or_path)")
        if not self.model_name_or_path and not self.config_name and self.model_type not in CAUSAL_LM_TYPES:
            raise SystemExit(f"--model_type: '{self.model_type}' is not a causal-LM model type. Fix: one of "
                             "llama, gpt2, bloom, qwen2, mistral, ... (or --config_name / --model_name_or_path)")
        if self.tokenizer_name_or_path is None:  # late default
            self.tokenizer_name_or_path = self.model_name_or_path or str(DEFAULT_TOKENIZER)


def looks_local(name: str) -> bool:
    """A path, not a Hub id ('org/name'): absolute, ./ ../ ~, or more than one '/'."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or Path(name).exists()


def _causal_lm_types() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


CAUSAL_LM_TYPES = _causal_lm_types()


def load_tokenizer(args: ModelArguments):
    try:
        return AutoTokenizer.from_pretrained(args.tokenizer_name_or_path)
    except (OSError, ValueError) as e:
        raise SystemExit(f"--tokenizer_name_or_path: cannot load {args.tokenizer_name_or_path} ({e}). Fix: run "
                         "train_tokenizer.py or pass the tokenizer the data was built with.")


def scratch_config(args: ModelArguments, tokenizer):
    """--config_name or --model_type's defaults (SMALL_LLAMA for llama), with --config_overrides applied *before*
    the config is built: values derived in __init__ (e.g. qwen2's layer_types from num_hidden_layers) follow them."""
    if args.config_name:
        base = AutoConfig.from_pretrained(args.config_name).to_dict()
        config_class = CONFIG_MAPPING[base["model_type"]]
    else:
        base, config_class = dict(SMALL_LLAMA if args.model_type == "llama" else {}), CONFIG_MAPPING[args.model_type]
    base.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    overrides = {}
    if args.config_overrides:
        typed = config_class(**base)
        try:
            typed.update_from_string(args.config_overrides)  # parses each value with the attribute's type
        except ValueError as e:
            raise SystemExit(f"--config_overrides: {e}. Fix: 'key=value,key=value' with keys of {config_class.__name__}.")
        overrides = {kv.split("=")[0]: getattr(typed, kv.split("=")[0]) for kv in args.config_overrides.split(",")}
        if "num_hidden_layers" in overrides:
            base.pop("layer_types", None)
    try:
        config = config_class(**{**base, **overrides})
        config.validate()
        heads, kv_heads = getattr(config, "num_attention_heads", None), getattr(config, "num_key_value_heads", None)
        if heads and kv_heads and heads % kv_heads:
            raise ValueError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}")
    except (ValueError, TypeError) as e:
        raise SystemExit(f"--config_overrides: {config_class.__name__} rejects {overrides or 'the defaults'}: "
                         f"{str(e).splitlines()[-1].strip()}. Fix: consistent values (e.g. num_key_value_heads "
                         "dividing num_attention_heads)")
    return config


def build_model(args: ModelArguments, tokenizer):
    if args.model_name_or_path:
        try:
            model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path)
        except (OSError, ValueError) as e:
            raise SystemExit(f"--model_name_or_path: cannot load {args.model_name_or_path} ({e}). "
                             "Fix: pass a local directory saved with save_pretrained, or a Hub id with network access.")
    else:
        model = AutoModelForCausalLM.from_config(scratch_config(args, tokenizer))
    if getattr(model, "loss_type", None) is None:
        # e.g. GPT2LMHeadModel: its loss already falls back to ForCausalLM, but without the name the Trainer
        # counts all labels instead of labels[..., 1:] and scales the loss by (T-1)/T
        model.loss_type = "ForCausalLM"
    n_embed = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_embed:
        raise SystemExit(f"--tokenizer_name_or_path: tokenizer has {len(tokenizer)} tokens but the model embeds only "
                         f"{n_embed}. Fix: use the model's own tokenizer, or train from scratch with this one.")
    return model
