"""GPT2LMHeadModel: the small offline config with the folder's character tokenizer, or a real checkpoint.

  - omitted --model_name_or_path: GPT-2 built from SMALL_CONFIG (--n_layer/--n_embd/--n_head/--n_positions),
    vocabulary = the characters of the training corpus (train_tokenizer.py), trained from scratch;
  - `--model_name_or_path uer/gpt2-chinese-cluecorpussmall` (or any local dir written by save_pretrained): a GPT-2
    whose tokenizer is BERT-style (vocab.txt, one token per Han character), like uer's Chinese GPT-2 models.
Generation helpers: generate() (greedy / sampling / beam search, every transformers generation option),
chat() and stream_chat() (TextIteratorStreamer). BERT's decode puts a space between characters; `clean_text`
removes the spaces that are not between two ASCII letters/digits (so `你 好 ， 1998 年` reads `你好，1998年`).
"""
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, GPT2Config, GPT2LMHeadModel

SMALL_CONFIG = dict(n_layer=2, n_embd=128, n_head=4, n_positions=128)  # minutes on 2 CPU cores (README)
REAL_CHECKPOINT = "uer/gpt2-chinese-cluecorpussmall"


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={
        "help": f"GPT-2 dir or Hub id (e.g. {REAL_CHECKPOINT}); omitted = small GPT-2 from scratch"})
    n_layer: int = field(default=SMALL_CONFIG["n_layer"], metadata={"help": "from scratch: transformer blocks"})
    n_embd: int = field(default=SMALL_CONFIG["n_embd"], metadata={"help": "from scratch: width"})
    n_head: int = field(default=SMALL_CONFIG["n_head"], metadata={"help": "from scratch: attention heads (divide n_embd)"})
    n_positions: int = field(default=SMALL_CONFIG["n_positions"], metadata={"help": "from scratch: max positions"})
    min_char_frequency: int = field(default=2, metadata={"help": "from scratch: rarer characters become [UNK]"})

    def __post_init__(self):
        for name in ("n_layer", "n_embd", "n_head", "n_positions", "min_char_frequency"):
            if getattr(self, name) < 1:
                raise SystemExit(f"--{name}: {getattr(self, name)} must be >= 1. Fix: pass a positive number")
        if self.n_embd % self.n_head:
            raise SystemExit(f"--n_head: {self.n_head} does not divide --n_embd {self.n_embd}. Fix: e.g. --n_head 4")
        name = self.model_name_or_path
        if name:
            p = Path(name)
            local = p.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or p.exists()
            if local and not p.is_dir():
                raise SystemExit(f"--model_name_or_path: {name} does not exist. Fix: pass a directory written by "
                                 f"save_pretrained (train.py's output_dir) or a Hub id like {REAL_CHECKPOINT}")
            if local and not (p / "config.json").is_file():
                raise SystemExit(f"--model_name_or_path: {name} has no config.json. Fix: pass a directory written "
                                 f"by save_pretrained")
            if local:
                model_type = AutoConfig.from_pretrained(p).model_type
                if model_type != "gpt2":
                    raise SystemExit(f"--model_name_or_path: {name} is a {model_type!r} model, not gpt2. "
                                     f"Fix: pass a GPT-2 checkpoint such as {REAL_CHECKPOINT}")
                self.model_name_or_path = str(p.resolve())


_SPACE = re.compile(r"(?<![A-Za-z0-9]) | (?![A-Za-z0-9])")


def clean_text(text: str) -> str:
    """Undo BERT decode's spaces between characters: a space stays only between two ASCII letters/digits
    (`new york`); next to a Han character or punctuation it goes."""
    return _SPACE.sub("", text)


def spaceless(tokenizer):
    """Make tokenizer.decode return clean_text(...) (the server, the streamer and the samples all decode)."""
    if not getattr(tokenizer, "_spaceless", False):
        decode = tokenizer.decode
        tokenizer.decode = lambda *a, **k: clean_text(decode(*a, **k))
        tokenizer._spaceless = True
    return tokenizer


def load_tokenizer(model_name_or_path: str):
    try:
        tok = AutoTokenizer.from_pretrained(model_name_or_path)
    except (OSError, ValueError) as e:
        raise SystemExit(f"--model_name_or_path: cannot load a tokenizer from {model_name_or_path!r} "
                         f"({str(e).splitlines()[0]}). Fix: a local dir with vocab.txt/tokenizer.json, or a Hub id "
                         f"with network access")
    missing = [t for t in ("cls_token", "sep_token", "pad_token") if getattr(tok, t) is None]
    if missing:
        raise SystemExit(f"--model_name_or_path: the tokenizer of {model_name_or_path} has no {', '.join(missing)}. "
                         f"Fix: use a BERT-style vocabulary ([PAD] [UNK] [CLS] [SEP] [MASK]), as uer's GPT-2 does")
    return spaceless(tok)


