"""Any AutoModelForCausalLM: a real checkpoint (--model_name_or_path) or a config built from scratch.

From scratch: --model_type (llama by default; also gpt2, bloom, qwen2, ...) or --config_name (a config.json
directory / Hub id), then --config_overrides "num_hidden_layers=8,hidden_size=512". The offline default is
the small llama below, sized for a 2-core CPU.
"""
from dataclasses import dataclass, field

from transformers import AutoConfig, AutoModelForCausalLM, CONFIG_MAPPING

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


def build_model(args: ModelArguments, tokenizer):
    if args.model_name_or_path:
        try:
            model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path)
        except (OSError, ValueError) as e:
            raise SystemExit(f"--model_name_or_path: cannot load {args.model_name_or_path} ({e}). "
                             "Fix: pass a local directory saved with save_pretrained, or a Hub id with network access.")
    else:
        if args.config_name:
            config = AutoConfig.from_pretrained(args.config_name)
        elif args.model_type in CONFIG_MAPPING:
            config = CONFIG_MAPPING[args.model_type](**(SMALL_LLAMA if args.model_type == "llama" else {}))
        else:
            raise SystemExit(f"--model_type: unknown '{args.model_type}'. Fix: one of llama, gpt2, bloom, qwen2, ...")
        config.vocab_size = len(tokenizer)
        if args.config_overrides:
            try:
                config.update_from_string(args.config_overrides)
            except ValueError as e:
                raise SystemExit(f"--config_overrides: {e}. Fix: 'key=value,key=value' with keys of {type(config).__name__}.")
        config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id
        model = AutoModelForCausalLM.from_config(config)
    if getattr(model, "loss_type", None) is None:
        # e.g. GPT2LMHeadModel: its loss already falls back to ForCausalLM, but without the name the Trainer
        # counts all labels instead of labels[..., 1:] and scales the loss by (T-1)/T
        model.loss_type = "ForCausalLM"
    n_embed = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_embed:
        raise SystemExit(f"--tokenizer_name_or_path: tokenizer has {len(tokenizer)} tokens but the model embeds only "
                         f"{n_embed}. Fix: use the model's own tokenizer, or train from scratch with this one.")
    return model
