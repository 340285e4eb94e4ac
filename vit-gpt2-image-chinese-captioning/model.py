"""Model + tokenizer + image processor: a ViT encoder and a GPT-2 decoder with cross-attention
(`VisionEncoderDecoderModel`), from real checkpoints or the offline default built from config.

Real:    --encoder_name_or_path google/vit-base-patch16-224 --decoder_name_or_path uer/gpt2-chinese-cluecorpussmall
         (a pretrained ViT + a Chinese GPT-2 whose new cross-attention layers start random), or
         --model_name_or_path <a VisionEncoderDecoderModel dir/Hub id, e.g. the zero_nlp published pair>
Offline: a small ViT + a small GPT-2 from scratch, a one-token-per-Han-character BertTokenizerFast built from the
         train captions (train_tokenizer.py), saved with the model: load_trained(output_dir) reloads all three.

Special tokens, the same everywhere (uer's Chinese GPT-2 convention): a caption is [CLS] c1 c2 ... [SEP];
decoder_start = [CLS], eos = [SEP], pad = [PAD]. They are set on the config BEFORE the model is built and on
generation_config (transformers 5.24: without pad_token_id on the top-level config forward(labels=...) raises an
AttributeError; a decoder_start_token_id set on model.config after building is ignored by generate(), which falls
back to GPT-2's 50256 and fails with "index out of range").
"""
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (AutoConfig, AutoImageProcessor, AutoTokenizer, GPT2Config, GenerationConfig,
                          VisionEncoderDecoderConfig, VisionEncoderDecoderModel, ViTConfig, ViTImageProcessor)

from train_tokenizer import train_tokenizer

