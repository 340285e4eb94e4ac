"""Image-caption pairs -> validated, normalised, de-duplicated train/validation/test.jsonl.

    python clean_data.py                                      # make_data.py's data/cache/synthetic/pairs.jsonl
    python clean_data.py --input my_pairs.csv --image_root /data/photos
    python clean_data.py --input a.jsonl b.csv --num_proc 8   # several processes for large sets (progress bar)

Inputs: .csv or .jsonl with `image_path` (relative to --image_root, default the input file's directory, or
absolute) and `text`; several rows (captions) per image are allowed; an optional `split` column
(train/validation/test) is kept, else images (never single captions) are split at random by --validation_ratio /
--test_ratio. Every image is opened and fully decoded once: unreadable, truncated and zero-byte files, decompression
bombs (> --max_pixels) and tiny images (< --min_side) are rejected; CMYK, palette, RGBA/LA and grayscale images are
converted to RGB and EXIF-rotated when loaded (counted in summary.json). Training loads them again, lazily.
Writes to --output_dir: train/validation/test.jsonl ({"image_path": absolute, "text"}), rejects.jsonl
({"file", "line", "reason", "detail", "text"}), summary.json. kept + rejected = read, always.
"""
import csv
import html
import json
import random
import re
import sys
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from multiprocessing import Pool
from pathlib import Path

from PIL import Image, ImageFile, ImageOps
from transformers import HfArgumentParser

HERE = Path(__file__).resolve().parent
DEFAULT_INPUT = HERE / "data/cache/synthetic/pairs.jsonl"
SPLITS = ("train", "validation", "test")


class BadImage(Exception):
    """An image that cannot be used: `reason` is the rejects.jsonl reason code, `detail` says why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def load_rgb(path, max_pixels: int = 4096 * 4096, min_side: int = 8) -> Image.Image:
    """Open and fully decode an image -> RGB (CMYK/P/RGBA/LA/L converted, alpha over white, EXIF rotation applied).

    Raises BadImage("empty_file" | "unreadable" | "truncated" | "too_large" | "too_small", detail).
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImage("empty_file", "0 bytes")
    except OSError as e:
        raise BadImage("unreadable", f"{type(e).__name__}: {e}") from None
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(path) as im:
            if im.width * im.height > max_pixels:
                raise BadImage("too_large", f"{im.width}x{im.height} > --max_pixels {max_pixels} "
                                            "(decompression bomb?)")
            try:
                im.load()
            except OSError as e:
                raise BadImage("truncated", f"{type(e).__name__}: {e}") from None
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                rgb = Image.new("RGB", rgba.size, (255, 255, 255))
                rgb.paste(rgba, mask=rgba.getchannel("A"))
            else:
                rgb = im.convert("RGB")
    except BadImage:
        raise
    except Image.DecompressionBombError as e:
        raise BadImage("too_large", str(e)[:200]) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise BadImage("unreadable", f"{type(e).__name__}: {e}") from None
    if min(rgb.size) < min_side:
        raise BadImage("too_small", f"{rgb.width}x{rgb.height} < --min_side {min_side}")
    return rgb


_HTML_TAG = re.compile(r"<[^<>]{1,200}>")
_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """NFKC (full-width -> half-width), strip HTML tags and control chars, drop spaces between Han characters."""
    text = unicodedata.normalize("NFKC", html.unescape(text))
    text = _HTML_TAG.sub(" ", text)
    text = "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in text)
    text = _SPACE.sub(" ", text).strip()
    return re.sub(r"(?<=[\u4e00-\u9fff，。、]) (?=[\u4e00-\u9fff，。、])", "", text)


