# Copied from chinese_clip/clean_data.py
"""Image-text pairs (CSV or JSONL: image_path, text) -> validated, normalised, de-duplicated splits.

    python clean_data.py                                  # data/cache/shapes (make_data.py) -> data/cache/clean
    python clean_data.py --input my/pairs.csv --image_root my/images --output_dir data/cache/mine
    python clean_data.py --input a.jsonl b.csv --num_proc 4   # several processes (default: by size), progress bar

Inputs: .csv (header with --image_column/--text_column) or .jsonl; image_path relative to --image_root (default:
the input file's folder) or absolute. A file named train/validation/test/test_unseen.* keeps that split; other
files are split at random by image (--validation_ratio / --test_ratio), so no image is in two splits.
Every image is opened and fully decoded (load_rgb): zero_byte / missing / unreadable / truncated /
decompression_bomb (over --max_pixels) / too_small (a side under --min_side) are rejected; CMYK, palette, RGBA/LA
(on white), grayscale become RGB and EXIF orientation is applied when the dataset loads them (the counts of each
conversion are in summary.json). Texts: NFKC, control characters dropped, whitespace collapsed; empty texts and
exact duplicate pairs (same image bytes, same text) are rejected.
Writes to --output_dir: <split>.jsonl ({"image_path": absolute, "text", "image_id", + the input's other fields}),
rejects.jsonl ({"file", "line", "reason", "detail", "text"}), summary.json. kept + rejected = read, always.
"""
import csv
import dataclasses
import hashlib
import json
import os
import random
import struct
import sys
import unicodedata
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from transformers import HfArgumentParser

HERE = Path(__file__).resolve().parent
SPLITS = ("train", "validation", "test", "test_unseen")
DEFAULT_MAX_PIXELS = 40_000_000  # ~ 6300 x 6300; PIL's own bomb limit is 89M (warning) / 179M (error)
csv.field_size_limit(1 << 24)


@dataclass
class CleanArguments:
    input: list[str] = field(default_factory=list, metadata={
        "help": "CSV/JSONL files of image_path,text. Empty = data/cache/shapes/{train,validation,test,test_unseen}"
                ".jsonl from make_data.py."})
    image_root: str | None = field(default=None, metadata={
        "help": "Folder that relative image paths start from. Default: each input file's own folder."})
    output_dir: str = field(default=str(HERE / "data/cache/clean"), metadata={"help": "Where the clean splits go."})
    image_column: str = field(default="image_path", metadata={"help": "Image path column/key."})
    text_column: str = field(default="text", metadata={"help": "Caption column/key."})
    encoding: str = field(default="utf-8", metadata={"help": "Encoding of the input files."})
    min_side: int = field(default=16, metadata={"help": "Images with a side shorter than this are too_small."})
    max_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata={
        "help": "Images with more pixels are rejected as decompression_bomb (checked before decoding)."})
    max_chars: int = field(default=200, metadata={"help": "Longer captions are rejected as too_long."})
    num_proc: int | None = field(default=None, metadata={
        "help": "Processes that decode images. Default: 1 under 2000 pairs, else min(4, CPU cores)."})
    validation_ratio: float = field(default=0.05, metadata={"help": "Files without a split name: validation share."})
    test_ratio: float = field(default=0.1, metadata={"help": "Files without a split name: test share."})
    seed: int = field(default=42)

    def __post_init__(self):
        for name in ("validation_ratio", "test_ratio"):
            if not 0 < getattr(self, name) < 1:
                raise SystemExit(f"--{name}: {getattr(self, name)} is not in (0, 1). Fix: e.g. --{name} 0.1")
        if self.validation_ratio + self.test_ratio >= 1:
            raise SystemExit("--validation_ratio/--test_ratio: their sum >= 1 leaves no train data. Fix: e.g. 0.05 "
                             "and 0.1")
        for name in ("min_side", "max_pixels", "max_chars"):
            if getattr(self, name) < 1:
                raise SystemExit(f"--{name}: {getattr(self, name)} must be >= 1. Fix: pass a positive number")
        if self.num_proc is not None and self.num_proc < 1:
            raise SystemExit(f"--num_proc: {self.num_proc} < 1. Fix: e.g. --num_proc 4, or leave it out")
        if not self.image_column or not self.text_column:
            raise SystemExit("--image_column/--text_column: empty name. Fix: the column names of your files")
        try:
            "".encode(self.encoding)
        except LookupError:
            raise SystemExit(f"--encoding: unknown encoding {self.encoding!r}. Fix: e.g. --encoding gbk") from None
        if not self.input:  # late default: the generator's splits
            shapes = HERE / "data/cache/shapes"
            self.input = [str(shapes / f"{s}.jsonl") for s in SPLITS if (shapes / f"{s}.jsonl").is_file()]
            if not self.input:
                raise SystemExit(f"--input: none given and no generated data in {shapes}. Fix: python make_data.py "
                                 "first, or pass --input pairs.csv")
        for path in self.input:
            if not Path(path).is_file():
                raise SystemExit(f"--input: {path} does not exist. Fix: pass an existing .csv/.jsonl file")
            if Path(path).suffix.lower() not in (".csv", ".jsonl"):
                raise SystemExit(f"--input: unsupported file type {Path(path).suffix!r} ({path}). Fix: .csv or .jsonl")
        if self.image_root is not None and not Path(self.image_root).is_dir():
            raise SystemExit(f"--image_root: {self.image_root} is not a directory. Fix: the folder of your images")
        if Path(self.output_dir).is_file():
            raise SystemExit(f"--output_dir: {self.output_dir} is a file. Fix: pass a directory")