EXAMPLE_ENCODER = "google/vit-base-patch16-224"
EXAMPLE_DECODER = "uer/gpt2-chinese-cluecorpussmall"


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "A VisionEncoderDecoderModel dir or Hub id (encoder + decoder + tokenizer + image processor). "
                "Omit for --encoder/--decoder_name_or_path or the offline small model."})
    encoder_name_or_path: str | None = field(default=None, metadata={
        "help": f"A ViT checkpoint, e.g. {EXAMPLE_ENCODER} (its image processor too). Omit = small ViT from config."})
    decoder_name_or_path: str | None = field(default=None, metadata={
        "help": f"A GPT-2 checkpoint with its tokenizer, e.g. {EXAMPLE_DECODER}. Omit = small GPT-2 + char vocab."})
    # offline default only (ignored for the parts loaded from checkpoints)
    image_size: int = field(default=64, metadata={"help": "Input side in pixels (the image processor resizes)."})
    patch_size: int = field(default=16, metadata={"help": "ViT patch side: (image_size / patch_size)^2 patches."})
    encoder_hidden_size: int = 128
    encoder_layers: int = 2
    decoder_hidden_size: int = 128
    decoder_layers: int = 2
    num_attention_heads: int = 4
    max_target_length: int = field(default=32, metadata={"help": "Caption tokens incl. [SEP]; decoder positions."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout of both halves (0: short runs underfit)."})
    vocab_min_freq: int = field(default=1, metadata={"help": "Caption characters seen fewer times become [UNK]."})
    position_init: str = field(default="sincos", metadata={
        "help": "Start of the small ViT's (learned) position embeddings: sincos = a 2-D sine-cosine table (MAE's), "
                "random = ViT's N(0, 0.02). Measured in the README: position/count accuracy of the captions."})

    def __post_init__(self):
        for name in ("image_size", "patch_size", "encoder_hidden_size", "encoder_layers", "decoder_hidden_size",
                     "decoder_layers", "num_attention_heads", "max_target_length", "vocab_min_freq"):
            if getattr(self, name) < 1:
                raise SystemExit(f"--{name}: {getattr(self, name)} must be >= 1. Fix: e.g. the default "
                                 f"{type(self).__dataclass_fields__[name].default}")
        if self.image_size % self.patch_size:
            raise SystemExit(f"--image_size: {self.image_size} is not a multiple of --patch_size {self.patch_size}. "
                             "Fix: e.g. --image_size 64 --patch_size 16")
        for name in ("encoder_hidden_size", "decoder_hidden_size"):
            if getattr(self, name) % self.num_attention_heads:
                raise SystemExit(f"--{name}: {getattr(self, name)} is not a multiple of --num_attention_heads "
                                 f"{self.num_attention_heads}. Fix: e.g. --{name} 128 --num_attention_heads 4")
        if self.position_init not in ("sincos", "random"):
            raise SystemExit(f"--position_init: {self.position_init!r} is not sincos or random. Fix: --position_init sincos")
        if self.position_init == "sincos" and self.encoder_hidden_size % 4:
            raise SystemExit(f"--encoder_hidden_size: {self.encoder_hidden_size} is not a multiple of 4, which the "
                             "sine-cosine table needs. Fix: e.g. 128, or --position_init random")
        if not 0 <= self.dropout < 1:
            raise SystemExit(f"--dropout: {self.dropout} must be in [0, 1). Fix: e.g. 0 or 0.1")
        if self.model_name_or_path and (self.encoder_name_or_path or self.decoder_name_or_path):
            raise SystemExit("--model_name_or_path: given together with --encoder/--decoder_name_or_path. "
                             "Fix: pass either a whole VisionEncoderDecoderModel or its two halves")


def _load(what: str, fn, path: str):
    try:
        return fn(path)
    except (OSError, ValueError) as e:
        raise SystemExit(f"--{what}: cannot load from {path!r} ({type(e).__name__}: {str(e)[:120]}). "
                         "Fix: pass a local checkpoint dir or a reachable Hub id") from None


def load_tokenizer(model_args: ModelArguments, train_texts):
    """The checkpoint's tokenizer (a BertTokenizer for the Chinese GPT-2s), or a char vocab from the train captions."""
    path = model_args.model_name_or_path or model_args.decoder_name_or_path
    if path:
        tok = _load("model_name_or_path" if model_args.model_name_or_path else "decoder_name_or_path",
                    AutoTokenizer.from_pretrained, path)
    else:
        tok = train_tokenizer(train_texts, model_args.vocab_min_freq, model_args.max_target_length)
    missing = [name for name in ("pad_token", "cls_token", "sep_token") if getattr(tok, name) is None]
    if missing:
        raise SystemExit(f"--decoder_name_or_path: its tokenizer has no {', '.join(missing)}. Fix: use a Chinese "
                         f"GPT-2 with a BertTokenizer ([PAD]/[CLS]/[SEP]) such as {EXAMPLE_DECODER}")
    return tok


def load_image_processor(model_args: ModelArguments):
    """The encoder checkpoint's processor (the PIL fallback: torchvision is not installed), or ours at image_size."""
    path = model_args.model_name_or_path or model_args.encoder_name_or_path
    if path:
        return _load("model_name_or_path" if model_args.model_name_or_path else "encoder_name_or_path",
                     AutoImageProcessor.from_pretrained, path)
    return ViTImageProcessor(size={"height": model_args.image_size, "width": model_args.image_size},
                             image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


def special_ids(tokenizer) -> dict:
    return dict(decoder_start_token_id=tokenizer.cls_token_id, bos_token_id=tokenizer.cls_token_id,
                eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id)


def encoder_config(model_args: ModelArguments) -> ViTConfig:
    h = model_args.encoder_hidden_size
    return ViTConfig(image_size=model_args.image_size, patch_size=model_args.patch_size, hidden_size=h,
                     num_hidden_layers=model_args.encoder_layers, num_attention_heads=model_args.num_attention_heads,
                     intermediate_size=4 * h, hidden_dropout_prob=model_args.dropout,
                     attention_probs_dropout_prob=model_args.dropout)


def decoder_config(model_args: ModelArguments, tokenizer) -> GPT2Config:
    return GPT2Config(vocab_size=len(tokenizer), n_positions=model_args.max_target_length + 1,
                      n_embd=model_args.decoder_hidden_size, n_layer=model_args.decoder_layers,
                      n_head=model_args.num_attention_heads, resid_pdrop=model_args.dropout,
                      embd_pdrop=model_args.dropout, attn_pdrop=model_args.dropout,
                      add_cross_attention=True, is_decoder=True, **special_ids(tokenizer))


def small_vit(model_args: ModelArguments):
    """The offline ViT from config; with --position_init sincos its position embeddings start from a 2-D sine-cosine
    table ([CLS] row zero): from N(0, 0.02), a ViT trained from scratch on a few thousand images learns where
    things are slowly (README: the position words of its captions)."""
    from transformers import ViTModel
    from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding
    vit = ViTModel(encoder_config(model_args), add_pooling_layer=False)
    if model_args.position_init == "sincos":
        grid = model_args.image_size // model_args.patch_size
        table = build_2d_sinusoidal_position_embedding(grid, grid, model_args.encoder_hidden_size, cls_token=True)
        with torch.no_grad():
            vit.embeddings.position_embeddings.copy_(table.unsqueeze(0))
    return vit


def set_special_tokens(model, tokenizer, max_target_length: int):
    """Top-level config, decoder config and generation_config all agree on start/eos/pad."""
    ids = special_ids(tokenizer)
    for cfg in (model.config, model.config.decoder):
        for k, v in ids.items():
            setattr(cfg, k, v)
    gen = GenerationConfig(**ids, max_length=max_target_length + 1)
    model.generation_config = gen
    return model


def build_model(model_args: ModelArguments, tokenizer):
    """From a whole checkpoint, from two half checkpoints, or from config (offline); special tokens set first."""
    if model_args.model_name_or_path:
        model = _load("model_name_or_path", VisionEncoderDecoderModel.from_pretrained, model_args.model_name_or_path)
        if len(tokenizer) > model.config.decoder.vocab_size:
            raise SystemExit(f"--model_name_or_path: tokenizer has {len(tokenizer)} tokens, the decoder "
                             f"{model.config.decoder.vocab_size}. Fix: use the tokenizer saved with the checkpoint")
        return set_special_tokens(model, tokenizer, model_args.max_target_length)
    # the two halves: checkpoints, or built from config (the ViT without its pooler: cross-attention reads the
    # last hidden states, a pooler would be parameters without gradients, which DDP refuses)
    from transformers import AutoModel, AutoModelForCausalLM, GPT2LMHeadModel
    encoder = (_load("encoder_name_or_path", lambda p: AutoModel.from_pretrained(p, add_pooling_layer=False),
                     model_args.encoder_name_or_path) if model_args.encoder_name_or_path
               else small_vit(model_args))
    if model_args.decoder_name_or_path:
        def load_decoder(path):
            cfg = AutoConfig.from_pretrained(path)
            cfg.update(dict(is_decoder=True, add_cross_attention=True, **special_ids(tokenizer)))
            return AutoModelForCausalLM.from_pretrained(path, config=cfg)  # new cross-attention layers start random
        decoder = _load("decoder_name_or_path", load_decoder, model_args.decoder_name_or_path)
        if len(tokenizer) > decoder.config.vocab_size:
            raise SystemExit(f"--decoder_name_or_path: tokenizer has {len(tokenizer)} tokens, the decoder "
                             f"{decoder.config.vocab_size}. Fix: use the decoder's own tokenizer")
    else:
        decoder = GPT2LMHeadModel(decoder_config(model_args, tokenizer))
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder.config, decoder.config,
                                                                     **special_ids(tokenizer))
    model = VisionEncoderDecoderModel(config=config, encoder=encoder, decoder=decoder)
    return set_special_tokens(model, tokenizer, model_args.max_target_length)


def load_trained(model_dir):
    """(model, tokenizer, image_processor) from a train.py output dir (safetensors + json only), in eval mode."""
    if not (Path(model_dir) / "config.json").is_file():
        raise SystemExit(f"--model_dir: no config.json in {model_dir}. Fix: run train.sh or pass its --output_dir")
    model = VisionEncoderDecoderModel.from_pretrained(model_dir).eval()
    return model, AutoTokenizer.from_pretrained(model_dir), AutoImageProcessor.from_pretrained(model_dir)


def decode(tokenizer, ids) -> list[str]:
    """Token ids -> captions. BertTokenizer.batch_decode puts a space between Chinese characters: removed."""
    return [t.replace(" ", "") for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]


@torch.no_grad()
def caption_images(images, model, tokenizer, image_processor, batch_size: int = 32, **generate_kwargs) -> list[str]:
    """PIL RGB images -> captions. generate_kwargs: num_beams=4 (beam search), do_sample=True, top_k/top_p/
    temperature (sampling), max_new_tokens."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        pixels = image_processor(images[i:i + batch_size], return_tensors="pt").pixel_values.to(model.device)
        out += decode(tokenizer, model.generate(pixel_values=pixels, **generate_kwargs))
    return out
