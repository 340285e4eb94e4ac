"""Model + processor: a Chinese-CLIP (or any vision + Chinese text dual encoder) checkpoint, or the offline
default built from config.

Real:    --model_name_or_path OFA-Sys/chinese-clip-vit-base-patch16 (or -large-patch14, -huge-patch14, a local dir):
         ChineseCLIPModel + ChineseCLIPProcessor (BERT tokenizer + image processor) from the checkpoint.
         --model_type dual_encoder --vision_model_name_or_path google/vit-base-patch16-224
         --text_model_name_or_path hfl/chinese-roberta-wwm-ext: a VisionTextDualEncoderModel pairing any vision
         encoder with any Chinese text encoder (new projections + logit scale), VisionTextDualEncoderProcessor.
Offline: a small ChineseCLIPModel (tiny ViT + tiny BERT) from scratch, char vocabulary from the train captions
         (train_tokenizer.py); --model_type dual_encoder builds a tiny ViT + tiny BERT VisionTextDualEncoderModel.
Both save with save_pretrained; load_trained(dir) reads any of them back (AutoModel + AutoProcessor).

Image processors: torchvision is not installed here, so transformers uses the PIL backends
(ChineseCLIPImageProcessorPil / CLIPImageProcessorPil / ViTImageProcessorPil; loading a checkpoint whose
preprocessor_config.json names the torchvision one falls back to the PIL one with a warning). In transformers 5
get_text_features / get_image_features return an output object: the embedding is its `pooler_output`.
"""
import math
import warnings
from dataclasses import dataclass, field

import torch
from transformers import (AutoModel, AutoProcessor, BertConfig, ChineseCLIPConfig, ChineseCLIPImageProcessorPil,
                          ChineseCLIPModel, ChineseCLIPProcessor, ChineseCLIPTextConfig, ChineseCLIPVisionConfig,
                          ViTConfig, VisionTextDualEncoderConfig, VisionTextDualEncoderModel,
                          VisionTextDualEncoderProcessor)
from transformers.utils import is_torchvision_available

from train_tokenizer import train_tokenizer

