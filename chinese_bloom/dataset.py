"""Clean chat records -> tokenised SFT examples (loss only on answers) -> packed or padded batches.

This file is the SFT data builder that other LLM folders copy with `# Copied from
chinese_bloom/dataset.py:<name>` markers, so nothing here is BLOOM specific.

A clean record is `{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}`
(clean_data.py converts Alpaca/BELLE, sharegpt `conversations` and OpenAI `messages` to it).
"""
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent

IGNORE_INDEX = -100


# ----------------------------------------------------------------------------- arguments
@dataclass
class DataArguments:
    data_dir: str = field(default=str(HERE / "data/cache/clean"), metadata={"help": "clean_data.py output (train/validation/test.jsonl)"})
    train_file: str | None = field(default=None, metadata={"help": "clean JSONL; default <data_dir>/train.jsonl"})
    validation_file: str | None = field(default=None, metadata={"help": "clean JSONL; default <data_dir>/validation.jsonl"})
    test_file: str | None = field(default=None, metadata={"help": "clean JSONL; default <data_dir>/test.jsonl"})
    max_length: int | None = field(default=None, metadata={"help": "tokens per sample and per packed row; default: 128 for the generated task, else the 99th percentile of the training conversations' lengths rounded up to 64, between 128 and 1024"})
    packing: bool = field(default=True, metadata={"help": "pack several samples per row (block-diagonal attention)"})
    tasks: str | None = field(default=None, metadata={"help": "comma separated 'task' values to keep (generated data), e.g. unit,date"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use only the first N training records (> 0)"})
    eval_samples: int = field(default=200, metadata={"help": "test questions answered by greedy generation (exact match + examples)"})
    max_new_tokens: int = field(default=24, metadata={"help": "answer length limit of those generations"})

    def __post_init__(self):
        for name in ("max_length", "max_train_samples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise SystemExit(f"--{name}: must be > 0, got {value}. Fix: pass a positive number or leave it out")
        if self.eval_samples < 1 or self.max_new_tokens < 1:
            name = "eval_samples" if self.eval_samples < 1 else "max_new_tokens"
            raise SystemExit(f"--{name}: must be >= 1, got {getattr(self, name)}. Fix: pass a positive number")
        data_dir = Path(self.data_dir)
        for split, name in (("train", "train_file"), ("validation", "validation_file"), ("test", "test_file")):
            path = Path(getattr(self, name) or data_dir / f"{split}.jsonl")
            setattr(self, name, str(path))
            if not path.is_file():
                raise SystemExit(f"--{name}: {path} does not exist. Fix: run `python clean_data.py` first "
                                 f"or pass the path of a clean JSONL file")
            with open(path, "rb") as f:
                if not any(line.strip() for line in f):
                    raise SystemExit(f"--{name}: {path} has no records (empty {split} split). Fix: look at "
                                     f"clean_data.py's summary.json and rejects.jsonl next to it, or give the "
                                     f"{split} split a share (--validation_ratio / --test_ratio of clean_data.py)")


def is_generated_task(records: list[dict]) -> bool:
    """The offline default task: every record carries the generator's `task` field."""
    return bool(records) and all("task" in r for r in records)


def default_max_length(records: list[dict], tokenizer, template: "ChatTemplate", sample: int = 2000) -> int:
    """128 for the generated task; else the 99th percentile of the conversations' token lengths,
    rounded up to a multiple of 64, between 128 and 1024 (a length that keeps ~99% of real data)."""
    if is_generated_task(records):
        return 128
    step = max(1, len(records) // sample)
    lengths = sorted(len(tokenizer("".join(t for t, _ in render_segments(r["messages"], template, tokenizer.eos_token)),
                                   add_special_tokens=False)["input_ids"]) for r in records[::step])
    p99 = lengths[min(len(lengths) - 1, math.ceil(0.99 * len(lengths)) - 1)]
    return int(min(1024, max(128, -(-p99 // 64) * 64)))


def check_dropped(n_dropped: int, n_records: int, max_length: int, split: str, warn_above: float = 0.10) -> str:
    """Say how many conversations were dropped as too long; fail (naming --max_length) when none is left."""
    why = f"not even their first question + answer fits in --max_length {max_length} tokens"
    if n_records and n_dropped == n_records:
        raise SystemExit(f"--max_length: all {n_records} {split} records were dropped: {why}. "
                         f"Fix: raise --max_length (or leave it out: the default follows the data's lengths)")
    share = n_dropped / max(n_records, 1)
    line = f"{split}: dropped {n_dropped} of {n_records} records ({share:.1%}) as too long: {why}"
    if share > warn_above:
        line = (f"WARNING: {line}. More than {warn_above:.0%} of the {split} data is lost. "
                f"Fix: raise --max_length")
        print("!" * 100 + "\n" + line + "\n" + "!" * 100, flush=True)
    else:
        print(line, flush=True)
    return line


# ----------------------------------------------------------------------------- prompt template
@dataclass(frozen=True)
class ChatTemplate:
    """One chat template, used by training, evaluation, infer.ipynb and serve.py alike.

    A conversation renders as
        system + (user_prefix + question + user_suffix + assistant_prefix + answer + EOS) * turns
    and at inference time the prompt is the same string up to and including the last
    `assistant_prefix`; the model must then write the answer and EOS, which is what it was
    trained to do (a train/infer template mismatch is the classic cause of endless generation).
    """
    name: str
    system: str = ""
    user_prefix: str = "Human: "
    user_suffix: str = "\n\n"
    assistant_prefix: str = "Assistant: "
    assistant_suffix: str = "\n\n"  # written after the EOS of every answer but the last


TEMPLATES = {
    # BELLE / the original zero_nlp chinese_bloom format
    "belle": ChatTemplate("belle"),
    # Alpaca-style headings
    "alpaca": ChatTemplate("alpaca", system="Below is an instruction that describes a task. "
                           "Write a response that appropriately completes the request.\n\n",
                           user_prefix="### Instruction:\n", user_suffix="\n\n",
                           assistant_prefix="### Response:\n", assistant_suffix="\n\n"),
    # ChatML-like markers written as plain text (no extra special tokens needed)
    "chatml": ChatTemplate("chatml", user_prefix="<|im_start|>user\n", user_suffix="<|im_end|>\n",
                           assistant_prefix="<|im_start|>assistant\n", assistant_suffix="\n"),
}


def get_template(name: str) -> ChatTemplate:
    if name not in TEMPLATES:
        raise SystemExit(f"--template: unknown template {name!r}. Fix: use one of {sorted(TEMPLATES)}")
    return TEMPLATES[name]


def split_turns(messages: list[dict]) -> tuple[str, list[tuple[str, str | None]]]:
    """messages -> (system text, [(user, assistant or None), ...]). A trailing user turn gets None."""
    system = "".join(m["content"] for m in messages if m["role"] == "system")
    turns, user = [], None
    for m in messages:
        if m["role"] == "user":
            if user is not None:  # two user messages in a row: join them
                user = user + "\n" + m["content"]
            else:
                user = m["content"]
        elif m["role"] == "assistant":
            turns.append((user or "", m["content"]))
            user = None
    if user is not None:
        turns.append((user, None))
    return system, turns


def render_segments(messages: list[dict], template: ChatTemplate, eos_token: str):
    """The single source of truth for the prompt format: [(text, is_answer), ...].

    Training tokenises every segment and keeps labels only where is_answer is True; inference
    joins the segments of a conversation whose last message is from the user.
    """
    system, turns = split_turns(messages)
    segments = [(template.system + system + ("\n\n" if system else ""), False)]
    for i, (user, answer) in enumerate(turns):
        sep = template.assistant_suffix if i > 0 else ""
        segments.append((sep + template.user_prefix + user + template.user_suffix + template.assistant_prefix, False))
        if answer is not None:
            segments.append((answer + eos_token, True))
    return [(t, a) for t, a in segments if t]


def build_prompt(messages: list[dict], template: ChatTemplate, eos_token: str) -> str:
    """Inference prompt: the conversation so far, ending with the assistant prefix."""
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("the last message must come from the user")
    return "".join(text for text, _ in render_segments(messages, template, eos_token))


# ----------------------------------------------------------------------------- tokenise + mask
def tokenize_conversation(messages, tokenizer, template: ChatTemplate, max_length: int):
    """Tokenise one conversation; labels are IGNORE_INDEX on every prompt token.

    Truncation rule: whole turns are kept from the start; the first turn that does not fit in
    `max_length` is dropped together with every later turn. If not even the first answer fits,
    returns None (the caller counts it as dropped) -- cutting an answer would teach the model
    to stop mid-sentence without EOS.
    """
    input_ids, labels = [], []
    kept_any_answer = False
    pending_ids, pending_labels = [], []
    if tokenizer.eos_token is None:
        raise SystemExit("--model_name_or_path: the tokenizer has no eos_token. "
                         "Fix: set tokenizer.eos_token (answers must end with EOS)")
    for text, is_answer in render_segments(messages, template, tokenizer.eos_token):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        pending_ids += ids
        pending_labels += ids if is_answer else [IGNORE_INDEX] * len(ids)
        if is_answer:  # a turn ends with its answer: commit it if it fits
            if len(input_ids) + len(pending_ids) > max_length:
                break
            input_ids += pending_ids
            labels += pending_labels
            pending_ids, pending_labels = [], []
            kept_any_answer = True
    if not kept_any_answer:
        return None
    return {"input_ids": input_ids, "labels": labels}


def tokenizer_texts(records: list[dict], template: "ChatTemplate"):
    """The conversations as the model will see them (the template's text, no EOS): what the BPE is trained on."""
    return ("".join(text for text, _ in render_segments(r["messages"], template, "")) for r in records)


def read_clean_records(path) -> list[dict]:
    """Read a clean JSONL file written by clean_data.py."""
    with open(path, encoding="utf-8") as f:  # its existence was checked in DataArguments.__post_init__
        return [json.loads(line) for line in f if line.strip()]


def build_sft_dataset(records: list[dict], tokenizer, template: ChatTemplate, max_length: int,
                      packing: bool = False):
    """records -> datasets.Dataset of {input_ids, labels, position_ids}; packed rows if `packing`.

    Returns (dataset, n_dropped) where n_dropped counts conversations whose first answer does not
    fit into max_length.
    """
    from datasets import Dataset

    ds = Dataset.from_list([{"messages": r["messages"]} for r in records])

    def tok(batch):
        out = {"input_ids": [], "labels": []}
        for messages in batch["messages"]:
            ex = tokenize_conversation(messages, tokenizer, template, max_length)
            if ex is not None:
                out["input_ids"].append(ex["input_ids"])
                out["labels"].append(ex["labels"])
        return out

    ds = ds.map(tok, batched=True, remove_columns=ds.column_names, desc="tokenize")
    n_dropped = len(records) - len(ds)
    if packing:
        ds = ds.map(pack_examples, batched=True, batch_size=1000, fn_kwargs={"max_length": max_length},
                    remove_columns=ds.column_names, desc="pack")
    else:
        ds = ds.map(lambda ex: {"position_ids": list(range(len(ex["input_ids"])))}, desc="positions")
    return ds, n_dropped


# ----------------------------------------------------------------------------- packing
def pack_examples(batch, max_length: int):
    """Greedy first-fit packing of tokenised samples into rows of at most `max_length` tokens.

    position_ids restart at 0 for every sample: the collator derives the block-diagonal
    attention mask from them, so attention never crosses samples.
    """
    rows = []  # each: [input_ids, labels, position_ids]
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        for row in rows:
            if len(row[0]) + len(ids) <= max_length:
                break
        else:
            row = [[], [], []]
            rows.append(row)
        row[0].extend(ids)
        row[1].extend(labels)
        row[2].extend(range(len(ids)))
    return {"input_ids": [r[0] for r in rows], "labels": [r[1] for r in rows],
            "position_ids": [r[2] for r in rows]}


def packed_attention_mask(position_ids: torch.Tensor, pad_mask: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """(batch, seq) position ids that restart at 0 per sample -> (batch, 1, seq, seq) additive mask.

    0 where query i may attend key j (same sample, j <= i, j not padding), dtype-min elsewhere.
    A float mask (not bool) because some models (BLOOM) add the mask to the scores themselves.
    """
    sample_id = (position_ids == 0).cumsum(-1)  # 1, 1, 1, 2, 2, ...
    same = sample_id[:, :, None] == sample_id[:, None, :]
    seq = position_ids.shape[-1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=position_ids.device).tril()
    allowed = same & causal & pad_mask[:, None, :].bool()
    mask = torch.zeros(allowed.shape, dtype=dtype, device=position_ids.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


@dataclass
class SFTCollator:
    """Pads a list of {input_ids, labels, position_ids} to the longest row of the batch.

    packed=False: 2D attention_mask (the classic pad-to-longest baseline).
    packed=True : 4D block-diagonal causal mask + restarted position_ids (no cross-contamination).
    """
    pad_token_id: int
    packed: bool = False

    def __call__(self, features):
        longest = max(len(f["input_ids"]) for f in features)

        def pad(key, value):
            return torch.tensor([list(f[key]) + [value] * (longest - len(f[key])) for f in features])

        batch = {"input_ids": pad("input_ids", self.pad_token_id), "labels": pad("labels", IGNORE_INDEX)}
        pad_mask = torch.tensor([[1] * len(f["input_ids"]) + [0] * (longest - len(f["input_ids"]))
                                 for f in features])
        if self.packed:
            position_ids = pad("position_ids", 0)
            # padding positions get ids 1, 2, ... so they don't start new "samples" one token long
            position_ids = torch.where(pad_mask.bool(), position_ids, torch.arange(longest).expand_as(position_ids) + 1)
            batch["position_ids"] = position_ids
            batch["attention_mask"] = packed_attention_mask(position_ids, pad_mask)
        else:
            batch["attention_mask"] = pad_mask
        return batch
