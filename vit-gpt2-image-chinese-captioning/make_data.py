# Copied from chinese_clip/make_data.py
"""Synthetic image-caption data, drawn with PIL: shapes, colours, counts, positions and sizes on varied
backgrounds with noise, and several Chinese captions per image from templates (「蓝色背景上有两个红色的圆形」).

    python make_data.py                                   # -> data/cache/shapes (the offline default)
    python make_data.py --n_train 300 --image_size 32 --output_dir /tmp/shapes   # tiny (tests)
    python make_data.py --odd_images                      # + corrupt / CMYK / palette / RGBA / gray / rotated files
    python make_data.py --skimage_photos                  # + photos.jsonl: scikit-image's 29 real photos (pip install)

Writes to --output_dir: images/<split>/<id>.png and one JSONL per split, one row per (image, caption):
{"image_path": "images/train/000000.png" (relative to the JSONL's folder), "text": caption, "image_id",
"attributes": {"shape", "colour", "count", "background", "position", "size"}}; --format csv writes
image_path,text,image_id CSV files instead. Splits: train, validation, test (attribute combinations seen in
training, new images) and test_unseen (colour-shape combinations that never occur in train/validation/test).
meta.json: the attribute values, the held-out combinations, the templates, the counts. Deterministic with --seed.
--skimage_photos adds images/photos/* and photos.jsonl: the real photos shipped in the scikit-image wheel, copied
byte for byte, two hand-written Chinese captions each (attributes["expect"]: clean_data.py's outcome). The file has no
split name, so clean_data.py splits it at random, as it would your own data.
"""
import csv
import importlib.util
import io
import json
import random
import shutil
import struct
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from transformers import HfArgumentParser

HERE = Path(__file__).resolve().parent

SHAPES = ["圆形", "正方形", "三角形", "菱形"]
COLOURS = {"红色": (220, 40, 40), "绿色": (40, 170, 60), "蓝色": (40, 80, 220), "黄色": (235, 210, 40),
           "紫色": (150, 60, 190), "橙色": (245, 140, 30)}
BACKGROUNDS = {"黑色": (20, 20, 20), "白色": (235, 235, 235), "灰色": (128, 128, 128)}
COUNTS = {1: "一", 2: "两", 3: "三"}
POSITIONS = ["左边", "右边", "上面", "下面", "中间"]
SIZES = ["大", "小"]
# several phrasings per image (a captioner needs several references; CLIP samples one per step); every phrasing
# names all six attributes, so two images share a caption only when they show the same scene (a captioner's distinct
# captions can then be compared with the number of distinct scenes)
TEMPLATES = [
    "{bg}背景的{pos}有{n}个{size}的{colour}{shape}",
    "{n}个{size}{colour}{shape}在{bg}背景的{pos}",
    "一张{bg}底色的图片，{pos}画着{n}个{size}{colour}{shape}",
    "图片{pos}有{n}个{size}的{colour}{shape}，背景是{bg}",
    "在{bg}的背景上，{pos}有{n}个{size}{colour}{shape}",
    "{size}的{colour}{shape}，一共{n}个，位于{bg}背景的{pos}",
]