@dataclass
class CleanArguments:
    input: list[str] = field(default_factory=list, metadata={
        "help": "Pair files (.csv/.jsonl) with image_path + text. Empty = data/cache/synthetic/pairs.jsonl "
                "(python make_data.py)."})
    image_root: str | None = field(default=None, metadata={
        "help": "Relative image paths start here. Default: each input file's directory."})
    output_dir: str = field(default=str(HERE / "data/cache/clean"))
    image_column: str = "image_path"
    text_column: str = "text"
    encoding: str = "utf-8"
    max_pixels: int = field(default=4096 * 4096, metadata={"help": "Larger images are rejected (too_large)."})
    min_side: int = field(default=16, metadata={"help": "Images with a side below this are rejected (too_small)."})
    min_chars: int = field(default=2, metadata={"help": "Shorter captions (after normalising) are rejected."})
    max_chars: int = field(default=60, metadata={"help": "Longer captions are rejected (too_long)."})
    validation_ratio: float = field(default=0.05, metadata={"help": "Images (not captions) for validation, "
                                                                    "when the input has no split column."})
    test_ratio: float = field(default=0.1)
    num_proc: int = field(default=1, metadata={"help": "Processes that decode images (progress bar when > 1)."})
    seed: int = 42

    def __post_init__(self):
        for name in ("validation_ratio", "test_ratio"):
            if not 0 < getattr(self, name) < 1:
                raise SystemExit(f"--{name}: {getattr(self, name)} is not in (0, 1). Fix: e.g. --{name} 0.1")
        if self.validation_ratio + self.test_ratio >= 1:
            raise SystemExit("--validation_ratio/--test_ratio: sum >= 1 leaves no training data. Fix: e.g. 0.05 0.1")
        for name in ("max_pixels", "min_side", "min_chars", "max_chars", "num_proc"):
            if getattr(self, name) < 1:
                raise SystemExit(f"--{name}: {getattr(self, name)} < 1. Fix: pass a positive number")
        if self.min_chars > self.max_chars:
            raise SystemExit(f"--min_chars: {self.min_chars} > --max_chars {self.max_chars}. Fix: e.g. 2 and 60")
        self.input = self.input or [str(DEFAULT_INPUT)]
        for path in self.input:
            if not Path(path).is_file():
                fix = "run `python make_data.py` first" if path == str(DEFAULT_INPUT) else "pass an existing file"
                raise SystemExit(f"--input: {path} does not exist. Fix: {fix}")
            if Path(path).suffix.lower() not in (".csv", ".jsonl"):
                raise SystemExit(f"--input: unsupported file type {Path(path).suffix!r}. Fix: use .csv or .jsonl")
        if self.image_root is not None and not Path(self.image_root).is_dir():
            raise SystemExit(f"--image_root: {self.image_root} is not a directory. Fix: pass the images' root")
        if Path(self.output_dir).is_file():
            raise SystemExit(f"--output_dir: {self.output_dir} is a file. Fix: pass a directory")


def read_records(path: str, args: CleanArguments):
    """Yield (line, record or None, error): line = where the record starts (csv: quoted fields span lines)."""
    if path.lower().endswith(".jsonl"):
        with open(path, encoding=args.encoding, errors="strict", newline="") as f:
            for i, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    rec = json.loads(raw)
                    yield i, rec if isinstance(rec, dict) else None, None if isinstance(rec, dict) else "not an object"
                except json.JSONDecodeError as e:
                    yield i, {"text": raw.strip()[:200]}, f"bad JSON: {e.msg}"
        return
    with open(path, encoding=args.encoding, newline="") as f:
        reader = csv.DictReader(f)
        start = 2
        for rec in reader:
            yield start, rec, None
            start = reader.line_num + 1


def _check(item):
    """Worker: (image path, max_pixels, min_side) -> (path, None, mode_info) or (path, BadImage fields, None)."""
    path, max_pixels, min_side = item
    try:
        with Image.open(path) as im:
            mode, rotated = im.mode, im.getexif().get(0x0112, 1) not in (1, None)
    except Exception:  # load_rgb below gives the reason
        mode, rotated = None, False
    try:
        load_rgb(path, max_pixels, min_side)
    except BadImage as e:
        return path, (e.reason, e.detail), None
    return path, None, (mode, rotated)


def check_images(paths: list[str], args: CleanArguments) -> dict:
    items = [(p, args.max_pixels, args.min_side) for p in paths]
    if args.num_proc > 1 and len(items) > 1:
        from tqdm.auto import tqdm
        with Pool(args.num_proc) as pool:
            results = list(tqdm(pool.imap(_check, items, chunksize=64), total=len(items), desc="images"))
    else:
        results = [_check(it) for it in items]
    return {p: (bad, info) for p, bad, info in results}