def build_model(args: ModelArguments, tokenizer):
    """GPT2LMHeadModel: from SMALL_CONFIG-style arguments (init from the caller's seed) or from_pretrained."""
    if args.model_name_or_path:
        try:
            model = GPT2LMHeadModel.from_pretrained(args.model_name_or_path)
        except (OSError, ValueError) as e:
            raise SystemExit(f"--model_name_or_path: cannot load {args.model_name_or_path} ({str(e).splitlines()[0]}). "
                             f"Fix: a directory written by save_pretrained, or a Hub id with network access")
    else:
        config = GPT2Config(vocab_size=len(tokenizer), n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head,
                            n_positions=args.n_positions, bos_token_id=tokenizer.cls_token_id,
                            eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = GPT2LMHeadModel(config)
    n_emb = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_emb:
        raise SystemExit(f"--model_name_or_path: the tokenizer has {len(tokenizer)} tokens but the model embeds only "
                         f"{n_emb}. Fix: use the vocab.txt/tokenizer saved with this checkpoint")
    # GPT-2 has no loss_type: without it the Trainer counts all labels, not labels[..., 1:] (see model_clm)
    model.loss_type = "ForCausalLM"
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.sep_token_id
    return model


def load_for_inference(model_dir: str, device: str | None = None):
    """(model, tokenizer) from a train.py output dir (or a real GPT-2 + BERT-vocab checkpoint)."""
    args = ModelArguments(model_name_or_path=str(model_dir))
    tokenizer = load_tokenizer(args.model_name_or_path)
    model = build_model(args, tokenizer).eval()
    return (model.to(device) if device else model), tokenizer


# ----------------------------------------------------------------------------- generation
def _gen_kwargs(tokenizer, kwargs: dict) -> dict:
    sample = kwargs.get("do_sample", False)
    defaults = dict(max_new_tokens=40, do_sample=False, eos_token_id=tokenizer.sep_token_id,
                    pad_token_id=tokenizer.pad_token_id)
    if not sample:  # no sampling knobs (silences generate's warnings about unused temperature/top_k/top_p)
        defaults.update(temperature=None, top_k=None, top_p=None)
    return {**defaults, **kwargs}


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """A document starts with [CLS] (dataset.pack_blocks); the prompt continues it."""
    return [tokenizer.cls_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def generate(model, tokenizer, prompt: str, num_return_sequences: int = 1, **kwargs) -> list[str]:
    """Continue `prompt`: greedy by default; do_sample/top_k/top_p/temperature, num_beams, repetition_penalty,
    no_repeat_ngram_size... go to model.generate. Returns the continuations (without the prompt)."""
    ids = torch.tensor([prompt_ids(tokenizer, prompt)], device=model.device)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), num_return_sequences=num_return_sequences,
                         **_gen_kwargs(tokenizer, kwargs))
    return [tokenizer.decode(row[ids.shape[1]:], skip_special_tokens=True) for row in out]


@torch.no_grad()
def chat(model, tokenizer, messages: list[dict], **kwargs) -> str:
    """The next assistant answer for a dialogue whose last message is from the user (greedy by default)."""
    from dataset import chat_prompt_ids
    ids = torch.tensor([chat_prompt_ids(messages, tokenizer)], device=model.device)
    kwargs.setdefault("max_new_tokens", 32)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **_gen_kwargs(tokenizer, kwargs))
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def stream_chat(model, tokenizer, messages: list[dict], **kwargs):
    """Like chat(), yielding the answer piece by piece as it is generated (TextIteratorStreamer)."""
    from transformers import TextIteratorStreamer

    from dataset import chat_prompt_ids
    ids = torch.tensor([chat_prompt_ids(messages, tokenizer)], device=model.device)
    streamer = TextIteratorStreamer(spaceless(tokenizer), skip_prompt=True, skip_special_tokens=True, timeout=60)
    kwargs.setdefault("max_new_tokens", 32)
    thread = threading.Thread(target=model.generate, kwargs=dict(
        input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer, **_gen_kwargs(tokenizer, kwargs)))
    thread.start()
    try:
        for piece in streamer:
            if piece:
                yield piece
    finally:
        thread.join()