MODEL_TYPES = ("chinese_clip", "dual_encoder")
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps the learned temperature: logits are at most 100 x cosine


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "Hub id or dir of a ChineseCLIPModel / VisionTextDualEncoderModel checkpoint (e.g. "
                "OFA-Sys/chinese-clip-vit-base-patch16). Omit for the offline small model."})
    model_type: str = field(default="chinese_clip", metadata={
        "help": "Offline / from parts: chinese_clip (ChineseCLIPModel) or dual_encoder (VisionTextDualEncoderModel)."})
    vision_model_name_or_path: str | None = field(default=None, metadata={
        "help": "dual_encoder: a pretrained vision encoder (ViT, CLIP vision, ...). Omit for a tiny ViT."})
    text_model_name_or_path: str | None = field(default=None, metadata={
        "help": "dual_encoder: a pretrained Chinese text encoder (BERT family) and its tokenizer. Omit for a tiny "
                "BERT with the char vocabulary."})
    # offline default only (ignored for pretrained towers)
    image_size: int = field(default=64, metadata={"help": "Input side in pixels (the processor resizes to it)."})
    patch_size: int = field(default=16, metadata={
        "help": "ViT patch side; (image_size / patch_size)^2 patches (16 = a 4 x 4 grid: 4x faster than 8 on CPU)."})
    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 512
    projection_dim: int = 128
    logit_scale_init_value: float = field(default=math.log(1 / 0.07), metadata={
        "help": "Initial log of the inverse temperature (CLIP: ln(1/0.07) = 2.659)."})
    vocab_min_freq: int = field(default=1, metadata={"help": "Caption characters seen fewer times become [UNK]."})
    # training
    freeze_vision: bool = field(default=False, metadata={
        "help": "Keep the vision tower fixed (its projection still trains): e.g. a pretrained image encoder."})
    freeze_text: bool = field(default=False, metadata={"help": "Keep the text tower fixed (its projection trains)."})

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise SystemExit(f"--model_type: unknown {self.model_type!r}. Fix: one of {', '.join(MODEL_TYPES)}")
        for name in ("image_size", "patch_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "projection_dim", "vocab_min_freq"):
            if getattr(self, name) < 1:
                raise SystemExit(f"--{name}: {getattr(self, name)} must be >= 1. Fix: e.g. the default "
                                 f"{type(self).__dataclass_fields__[name].default}")
        if self.hidden_size % self.num_attention_heads:
            raise SystemExit(f"--hidden_size: {self.hidden_size} is not a multiple of --num_attention_heads "
                             f"{self.num_attention_heads}. Fix: e.g. --hidden_size 128 --num_attention_heads 4")
        if self.image_size % self.patch_size:
            raise SystemExit(f"--patch_size: {self.patch_size} does not divide --image_size {self.image_size}. "
                             "Fix: e.g. --image_size 64 --patch_size 16")
        if not 0 <= self.logit_scale_init_value <= MAX_LOGIT_SCALE:
            raise SystemExit(f"--logit_scale_init_value: {self.logit_scale_init_value} not in [0, ln 100 = "
                             f"{MAX_LOGIT_SCALE:.3f}]. Fix: e.g. 2.659 (= ln(1/0.07), CLIP's)")
        if self.freeze_vision and self.freeze_text:
            raise SystemExit("--freeze_vision/--freeze_text: both towers frozen leaves only the projections. "
                             "Fix: freeze at most one")
        parts = self.vision_model_name_or_path or self.text_model_name_or_path
        if parts and self.model_name_or_path:
            raise SystemExit("--vision_model_name_or_path/--text_model_name_or_path: build a new dual encoder from "
                             "parts, or load --model_name_or_path, not both. Fix: drop one")
        if parts and self.model_type != "dual_encoder":
            raise SystemExit("--vision_model_name_or_path/--text_model_name_or_path: only for --model_type "
                             "dual_encoder. Fix: add --model_type dual_encoder")


def image_processor_for(size: int) -> ChineseCLIPImageProcessorPil:
    """The Chinese-CLIP preprocessing (bicubic resize, centre crop, CLIP mean/std) at `size` pixels, PIL backend."""
    return ChineseCLIPImageProcessorPil(size={"height": size, "width": size}, crop_size={"height": size, "width": size},
                                        do_center_crop=False)


def small_configs(args: ModelArguments, vocab_size: int, max_length: int):
    common = dict(hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers,
                  num_attention_heads=args.num_attention_heads, intermediate_size=args.intermediate_size)
    text = dict(vocab_size=vocab_size, max_position_embeddings=max(max_length, 8), hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, **common)
    vision = dict(image_size=args.image_size, patch_size=args.patch_size, num_channels=3, **common)
    return text, vision


def build_model(args: ModelArguments, train_texts, max_length: int):
    """-> (model, processor). A checkpoint (--model_name_or_path), a dual encoder from parts, or a small model."""
    if args.model_name_or_path:
        model, processor = load_trained(args.model_name_or_path)
    elif args.model_type == "dual_encoder" and (args.vision_model_name_or_path or args.text_model_name_or_path):
        model, processor = dual_encoder_from_parts(args, train_texts, max_length)
    else:
        tokenizer = train_tokenizer(train_texts, args.vocab_min_freq, max_length)
        text, vision = small_configs(args, len(tokenizer), max_length)
        if args.model_type == "chinese_clip":
            config = ChineseCLIPConfig(text_config=ChineseCLIPTextConfig(**text).to_dict(),
                                       vision_config=ChineseCLIPVisionConfig(**vision).to_dict(),
                                       projection_dim=args.projection_dim,
                                       logit_scale_init_value=args.logit_scale_init_value)
            model = ChineseCLIPModel(config)
            processor = ChineseCLIPProcessor(image_processor=image_processor_for(args.image_size), tokenizer=tokenizer)
        else:
            config = VisionTextDualEncoderConfig.from_vision_text_configs(
                ViTConfig(**vision), BertConfig(**text), projection_dim=args.projection_dim,
                logit_scale_init_value=args.logit_scale_init_value)
            model = VisionTextDualEncoderModel(config=config)
            processor = VisionTextDualEncoderProcessor(image_processor=image_processor_for(args.image_size),
                                                       tokenizer=tokenizer)
    freeze_towers(model, args.freeze_vision, args.freeze_text)
    return model, processor


def dual_encoder_from_parts(args: ModelArguments, train_texts, max_length: int):
    """VisionTextDualEncoderModel from a pretrained vision and/or text encoder (a missing one: tiny, from config)."""
    from transformers import AutoImageProcessor, AutoTokenizer
    text_cfg, vision_cfg = None, None
    if args.text_model_name_or_path:
        tokenizer = AutoTokenizer.from_pretrained(args.text_model_name_or_path)
        text_model = AutoModel.from_pretrained(args.text_model_name_or_path)
    else:
        tokenizer = train_tokenizer(train_texts, args.vocab_min_freq, max_length)
        text_cfg, _ = small_configs(args, len(tokenizer), max_length)
        text_model = AutoModel.from_config(BertConfig(**text_cfg))
    if args.vision_model_name_or_path:
        image_processor = AutoImageProcessor.from_pretrained(args.vision_model_name_or_path)
        vision_model = AutoModel.from_pretrained(args.vision_model_name_or_path)
        if hasattr(vision_model, "vision_model"):  # a whole CLIP checkpoint: its vision tower
            vision_model = vision_model.vision_model
    else:
        _, vision_cfg = small_configs(args, 1, max_length)
        vision_model = AutoModel.from_config(ViTConfig(**vision_cfg))
        image_processor = image_processor_for(args.image_size)
    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        vision_model.config, text_model.config, projection_dim=args.projection_dim,
        logit_scale_init_value=args.logit_scale_init_value)
    model = VisionTextDualEncoderModel(config=config, vision_model=vision_model, text_model=text_model)
    return model, VisionTextDualEncoderProcessor(image_processor=image_processor, tokenizer=tokenizer)


