"""Data-flow diagram of this folder -> images/chinese_clip.png.

    python diagram.py                   # or: python chinese_clip/diagram.py --out some.png
"""
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch
from transformers import HfArgumentParser

OUT = Path(__file__).resolve().parents[1] / "images" / "chinese_clip.png"
STEPS = [
    "make_data.py: PIL scenes (shape, colour, count, position, size, background, noise)\n"
    "3 Chinese captions per image; test_unseen = colour-shape pairs never in train (or your CSV/JSONL)",
    "clean_data.py: load_rgb on every image (zero-byte / truncated / unreadable / bomb / tiny -> rejects.jsonl;\n"
    "CMYK / P / RGBA / L -> RGB, EXIF transpose), NFKC captions, exact duplicate pairs dropped, summary.json",
    "train_tokenizer.py: char BertTokenizerFast from the captions;\n"
    "dataset.py: one row per image, images decoded lazily in the transform (DataLoader workers)",
    "model.py: small ChineseCLIPModel (tiny ViT + tiny BERT) / VisionTextDualEncoderModel,\n"
    "or --model_name_or_path OFA-Sys/chinese-clip-vit-base-patch16 (ChineseCLIPProcessor, PIL image processor)",
    "train.py: symmetric InfoNCE over in-batch negatives (gathered across DDP ranks), temperature clamped <= 100,\n"
    "warmup + cosine; NaN / chance-loss / collapsed embeddings -> health.json, model NOT saved",
    "evaluation: image->text and text->image R@1/5/10 on test + test_unseen,\n"
    "zero-shot colour / shape with Chinese prompt templates ('a picture of {}', ensembled)",
    "output_dir: model.safetensors, processor, curves.png, runs/ (tensorboard),\nhealth.json, test_results.json",
    "infer.ipynb (retrieval + zero-shot image grids)\nserve.py (/embed, /search over a startup index, /zero_shot)",
]


# Copied from chinese_classifier/diagram.py:draw_flow
def draw_flow(steps, out_path, title):
    """Draw `steps` (list of str, '\\n' allowed) as a top-to-bottom chain of boxes joined by arrows."""
    lines = [textwrap.fill(s, 70, replace_whitespace=False) if "\n" not in s else s for s in steps]
    heights = [0.35 + 0.22 * s.count("\n") for s in lines]
    gap = 0.35
    total = sum(heights) + gap * (len(lines) - 1)
    fig, ax = plt.subplots(figsize=(8, 0.9 + total * 0.95))
    ax.set_xlim(0, 10)
    ax.set_ylim(-0.1, total + 0.1)
    ax.axis("off")
    y = total
    for i, (text, h) in enumerate(zip(lines, heights)):
        ax.add_patch(FancyBboxPatch((0.6, y - h), 8.8, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                    facecolor="#e8f0fe" if i % 2 == 0 else "#fef7e0", edgecolor="#3c4043"))
        ax.text(5, y - h / 2, text, ha="center", va="center", fontsize=9)
        if i < len(lines) - 1:
            ax.annotate("", xy=(5, y - h - gap + 0.02), xytext=(5, y - h - 0.02),
                        arrowprops=dict(arrowstyle="-|>", color="#3c4043", lw=1.4))
        y -= h + gap
    ax.set_title(title, fontsize=12, fontweight="bold")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out_path


@dataclass
class DiagramArguments:
    out: str = str(OUT)


def main(argv: list[str] | None = None) -> Path:
    (args,) = HfArgumentParser(DiagramArguments).parse_args_into_dataclasses(args=argv)
    path = draw_flow(STEPS, args.out, "chinese_clip: data flow")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
