# Copied from chinese_bloom/clean_data.py
"""Raw instruction data -> clean chat records + rejects.jsonl + summary.json.

Reads JSON arrays, JSONL (.gz too) or parquet, in any of three shapes and writes one canonical shape,
`{"messages": [{"role": "system"|"user"|"assistant", "content": ...}]}`:
  - Alpaca / BELLE: {"instruction", "input" (optional), "output"}
  - sharegpt:       {"conversations": [{"from": "human"|"gpt"|"system", "value"}]}
  - OpenAI:         {"messages": [{"role": "user"|"assistant"|"system", "content"}]}

Without --input it first generates the offline default task: templated Chinese questions with
checkable answers (addition, comparison, next day, unit conversion), split into train / validation / test
with no question shared between splits.

    python clean_data.py                                   # offline default -> data/cache/clean
    python clean_data.py --input belle.json sharegpt.jsonl --output_dir data/cache/mine
"""
import dataclasses
import datetime
import gzip
import hashlib
import json
import random
import re
import sys
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

HERE = Path(__file__).resolve().parent


@dataclass
class CleanArguments:
    input: list[str] = field(default_factory=list, metadata={"help": "raw JSON/JSONL files (.gz too) or .parquet; empty = generate the default task"})
    output_dir: str = field(default=str(HERE / "data/cache/clean"))
    encoding: str = field(default="utf-8", metadata={"help": "text encoding of the input files, e.g. gb18030 for GBK files"})
    max_chars: int = field(default=4096, metadata={"help": "length policy: conversations longer than this are rejected"})
    validation_ratio: float = field(default=0.05, metadata={"help": "share of the input held out for validation, 0 <= r < 1"})
    test_ratio: float = field(default=0.05, metadata={"help": "share of the input held out for test, 0 <= r < 1"})
    num_generated: int = field(default=6000, metadata={"help": "size of the generated default task"})
    seed: int = field(default=42)

    def __post_init__(self):
        import codecs
        for name in ("validation_ratio", "test_ratio"):
            if not 0 <= getattr(self, name) < 1:
                raise SystemExit(f"--{name}: must be in [0, 1), got {getattr(self, name)}. Fix: e.g. --{name} 0.05")
        if self.validation_ratio + self.test_ratio >= 1:
            raise SystemExit(f"--validation_ratio: with --test_ratio {self.test_ratio} nothing is left for training "
                             f"({self.validation_ratio} + {self.test_ratio} >= 1). Fix: e.g. 0.05 each")
        for name in ("max_chars", "num_generated"):
            if getattr(self, name) <= 0:
                raise SystemExit(f"--{name}: must be > 0, got {getattr(self, name)}. Fix: pass a positive number")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise SystemExit(f"--encoding: unknown encoding {self.encoding!r}. Fix: e.g. utf-8, gb18030, big5")
        for p in self.input:
            if not Path(p).is_file():
                raise SystemExit(f"--input: {p} does not exist. Fix: pass existing JSON/JSONL/parquet files")


# ----------------------------------------------------------------------------- offline default task
UNITS = [("千米", "米", 1000), ("米", "厘米", 100), ("千克", "克", 1000), ("元", "角", 10), ("分米", "毫米", 100)]


