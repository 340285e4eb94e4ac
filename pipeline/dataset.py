# Copied from model_clm/dataset.py
"""Clean shards -> packed memmap token files (N worker processes), and the map-style Dataset that trains on them.

    python dataset.py                      # offline default: clean People's Daily -> data/cache/people_daily/tokens
    python dataset.py --input /data/clean --output_dir /data/tokens --tokenizer_name_or_path Qwen/Qwen2-0.5B

On-disk format (read by this folder's train.py and by the pipeline folder), `output_dir/`:
  {split}-{k:05d}.bin   raw little-endian token ids (dtype from meta.json), no header. Every document of
                        input shard k is encoded without special tokens and followed by one EOS id.
  {split}-{k:05d}.json  per-shard done marker: {"source", "file", "docs", "tokens", "bytes", "tokenizer_sha"}
                        (written after the .bin rename; a shard is redone if the tokenizer changed)
  meta.json             see write_meta(): format, tokenizer, vocab_size, eos_token_id, dtype, block_size and
                        per split {"docs", "tokens", "blocks", "shards": [{"file", "docs", "tokens"}]}
A split is one token stream: its shards concatenated in the listed order. Block i of a split is stream tokens
[i*block_size, (i+1)*block_size), which may span two shards, so only the final remainder (< block_size tokens)
of the whole split is never trained on. Any block size can be chosen at training time.
"""
import hashlib
import json
import os
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import AutoTokenizer, HfArgumentParser

from clean_data import iter_records, list_shards

HERE = Path(__file__).resolve().parent
FORMAT = "zero_nlp.packed_tokens/v1"


@dataclass
class TokenizeArguments:
    """dataset.py's CLI: clean shards -> packed token files."""
    input: str = field(default=str(HERE / "data/cache/people_daily/clean"),
                       metadata={"help": "clean_data.py output (train-*/validation-* shards), or any shard directory"})
    output_dir: str = field(default=str(HERE / "data/cache/people_daily/tokens"))
    tokenizer_name_or_path: str = field(default=str(HERE / "data/cache/people_daily/tokenizer"))
    text_field: str = "text"
    block_size: int = field(default=128, metadata={"help": "default block size recorded in meta.json"})
    num_workers: int = field(default=os.cpu_count() or 1)
    batch_docs: int = field(default=1000, metadata={"help": "documents per encode_batch call"})

    def __post_init__(self):
        for name in ("block_size", "num_workers", "batch_docs"):
            if getattr(self, name) <= 0:
                raise SystemExit(f"--{name}: {getattr(self, name)} must be > 0. Fix: e.g. --{name} "
                                 f"{TokenizeArguments.__dataclass_fields__[name].default}")
        if not Path(self.input).exists():
            raise SystemExit(f"--input: {self.input} does not exist. Fix: run clean_data.py first.")