# skimage/data/ of the scikit-image 0.26 wheel: name -> two captions. Real files of every kind clean_data.py meets:
# grayscale, RGBA (laid on white), a 2-page TIFF, an animated GIF, and a TIFF Pillow 13 cannot read.
PHOTOS = {
    "astronaut.png": ("穿橙色宇航服的宇航员在美国国旗前微笑", "一名女宇航员的肖像，旁边放着头盔和航天飞机模型"),
    "brick.png": ("灰度的砖墙纹理", "一面由长条砖块砌成的墙，黑白照片"),
    "camera.png": ("一个穿黑色外套的男人在草地上用三脚架上的相机拍照", "黑白照片：摄影师弯腰对着相机取景"),
    "cell.png": ("显微镜下的一个细胞，灰度图", "灰色背景中间有一个明亮的圆形细胞"),
    "chelsea.png": ("一只虎斑猫的脸部特写，眼睛是黄绿色的", "一只棕色条纹的猫看着镜头"),
    "chessboard_GRAY.png": ("黑白相间的国际象棋棋盘格", "一张灰度的棋盘格图案"),
    "chessboard_RGB.png": ("黑白相间的棋盘格图案", "彩色格式保存的黑白棋盘格"),
    "clock_motion.png": ("一个因运动而模糊的钟，灰度图", "灰色背景上一个模糊的圆形物体"),
    "coffee.png": ("一杯浓缩咖啡放在红色的碟子上，旁边有一把勺子", "木桌上的一杯咖啡"),
    "coins.png": ("黑色背景上排列着许多古代硬币，黑白照片", "四排大小不一的旧硬币"),
    "color.png": ("黑色背景上的一个彩色色轮", "一个圆形的色相环，中心是白色"),
    "grass.png": ("一片草地的灰度纹理", "密密的草叶，黑白照片"),
    "gravel.png": ("一地碎石子的灰度纹理", "密密麻麻的小石子，黑白照片"),
    "horse.png": ("白色背景上一匹黑色的马的剪影", "一匹站立的马的黑色轮廓"),
    "hubble_deep_field.jpg": ("哈勃深空场：黑色太空中的许多星系", "夜空里散布着大大小小的彩色星系"),
    "ihc.png": ("免疫组化染色的组织切片，棕色和蓝色", "显微镜下染成棕色的细胞团"),
    "logo.png": ("scikit-image 的标志，绿色和橙色的圆里有一条蛇", "一个绿橙两色的圆形标志"),
    "microaneurysms.png": ("视网膜上的血管和微动脉瘤，灰度特写", "灰色背景上几条暗色的细血管"),
    "moon.png": ("月球表面的灰度照片", "有陨石坑的月面，黑白"),
    "motorcycle_left.png": ("车库里停着一辆红色的摩托车", "一辆红黑相间的摩托车，背后是放着纸箱的货架"),
    "motorcycle_right.png": ("仓库里的一辆红色摩托车", "一辆红色摩托车停在水泥地上"),
    "multipage.tif": ("一张两页的很小的灰度渐变图", "很小的灰度渐变 TIFF 图"),
    "multipage_rgb.tif": ("一张两页的很小的彩色图", "很小的彩色 TIFF 图"),
    "no_time_for_that_tiny.gif": ("一个很小的动图", "一张缩得很小的 GIF 动画"),
    "page.png": ("一页印着英文的扫描书页", "灰度的文本页面，标题是 Region-based segmentation"),
    "phantom.png": ("黑色背景上的 Shepp-Logan 头部体模", "一个白色的椭圆里面有几个灰色和黑色的椭圆"),
    "retina.jpg": ("人眼视网膜的眼底照片，橙红色，可以看到血管", "黑色背景上的一个圆形眼底图像"),
    "rocket.jpg": ("夜里发射台上的一枚火箭，周围有几座塔架", "灯光照亮的发射台上竖着一枚白色火箭"),
    "text.png": ("纸上手写的数学公式，灰度照片", "斜着拍的一张写满公式的纸"),
}
PHOTO_EXPECT = {"multipage.tif": "too_small", "no_time_for_that_tiny.gif": "too_small",  # 10x15, 14x25
                "multipage_rgb.tif": "unreadable"}  # measured with Pillow 13.0; the rest are kept


