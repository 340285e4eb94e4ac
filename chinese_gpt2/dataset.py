"""Clean documents / dialogues -> model inputs: tokenise (datasets.map), pack, chat format + label masks.

Language modelling (task lm). Every document is tokenised without special tokens and written as
    [CLS] doc [SEP]
(the uer/gpt2-chinese-cluecorpussmall convention: generation starts from [CLS], [SEP] ends a document). The
documents' streams are concatenated in order and cut into blocks of --block_size tokens. A block may span
several documents and a long document several blocks; NOTHING is dropped except the final remainder
(< block_size tokens) of the whole split. The original recipe dropped every chunk shorter than 512 tokens, so
short documents and every document's tail were lost; `token_accounting` states the exact count and the tests
check it against the packed dataset.

Chat (task chat). One dialogue is
    [CLS] 用户：q1 [SEP] 助手：a1 [SEP] 用户：q2 [SEP] 助手：a2 [SEP]
with labels -100 everywhere except on the answers and the [SEP] that ends each of them, so the model learns to
answer and to stop. `chat_tokens` builds it; at inference the same function, given a dialogue whose last
message is from the user, returns the prompt ending with `助手：` (no second template to drift).
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
IGNORE_INDEX = -100
USER, ASSISTANT = "用户：", "助手："


@dataclass
class DataArguments:
    data_dir: str | None = field(default=None, metadata={
        "help": "clean_data.py output; default data/cache/clean (--task lm) or data/cache/chat (--task chat)"})
    train_file: str | None = field(default=None, metadata={"help": "default <data_dir>/train.jsonl"})
    validation_file: str | None = field(default=None, metadata={"help": "default <data_dir>/validation.jsonl"})
    block_size: int = field(default=64, metadata={"help": "lm: tokens per packed block (<= the model's positions)"})
    max_train_docs: int | None = field(default=None, metadata={"help": "use only the first N training records"})
    max_eval_blocks: int | None = field(default=None, metadata={"help": "lm: evaluate on the first N validation blocks"})
    max_chat_tokens: int = field(default=128, metadata={"help": "chat: longer dialogues lose their last turns"})
    eval_chats: int = field(default=200, metadata={"help": "chat: held-out dialogues answered greedily (exact match)"})
    sample_prompts: str = field(default="中国,今天,经济发展,人民", metadata={
        "help": "lm: comma-separated prompts continued at each evaluation (logged + tensorboard)"})
    sample_max_new_tokens: int = field(default=40, metadata={"help": "length of those samples"})

    def __post_init__(self):
        for name in ("block_size", "max_chat_tokens", "eval_chats", "sample_max_new_tokens"):
            if getattr(self, name) <= 0:
                raise SystemExit(f"--{name}: {getattr(self, name)} must be > 0. Fix: pass a positive number")
        for name in ("max_train_docs", "max_eval_blocks"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise SystemExit(f"--{name}: {value} must be > 0. Fix: leave it out to use everything")

    def resolve(self, task: str) -> None:
        """Late defaults that depend on --task (train.check_args), then: the files exist and are not empty."""
        if self.data_dir is None:
            self.data_dir = str(HERE / ("data/cache/clean" if task == "lm" else "data/cache/chat"))
        for split, name in (("train", "train_file"), ("validation", "validation_file")):
            path = Path(getattr(self, name) or Path(self.data_dir) / f"{split}.jsonl")
            setattr(self, name, str(path))
            if not path.is_file():
                raise SystemExit(f"--{name}: {path} does not exist. Fix: run `python clean_data.py"
                                 f"{' --task chat' if task == 'chat' else ''}` first, or pass --data_dir")
            with open(path, "rb") as f:
                if not any(line.strip() for line in f):
                    raise SystemExit(f"--{name}: {path} has no records. Fix: look at summary.json and "
                                     f"rejects.jsonl next to it (clean_data.py)")


def read_jsonl(path, limit: int | None = None) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
                if limit is not None and len(rows) >= limit:
                    break
    return rows


# ----------------------------------------------------------------------------- language modelling
def tokenize_texts(texts: list[str], tokenizer, desc: str = "tokenize"):
    """datasets.map over the documents: {"input_ids": ids without special tokens} per document."""
    from datasets import Dataset

    ds = Dataset.from_dict({"text": list(texts)})
    return ds.map(lambda b: {"input_ids": tokenizer(b["text"], add_special_tokens=False)["input_ids"]},
                  batched=True, remove_columns=["text"], desc=desc)


def pack_blocks(batch: dict, block_size: int, cls_id: int, sep_id: int) -> dict:
    """ONE batch holding the whole split (map with batch_size=None): [CLS] doc [SEP] per document, concatenated,
    cut into blocks of block_size. Only the final remainder is dropped -- never a short document, never a tail."""
    stream = []
    for ids in batch["input_ids"]:
        stream.append(cls_id)
        stream.extend(ids)
        stream.append(sep_id)
    n = len(stream) // block_size
    blocks = np.asarray(stream[:n * block_size], dtype=np.int64).reshape(n, block_size)
    return {"input_ids": blocks.tolist()}


def token_accounting(doc_lengths: list[int], block_size: int) -> dict:
    """What the packed blocks must hold: tokens in blocks = document tokens + separators - final remainder."""
    doc_tokens, separators = int(sum(doc_lengths)), 2 * len(doc_lengths)  # [CLS] and [SEP] per document
    stream = doc_tokens + separators
    remainder = stream % block_size
    return {"documents": len(doc_lengths), "doc_tokens": doc_tokens, "separators": separators,
            "stream_tokens": stream, "blocks": stream // block_size, "block_tokens": stream - remainder,
            "remainder": remainder}


def build_lm_dataset(texts: list[str], tokenizer, block_size: int, desc: str = "pack"):
    """-> (Dataset of {"input_ids"} blocks, token_accounting of the split)."""
    docs = tokenize_texts(texts, tokenizer)
    lengths = [len(ids) for ids in docs["input_ids"]]
    blocks = docs.map(pack_blocks, batched=True, batch_size=None, remove_columns=["input_ids"], desc=desc,
                      fn_kwargs={"block_size": block_size, "cls_id": tokenizer.cls_token_id,
                                 "sep_id": tokenizer.sep_token_id})
    accounting = token_accounting(lengths, block_size)
    if len(blocks) != accounting["blocks"]:  # cannot happen; the tests check the tokens themselves
        raise RuntimeError(f"packed {len(blocks)} blocks, expected {accounting['blocks']}")
    return blocks, accounting


def unigram_perplexity(train_blocks, eval_blocks, vocab_size: int) -> float:
    """Character-unigram model: add-one smoothed frequencies of the training blocks' tokens over the whole
    vocabulary, scored on the validation blocks' tokens the language model is scored on (each block's first token
    has no context and is not predicted by the LM's loss, so it is skipped here too)."""
    train = np.asarray(train_blocks["input_ids"], dtype=np.int64)
    counts = np.bincount(train.ravel(), minlength=vocab_size)[:vocab_size] + 1
    logp = np.log(counts / counts.sum())
    ids = np.asarray(eval_blocks["input_ids"], dtype=np.int64)[:, 1:]
    return float(np.exp(-logp[ids].mean()))