@dataclass
class DataArguments:
    """train.py's data: the packed token files written by dataset.py."""
    data_dir: str = field(default=str(HERE / "data/cache/people_daily/tokens"),
                          metadata={"help": "dataset.py output (meta.json + *.bin)"})
    block_size: int | None = field(default=None, metadata={"help": "tokens per training block; default: meta.json's"})
    max_train_blocks: int | None = field(default=None, metadata={"help": "use only the first N train blocks"})
    max_eval_blocks: int | None = field(default=128, metadata={"help": "use only the first N validation blocks"})

    def __post_init__(self):
        for name in ("block_size", "max_train_blocks", "max_eval_blocks"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise SystemExit(f"--{name}: {value} must be > 0 (omit it for the default). Fix: e.g. --{name} 128")
        meta = load_meta(self.data_dir)
        if self.block_size is None:
            self.block_size = meta["block_size"]  # late default: the block size the data was packed with

    def datasets(self) -> tuple["PackedDataset", "PackedDataset"]:
        train = PackedDataset(self.data_dir, "train", self.block_size, self.max_train_blocks)
        validation = PackedDataset(self.data_dir, "validation", self.block_size, self.max_eval_blocks)
        if len(train) == 0 or len(validation) == 0:
            raise SystemExit(f"--data_dir: {len(train)} train / {len(validation)} validation blocks of "
                             f"{self.block_size} tokens. Fix: more data, a larger --validation_ratio in "
                             "clean_data.py, or a smaller --block_size.")
        return train, validation


# ---------------------------------------------------------------- tokenise + pack, one process per shard
_TOK = None


def _init_worker(tokenizer_json: str) -> None:
    global _TOK
    # the processes are the parallelism: a rayon pool per worker on top would oversubscribe the cores
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    _TOK = Tokenizer.from_str(tokenizer_json)


def _encode_docs(texts: list[str], eos: int, dtype) -> np.ndarray:
    flat = []
    for enc in _TOK.encode_batch_fast(texts, add_special_tokens=False):
        flat += enc.ids
        flat.append(eos)
    return np.array(flat, dtype=dtype)


def tokenize_shard(task) -> dict:
    """Input shard -> {split}-{k}.bin (+ .json marker). Returns the marker; a finished shard is skipped."""
    src, dst, text_field, batch_docs, eos, dtype, tok_sha = task
    marker = dst.with_suffix(".json")
    if marker.exists() and dst.exists():
        stats = json.loads(marker.read_text())
        if stats.get("tokenizer_sha") == tok_sha and dst.stat().st_size == stats["tokens"] * np.dtype(dtype).itemsize:
            return stats  # done with this very tokenizer: skip
    docs = tokens = 0
    tmp = dst.with_name(dst.name + ".tmp")
    with open(tmp, "wb") as out:
        batch = []
        for _, text, err, _ in iter_records(src, text_field):
            if err is None:
                batch.append(text)
            if len(batch) == batch_docs:
                arr = _encode_docs(batch, eos, dtype)
                arr.tofile(out)
                docs, tokens, batch = docs + len(batch), tokens + len(arr), []
        if batch:
            arr = _encode_docs(batch, eos, dtype)
            arr.tofile(out)
            docs, tokens = docs + len(batch), tokens + len(arr)
    os.replace(tmp, dst)  # a killed worker leaves only *.tmp, which is never read
    stats = {"source": str(src), "file": dst.name, "docs": docs, "tokens": tokens, "bytes": src.stat().st_size,
             "tokenizer_sha": tok_sha}
    marker.with_suffix(".json.tmp").write_text(json.dumps(stats, ensure_ascii=False))
    os.replace(marker.with_suffix(".json.tmp"), marker)
    return stats


def split_of(path: Path) -> str:
    return "validation" if path.name.startswith("validation-") else "train"


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def build_token_files(input, output_dir, tokenizer, text_field="text", block_size=512, num_workers=1,
                      batch_docs=1000, desc="tokenize") -> dict:
    """Tokenise every shard under `input` with a pool of `num_workers` processes; write .bin files + meta.json."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer.eos_token_id is None:
        raise SystemExit("--tokenizer_name_or_path: the tokenizer has no eos_token. Fix: use one with an EOS token.")
    dtype = token_dtype(len(tokenizer))
    tok_json = tokenizer.backend_tokenizer.to_str()
    tok_sha = hashlib.sha256(tok_json.encode()).hexdigest()[:16]
    counters = {"train": 0, "validation": 0}
    tasks = []
    # a clean_data.py output dir: only its final shards (not stage/ or rejects.jsonl); else every shard under input
    final = sorted(Path(input).glob("train-*.jsonl")) + sorted(Path(input).glob("validation-*.jsonl"))
    for src in final if Path(input).is_dir() and final else list_shards(input):
        split = split_of(src)
        tasks.append((src, out / f"{split}-{counters[split]:05d}.bin", text_field, batch_docs,
                      tokenizer.eos_token_id, dtype, tok_sha))
        counters[split] += 1
    if not tasks:
        raise SystemExit(f"--input: no shards under {input}. Fix: run clean_data.py first or point at your shards.")
    results = [None] * len(tasks)
    total = sum(t[0].stat().st_size for t in tasks)
    with get_context("fork").Pool(max(1, num_workers), _init_worker, (tok_json,)) as pool, \
            tqdm(total=total, unit="B", unit_scale=True, desc=desc) as bar:
        n_tokens = 0
        for k, stats in pool.imap_unordered(_indexed_tokenize, list(enumerate(tasks))):
            results[k] = stats
            n_tokens += stats["tokens"]
            bar.update(stats["bytes"])
            bar.set_postfix(tokens=f"{n_tokens / 1e6:.1f}M", tok_per_s=f"{n_tokens / bar.format_dict['elapsed']:.3g}",
                            refresh=False)
    return write_meta(out, tokenizer, dtype, block_size, results)


def _indexed_tokenize(k_task):
    return k_task[0], tokenize_shard(k_task[1])


def write_meta(out: Path, tokenizer, dtype, block_size: int, shard_stats: list[dict]) -> dict:
    splits = {}
    for split in ("train", "validation"):
        shards = [{k: s[k] for k in ("file", "docs", "tokens")} for s in shard_stats if s["file"].startswith(split)]
        tokens = sum(s["tokens"] for s in shards)
        splits[split] = {"docs": sum(s["docs"] for s in shards), "tokens": tokens,
                         "blocks": tokens // block_size, "shards": shards}
    meta = {
        "format": FORMAT,
        "tokenizer": getattr(tokenizer, "name_or_path", ""),
        "tokenizer_sha": shard_stats[0]["tokenizer_sha"],
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "dtype": np.dtype(dtype).name,
        "block_size": block_size,
        "input_bytes": sum(s["bytes"] for s in shard_stats),
        "splits": splits,
    }
    (out / "meta.json.tmp").write_text(json.dumps(meta, ensure_ascii=False, indent=1))
    os.replace(out / "meta.json.tmp", out / "meta.json")
    return meta


def load_meta(data_dir) -> dict:
    path = Path(data_dir) / "meta.json"
    if not path.exists():
        raise SystemExit(f"--data_dir: {path} not found. Fix: run dataset.py (or bash train.sh) to build the token files.")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise SystemExit(f"--data_dir: {path} is not {FORMAT}. Fix: rebuild it with dataset.py.")
    return meta


# ---------------------------------------------------------------- training side: random access in O(1) memory
class PackedDataset(torch.utils.data.Dataset):
    """Block i = tokens [i*block_size, (i+1)*block_size) of one split's token stream, read from the memmaps."""

    def __init__(self, data_dir, split: str = "train", block_size: int | None = None, max_blocks: int | None = None):
        meta = load_meta(data_dir)
        self.data_dir, self.split = Path(data_dir), split
        self.block_size = block_size or meta["block_size"]
        self.dtype = np.dtype(meta["dtype"])
        shards = [s for s in meta["splits"][split]["shards"] if s["tokens"] > 0]
        self.files = [s["file"] for s in shards]
        self.starts = np.cumsum([0] + [s["tokens"] for s in shards])  # stream offset of each shard
        self.num_blocks = int(self.starts[-1] // self.block_size)
        if max_blocks is not None:
            self.num_blocks = min(self.num_blocks, max_blocks)
        self._maps = None  # opened lazily: each DataLoader worker process maps the files itself

    def __len__(self) -> int:
        return self.num_blocks

    def tokens(self, start: int, end: int) -> np.ndarray:
        if self._maps is None:
            self._maps = [np.memmap(self.data_dir / f, dtype=self.dtype, mode="r") for f in self.files]
        k = int(np.searchsorted(self.starts, start, side="right")) - 1
        pieces = []
        while start < end:
            stop = min(end, int(self.starts[k + 1]))
            pieces.append(self._maps[k][start - self.starts[k]:stop - self.starts[k]])
            start, k = stop, k + 1
        return np.concatenate(pieces)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.num_blocks:
            raise IndexError(i)
        ids = torch.from_numpy(self.tokens(i * self.block_size, (i + 1) * self.block_size).astype(np.int64))
        return {"input_ids": ids, "labels": ids.clone()}  # the model shifts labels itself


def unigram_perplexity(train: PackedDataset, valid: PackedDataset, vocab_size: int, max_tokens: int = 50_000_000) -> float:
    """Perplexity of a context-free model (add-0.5 token frequencies of the first max_tokens train tokens) on
    the validation blocks: the bar a language model has to clear to show it learned anything beyond frequencies."""
    counts = np.zeros(vocab_size, np.int64)
    total = min(int(train.starts[-1]), max_tokens)
    for start in range(0, total, 1 << 22):
        counts += np.bincount(train.tokens(start, min(total, start + (1 << 22))), minlength=vocab_size)
    logp = np.log((counts + 0.5) / (counts.sum() + 0.5 * vocab_size))
    ids = valid.tokens(0, len(valid) * valid.block_size)
    # the models' loss skips each block's first token (nothing to condition on); score the same tokens
    ids = ids.reshape(len(valid), valid.block_size)[:, 1:]
    return float(np.exp(-logp[ids].mean()))


class EpochShuffleSampler(torch.utils.data.Sampler):
    """A permutation of range(n) that depends only on (seed, epoch): the same on every rank and every resume."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def __iter__(self):
        return iter(self.order(self.epoch).tolist())

    def __len__(self) -> int:
        return self.n


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(TokenizeArguments).parse_args_into_dataclasses(args=argv)
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name_or_path)
    except (OSError, ValueError) as e:
        raise SystemExit(f"--tokenizer_name_or_path: cannot load {args.tokenizer_name_or_path} ({e}). "
                         "Fix: run train_tokenizer.py or pass a local tokenizer directory.")
    if not tokenizer.is_fast:
        raise SystemExit("--tokenizer_name_or_path: needs a fast (tokenizers) tokenizer. Fix: pick one with tokenizer.json.")
    meta = build_token_files(args.input, args.output_dir, tokenizer, args.text_field, args.block_size,
                             args.num_workers, args.batch_docs)
    print(json.dumps({s: {k: v for k, v in m.items() if k != "shards"} for s, m in meta["splits"].items()}))
    return meta


if __name__ == "__main__":
    main()
