"""Data-flow diagram of this folder -> images/model_baichuan.png.

    python diagram.py                   # or: python model_baichuan/diagram.py --out some.png
"""
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch
from transformers import HfArgumentParser

OUT = Path(__file__).resolve().parents[1] / "images" / "model_baichuan.png"
STEPS = [
    "official Baichuan / Baichuan2 dir (remote code, fused W_pack, .bin / safetensors)\nor offline: SentencePiece + tiny random ALiBi + NormHead model, official format",
    "model.load_baichuan: 7B (RoPE) -> LlamaForCausalLM, converted once (W_pack split)\n13B (ALiBi) -> this folder's BaichuanForCausalLM, loads directly; no remote code",
    "generated task, or Alpaca-BELLE / sharegpt / OpenAI messages\nclean_data.py -> train / validation / test.jsonl + rejects.jsonl + summary.json",
    "dataset.py: conversation_labels (user 195 / assistant 196, official labels)\nloss on every answer; whole turns kept; packing, 4D block-diagonal mask",
    "train.py: LoRA (peft, W_pack or q/k/v_proj) or full; Trainer (python / torchrun / ZeRO)\nexact match on held-out questions before and after; adapter-only saves; resume",
    "merge.py -> full checkpoint (adapter merged)",
    "infer.ipynb: chat / stream_chat (official (response, history) shape)\nserve.py: OpenAI API on 127.0.0.1; device_map.py: layers over several GPUs",
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
    path = draw_flow(STEPS, args.out, "model_baichuan: data flow")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