# ----------------------------------------------------------------------------- chat
def chat_tokens(messages: list[dict], tokenizer) -> tuple[list[int], list[int]]:
    """The chat format, for training and inference alike -> (input_ids, labels).

    Ends with an assistant message: the whole dialogue, labels on every answer + its [SEP].
    Ends with a user message: the prompt for the next answer (ends with 助手：); labels are all -100.
    """
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    ids, labels = [cls], [IGNORE_INDEX]

    def add(text, learn):
        piece = tokenizer(text, add_special_tokens=False)["input_ids"] + [sep]
        ids.extend(piece)
        labels.extend(piece if learn else [IGNORE_INDEX] * len(piece))

    for m in messages:
        if m["role"] == "user":
            add(USER + m["content"], False)
        else:
            head = tokenizer(ASSISTANT, add_special_tokens=False)["input_ids"]
            ids.extend(head)
            labels.extend([IGNORE_INDEX] * len(head))
            add(m["content"], True)
    if messages and messages[-1]["role"] == "user":
        head = tokenizer(ASSISTANT, add_special_tokens=False)["input_ids"]
        ids.extend(head)
        labels.extend([IGNORE_INDEX] * len(head))
    return ids, labels


def chat_prompt_ids(messages: list[dict], tokenizer) -> list[int]:
    """Inference prompt: the dialogue so far (last message from the user), ending with 助手：."""
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("the last message must come from the user")
    return chat_tokens(messages, tokenizer)[0]


def fit_dialogue(messages: list[dict], tokenizer, max_tokens: int):
    """Whole turns from the start that fit max_tokens (a cut answer would teach stopping without [SEP])."""
    for end in range(len(messages), 0, -1):
        if messages[end - 1]["role"] == "assistant":
            ids, labels = chat_tokens(messages[:end], tokenizer)
            if len(ids) <= max_tokens:
                return ids, labels
    return None


def build_chat_dataset(records: list[dict], tokenizer, max_tokens: int):
    """-> (Dataset of {"input_ids", "labels"}, number of dialogues whose first answer does not fit)."""
    from datasets import Dataset

    ds = Dataset.from_list([{"messages": json.dumps(r["messages"], ensure_ascii=False)} for r in records])

    def tok(batch):
        out = {"input_ids": [], "labels": []}
        for raw in batch["messages"]:
            fitted = fit_dialogue(json.loads(raw), tokenizer, max_tokens)
            if fitted is not None:
                out["input_ids"].append(fitted[0])
                out["labels"].append(fitted[1])
        return out

    ds = ds.map(tok, batched=True, remove_columns=["messages"], desc="chat tokenize")
    return ds, len(records) - len(ds)


@dataclass
class ChatCollator:
    """Right-pads to the longest dialogue of the batch: input_ids with [PAD], labels with -100, attention_mask."""
    pad_token_id: int

    def __call__(self, features):
        longest = max(len(f["input_ids"]) for f in features)
        pad = [longest - len(f["input_ids"]) for f in features]
        return {"input_ids": torch.tensor([list(f["input_ids"]) + [self.pad_token_id] * p for f, p in zip(features, pad)]),
                "labels": torch.tensor([list(f["labels"]) + [IGNORE_INDEX] * p for f, p in zip(features, pad)]),
                "attention_mask": torch.tensor([[1] * len(f["input_ids"]) + [0] * p for f, p in zip(features, pad)])}