@dataclass
class MakeDataArguments:
    output_dir: str = field(default=str(HERE / "data/cache/shapes"), metadata={"help": "Where images + JSONL go."})
    n_train: int = field(default=3000, metadata={"help": "Train images (each with --captions_per_image rows)."})
    n_validation: int = field(default=300)
    n_test: int = field(default=500)
    n_test_unseen: int = field(default=500, metadata={"help": "Images of the held-out colour-shape combinations."})
    captions_per_image: int = field(default=3, metadata={"help": "Different phrasings per image (<= templates)."})
    image_size: int = field(default=64, metadata={"help": "Side of the square images, pixels."})
    noise: float = field(default=12.0, metadata={"help": "Std of the Gaussian pixel noise (0-255 scale)."})
    n_heldout: int = field(default=4, metadata={"help": "Colour-shape combinations kept out of train (test_unseen)."})
    odd_images: bool = field(default=False, metadata={
        "help": "Add to train one file of each odd kind (zero-byte, truncated, not an image, decompression bomb, "
                "tiny, CMYK, palette, RGBA, grayscale, EXIF-rotated) + a duplicate row: clean_data.py's job."})
    skimage_photos: bool = field(default=False, metadata={
        "help": "Also write photos.jsonl: the real photos in the installed scikit-image wheel, captioned by hand."})
    format: str = field(default="jsonl", metadata={"help": "jsonl or csv."})
    seed: int = field(default=42)

    def __post_init__(self):
        for name in ("n_train", "n_validation", "n_test", "image_size", "captions_per_image"):
            if getattr(self, name) < 1:
                raise SystemExit(f"--{name}: {getattr(self, name)} must be >= 1. Fix: e.g. --{name} 100")
        if self.n_test_unseen < 0:
            raise SystemExit(f"--n_test_unseen: {self.n_test_unseen} < 0. Fix: e.g. --n_test_unseen 500")
        if self.captions_per_image > len(TEMPLATES):
            raise SystemExit(f"--captions_per_image: {self.captions_per_image} > {len(TEMPLATES)} templates. "
                             f"Fix: at most {len(TEMPLATES)}")
        if self.image_size < 24:
            raise SystemExit(f"--image_size: {self.image_size} < 24 leaves no room for three shapes. Fix: e.g. 32")
        if not 0 <= self.n_heldout < len(SHAPES) * len(COLOURS):
            raise SystemExit(f"--n_heldout: {self.n_heldout} not in [0, {len(SHAPES) * len(COLOURS)}). Fix: e.g. 4")
        if self.noise < 0:
            raise SystemExit(f"--noise: {self.noise} < 0. Fix: e.g. --noise 12")
        if self.format not in ("jsonl", "csv"):
            raise SystemExit(f"--format: {self.format!r} is not jsonl or csv. Fix: --format jsonl")
        if Path(self.output_dir).is_file():
            raise SystemExit(f"--output_dir: {self.output_dir} is a file. Fix: pass a directory")
        if self.skimage_photos and skimage_data_dir() is None:
            raise SystemExit("--skimage_photos: scikit-image is not installed. Fix: pip install scikit-image "
                             "(its wheel ships the photos), or drop --skimage_photos")


