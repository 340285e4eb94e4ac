"""Diagrams of this folder -> images/vit-gpt2-image-chinese-captioning.png (data flow) and
images/vit-gpt2-image-chinese-captioning_vit.png (the ViT encoder with its shapes, the README walkthrough).

    python diagram.py                   # or: python vit-gpt2-image-chinese-captioning/diagram.py --out some.png
"""
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch
from transformers import HfArgumentParser

OUT = Path(__file__).resolve().parents[1] / "images" / "vit-gpt2-image-chinese-captioning.png"
STEPS = [
    "make_data.py: PIL scenes (shape, colour, count, position, size, background, noise)\n"
    "+ several Chinese captions per image;\ntest_unseen = colour-shape pairs never in train",
    "clean_data.py: decode every image (zero-byte / truncated / unreadable / bomb / tiny\n-> rejects), "
    "CMYK / P / RGBA / L -> RGB, EXIF rotation; normalise text; drop duplicates",
    "dataset.py: jsonl rows only; images opened lazily in the transform\n(load_rgb + ViT image processor), "
    "captions -> ids + [SEP]; collator pads labels with -100",
    "model.py: VisionEncoderDecoderModel = ViT encoder (patches + [CLS] + positions)\n"
    "+ GPT-2 decoder with cross-attention; [CLS] start / [SEP] eos / [PAD] set before building",
    "train.py: Seq2SeqTrainer(predict_with_generate): char BLEU-4 (sacrebleu zh) + CIDEr\n"
    "(pycocoevalcap), vs a constant caption; distinct captions",
    "output_dir: model.safetensors, tokenizer, preprocessor, curves.png, runs/, test_results.json",
    "infer.ipynb (greedy / beam / sampling + images)   serve.py (/caption upload, limits)\n"
    "benchmark.py (lazy loading workers, greedy vs beam)",
]
VIT_STEPS = [
    "image (B, 3, 224, 224)   [offline default: (B, 3, 64, 64)]",
    "patch embedding Conv2d(3, 768, kernel 16, stride 16) -> (B, 768, 14, 14)\n-> flatten -> (B, 196, 768)\n"
    "[offline: Conv2d(3, 128, 16, 16) -> (B, 16, 128)]",
    "prepend [CLS] + add learned position embeddings -> (B, 197, 768)   [offline: (B, 17, 128)]",
    "N encoder blocks: LayerNorm -> self-attention -> + ; LayerNorm -> MLP (4x) -> +\nshape kept (B, 197, 768)\n"
    "[vit-base: 12 blocks, 12 heads; offline: 2 blocks, 4 heads]",
    "final LayerNorm -> last_hidden_state (B, 197, 768) = encoder_hidden_states\n"
    "(projected by enc_to_dec_proj when the decoder width differs)",
    "GPT-2 decoder block: masked self-attention over the caption so far,\ncross-attention (queries = caption "
    "positions, keys/values = the 197 image states),\nMLP -> next character",
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


def main(argv: list[str] | None = None) -> list[Path]:
    (args,) = HfArgumentParser(DiagramArguments).parse_args_into_dataclasses(args=argv)
    flow = draw_flow(STEPS, args.out, "vit-gpt2-image-chinese-captioning: data flow")
    vit = draw_flow(VIT_STEPS, Path(args.out).with_name(Path(args.out).stem + "_vit.png"),
                    "ViT encoder -> GPT-2 cross-attention: shapes")
    print(f"wrote {flow} and {vit}")
    return [flow, vit]


if __name__ == "__main__":
    main()
