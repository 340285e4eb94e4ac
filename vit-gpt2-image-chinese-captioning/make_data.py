"""Offline default data: PIL scenes (shapes, colours, counts, positions, sizes, backgrounds, noise) with Chinese
captions from templates, e.g. 「蓝色背景上有两个红色的圆形」, several phrasings per image.

    python make_data.py                          # -> data/cache/synthetic/{images/, pairs.jsonl}
    python make_data.py --n_train 3000 --image_size 64 --seed 7

Writes pairs.jsonl rows {"image_path" (relative to --output_dir), "text", "split"}: one row per caption, several
captions per image. The held-out splits (validation, test) use only (colour, shape) combinations that never occur in
train, so a model that memorised whole captions cannot score on them.
"""
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from transformers import HfArgumentParser

HERE = Path(__file__).resolve().parent
COLORS = {"红色": (220, 40, 40), "绿色": (40, 170, 60), "蓝色": (40, 80, 220), "黄色": (235, 200, 30)}
BACKGROUNDS = {"白色": (245, 245, 245), "黑色": (20, 20, 20), "灰色": (128, 128, 128)}
SHAPES = ["圆形", "正方形", "三角形"]
COUNTS = {1: "一", 2: "两", 3: "三"}
# (colour, shape) pairs never drawn in train: the held-out splits consist of them only
HELD_OUT = {("蓝色", "三角形"), ("红色", "正方形"), ("黄色", "圆形")}
TEMPLATES = ["{bg}背景上有{n}个{color}的{shape}", "{n}个{color}的{shape}在{bg}背景上",
             "图中{bg}背景上画着{n}个{color}{shape}"]


@dataclass
class MakeDataArguments:
    output_dir: str = field(default=str(HERE / "data/cache/synthetic"))
    n_train: int = field(default=2400, metadata={"help": "Training images."})
    n_validation: int = field(default=150, metadata={"help": "Held-out validation images."})
    n_test: int = field(default=300, metadata={"help": "Held-out test images."})
    image_size: int = field(default=48, metadata={"help": "Side of the square images, pixels."})
    captions_per_image: int = field(default=3, metadata={"help": f"1-{len(TEMPLATES)} phrasings per image."})
    noise: float = field(default=12.0, metadata={"help": "Std of the Gaussian pixel noise (0-255 scale)."})
    seed: int = 42

    def __post_init__(self):
        for name in ("n_train", "n_validation", "n_test"):
            if getattr(self, name) < 1:
                raise SystemExit(f"--{name}: {getattr(self, name)} < 1. Fix: e.g. --{name} 100")
        if self.image_size < 16:
            raise SystemExit(f"--image_size: {self.image_size} < 16. Fix: e.g. --image_size 48")
        if not 1 <= self.captions_per_image <= len(TEMPLATES):
            raise SystemExit(f"--captions_per_image: {self.captions_per_image} not in 1-{len(TEMPLATES)}. "
                             "Fix: e.g. --captions_per_image 3")
        if self.noise < 0:
            raise SystemExit(f"--noise: {self.noise} < 0. Fix: e.g. --noise 12")


def draw_scene(rng: random.Random, size: int, bg: str, color: str, shape: str, n: int) -> Image.Image:
    """n shapes of one colour at random non-overlapping positions and sizes, on a jittered background."""
    jitter = lambda rgb: tuple(max(0, min(255, c + rng.randint(-15, 15))) for c in rgb)
    img = Image.new("RGB", (size, size), jitter(BACKGROUNDS[bg]))
    draw = ImageDraw.Draw(img)
    boxes = []
    for _ in range(n):
        for _attempt in range(50):
            r = rng.uniform(0.10, 0.16) * size
            x, y = rng.uniform(r, size - r), rng.uniform(r, size - r)
            if all((x - bx) ** 2 + (y - by) ** 2 > (r + br + 1) ** 2 for bx, by, br in boxes):
                break
        boxes.append((x, y, r))
        fill = jitter(COLORS[color])
        if shape == "圆形":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        elif shape == "正方形":
            draw.rectangle([x - r, y - r, x + r, y + r], fill=fill)
        else:
            draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
    return img


def add_noise(img: Image.Image, std: float, rng: np.random.Generator) -> Image.Image:
    if std <= 0:
        return img
    a = np.asarray(img, dtype=np.float32) + rng.normal(0, std, (img.height, img.width, 3))
    return Image.fromarray(a.clip(0, 255).astype(np.uint8))


def captions(bg: str, color: str, shape: str, n: int, k: int) -> list[str]:
    return [t.format(bg=bg, color=color, shape=shape, n=COUNTS[n]) for t in TEMPLATES[:k]]


def make_data(args: MakeDataArguments) -> Path:
    rng, nrng = random.Random(args.seed), np.random.default_rng(args.seed)
    out = Path(args.output_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    seen = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in HELD_OUT]
    rows = []
    for split, n_images, combos in (("train", args.n_train, seen), ("validation", args.n_validation, sorted(HELD_OUT)),
                                    ("test", args.n_test, sorted(HELD_OUT))):
        for i in range(n_images):
            color, shape = rng.choice(combos)
            bg, n = rng.choice(list(BACKGROUNDS)), rng.choice(list(COUNTS))
            rel = f"images/{split}_{i:05d}.png"
            add_noise(draw_scene(rng, args.image_size, bg, color, shape, n), args.noise, nrng).save(out / rel)
            rows += [{"image_path": rel, "text": t, "split": split}
                     for t in captions(bg, color, shape, n, args.captions_per_image)]
    with open(out / "pairs.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return out / "pairs.jsonl"


def main(argv: list[str] | None = None) -> Path:
    (args,) = HfArgumentParser(MakeDataArguments).parse_args_into_dataclasses(args=argv)
    path = make_data(args)
    print(f"wrote {path} ({args.n_train}/{args.n_validation}/{args.n_test} train/validation/test images)")
    return path


if __name__ == "__main__":
    main()