def skimage_data_dir() -> Path | None:
    """skimage/data/ of the installed scikit-image, found without importing it; None when it is not installed."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def heldout_combinations(n: int) -> list[tuple[str, str]]:
    """n (colour, shape) pairs never drawn in train/validation/test: each shape loses a different colour."""
    colours = list(COLOURS)
    return [(colours[(2 * i + 1) % len(colours)], SHAPES[i % len(SHAPES)]) for i in range(n)]


def sample_attributes(rng: random.Random, allowed) -> dict:
    """A random scene whose (colour, shape) satisfies `allowed`; the shape colour differs from the background."""
    while True:
        attrs = {"shape": rng.choice(SHAPES), "colour": rng.choice(list(COLOURS)),
                 "count": rng.choice(list(COUNTS)), "background": rng.choice(list(BACKGROUNDS)),
                 "position": rng.choice(POSITIONS), "size": rng.choice(SIZES)}
        if allowed((attrs["colour"], attrs["shape"])):
            return attrs


def _shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "圆形":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "正方形":
        draw.rectangle([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85], fill=fill)
    elif shape == "三角形":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
    else:  # 菱形
        draw.polygon([(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)], fill=fill)


def draw_scene(attrs: dict, size: int, rng: random.Random, noise: float) -> Image.Image:
    """`count` shapes of one colour and size in one region of the image, on a jittered, shaded background."""
    bg = np.array(BACKGROUNDS[attrs["background"]], dtype=np.float32) + rng.uniform(-15, 15)
    ramp = np.linspace(-12, 12, size, dtype=np.float32)  # a light gradient, random direction
    shade = ramp[:, None] if rng.random() < 0.5 else ramp[None, :]
    canvas = np.clip(bg[None, None, :] + shade[..., None] * rng.choice([-1, 1]), 0, 255)
    img = Image.fromarray(np.broadcast_to(canvas, (size, size, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    r = size * (0.13 if attrs["size"] == "大" else 0.075) * rng.uniform(0.9, 1.1)
    # the region's centre: a third of the image in the named direction
    cx, cy = {"左边": (0.27, 0.5), "右边": (0.73, 0.5), "上面": (0.5, 0.27), "下面": (0.5, 0.73),
              "中间": (0.5, 0.5)}[attrs["position"]]
    n = attrs["count"]
    horizontal = attrs["position"] in ("上面", "下面", "中间")  # a row across, or a column along the side
    step = 2.3 * r
    colour = np.array(COLOURS[attrs["colour"]]) + np.array([rng.randint(-20, 20) for _ in range(3)])
    fill = tuple(int(c) for c in np.clip(colour, 0, 255))
    for k in range(n):
        offset = (k - (n - 1) / 2) * step
        x, y = cx * size + (offset if horizontal else 0), cy * size + (0 if horizontal else offset)
        _shape(draw, attrs["shape"], x + rng.uniform(-1, 1), y + rng.uniform(-1, 1), r, fill)
    arr = np.asarray(img, dtype=np.float32)
    if noise > 0:
        arr = arr + np.random.default_rng(rng.randrange(1 << 30)).normal(0, noise, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def captions(attrs: dict, k: int, rng: random.Random) -> list[str]:
    """k different phrasings (k templates drawn without replacement) of one scene."""
    values = {"shape": attrs["shape"], "colour": attrs["colour"], "n": COUNTS[attrs["count"]],
              "bg": attrs["background"], "pos": attrs["position"], "size": attrs["size"]}
    return [t.format(**values) for t in rng.sample(TEMPLATES, k)]


def _write_rows(path: Path, rows: list[dict], fmt: str) -> None:
    if fmt == "csv":
        with open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image_path", "text", "image_id"])
            w.writerows([r["image_path"], r["text"], r["image_id"]] for r in rows)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _png_with_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims width x height (a decompression bomb to PIL's size check)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


def write_odd_images(root: Path, size: int, rng: random.Random) -> list[dict]:
    """One file of each odd kind under images/odd/ and a row for each; their expected clean_data.py outcome is
    in attributes["expect"] (a reject reason, or "kept")."""
    odd = root / "images/odd"
    odd.mkdir(parents=True, exist_ok=True)
    base = draw_scene({"shape": "圆形", "colour": "红色", "count": 1, "background": "白色", "position": "中间",
                       "size": "大"}, size, rng, 0)
    rows = []

    def add(name: str, expect: str, write):
        write(odd / name)
        rows.append({"image_path": f"images/odd/{name}", "text": f"白色背景上有一个红色的圆形（{name}）",
                     "image_id": f"odd/{name}", "attributes": {"expect": expect}})

    add("zero_byte.png", "zero_byte", lambda p: p.write_bytes(b""))
    good = io.BytesIO()
    base.save(good, "PNG")
    add("truncated.png", "truncated", lambda p: p.write_bytes(good.getvalue()[: len(good.getvalue()) // 2]))
    add("not_an_image.png", "unreadable", lambda p: p.write_text("这不是图片 not an image", encoding="utf-8"))
    add("bomb.png", "decompression_bomb", lambda p: p.write_bytes(_png_with_size(40000, 40000)))
    add("tiny.png", "too_small", lambda p: base.resize((8, 8)).save(p))
    add("cmyk.jpg", "kept", lambda p: base.convert("CMYK").save(p, "JPEG"))
    add("palette.png", "kept", lambda p: base.convert("P", palette=Image.Palette.ADAPTIVE).save(p))
    add("rgba.png", "kept", lambda p: base.convert("RGBA").save(p))
    add("gray.png", "kept", lambda p: base.convert("L").save(p))

    def rotated(p):  # stored sideways + EXIF orientation 6 ("rotate 90 CW to view"): upright after exif_transpose
        exif = Image.Exif()
        exif[0x0112] = 6
        base.transpose(Image.Transpose.ROTATE_90).save(p, "JPEG", exif=exif.tobytes())
    add("exif_rotated.jpg", "kept", rotated)
    rows.append(dict(rows[-1], attributes={"expect": "duplicate"}))  # the same pair twice
    return rows


def write_photos(root: Path) -> list[dict]:
    """Copy PHOTOS from scikit-image's data folder to images/photos/ (bytes unchanged) -> one row per caption."""
    src, dst = skimage_data_dir(), root / "images/photos"
    dst.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, texts in PHOTOS.items():
        if not (src / name).is_file():  # another scikit-image version
            continue
        shutil.copyfile(src / name, dst / name)
        rows += [{"image_path": f"images/photos/{name}", "text": t, "image_id": f"photos/{name}",
                  "attributes": {"expect": PHOTO_EXPECT.get(name, "kept"), "source": f"skimage/data/{name}"}}
                 for t in texts]
    return rows


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(MakeDataArguments).parse_args_into_dataclasses(args=argv)
    rng = random.Random(args.seed)
    out = Path(args.output_dir)
    heldout = set(heldout_combinations(args.n_heldout))
    plan = {"train": (args.n_train, lambda c: c not in heldout), "validation": (args.n_validation, lambda c: c not in heldout),
            "test": (args.n_test, lambda c: c not in heldout), "test_unseen": (args.n_test_unseen, lambda c: c in heldout)}
    if not heldout:
        plan.pop("test_unseen")
    counts = {}
    for split, (n, allowed) in plan.items():
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n):
            attrs = sample_attributes(rng, allowed)
            rel = f"images/{split}/{i:06d}.png"
            draw_scene(attrs, args.image_size, rng, args.noise).save(out / rel)
            for text in captions(attrs, args.captions_per_image, rng):
                rows.append({"image_path": rel, "text": text, "image_id": f"{split}/{i:06d}", "attributes": attrs})
        if split == "train" and args.odd_images:
            rows += write_odd_images(out, args.image_size, rng)
        _write_rows(out / f"{split}.{args.format}", rows, args.format)
        counts[split] = {"images": n, "rows": len(rows)}
    if args.skimage_photos:
        rows = write_photos(out)
        _write_rows(out / f"photos.{args.format}", rows, args.format)
        counts["photos"] = {"images": len({r["image_id"] for r in rows}), "rows": len(rows)}
    meta = {"shapes": SHAPES, "colours": list(COLOURS), "backgrounds": list(BACKGROUNDS),
            "counts": {str(k): v for k, v in COUNTS.items()}, "positions": POSITIONS, "sizes": SIZES,
            "heldout_combinations": sorted(heldout), "templates": TEMPLATES, "splits": counts, "args": asdict(args)}
    (out / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2), encoding="utf-8")
    print(f"wrote {out}: " + ", ".join(f"{s} {c['images']} images / {c['rows']} rows" for s, c in counts.items()))
    return meta


if __name__ == "__main__":
    main()