def generate_task(n: int, seed: int = 42) -> list[dict]:
    """Templated Chinese questions with exactly checkable answers, as Alpaca records."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        kind = rng.choice(["add", "compare", "date", "unit"])
        if kind == "add":
            a, b = rng.randint(0, 49), rng.randint(0, 49)
            q, ans = rng.choice(["{a}加{b}等于多少？", "计算：{a}+{b}="]).format(a=a, b=b), f"{a + b}"
        elif kind == "compare":
            a, b = rng.sample(range(100), 2)
            q, ans = rng.choice(["{a}和{b}哪个大？", "{a}和{b}中较大的数是几？"]).format(a=a, b=b), f"{max(a, b)}"
        elif kind == "date":
            d = datetime.date(2000, 1, 1) + datetime.timedelta(days=rng.randint(0, 365 * 30))
            nxt = d + datetime.timedelta(days=1)
            q = f"{d.year}年{d.month}月{d.day}日的后一天是哪一天？"
            ans = f"{nxt.year}年{nxt.month}月{nxt.day}日"
        else:
            big, small, k = rng.choice(UNITS)
            x = rng.randint(1, 99)
            q, ans = f"{x}{big}等于多少{small}？", f"{x * k}{small}"
        out.append({"instruction": q, "input": "", "output": ans, "task": kind})
    return out


# ----------------------------------------------------------------------------- reading + shapes
ROLE_MAP = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
            "system": "system", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}


class FormatError(ValueError):
    """A record in the wrong shape; the message names the field and what was expected."""


class BadEncoding(ValueError):
    """A line whose bytes do not decode with --encoding."""


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _first_byte(path: Path) -> bytes:
    with _open_binary(path) as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head[:1]


def _json_array(text: str):
    """Yield (line where the record's object starts, record) from a JSON array, record by record."""
    decoder = json.JSONDecoder()
    ws = re.compile(r"[ \t\r\n]*")
    pos = ws.match(text, 0).end() + 1  # past "["
    line, counted = 1, 0
    while True:
        pos = ws.match(text, pos).end()
        if pos < len(text) and text[pos] == "]":
            return
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            record, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:  # broken from here on: one reject holding the rest
            yield line, FormatError(f"not valid JSON from here on ({e.msg} at line {e.lineno}, column {e.colno}); "
                                    f"the rest of the array was not read"), text[pos:pos + 500]
            return
        yield line, record, text[pos:end][:500]
        pos = ws.match(text, end).end()
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos < len(text) and text[pos] == "]":
            return
        else:
            line += text.count("\n", counted, pos)
            counted = pos
            yield line, FormatError("not valid JSON: expected ',' or ']' after a record; the rest of the array "
                                    "was not read"), text[pos:pos + 500]
            return


def read_records(path: Path, encoding: str = "utf-8"):
    """Yield (line, record | FormatError | BadEncoding | None for a blank line, raw text) for one file.

    `line` is the 1-based line of the file where the record starts (JSONL: its line; JSON array: the line of
    the record's opening brace; parquet: the row). JSONL is split on "\n" only (a U+2028 inside a string is
    text, not a line end) and decoded line by line, so one bad byte costs one line, not the file.
    .gz files are read through gzip; .parquet files through pyarrow.
    """
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # not parquet / truncated
            raise SystemExit(f"--input: {path} cannot be read as parquet ({type(e).__name__}: {e}). "
                             f"Fix: pass a valid .parquet file or convert it to JSONL")
        for i, row in enumerate(rows, start=1):
            yield i, row, json.dumps(row, ensure_ascii=False, default=str)[:500]
        return
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    if _first_byte(path) == b"[":
        with _open_binary(path) as f:
            raw = f.read()
        try:
            text = raw.decode(codec)
        except UnicodeDecodeError as e:
            line = raw.count(b"\n", 0, e.start) + 1
            raise SystemExit(_encoding_message(path, encoding, f"a JSON array with bytes that are not {encoding} "
                                               f"(line {line})", raw[:2000]))
        yield from _json_array(text)
        return
    if name.endswith(".json"):  # a single JSON object is a mistake; anything else is read as JSONL
        with _open_binary(path) as f:
            raw = f.read()
        try:
            data = json.loads(raw.decode(codec))
        except (UnicodeDecodeError, json.JSONDecodeError):
            data = None
        if isinstance(data, dict) and raw.count(b"\n") > 1:
            raise SystemExit(f"--input: {path} holds one JSON object, expected an array of records. "
                             f"Fix: wrap the records in [...] or write JSONL")
    with _open_binary(path) as f:
        for i, raw_line in enumerate(f, start=1):  # binary files split on b"\n" only
            try:
                line = raw_line.decode(codec if i == 1 else encoding)
            except UnicodeDecodeError as e:
                yield i, BadEncoding(f"bytes that are not {encoding} at column {e.start + 1}"), \
                    raw_line.decode(encoding, errors="replace")[:500]
                continue
            if not line.strip():
                yield i, None, ""
                continue
            try:
                yield i, json.loads(line), line.strip()[:500]
            except json.JSONDecodeError as e:
                yield i, FormatError(f"not valid JSON ({e.msg} at column {e.colno})"), line.strip()[:500]


def _encoding_message(path: Path, encoding: str, what: str, sample: bytes) -> str:
    guess = ""
    for other in ("gb18030", "big5", "utf-16"):
        try:
            sample.decode(other)
            guess = f" It decodes as {other} (GBK is a subset of gb18030)."
            break
        except UnicodeDecodeError:
            continue
    return (f"--encoding: {path} is not {encoding}: {what}.{guess} Fix: pass --encoding gb18030 (or the file's "
            f"real encoding), or convert the file to UTF-8 (iconv -f gbk -t utf-8)")


def _text(value, where: str) -> str:
    if not isinstance(value, str):
        raise FormatError(f"field '{where}' must be a string, got {type(value).__name__}")
    return value


def to_messages(record) -> list[dict]:
    """Any supported shape -> list of {role, content}; raises FormatError naming the bad field."""
    if not isinstance(record, dict):
        raise FormatError(f"record must be a JSON object, got {type(record).__name__}")
    if "messages" in record:
        msgs = record["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise FormatError("field 'messages' must be a non-empty list of {role, content}")
        out = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise FormatError(f"field 'messages[{i}]' must be an object with 'role' and 'content'")
            if m["role"] not in ("system", "user", "assistant"):
                raise FormatError(f"field 'messages[{i}].role' must be system/user/assistant, got {m['role']!r}")
            out.append({"role": m["role"], "content": _text(m["content"], f"messages[{i}].content")})
        return out
    if "conversations" in record:
        conv = record["conversations"]
        if not isinstance(conv, list) or not conv:
            raise FormatError("field 'conversations' must be a non-empty list of {from, value}")
        out = []
        for i, m in enumerate(conv):
            if not isinstance(m, dict) or "from" not in m or "value" not in m:
                raise FormatError(f"field 'conversations[{i}]' must be an object with 'from' and 'value'")
            role = ROLE_MAP.get(str(m["from"]).lower())
            if role is None:
                raise FormatError(f"field 'conversations[{i}].from' must be human/gpt/system, got {m['from']!r}")
            out.append({"role": role, "content": _text(m["value"], f"conversations[{i}].value")})
        return out
    if "instruction" in record or "output" in record:
        for key in ("instruction", "output"):
            if key not in record:
                raise FormatError(f"Alpaca/BELLE record is missing field '{key}' "
                                  f"(expected 'instruction', optional 'input', 'output')")
        question = _text(record["instruction"], "instruction")
        extra = _text(record.get("input") or "", "input")
        if extra.strip():
            question = question + "\n" + extra
        return [{"role": "user", "content": question}, {"role": "assistant", "content": _text(record["output"], "output")}]
    raise FormatError(f"unknown record shape with fields {sorted(record)[:6]}: expected 'instruction'+'output' "
                      f"(Alpaca/BELLE), 'conversations' (sharegpt) or 'messages' (OpenAI)")


# ----------------------------------------------------------------------------- cleaning
_INVISIBLE = re.compile(r"[\u200b-\u200f\u2028\u2029\ufeff\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def normalize(text: str) -> str:
    """NFC, no invisible/control characters, \\n line ends, no trailing spaces, <= 2 blank lines."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _INVISIBLE.sub("", text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def check_messages(messages: list[dict], max_chars: int) -> tuple[str, str] | None:
    """(reason code, detail) to reject a normalised conversation, or None."""
    if not any(m["role"] == "assistant" for m in messages):
        return "no_answer", "no assistant message"
    for i, m in enumerate(messages):
        if not m["content"] and m["role"] in ("user", "assistant"):
            return ("empty_answer" if m["role"] == "assistant" else "empty_question"), f"message {i + 1} is empty"
    non_system = [(i, m) for i, m in enumerate(messages) if m["role"] != "system"]
    if non_system[0][1]["role"] != "user":
        return "does_not_start_with_user", "the first non-system message is from the assistant"
    for (_, a), (j, b) in zip(non_system, non_system[1:]):
        if a["role"] == b["role"]:
            what = "two questions without an answer between them" if a["role"] == "user" else \
                "an answer without a question (two assistant messages in a row)"
            return "bad_turn_order", f"messages {j} and {j + 1} are both from the {a['role']}: {what}"
    total = sum(len(m["content"]) for m in messages)
    if total > max_chars:
        return "too_long", f"{total} characters > --max_chars {max_chars}"
    return None


def clean(files: list[Path], max_chars: int, encoding: str = "utf-8"):
    """-> (kept records, rejects, summary, problems). kept + rejected == read, always.

    `problems` are file-level causes (every record of a file in the wrong shape or encoding): main() writes
    rejects + summary first, then exits with the first of them.
    """
    kept, rejects, seen, problems = [], [], set(), []
    reasons, read = Counter(), 0

    def reject(path, line, reason, detail, text):
        reasons[reason] += 1
        rejects.append({"file": str(path), "line": line, "reason": reason, "detail": detail, "text": text})

    for path in files:
        n_records, n_format, n_encoding, first_error = 0, 0, 0, None
        for line, rec, raw in read_records(path, encoding):
            read += 1
            if rec is None:
                reject(path, line, "empty", "blank line", "")
                continue
            n_records += 1
            if isinstance(rec, BadEncoding):
                n_encoding += 1
                reject(path, line, "bad_encoding", f"{rec}. Fix: pass --encoding", raw)
                continue
            try:
                if isinstance(rec, FormatError):
                    raise rec
                messages = to_messages(rec)
            except FormatError as e:
                n_format += 1
                first_error = first_error or f"{path}: record at line {line}: {e}"
                reject(path, line, "format_error", str(e), raw)
                continue
            messages = [{"role": m["role"], "content": normalize(m["content"])} for m in messages]
            problem = check_messages(messages, max_chars)
            key = hashlib.md5(json.dumps(messages, ensure_ascii=False).encode()).hexdigest()
            if problem is None and key in seen:
                problem = "duplicate", "same conversation as an earlier record"
            if problem:
                reject(path, line, problem[0], problem[1], json.dumps(messages, ensure_ascii=False)[:500])
                continue
            seen.add(key)
            out = {"messages": messages}
            if isinstance(rec, dict) and "task" in rec:
                out["task"] = rec["task"]
            kept.append(out)
        if n_records and n_encoding == n_records:
            with _open_binary(path) as f:
                sample = f.read(2000)
            problems.append(_encoding_message(path, encoding, f"none of its {n_records} lines decodes", sample))
        elif n_records and n_format + n_encoding == n_records:
            problems.append(f"--input: no record of {path} has a supported shape; first problem: {first_error}. "
                            f"Fix: convert the file to Alpaca/BELLE, sharegpt or OpenAI messages records")
    summary = {"read": read, "kept": len(kept), "rejected": len(rejects), "reasons": dict(reasons)}
    assert summary["kept"] + summary["rejected"] == summary["read"]
    if not kept and not problems:
        top = Counter(r["reason"] for r in rejects).most_common(1)
        problems.append(f"--input: nothing was kept from {read} records"
                        + (f" (most common reason: {top[0][0]}, see rejects.jsonl)" if top else "")
                        + ". Fix: check the files' encoding (--encoding) and record shape")
    return kept, rejects, summary, problems


def split(records: list[dict], validation_ratio: float, test_ratio: float, seed: int):
    """Split by a hash of the first question, so no question is in two splits."""
    def bucket(r):
        q = next(m["content"] for m in r["messages"] if m["role"] == "user")
        return int(hashlib.md5(f"{seed}:{q}".encode()).hexdigest(), 16) % 10_000 / 10_000
    parts = {"train": [], "validation": [], "test": []}
    for r in records:
        b = bucket(r)
        parts["test" if b < test_ratio else "validation" if b < test_ratio + validation_ratio else "train"].append(r)
    return parts


def write_jsonl(path: Path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(CleanArguments).parse_args_into_dataclasses(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [Path(p) for p in args.input]
    if not files:
        raw = out / "raw_generated.jsonl"
        write_jsonl(raw, generate_task(args.num_generated, args.seed))
        files = [raw]
    kept, rejects, summary, problems = clean(files, args.max_chars, args.encoding)
    parts = split(kept, args.validation_ratio, args.test_ratio, args.seed)
    for name, rows in parts.items():
        write_jsonl(out / f"{name}.jsonl", rows)
    write_jsonl(out / "rejects.jsonl", rejects)
    summary["splits"] = {k: len(v) for k, v in parts.items()}
    summary["args"] = dataclasses.asdict(args)  # what these outputs were made with
    (out / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2))
    print(json.dumps(summary, ensure_ascii=False))
    if problems:
        raise SystemExit(problems[0])
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
