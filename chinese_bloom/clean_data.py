"""Raw instruction data -> clean chat records + rejects.jsonl + summary.json.

Reads JSON or JSONL in any of three shapes and writes one canonical shape,
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
import datetime
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
class DataArguments:
    input: list[str] = field(default_factory=list, metadata={"help": "raw JSON/JSONL files; empty = generate the default task"})
    output_dir: str = field(default=str(HERE / "data/cache/clean"))
    max_chars: int = field(default=4096, metadata={"help": "length policy: conversations longer than this are rejected"})
    validation_ratio: float = field(default=0.05, metadata={"help": "share of the input held out for validation"})
    test_ratio: float = field(default=0.05, metadata={"help": "share of the input held out for test"})
    num_generated: int = field(default=6000, metadata={"help": "size of the generated default task"})
    seed: int = field(default=42)


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


def read_records(path: Path):
    """Yield (line_number, record_or_FormatError). JSON arrays count records from 1, JSONL by line."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".json" or text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SystemExit(f"--input: {path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}). "
                             f"Fix: use a JSON array of records, or JSONL with one record per line")
        if not isinstance(data, list):
            raise SystemExit(f"--input: {path} holds a JSON {type(data).__name__}, expected an array of records. "
                             f"Fix: wrap the records in [...] or write JSONL")
        yield from enumerate(data, start=1)
        return
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line)
        except json.JSONDecodeError as e:
            yield i, FormatError(f"not valid JSON ({e.msg} at column {e.colno})")


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


def check_messages(messages: list[dict], max_chars: int) -> str | None:
    """Reason to reject a normalised conversation, or None."""
    if not any(m["role"] == "assistant" for m in messages):
        return "no_answer"
    if any(m["role"] == "assistant" and not m["content"] for m in messages):
        return "empty_answer"
    if any(m["role"] == "user" and not m["content"] for m in messages):
        return "empty_question"
    non_system = [m for m in messages if m["role"] != "system"]
    if non_system[0]["role"] != "user":
        return "does_not_start_with_user"
    if sum(len(m["content"]) for m in messages) > max_chars:
        return "too_long"
    return None


def clean(files: list[Path], max_chars: int):
    """-> (kept records, rejects, summary). kept + rejected == read, always."""
    kept, rejects, seen = [], [], set()
    reasons, read = Counter(), 0
    for path in files:
        n_file, n_format_errors, first_error = 0, 0, None
        for line, rec in read_records(path):
            read += 1
            n_file += 1
            try:
                if isinstance(rec, FormatError):
                    raise rec
                messages = to_messages(rec)
            except FormatError as e:
                n_format_errors += 1
                first_error = first_error or f"{path}: record at line {line}: {e}"
                reasons["format_error"] += 1
                rejects.append({"file": str(path), "line": line, "reason": f"format_error: {e}",
                                "text": json.dumps(rec, ensure_ascii=False)[:500] if not isinstance(rec, FormatError) else ""})
                continue
            messages = [{"role": m["role"], "content": normalize(m["content"])} for m in messages]
            reason = check_messages(messages, max_chars)
            key = hashlib.md5(json.dumps(messages, ensure_ascii=False).encode()).hexdigest()
            if reason is None and key in seen:
                reason = "duplicate"
            if reason:
                reasons[reason] += 1
                rejects.append({"file": str(path), "line": line, "reason": reason,
                                "text": json.dumps(messages, ensure_ascii=False)[:500]})
                continue
            seen.add(key)
            out = {"messages": messages}
            if isinstance(rec, dict) and "task" in rec:
                out["task"] = rec["task"]
            kept.append(out)
        if n_file and n_format_errors == n_file:
            raise SystemExit(f"--input: no record of {path} has a supported shape; first problem: {first_error}. "
                             f"Fix: convert the file to Alpaca/BELLE, sharegpt or OpenAI messages records")
    summary = {"read": read, "kept": len(kept), "rejected": len(rejects), "reasons": dict(reasons)}
    assert summary["kept"] + summary["rejected"] == summary["read"]
    return kept, rejects, summary


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
    (args,) = HfArgumentParser(DataArguments).parse_args_into_dataclasses(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [Path(p) for p in args.input]
    for p in files:
        if not p.is_file():
            raise SystemExit(f"--input: {p} does not exist. Fix: pass existing JSON/JSONL files")
    if not files:
        raw = out / "raw_generated.jsonl"
        write_jsonl(raw, generate_task(args.num_generated, args.seed))
        files = [raw]
    kept, rejects, summary = clean(files, args.max_chars)
    parts = split(kept, args.validation_ratio, args.test_ratio, args.seed)
    for name, rows in parts.items():
        write_jsonl(out / f"{name}.jsonl", rows)
    write_jsonl(out / "rejects.jsonl", rejects)
    summary["splits"] = {k: len(v) for k, v in parts.items()}
    (out / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2))
    print(json.dumps(summary, ensure_ascii=False))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
