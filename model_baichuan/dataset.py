"""Clean chat records -> tokenised SFT examples (loss only on answers) -> packed or padded batches.

The prompt format is Baichuan2-Chat's: the reserved ids `user_token_id` (195) and `assistant_token_id` (196) of
generation_config.json open each turn: user_id question assistant_id answer ... EOS.
tokenization.conversation_labels (training: the official Baichuan2 fine-tune.py input ids and labels) and
tokenization.prompt_ids (generation: the official chat()'s build_chat_input) build the ids, so training and inference
cannot drift apart.
Here `template` is that pair of ids, `(user_token_id, assistant_token_id)` (tokenization.chat_ids reads it).
Everything that is not about the prompt format (arguments, length checks, packing, collator) is
chinese_bloom's SFT builder, copied with `# Copied from` markers.

A clean record is `{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}`
(clean_data.py converts Alpaca/BELLE, sharegpt and OpenAI messages to it).
"""
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tokenization import conversation_labels

HERE = Path(__file__).resolve().parent

IGNORE_INDEX = -100


# ----------------------------------------------------------------------------- arguments
# Copied from chinese_bloom/dataset.py:DataArguments
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


# Copied from chinese_bloom/dataset.py:is_generated_task
def is_generated_task(records: list[dict]) -> bool:
    """The offline default task: every record carries the generator's `task` field."""
    return bool(records) and all("task" in r for r in records)


def default_max_length(records: list[dict], tokenizer, template: tuple, sample: int = 2000) -> int:
    """128 for the generated task; else the 99th percentile of the conversations' token lengths,
    rounded up to a multiple of 64, between 128 and 1024 (a length that keeps ~99% of real data)."""
    if is_generated_task(records):
        return 128
    step = max(1, len(records) // sample)
    lengths = sorted(len(conversation_labels(tokenizer, _trained_part(r["messages"]), *template)[0])
                     for r in records[::step])
    p99 = lengths[min(len(lengths) - 1, math.ceil(0.99 * len(lengths)) - 1)]
    return int(min(1024, max(128, -(-p99 // 64) * 64)))


# Copied from chinese_bloom/dataset.py:check_dropped
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


# ----------------------------------------------------------------------------- tokenise + mask
def _trained_part(messages: list[dict]) -> list[dict]:
    """The conversation up to its last answer (a trailing question is not trained)."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages) - 1)
    return messages[:last + 1]


def tokenize_conversation(messages, tokenizer, template: tuple, max_length: int):
    """Tokenise one conversation (Baichuan2-Chat's format) with the official fine-tune labels.

    `template` = (user_token_id, assistant_token_id). tokenization.conversation_labels gives the official
    Baichuan2 fine-tune.py ids and labels: every answer is trained on, in every turn, the label at each user token
    is EOS (the answer before it ends there), the conversation ends with EOS; questions and the 195/196 ids are -100.
    Truncation rule: whole turns are kept from the start. The conversation is cut after the last answer that
    still fits in `max_length` and encoded again, so the kept last answer ends with EOS exactly as a
    conversation of that length would; if not even the first answer fits, returns None (the caller counts it as
    dropped): cutting an answer would teach the model to stop mid-sentence without EOS.
    """
    ends = [i for i, m in enumerate(messages) if m["role"] == "assistant"]  # a trailing question is not trained
    for end in reversed(ends):
        try:
            input_ids, labels = conversation_labels(tokenizer, messages[:end + 1], *template)
        except ValueError as e:  # e.g. a system message that is not the first one
            raise SystemExit(f"--train_file: a conversation cannot be written in Baichuan's chat format ({e}): "
                             f"{json.dumps(messages, ensure_ascii=False)[:200]}. Fix: clean the data (clean_data.py) "
                             f"and keep a system message only as the first message")
        if len(input_ids) <= max_length:
            # the label at position 0 is never used alone (labels shift by one), but in a packed row it would be the
            # target of the previous sample's last token: -100 there, so packing changes no sample's loss
            return {"input_ids": input_ids, "labels": [IGNORE_INDEX] + labels[1:]}
    return None


def tokenizer_texts(records: list[dict]):
    """What the offline SentencePiece model is trained on: every message (the turn markers are reserved ids)."""
    for r in records:
        for m in r["messages"]:
            yield m["content"]


# Copied from chinese_bloom/dataset.py:read_clean_records
def read_clean_records(path) -> list[dict]:
    """Read a clean JSONL file written by clean_data.py."""
    with open(path, encoding="utf-8") as f:  # its existence was checked in DataArguments.__post_init__
        return [json.loads(line) for line in f if line.strip()]


# Copied from chinese_bloom/dataset.py:build_sft_dataset with ChatTemplate->tuple
def build_sft_dataset(records: list[dict], tokenizer, template: tuple, max_length: int,
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


# Copied from chatglm_v2_6b_lora/dataset.py:left_pad
def left_pad(prompts: list[list[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Prompts of different lengths -> {input_ids, attention_mask} padded on the LEFT (for generate():
    every row's next token comes right after its last prompt token)."""
    longest = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_token_id] * (longest - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    return {"input_ids": ids, "attention_mask": mask}


# ----------------------------------------------------------------------------- packing
# Copied from chinese_bloom/dataset.py:pack_examples
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


# Copied from chinese_bloom/dataset.py:packed_attention_mask
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


# Copied from chinese_bloom/dataset.py:SFTCollator
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