# ---- images: self-contained, copied by vit-gpt2-image-chinese-captioning ----

class BadImage(Exception):
    """An image that cannot be used; `reason` is a short code (the rejects.jsonl / summary.json key)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def load_rgb(path, max_pixels: int = 40_000_000, min_side: int = 16, info: dict | None = None) -> Image.Image:
    """Open, check and fully decode an image -> an upright RGB PIL image, or raise BadImage(reason, detail).

    reasons: missing, zero_byte, unreadable (not an image PIL knows), decompression_bomb (more than `max_pixels`
    pixels, checked from the header before decoding), truncated (or otherwise undecodable data), too_small
    (a side < `min_side`). CMYK / YCbCr / grayscale (L, I, F) become RGB; palette (P), RGBA, LA and PA are laid
    on white (transparent pixels become white, not black); EXIF orientation is applied. `info`, when given,
    receives {"mode": the file's mode, "exif_transposed": bool, "size": (w, h) upright}.
    """
    path = Path(path)
    try:
        n_bytes = path.stat().st_size
    except OSError as e:
        raise BadImage("missing", f"{path}: {e.strerror or e}") from None
    if n_bytes == 0:
        raise BadImage("zero_byte", f"{path} is empty (0 bytes)")
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # a global someone else set would let truncated files through
        raise BadImage("truncated", "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on; refusing to guess missing pixels")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
        try:
            img = Image.open(path)
        except Image.DecompressionBombError as e:
            raise BadImage("decompression_bomb", str(e)) from None
        except UnidentifiedImageError:
            raise BadImage("unreadable", f"{path.name}: not an image format PIL can read ({n_bytes} bytes)") from None
        except (OSError, ValueError, SyntaxError) as e:
            raise BadImage("unreadable", f"{path.name}: {type(e).__name__}: {e}") from None
        with img:
            w, h = img.size
            if w * h > max_pixels:
                raise BadImage("decompression_bomb", f"{w}x{h} = {w * h} pixels > --max_pixels {max_pixels}")
            try:
                img.load()
            except Image.DecompressionBombError as e:
                raise BadImage("decompression_bomb", str(e)) from None
            except (OSError, ValueError, SyntaxError, struct.error) as e:
                raise BadImage("truncated", f"{path.name}: {type(e).__name__}: {e}") from None
            mode, orientation = img.mode, _orientation(img)
            try:
                upright = ImageOps.exif_transpose(img)
            except Exception:  # a broken EXIF block: keep the pixels as stored
                upright, orientation = img, None
            rgb = to_rgb(upright)
    if min(rgb.size) < min_side:
        raise BadImage("too_small", f"{rgb.size[0]}x{rgb.size[1]}: a side < --min_side {min_side}")
    if info is not None:
        info.update(mode=mode, exif_transposed=orientation not in (None, 1), size=rgb.size)
    return rgb


def _orientation(img: Image.Image):
    try:
        return img.getexif().get(0x0112)
    except Exception:
        return None


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency (RGBA, LA, PA, P with a transparent index) composited on white."""
    if img.mode == "RGB":
        return img.copy()
    if img.mode == "P" or img.mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16/32-bit gray: scale to 8 bits
        import numpy as np
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 0
        img = Image.fromarray((arr / hi * 255 if hi > 255 else arr).clip(0, 255).astype("uint8"), "L")
    return img.convert("RGB")


def normalize_text(text: str) -> str:
    """NFKC (full-width -> half-width), control / zero-width characters dropped, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in text
                   if unicodedata.category(c) != "Cf")
    return " ".join(text.split())


# ---- reading the pair files ----

def read_pairs(path: str, args: CleanArguments):
    """(line where the record starts, image_path, text, extra fields, error) per record of a CSV/JSONL file."""
    p = Path(path)
    if p.suffix.lower() == ".jsonl":
        with open(p, encoding=args.encoding, errors="strict", newline="") as f:
            lines = f.read().split("\n")
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield i, None, line, {}, ("format_error", f"not JSON: {e.msg} at column {e.colno}")
                continue
            if not isinstance(obj, dict):
                yield i, None, line, {}, ("format_error", "a JSON line that is not an object")
                continue
            yield i, *_fields(obj, args, line)
        return
    with open(p, encoding=args.encoding, newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            line = reader.line_num  # the line the record ends on; a one-line record starts there too
            yield line, *_fields(row, args, json.dumps(row, ensure_ascii=False))


def _fields(obj: dict, args: CleanArguments, raw: str):
    image, text = obj.get(args.image_column), obj.get(args.text_column)
    extra = {k: v for k, v in obj.items() if k not in (args.image_column, args.text_column) and k is not None}
    if not isinstance(image, str) or not image.strip():
        return None, raw, extra, ("format_error", f"no {args.image_column!r} string (keys: {sorted(map(str, obj))})")
    if not isinstance(text, str):
        return image, raw, extra, ("format_error", f"no {args.text_column!r} string (keys: {sorted(map(str, obj))})")
    return image, text, extra, None


def check_image(job: tuple[str, int, int]) -> tuple[str, str | None, str | None, str | None, dict]:
    """Worker: (path, max_pixels, min_side) -> (path, sha1, reason, detail, info)."""
    path, max_pixels, min_side = job
    info = {}
    try:
        load_rgb(path, max_pixels, min_side, info)
    except BadImage as e:
        return path, None, e.reason, e.detail, {}
    with open(path, "rb") as f:
        digest = hashlib.sha1(f.read()).hexdigest()
    return path, digest, None, None, info


def check_images(paths: list[str], args: CleanArguments, n_pairs: int) -> dict:
    """Every distinct image once, in --num_proc processes, with a progress bar."""
    from tqdm.auto import tqdm
    num_proc = args.num_proc or (1 if n_pairs < 2000 else min(4, os.cpu_count() or 1))
    jobs = [(p, args.max_pixels, args.min_side) for p in paths]
    bar = dict(total=len(jobs), desc=f"images ({num_proc} process{'es' if num_proc > 1 else ''})", unit="img",
               disable=None)
    if num_proc == 1:
        return {r[0]: r for r in tqdm(map(check_image, jobs), **bar)}
    import multiprocessing
    with multiprocessing.get_context("spawn").Pool(num_proc) as pool:
        return {r[0]: r for r in tqdm(pool.imap_unordered(check_image, jobs, chunksize=64), **bar)}


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(CleanArguments).parse_args_into_dataclasses(args=argv)
    read, rejects, candidates = 0, [], []

    def reject(file, line, reason, detail, text):
        rejects.append({"file": file, "line": line, "reason": reason, "detail": detail, "text": text})

    for path in args.input:
        root = Path(args.image_root) if args.image_root else Path(path).resolve().parent
        try:
            records = list(read_pairs(path, args))
        except UnicodeDecodeError as e:
            raise SystemExit(f"--encoding: {path} is not valid {args.encoding} (byte {e.start}). "
                             "Fix: pass its encoding, e.g. --encoding gbk") from None
        for line, image, text, extra, error in records:
            read += 1
            if error is None:
                clean = normalize_text(text)
                if not clean:
                    error = ("empty_text", "no caption left after normalising")
                elif len(clean) > args.max_chars:
                    error = ("too_long", f"{len(clean)} characters; --max_chars {args.max_chars}")
            if error:
                reject(str(path), line, *error, text)
                continue
            image_path = Path(image) if Path(image).is_absolute() else root / image
            candidates.append({"file": str(path), "line": line, "raw": text, "text": clean, "extra": extra,
                               "image_path": str(image_path.resolve()), "split": Path(path).stem})

    checked = check_images(sorted({c["image_path"] for c in candidates}), args, len(candidates))
    kept, seen, modes, transposed = [], {}, Counter(), 0
    for c in candidates:
        _, digest, reason, detail, info = checked[c["image_path"]]
        if reason:
            reject(c["file"], c["line"], reason, detail, c["raw"])
            continue
        key = (digest, c["text"])
        if key in seen:
            reject(c["file"], c["line"], "duplicate", f"same image bytes and caption as {seen[key]}", c["raw"])
            continue
        seen[key] = f"{Path(c['file']).name}:{c['line']}"
        kept.append(c)
    for path in {c["image_path"] for c in kept}:
        info = checked[path][4]
        modes[info["mode"]] += 1
        transposed += info["exif_transposed"]
    assert len(kept) + len(rejects) == read, (len(kept), len(rejects), read)

    # split: a file named after a split keeps it; the others are split by image at random
    rng = random.Random(args.seed)
    assign = {}
    for path in sorted({c["image_path"] for c in kept if c["split"] not in SPLITS}):
        u = rng.random()
        assign[path] = "test" if u < args.test_ratio else "validation" if u < args.test_ratio + args.validation_ratio \
            else "train"
    splits = defaultdict(list)
    for c in kept:
        split = c["split"] if c["split"] in SPLITS else assign[c["image_path"]]
        row = {"image_path": c["image_path"], "text": c["text"],
               **{k: v for k, v in c["extra"].items()}}
        row.setdefault("image_id", c["image_path"])
        splits[split].append(row)
    owners = defaultdict(set)
    for split, rows in splits.items():
        for r in rows:
            owners[r["image_path"]].add(split)
    leaked = [p for p, s in owners.items() if len(s) > 1]
    if leaked:
        print(f"warning: {len(leaked)} images are in more than one split (e.g. {leaked[0]})", file=sys.stderr)

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "rejects.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects)
    for split in SPLITS:
        (out / f"{split}.jsonl").unlink(missing_ok=True)  # no stale split from an earlier run
    for split, rows in splits.items():
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    reasons = Counter(r["reason"] for r in rejects)
    summary = {
        "files": args.input, "read": read, "kept": len(kept), "rejected": len(rejects),
        "reasons": dict(reasons.most_common()),
        "images": {"checked": len(checked), "kept": len({c["image_path"] for c in kept}),
                   "modes": dict(modes.most_common()), "converted_to_rgb": sum(n for m, n in modes.items() if m != "RGB"),
                   "exif_transposed": transposed},
        "splits": {s: {"pairs": len(rows), "images": len({r["image_path"] for r in rows})} for s, rows in splits.items()},
        "leaked_images": len(leaked), "args": dataclasses.asdict(args),
    }
    (out / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2), encoding="utf-8")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("files", "args")}, ensure_ascii=False, indent=2))
    if not kept:
        cause = ("every image failed to load: check --image_root" if reasons and all(
            r in ("missing", "unreadable") for r in reasons) else
            f"check --image_column {args.image_column!r} / --text_column {args.text_column!r}"
            if reasons.get("format_error") == read else "see rejects.jsonl")
        raise SystemExit(f"--input: no pair kept of {read} read; {cause} (rejects.jsonl and summary.json in {out})")
    print(f"wrote {out}/{{{','.join(splits)}}}.jsonl, rejects.jsonl, summary.json")
    return summary


if __name__ == "__main__":
    main()
