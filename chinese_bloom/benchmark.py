"""Benchmarks, baseline and ours side by side in one run:

1. Effective (non-padding) tokens/s of training steps: packing vs padding to the longest in the batch.
   Same model, same samples, lengths drawn from a log-normal like real instruction data
   (median ~120 tokens, long tail to max_length).
2. Peak memory of LoRA vs full fine-tuning of the same model. On CPU: in a fresh subprocess per arm,
   the peak RSS (VmHWM, reset through /proc/self/clear_refs just before the model is built) minus
   the RSS at that moment, so it counts weights, gradients, optimizer state and activations.
   On GPU: torch.cuda.max_memory_allocated.

    python benchmark.py            # prints a table and the two ratios; numbers go in README.md
"""
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field

import torch
from transformers import AutoModelForCausalLM, BloomConfig, HfArgumentParser

from dataset import IGNORE_INDEX, SFTCollator, pack_examples
from model import add_lora, enable_packing


@dataclass
class BenchArguments:
    num_samples: int = field(default=192)
    max_length: int = field(default=512)
    batch_size: int = field(default=8, metadata={"help": "samples per padded batch"})
    hidden_size: int = field(default=256)
    n_layer: int = field(default=4)
    vocab_size: int = field(default=8000)
    memory_hidden_size: int = field(default=768, metadata={"help": "model of the memory benchmark (~90M params)"})
    memory_n_layer: int = field(default=12)
    memory_arm: str | None = field(default=None, metadata={"help": "internal: run one memory arm and print JSON"})


def sample_lengths(n, max_length, seed=0):
    rng = random.Random(seed)
    return [max(16, min(max_length, int(rng.lognormvariate(4.8, 0.7)))) for _ in range(n)]


def make_samples(lengths, vocab):
    g = torch.Generator().manual_seed(0)
    out = []
    for n in lengths:
        ids = torch.randint(5, vocab, (n,), generator=g).tolist()
        prompt = n // 3
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:],
                    "position_ids": list(range(n))})
    return out


def run_epoch(model, batches):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    start = time.perf_counter()
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return time.perf_counter() - start


def throughput(args):
    config = BloomConfig(vocab_size=args.vocab_size, hidden_size=args.hidden_size, n_layer=args.n_layer,
                         n_head=8, hidden_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    enable_packing(model)
    samples = make_samples(sample_lengths(args.num_samples, args.max_length), args.vocab_size)
    real_tokens = sum(len(s["input_ids"]) for s in samples)

    padded = [SFTCollator(0, packed=False)(samples[i:i + args.batch_size])
              for i in range(0, len(samples), args.batch_size)]
    rows = pack_examples({"input_ids": [s["input_ids"] for s in samples],
                          "labels": [s["labels"] for s in samples]}, args.max_length)
    rows = [dict(zip(rows, v)) for v in zip(*rows.values())]
    # same number of optimizer steps' worth of rows per batch: rows hold ~max_length tokens each
    rows_per_batch = max(1, round(args.batch_size * sum(map(len, (s["input_ids"] for s in samples))) /
                                  len(samples) / args.max_length))
    packed = [SFTCollator(0, packed=True)(rows[i:i + rows_per_batch]) for i in range(0, len(rows), rows_per_batch)]

    def slots(batches):
        return sum(b["input_ids"].numel() for b in batches)

    run_epoch(model, padded[:2])  # warm-up
    t_pad = run_epoch(model, padded)
    t_pack = run_epoch(model, packed)
    return {
        "samples": len(samples), "real_tokens": real_tokens,
        "pad_to_longest": {"batches": len(padded), "token_slots": slots(padded), "seconds": round(t_pad, 2),
                           "effective_tokens_per_s": round(real_tokens / t_pad, 1),
                           "padding_share": round(1 - real_tokens / slots(padded), 3)},
        "packing": {"batches": len(packed), "token_slots": slots(packed), "seconds": round(t_pack, 2),
                    "effective_tokens_per_s": round(real_tokens / t_pack, 1),
                    "padding_share": round(1 - real_tokens / slots(packed), 3)},
        "speedup": round(t_pad / t_pack, 2),
    }


def proc_status_bytes(key: str) -> int:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, from /proc/self/status."""
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith(key + ":"))
    return int(line.split()[1]) * 1024


def reset_peak_rss() -> None:
    """Linux >= 4.0: writing 5 to clear_refs resets VmHWM, so the peak only covers what follows."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def memory_arm(args) -> dict:
    """One arm in this (fresh) process: build the model, train a few steps, report peak memory."""
    cuda = torch.cuda.is_available()
    import peft  # noqa: F401  one-off costs (imports, first autograd/oneDNN use) must not count for either arm
    warm = AutoModelForCausalLM.from_config(BloomConfig(vocab_size=64, hidden_size=64, n_layer=1, n_head=1))
    warm(input_ids=torch.ones(1, 8, dtype=torch.long), labels=torch.ones(1, 8, dtype=torch.long)).loss.backward()
    del warm
    if not cuda:
        reset_peak_rss()  # imports peak higher than a small model; count only what the arm itself adds
    before = torch.cuda.memory_allocated() if cuda else proc_status_bytes("VmRSS")
    config = BloomConfig(vocab_size=args.vocab_size, hidden_size=args.memory_hidden_size,
                         n_layer=args.memory_n_layer, n_head=max(1, args.memory_hidden_size // 64))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to("cuda" if cuda else "cpu")
    if args.memory_arm == "lora":
        model = add_lora(model, r=16, alpha=32, dropout=0.0, target_modules="all-linear", gradient_checkpointing=False)
    ids = torch.randint(5, args.vocab_size, (2, 128), device=model.device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    if cuda:
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = proc_status_bytes("VmHWM") - before
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"peak_bytes": peak, "trainable_params": trainable, "total_params": total,
            "method": "cuda.max_memory_allocated" if cuda else "peak RSS delta (VmHWM after reset - VmRSS before model)"}


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(BenchArguments).parse_args_into_dataclasses(argv)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    if args.memory_arm:
        print(json.dumps(memory_arm(args)))
        return {}
    result = {"throughput": throughput(args), "memory": {}}
    for arm in ("full", "lora"):
        out = subprocess.run([sys.executable, __file__, "--memory_arm", arm,
                              "--memory_hidden_size", str(args.memory_hidden_size),
                              "--memory_n_layer", str(args.memory_n_layer), "--vocab_size", str(args.vocab_size)],
                             capture_output=True, text=True, check=True, cwd=os.path.dirname(os.path.abspath(__file__)))
        result["memory"][arm] = json.loads(out.stdout.strip().splitlines()[-1])
    m = result["memory"]
    result["memory"]["lora_over_full"] = round(m["lora"]["peak_bytes"] / m["full"]["peak_bytes"], 3)
    t = result["throughput"]
    print(f"{'arm':<16}{'tokens/s':>12}{'padding':>10}{'seconds':>10}")
    for arm in ("pad_to_longest", "packing"):
        print(f"{arm:<16}{t[arm]['effective_tokens_per_s']:>12}{t[arm]['padding_share']:>10}{t[arm]['seconds']:>10}")
    print(f"packing speedup: {t['speedup']}x (target >= 1.5x)")
    for arm in ("full", "lora"):
        print(f"{arm:<6} peak {m[arm]['peak_bytes'] / 2**20:8.1f} MiB, trainable {m[arm]['trainable_params']:,}")
    print(f"LoRA / full peak memory: {m['lora_over_full']} (target <= 0.5); method: {m['full']['method']}")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
