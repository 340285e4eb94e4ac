"""Model + tokenizer: a real BERT-family checkpoint, or the offline default built from config.

Real:    --model_name_or_path hfl/chinese-roberta-wwm-ext  (or bert-base-chinese, or a local dir)
Offline: a small DeBERTa-v2 encoder from scratch (default DeBERTa-v2 = BERT with learned relative-position
         attention; --model_type roformer / bert / convbert) with a one-token-per-Han-character vocabulary built
         from the training split (the bert-base-chinese convention); saved with the model, so
         AutoTokenizer/AutoModelForSequenceClassification.from_pretrained(output_dir) reload both.
"""
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import (AutoConfig, AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer,
                          BertConfig, ConvBertConfig, DebertaV2Config, RoFormerConfig)

from clean_data import normalize
from train_tokenizer import train_tokenizer

OFFLINE_CONFIGS = {"bert": BertConfig, "convbert": ConvBertConfig, "deberta-v2": DebertaV2Config,
                   "roformer": RoFormerConfig}


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "Hub id or local dir of a BERT-family checkpoint. Omit for the offline small DeBERTa-v2."})
    # offline default only (ignored with --model_name_or_path)
    model_type: str = field(default="deberta-v2", metadata={
        "help": "deberta-v2 (BERT with DeBERTa's learned relative-position attention; the best here, see README), "
                "roformer (rotary position embeddings; 0.6 point lower over seeds), bert (learned absolute "
                "positions; 1 point lower) or convbert (BERT + span-based convolution heads; 30% slower on CPU)."})
    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 512
    # 0: 3 epochs of the offline default underfit rather than overfit (same accuracy without dropout, measured),
    # and on CPU dropout's random masks cost 10% of a training step
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = field(default=0.02, metadata={"help": "Std of the initial weights."})
    config_overrides: str | None = field(default=None, metadata={
        "help": 'Other config fields of the offline model, e.g. "conv_kernel_size=5" for convbert.'})
    vocab_min_freq: int = field(default=2, metadata={"help": "Characters seen fewer times in train become [UNK]."})

    def __post_init__(self):
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_min_freq"):
            if getattr(self, name) < 1:
                raise SystemExit(f"--{name}: {getattr(self, name)} must be >= 1. Fix: e.g. the default "
                                 f"{type(self).__dataclass_fields__[name].default}")
        if self.hidden_size % self.num_attention_heads:
            raise SystemExit(f"--hidden_size: {self.hidden_size} is not a multiple of --num_attention_heads "
                             f"{self.num_attention_heads}. Fix: e.g. --hidden_size 128 --num_attention_heads 4")
        if self.model_type not in OFFLINE_CONFIGS:
            raise SystemExit(f"--model_type: unknown {self.model_type!r}. Fix: one of {sorted(OFFLINE_CONFIGS)}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0 <= getattr(self, name) < 1:
                raise SystemExit(f"--{name}: {getattr(self, name)} must be in [0, 1). Fix: e.g. 0 or 0.1")


def load_tokenizer(model_args: ModelArguments, train_texts, max_length: int):
    if model_args.model_name_or_path is None:
        return train_tokenizer(train_texts, model_args.vocab_min_freq, max_length)
    try:
        return AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    except (OSError, ValueError) as e:
        raise SystemExit(f"--model_name_or_path: cannot load a tokenizer from {model_args.model_name_or_path!r} "
                         f"({type(e).__name__}). Fix: pass a local dir with tokenizer files or a reachable Hub id")


def _offline_config(model_args: ModelArguments, tokenizer, max_length: int, **task):
    config_class = OFFLINE_CONFIGS[model_args.model_type]
    extra = {
        # ConvBERT factorises its embeddings, 768 wide by default: keep them at hidden_size like the others
        "convbert": dict(embedding_size=model_args.hidden_size),
        # DeBERTa-v3-style relative attention: log-bucketed learned relative positions, no absolute positions;
        # content-to-position only (position-to-content as well cost another 13% per step on CPU, measured)
        "deberta-v2": dict(relative_attention=True, pos_att_type=["c2p"], position_biased_input=False,
                           max_relative_positions=-1, position_buckets=64, norm_rel_ebd="layer_norm",
                           share_att_key=True),
    }.get(model_args.model_type, {})
    config = config_class(vocab_size=len(tokenizer), hidden_size=model_args.hidden_size,
                          num_hidden_layers=model_args.num_hidden_layers,
                          num_attention_heads=model_args.num_attention_heads,
                          intermediate_size=model_args.intermediate_size,
                          hidden_dropout_prob=model_args.hidden_dropout_prob,
                          attention_probs_dropout_prob=model_args.attention_probs_dropout_prob,
                          initializer_range=model_args.initializer_range,
                          max_position_embeddings=max(512, max_length), pad_token_id=tokenizer.pad_token_id,
                          **extra, **task)
    if model_args.config_overrides:
        try:
            config.update_from_string(model_args.config_overrides)
        except ValueError as e:
            raise SystemExit(f"--config_overrides: {e}. Fix: 'key=value,key=value' with keys of {config_class.__name__}")
    return config


def _check_config(model_args: ModelArguments, tokenizer, max_length: int):
    try:
        config = AutoConfig.from_pretrained(model_args.model_name_or_path)
    except (OSError, ValueError) as e:
        raise SystemExit(f"--model_name_or_path: cannot load a config from {model_args.model_name_or_path!r} "
                         f"({type(e).__name__}). Fix: pass a local checkpoint dir or a reachable Hub id")
    if len(tokenizer) > config.vocab_size:
        raise SystemExit(f"--model_name_or_path: tokenizer has {len(tokenizer)} tokens but the model embedding has "
                         f"{config.vocab_size}. Fix: use the tokenizer saved with this checkpoint")
    if max_length > getattr(config, "max_position_embeddings", max_length):
        raise SystemExit(f"--max_length: {max_length} exceeds the model's {config.max_position_embeddings} "
                         f"positions. Fix: --max_length {config.max_position_embeddings}")


def build_mlm_model(model_args: ModelArguments, tokenizer, max_length: int):
    """Masked-LM model for pretraining on the task's own texts: from config (offline) or the checkpoint."""
    if model_args.model_name_or_path is None:
        return AutoModelForMaskedLM.from_config(_offline_config(model_args, tokenizer, max_length))
    _check_config(model_args, tokenizer, max_length)
    return AutoModelForMaskedLM.from_pretrained(model_args.model_name_or_path)


def build_model(model_args: ModelArguments, tokenizer, labels: list[str], multi_label: bool, max_length: int,
                init_from: str | Path | None = None):
    """Classifier: from config (offline), from the checkpoint, or from `init_from` (an MLM-pretrained dir)."""
    task = dict(num_labels=len(labels), id2label=dict(enumerate(labels)),
                label2id={lab: i for i, lab in enumerate(labels)},
                problem_type="multi_label_classification" if multi_label else "single_label_classification")
    if init_from is None and model_args.model_name_or_path is None:
        return AutoModelForSequenceClassification.from_config(_offline_config(model_args, tokenizer, max_length,
                                                                              **task))
    if init_from is None:
        _check_config(model_args, tokenizer, max_length)
    # ignore_mismatched_sizes: a checkpoint fine-tuned on other labels gets a fresh classifier head.
    return AutoModelForSequenceClassification.from_pretrained(init_from or model_args.model_name_or_path,
                                                              ignore_mismatched_sizes=True, **task)


def load_trained(model_dir):
    """Model + tokenizer from a train.py output dir (safetensors + json only), in eval mode."""
    if not (Path(model_dir) / "config.json").is_file():
        raise SystemExit(f"--model_dir: no config.json in {model_dir}. Fix: run train.sh or pass its --output_dir")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    return model, tokenizer


@torch.no_grad()
def predict_proba(texts: list[str], model, tokenizer, max_length: int | None = None, batch_size: int = 64) -> np.ndarray:
    """(n_texts, n_labels) probabilities: softmax, or per-label sigmoid for multi-label models.

    max_length None = tokenizer.model_max_length, which train.py sets to its --max_length.
    """
    texts = [normalize(t) for t in texts]  # the same normalisation the training data went through
    model.eval()
    multi = model.config.problem_type == "multi_label_classification"
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], truncation=True, max_length=max_length, padding=True,
                        return_tensors="pt").to(model.device)
        logits = model(**enc).logits.float()
        out.append((logits.sigmoid() if multi else logits.softmax(-1)).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.num_labels), dtype=np.float32)