def load_trained(path: str):
    """-> (model, processor) from a save_pretrained directory or Hub id (ChineseCLIP or VisionTextDualEncoder).

    Without torchvision, AutoProcessor picks the PIL image processor; we say so once (transformers may warn too)."""
    model = AutoModel.from_pretrained(path)
    if not isinstance(model, (ChineseCLIPModel, VisionTextDualEncoderModel)):
        raise SystemExit(f"--model_name_or_path: {path} is a {type(model).__name__}, not a ChineseCLIPModel or "
                         "VisionTextDualEncoderModel. Fix: e.g. OFA-Sys/chinese-clip-vit-base-patch16, or "
                         "--model_type dual_encoder --vision_model_name_or_path ... --text_model_name_or_path ...")
    processor = AutoProcessor.from_pretrained(path)
    if not is_torchvision_available() and not type(processor.image_processor).__name__.endswith("Pil"):
        warnings.warn(f"{type(processor.image_processor).__name__} without torchvision")
    return model, processor


def freeze_towers(model, vision: bool, text: bool) -> None:
    """Freeze a tower's encoder; the projections and the logit scale always train."""
    for flag, tower in ((vision, model.vision_model), (text, model.text_model)):
        if flag:
            for p in tower.parameters():
                p.requires_grad_(False)


def _pooled(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5: an output object


def encode_images(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """L2-normalised image embeddings (batch, projection_dim)."""
    emb = _pooled(model.get_image_features(pixel_values=pixel_values))
    return torch.nn.functional.normalize(emb.float(), dim=-1)


def encode_texts(model, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
    """L2-normalised text embeddings (batch, projection_dim)."""
    kwargs = {"attention_mask": attention_mask}
    if token_type_ids is not None:
        kwargs["token_type_ids"] = token_type_ids
    emb = _pooled(model.get_text_features(input_ids=input_ids, **kwargs))
    return torch.nn.functional.normalize(emb.float(), dim=-1)


def logit_scale(model) -> torch.Tensor:
    """exp(the learned log inverse temperature), clamped like CLIP's (at most 100)."""
    return model.logit_scale.clamp(0, MAX_LOGIT_SCALE).exp()


@torch.no_grad()
def embed_texts(texts: list[str], model, processor, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    tok = processor.tokenizer
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=tok.model_max_length,
                  return_tensors="pt")
        out.append(encode_texts(model, enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids")))
    return torch.cat(out) if out else torch.zeros(0, projection_dim(model))


@torch.no_grad()
def embed_images(images, model, processor, batch_size: int = 256) -> torch.Tensor:
    """PIL images (RGB) -> embeddings."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        pixels = processor.image_processor(images=images[i:i + batch_size], return_tensors="pt")["pixel_values"]
        out.append(encode_images(model, pixels))
    return torch.cat(out) if out else torch.zeros(0, projection_dim(model))


def projection_dim(model) -> int:
    return model.config.projection_dim


PROMPT_TEMPLATES = ["一张{}的图片", "图片里有{}", "{}"]


@torch.no_grad()
def zero_shot_classifier(labels: list[str], model, processor, templates=PROMPT_TEMPLATES) -> torch.Tensor:
    """One normalised text embedding per label: the mean over the prompt templates (CLIP's prompt ensemble)."""
    emb = embed_texts([t.format(label) for label in labels for t in templates], model, processor)
    emb = emb.view(len(labels), len(templates), -1).mean(1)
    return torch.nn.functional.normalize(emb, dim=-1)
