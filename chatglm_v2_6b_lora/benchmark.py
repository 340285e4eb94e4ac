"""Conversion memory, baseline and ours side by side in one run.

A multi-shard checkpoint in the official ChatGLM2 format (random weights, pytorch_model-0000N-of-0000M.bin) is
converted to GlmForCausalLM twice, each arm in a fresh subprocess, measuring its peak RSS (VmHWM, reset through
/proc/self/clear_refs just before converting) minus the RSS at that moment:
  - baseline: load every shard first (torch.load, as a state dict), then rename/split and write the same shards;
  - ours: convert_chatglm, one shard at a time (memory-mapped read, converted shard written, freed, next).
The extrapolation to the real 6B uses the official shard sizes (chatglm3-6b, same architecture as chatglm2-6b:
7 shards, 12,487,168,064 bytes in fp16, largest 1,968,299,544 bytes).

    python benchmark.py                    # ~400 MB checkpoint in 6 shards; prints a table and the ratios
    python benchmark.py --num_layers 16 --num_shards 8
"""
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

HERE = Path(__file__).resolve().parent
REAL_6B = {"shards": 7, "total_bytes": 12_487_168_064, "largest_shard_bytes": 1_968_299_544}


@dataclass
class BenchArguments:
    hidden_size: int = field(default=1024)
    num_layers: int = field(default=8)
    ffn_hidden_size: int = field(default=2816)
    num_shards: int = field(default=6)
    arm: str | None = field(default=None, metadata={"help": "internal: baseline or ours, run in this process"})
    src: str | None = field(default=None, metadata={"help": "internal: the official-format checkpoint"})
    out: str | None = field(default=None, metadata={"help": "internal: where the arm writes"})

    def __post_init__(self):
        if self.arm not in (None, "baseline", "ours"):
            raise SystemExit(f"--arm: {self.arm!r}. Fix: baseline or ours (omit it to run both)")
        if self.num_shards < 2:
            raise SystemExit(f"--num_shards: must be >= 2 to compare, got {self.num_shards}. Fix: e.g. --num_shards 6")


# Copied from chinese_bloom/benchmark.py:proc_status_bytes
def proc_status_bytes(key: str) -> int:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, from /proc/self/status."""
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith(key + ":"))
    return int(line.split()[1]) * 1024


# Copied from chinese_bloom/benchmark.py:reset_peak_rss
def reset_peak_rss() -> None:
    """Linux >= 4.0: writing 5 to clear_refs resets VmHWM, so the peak only covers what follows."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def baseline_convert(src: Path, out: Path) -> None:
    """What a converter without care does: the whole state dict in memory, then the same renaming and shards."""
    from safetensors.torch import save_file

    import torch
    from model import convert_state, weight_files
    cfg = json.loads((src / "config.json").read_text())
    files = weight_files(src)
    state = {}
    for f in files:
        state |= torch.load(f, map_location="cpu", weights_only=True)
    converted = convert_state(state, cfg)
    out.mkdir(parents=True, exist_ok=True)
    names = list(converted)
    per = -(-len(names) // len(files))
    for k in range(len(files)):
        part = {n: converted[n].contiguous() for n in names[k * per:(k + 1) * per]}
        save_file(part, out / f"model-{k + 1:05d}-of-{len(files):05d}.safetensors")


def run_arm(args) -> dict:
    import model  # imports (torch, transformers) peak on their own: count only what the conversion adds
    reset_peak_rss()
    before = proc_status_bytes("VmRSS")
    if args.arm == "baseline":
        baseline_convert(Path(args.src), Path(args.out))
    else:
        model.convert_chatglm(args.src, args.out)
    return {"peak_bytes": proc_status_bytes("VmHWM") - before}


def build_checkpoint(args, root: Path) -> Path:
    from model import write_tiny_official
    from train_tokenizer import train_tokenizer
    train_tokenizer(["你好，世界！今天天气很好。", "我们一起学习自然语言处理。"] * 20, 300, root / "tok")
    heads = args.hidden_size // 128
    return Path(write_tiny_official(root / "official", root / "tok/tokenizer.model", num_shards=args.num_shards,
                                    hidden_size=args.hidden_size, num_layers=args.num_layers, num_attention_heads=heads,
                                    kv_channels=128, multi_query_group_num=2, ffn_hidden_size=args.ffn_hidden_size))


def mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB"


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(BenchArguments).parse_args_into_dataclasses(argv)
    if args.arm:
        result = run_arm(args)
        print(json.dumps(result))
        return result
    with tempfile.TemporaryDirectory() as tmp:
        src = build_checkpoint(args, Path(tmp))
        shards = sorted(f.stat().st_size for f in src.glob("pytorch_model-*.bin"))
        result = {"shards": len(shards), "total_bytes": sum(shards), "largest_shard_bytes": shards[-1]}
        for arm in ("baseline", "ours"):
            out = subprocess.run([sys.executable, __file__, "--arm", arm, "--src", str(src), "--out", f"{tmp}/{arm}"],
                                 capture_output=True, text=True, check=True, cwd=HERE).stdout.strip().splitlines()[-1]
            result[arm] = json.loads(out)["peak_bytes"]
    result["baseline_over_ours"] = round(result["baseline"] / result["ours"], 2)
    result["ours_over_largest_shard"] = round(result["ours"] / result["largest_shard_bytes"], 2)
    result["baseline_over_total"] = round(result["baseline"] / result["total_bytes"], 2)
    print(f"checkpoint: {result['shards']} shards, {mb(result['total_bytes'])} total, largest {mb(result['largest_shard_bytes'])}")
    print(f"peak RSS, baseline (all shards first): {mb(result['baseline'])} = {result['baseline_over_total']} x total")
    print(f"peak RSS, ours (one shard at a time):  {mb(result['ours'])} = {result['ours_over_largest_shard']} x largest shard")
    print(f"baseline / ours: {result['baseline_over_ours']}")
    ours_6b = result["ours_over_largest_shard"] * REAL_6B["largest_shard_bytes"]
    base_6b = result["baseline_over_total"] * REAL_6B["total_bytes"]
    print(f"extrapolated to chatglm2/3-6b (7 shards, {mb(REAL_6B['total_bytes'])}, largest "
          f"{mb(REAL_6B['largest_shard_bytes'])}): ours ~{mb(ours_6b)}, baseline ~{mb(base_6b)}")
    result |= {"extrapolated_6b_ours_bytes": int(ours_6b), "extrapolated_6b_baseline_bytes": int(base_6b)}
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
