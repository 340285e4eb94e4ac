"""Benchmarks, baseline and ours side by side in one run:

1. Effective (non-padding) tokens/s of training steps: packing vs padding to the longest in the batch.
   Same model, same samples, lengths drawn from a log-normal like real instruction data
   (median ~120 tokens, long tail to max_length).
2. Peak memory of LoRA vs full fine-tuning of the same model. On CPU: in a fresh subprocess per arm,
   the peak RSS (VmHWM, reset through /proc/self/clear_refs just before the model is built) minus
   the RSS at that moment, so it counts weights, gradients, optimizer state and activations.
   On GPU: torch.cuda.max_memory_allocated.
3. Serving: serve.py in a fresh subprocess (its own defaults, all cores), the same 64-token answer requested
   non-streaming and streaming, side by side; also with OMP_WAIT_POLICY=ACTIVE (spinning OpenMP threads, the
   cause of the old ~10x gap). --serve_script points the arm at another serve.py (e.g. an old one) to compare.

    python benchmark.py                 # prints a table and the ratios; numbers go in README.md
    python benchmark.py --only serving  # the serving arm alone
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
from train_tokenizer import train_tokenizer


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
    only: str | None = field(default=None, metadata={"help": "run one arm: throughput, memory or serving"})
    serve_tokens: int = field(default=64, metadata={"help": "tokens per answer in the serving arm"})
    serve_repeats: int = field(default=5)
    serve_envs: str = field(default="default,OMP_WAIT_POLICY=ACTIVE", metadata={
        "help": "comma-separated environments of the serving arm: default (serve.py's own) or VAR=value"})
    serve_script: str = field(default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve.py"))

    def __post_init__(self):
        if self.only not in (None, "throughput", "memory", "serving"):
            raise SystemExit(f"--only: {self.only!r}. Fix: throughput, memory or serving (omit it for all three)")


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


def _serving_model_dir(args, path: str) -> None:
    """A BLOOM of the throughput arm's size whose EOS is never generated (every answer is serve_tokens long)."""
    tok = train_tokenizer(["Human: 你好，今天天气怎么样？\n\nAssistant: 很好。"] * 10, vocab_size=400)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(BloomConfig(
        vocab_size=len(tok), hidden_size=args.hidden_size, n_layer=args.n_layer, n_head=8, initializer_range=0.5,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    with torch.no_grad():
        model.get_input_embeddings().weight[tok.eos_token_id] = 0  # tied: EOS's logit 0 is never the largest
    model.save_pretrained(path)
    tok.save_pretrained(path)


def serving(args) -> dict:
    """Seconds per serve_tokens-token answer, non-streaming vs streaming, from a fresh serve.py process."""
    import socket
    import tempfile

    import httpx
    result = {"tokens": args.serve_tokens, "threads": os.cpu_count(), "script": args.serve_script}
    with tempfile.TemporaryDirectory() as tmp:
        _serving_model_dir(args, tmp)
        for name in args.serve_envs.split(","):
            env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
            if name != "default":
                key, _, value = name.partition("=")
                env[key] = value
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            proc = subprocess.Popen([sys.executable, args.serve_script, "--model_dir", tmp, "--port", str(port),
                                     "--model_name", "bench"], env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, cwd=os.path.dirname(os.path.abspath(args.serve_script)))
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            body = {"model": "bench", "messages": [{"role": "user", "content": "你好"}],
                    "max_tokens": args.serve_tokens}
            try:
                for _ in range(600):
                    try:
                        httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
                        break
                    except httpx.TransportError:
                        time.sleep(0.2)
                times = {"non_streaming": [], "streaming": []}
                with httpx.Client(timeout=600) as http:
                    for r in range(args.serve_repeats + 1):  # the first round warms up
                        start = time.perf_counter()
                        http.post(url, json=body).raise_for_status()
                        t_full = time.perf_counter() - start
                        start = time.perf_counter()
                        with http.stream("POST", url, json={**body, "stream": True}) as resp:
                            for _ in resp.iter_lines():
                                pass
                        t_stream = time.perf_counter() - start
                        if r:
                            times["non_streaming"].append(t_full)
                            times["streaming"].append(t_stream)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            med = {k: round(sorted(v)[len(v) // 2], 3) for k, v in times.items()}
            result[name] = {**med, "non_streaming_over_streaming": round(med["non_streaming"] / med["streaming"], 2)}
    return result


def memory(args) -> dict:
    """Each arm in a fresh process (peak memory of one process, nothing shared)."""
    result = {}
    for arm in ("full", "lora"):
        out = subprocess.run([sys.executable, __file__, "--memory_arm", arm,
                              "--memory_hidden_size", str(args.memory_hidden_size),
                              "--memory_n_layer", str(args.memory_n_layer), "--vocab_size", str(args.vocab_size)],
                             capture_output=True, text=True, check=True, cwd=os.path.dirname(os.path.abspath(__file__)))
        result[arm] = json.loads(out.stdout.strip().splitlines()[-1])
    result["lora_over_full"] = round(result["lora"]["peak_bytes"] / result["full"]["peak_bytes"], 3)
    return result


def report(result: dict, args) -> None:
    if "throughput" in result:
        t = result["throughput"]
        print(f"{'arm':<16}{'tokens/s':>12}{'padding':>10}{'seconds':>10}")
        for arm in ("pad_to_longest", "packing"):
            print(f"{arm:<16}{t[arm]['effective_tokens_per_s']:>12}{t[arm]['padding_share']:>10}{t[arm]['seconds']:>10}")
        print(f"packing speedup: {t['speedup']}x (target >= 1.5x)")
    if "memory" in result:
        m = result["memory"]
        for arm in ("full", "lora"):
            print(f"{arm:<6} peak {m[arm]['peak_bytes'] / 2**20:8.1f} MiB, trainable {m[arm]['trainable_params']:,}")
        print(f"LoRA / full peak memory: {m['lora_over_full']} (target <= 0.5); method: {m['full']['method']}")
    if "serving" in result:
        sv = result["serving"]
        for name in args.serve_envs.split(","):
            print(f"serving {name:<24} non-streaming {sv[name]['non_streaming']}s  streaming {sv[name]['streaming']}s "
                  f"({sv['tokens']} tokens; ratio {sv[name]['non_streaming_over_streaming']})")
    print(json.dumps(result, indent=2))


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(BenchArguments).parse_args_into_dataclasses(argv)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    if args.memory_arm:
        print(json.dumps(memory_arm(args)))
        return {}
    arms = {"throughput": throughput, "memory": memory, "serving": serving}
    result = {name: run(args) for name, run in arms.items() if args.only in (None, name)}
    report(result, args)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
