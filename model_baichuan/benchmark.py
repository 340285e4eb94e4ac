"""Speed of the ALiBi model (BaichuanForCausalLM) vs transformers' LlamaForCausalLM of the same dims, one run.

Both with SDPA, the same random-init dims (hidden, layers, heads, ffn, vocab), the same inputs, fp32 on CPU (bf16
with --bf16 on a GPU). Arms alternate (ALiBi, Llama, ALiBi, ...) for --repeats rounds, so a drifting machine
(other jobs, thermal) hits both; each number is the median over rounds:
  - forward: a batch of --batch_size x --seq_len tokens, tokens/s (no grad);
  - generate: greedy, --new_tokens new tokens after a --prompt_len prompt (cache on), new tokens/s.
The ALiBi model pays for an explicit additive mask (Llama's SDPA call can use is_causal without a mask); the
ratio ALiBi / Llama is printed (target >= 0.9).

    python benchmark.py                                  # 2-core CPU: ~1 minute
    python benchmark.py --hidden_size 1024 --num_layers 8 --seq_len 1024 --device cuda --bf16
"""
import json
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser, LlamaConfig, LlamaForCausalLM

from model import BaichuanConfig, BaichuanForCausalLM


@dataclass
class BenchArguments:
    hidden_size: int = field(default=256)
    num_layers: int = field(default=4)
    num_heads: int = field(default=8)
    intermediate_size: int = field(default=688)
    vocab_size: int = field(default=8000)
    batch_size: int = field(default=4)
    seq_len: int = field(default=256)
    prompt_len: int = field(default=64)
    new_tokens: int = field(default=32)
    repeats: int = field(default=5)
    device: str = field(default="cpu")
    bf16: bool = field(default=False)

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise SystemExit(f"--num_heads: {self.num_heads} does not divide --hidden_size {self.hidden_size}. "
                             f"Fix: e.g. --hidden_size 256 --num_heads 8")
        if self.repeats < 1:
            raise SystemExit(f"--repeats: must be >= 1, got {self.repeats}. Fix: e.g. --repeats 5")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise SystemExit("--device: cuda requested but no GPU is visible. Fix: --device cpu")


def build(args):
    dims = dict(vocab_size=args.vocab_size, hidden_size=args.hidden_size, intermediate_size=args.intermediate_size,
                num_hidden_layers=args.num_layers, num_attention_heads=args.num_heads)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    torch.manual_seed(0)
    alibi = BaichuanForCausalLM(BaichuanConfig(**dims, model_max_length=4096, attn_implementation="sdpa"))
    llama = LlamaForCausalLM(LlamaConfig(**dims, max_position_embeddings=4096, attn_implementation="sdpa"))
    return {name: m.to(args.device, dtype).eval() for name, m in (("alibi", alibi), ("llama", llama))}


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def forward_tps(model, ids, device) -> float:
    sync(device)
    t = time.perf_counter()
    model(ids, use_cache=False)
    sync(device)
    return ids.numel() / (time.perf_counter() - t)


@torch.no_grad()
def generate_tps(model, ids, new_tokens, device) -> float:
    sync(device)
    t = time.perf_counter()
    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                   do_sample=False, pad_token_id=0)
    sync(device)
    return ids.shape[0] * new_tokens / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(BenchArguments).parse_args_into_dataclasses(argv)
    models = build(args)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, args.vocab_size, (args.batch_size, args.seq_len), generator=g).to(args.device)
    prompt = ids[:, :args.prompt_len]
    for m in models.values():  # warm-up
        forward_tps(m, ids[:, :16], args.device)
        generate_tps(m, prompt[:, :8], 2, args.device)
    runs = {f"{kind}_{name}": [] for kind in ("forward", "generate") for name in models}
    for _ in range(args.repeats):
        for name, m in models.items():  # alternating arms
            runs[f"forward_{name}"].append(forward_tps(m, ids, args.device))
            runs[f"generate_{name}"].append(generate_tps(m, prompt, args.new_tokens, args.device))
    result = {k: round(statistics.median(v), 1) for k, v in runs.items()}
    for kind in ("forward", "generate"):
        result[f"{kind}_ratio"] = round(result[f"{kind}_alibi"] / result[f"{kind}_llama"], 3)
        print(f"{kind:8s} tokens/s: ALiBi {result[f'{kind}_alibi']:>10,.1f}  Llama {result[f'{kind}_llama']:>10,.1f}  "
              f"ratio {result[f'{kind}_ratio']:.3f}  (runs: {[round(x) for x in runs[f'{kind}_alibi']]} vs "
              f"{[round(x) for x in runs[f'{kind}_llama']]})")
    print(json.dumps(result | {"args": vars(args), "threads": torch.get_num_threads()}))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