def clean(args: CleanArguments) -> dict:
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, rejects, read = [], [], 0

    def reject(file, line, reason, detail, text):
        rejects.append({"file": file, "line": line, "reason": reason, "detail": detail, "text": text})

    for path in args.input:
        root = Path(args.image_root) if args.image_root else Path(path).resolve().parent
        try:
            for line, rec, err in read_records(path, args):
                read += 1
                if rec is None or err:
                    reject(path, line, "format_error", err or "not a record", str((rec or {}).get("text", ""))[:200])
                    continue
                image, text = rec.get(args.image_column), rec.get(args.text_column)
                if not isinstance(image, str) or not image.strip() or not isinstance(text, str):
                    reject(path, line, "missing_field", f"needs string fields {args.image_column!r} and "
                                                        f"{args.text_column!r}; has {sorted(rec)}", str(text or "")[:200])
                    continue
                split = rec.get("split")
                if split not in (None, "", *SPLITS):
                    reject(path, line, "bad_split", f"split {split!r} is not one of {SPLITS}", text[:200])
                    continue
                p = Path(image.strip())
                rows.append({"file": path, "line": line, "image_path": str(p if p.is_absolute() else root / p),
                             "raw": text, "split": split or None})
        except UnicodeDecodeError as e:
            read += 1
            reject(path, None, "bad_encoding", f"not {args.encoding} at byte {e.start}; reading stopped. "
                                               "Fix: --encoding gbk (or the file's encoding)", "")

    status = check_images(sorted({r["image_path"] for r in rows}), args)
    converted, rotated = Counter(), 0
    for path, (bad, info) in status.items():
        if bad is None and info[0] not in ("RGB", None):
            converted[info[0]] += 1
        rotated += bool(bad is None and info[1])
    kept, seen = [], set()
    for r in rows:
        bad, _ = status[r["image_path"]]
        text = normalize(r["raw"])
        if bad is not None:
            reason, detail = (("missing_file", "no such file") if not Path(r["image_path"]).exists() else bad)
            reject(r["file"], r["line"], reason, f"{r['image_path']}: {detail}", r["raw"][:200])
        elif len(text) < args.min_chars:
            reject(r["file"], r["line"], "empty" if not text else "too_short", f"{len(text)} chars after normalising",
                   r["raw"][:200])
        elif len(text) > args.max_chars:
            reject(r["file"], r["line"], "too_long", f"{len(text)} chars > --max_chars {args.max_chars}",
                   r["raw"][:200])
        elif (r["image_path"], text) in seen:
            reject(r["file"], r["line"], "duplicate", "same image and caption as an earlier pair", r["raw"][:200])
        else:
            seen.add((r["image_path"], text))
            kept.append({"image_path": r["image_path"], "text": text, "split": r["split"]})

    # images, never single captions, are split: all captions of an image land in one split
    rng = random.Random(args.seed)
    images = sorted({r["image_path"] for r in kept if r["split"] is None})
    rng.shuffle(images)
    n_val, n_test = round(len(images) * args.validation_ratio), round(len(images) * args.test_ratio)
    assigned = {p: "validation" for p in images[:n_val]} | {p: "test" for p in images[n_val:n_val + n_test]}
    counts = {}
    for split in SPLITS:
        part = [r for r in kept if (r["split"] or assigned.get(r["image_path"], "train")) == split]
        counts[split] = {"pairs": len(part), "images": len({r["image_path"] for r in part})}
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"image_path": r["image_path"], "text": r["text"]}, ensure_ascii=False) + "\n"
                         for r in part)
    with open(out / "rejects.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects)
    summary = {"read": read, "kept": len(kept), "rejected": len(rejects),
               "reasons": dict(Counter(r["reason"] for r in rejects)),
               "images": {"checked": len(status), "bad": sum(b is not None for b, _ in status.values()),
                          "converted_to_rgb": dict(converted), "exif_rotated": rotated},
               "splits": counts, "args": asdict(args)}
    assert summary["kept"] + summary["rejected"] == summary["read"], summary
    (out / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2), encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(CleanArguments).parse_args_into_dataclasses(args=argv)
    summary = clean(args)
    print(f"read {summary['read']} pairs: kept {summary['kept']}, rejected {summary['rejected']} "
          f"{summary['reasons']}; images {summary['images']}; splits {summary['splits']} -> {args.output_dir}")
    if not summary["kept"]:
        raise SystemExit(f"--input: no pair kept; see {args.output_dir}/rejects.jsonl. Most likely cause: the "
                         f"column names (--image_column/--text_column), --image_root or --encoding")
    if not all(summary["splits"][s]["pairs"] for s in SPLITS):
        print(f"warning: an empty split {summary['splits']}: train.py needs all three")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
