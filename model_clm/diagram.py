"""Draw this folder's data flow into images/model_clm.png:  python model_clm/diagram.py"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "images" / "model_clm.png" if (HERE.parent / "images").is_dir() else HERE / "images/model_clm.png"

BOXES = {  # name: (x, y, text, colour)
    "raw": (0.1, 0.80, "raw shards\n*.jsonl / *.txt / *.parquet (.gz)\nread as streams", "#dbe9f6"),
    "clean": (0.1, 0.55, "clean_data.py  (N processes)\nNFKC, length / CJK / repetition\nfilters, 64-bit hash", "#fde9c9"),
    "dedup": (0.1, 0.30, "global exact dedup on hashes\nsplit train/valid by doc hash\ntrain-*.jsonl, valid-*.jsonl", "#fde9c9"),
    "rejects": (0.1, 0.07, "rejects.jsonl (file, line, reason)\nsummary.json: kept + rejected = read", "#f6d5d5"),
    "tok": (0.42, 0.80, "train_tokenizer.py\nbyte-level BPE (tokenizers)", "#e3f1dc"),
    "pack": (0.42, 0.55, "dataset.py  (N processes)\nencode_batch, docs + EOS,\none flat token stream per shard", "#e3f1dc"),
    "bin": (0.42, 0.30, "{split}-00000.bin: uint16/uint32\nmemmap + .json marker per shard\n(atomic rename) + meta.json", "#e8defa"),
    "pipe": (0.42, 0.07, "pipeline folder\n(LLaMA-2 pipeline parallel)\nreads the same format", "#eeeeee"),
    "ds": (0.74, 0.80, "PackedDataset: block i = stream\n[i*B, (i+1)*B), O(1) memory,\nonly the final remainder unused", "#e8defa"),
    "train": (0.74, 0.55, "train.py: Trainer (+ torchrun DDP,\nDeepSpeed ZeRO-2/3 on GPUs)\nEpochShuffleSampler(seed, epoch)", "#dbe9f6"),
    "ckpt": (0.74, 0.30, "checkpoint-*/ + data_position.json\nexact resume: no block\nrepeated or skipped", "#dbe9f6"),
    "out": (0.74, 0.07, "model.safetensors, runs/ (tensorboard)\ncurves.png, eval_results.json\n(perplexity) -> infer.ipynb", "#dbe9f6"),
}
ARROWS = [("raw", "clean"), ("clean", "dedup"), ("dedup", "rejects"), ("dedup", "tok"), ("tok", "pack"),
          ("dedup", "pack"), ("pack", "bin"), ("bin", "pipe"), ("bin", "ds"), ("ds", "train"), ("train", "ckpt"),
          ("ckpt", "out")]
W, H = 0.24, 0.16


def draw(path: Path = OUT) -> Path:
    fig, ax = plt.subplots(figsize=(13, 7.5))
    ax.set_xlim(0, 1.02)
    ax.set_ylim(-0.03, 1.0)
    ax.axis("off")
    for x, y, text, colour in BOXES.values():
        ax.add_patch(FancyBboxPatch((x - 0.02, y - 0.02), W, H, boxstyle="round,pad=0.01", fc=colour, ec="#555555"))
        ax.text(x - 0.02 + W / 2, y - 0.02 + H / 2, text, ha="center", va="center", fontsize=9)
    for a, b in ARROWS:
        (xa, ya, *_), (xb, yb, *_) = BOXES[a], BOXES[b]
        start = (xa - 0.02 + W / 2, ya - 0.02) if abs(xa - xb) < 1e-6 else (xa - 0.02 + W + 0.01, ya - 0.02 + H / 2)
        end = (xb - 0.02 + W / 2, yb - 0.02 + H) if abs(xa - xb) < 1e-6 else (xb - 0.03, yb - 0.02 + H / 2)
        ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="->", color="#333333", lw=1.3))
    ax.set_title("model_clm: raw text -> clean shards -> packed memmap tokens -> causal-LM pretraining", fontsize=12)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(draw())
