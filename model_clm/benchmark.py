"""Raw text -> packed tokens: our pipeline vs the transformers run_clm.py recipe vs the tokenizer alone.

    python benchmark.py                       # 20 MB and 200 MB corpora, 16k byte-level BPE, all cores
    python benchmark.py --sizes_mb 50 500

All three arms run in the same invocation on the same corpus files, tokenizer and cores, each in a fresh
subprocess; peak RSS (and PSS, which counts pages shared by forked workers once) is summed over the
arm's whole process tree (main + workers), sampled every 50 ms.
  tokenizer : encode_batch_fast over every line, rayon threads on all cores, output discarded (the limit)
  run_clm   : datasets "text" loader -> map(tokenize, num_proc=cores) -> map(group_texts, num_proc=cores)
  ours      : dataset.build_token_files: one worker process per core, one shard a task, uint16 memmap files
The corpus is the real People's Daily text repeated, each copy in a different document order.
"""
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

HERE = Path(__file__).resolve().parent
ARMS = ("tokenizer", "run_clm", "ours")


@dataclass
class BenchArguments:
    sizes_mb: list[int] = field(default_factory=lambda: [20, 200])
    work_dir: str = field(default=str(HERE / "data/cache/bench"))
    vocab_size: int = 16000
    block_size: int = 1024
    shard_mb: int = 10
    num_proc: int = os.cpu_count() or 1
    repeats: int = field(default=2, metadata={"help": "runs per arm, interleaved; the fastest counts (shared CPUs)"})
    arm: str | None = field(default=None, metadata={"help": "internal: run one arm in this process"})
    corpus: str | None = None
    out: str | None = None


def make_corpus(path: Path, size_mb: int, shard_mb: int) -> Path:
    """People's Daily paragraphs, repeated in a new random order per copy, cut into ~shard_mb .txt shards."""
    if (path / "DONE").exists():
        return path
    from clean_data import normalize, people_daily_docs

    docs = [normalize(d) for d in people_daily_docs()]
    docs = [d for d in docs if d]
    path.mkdir(parents=True, exist_ok=True)
    rng, written, k, f = random.Random(0), 0, 0, None
    while written < size_mb * 1e6:
        rng.shuffle(docs)
        for d in docs:
            if f is None or f.tell() >= shard_mb * 1e6:
                f and f.close()
                f, k = open(path / f"part-{k:05d}.txt", "w", encoding="utf-8"), k + 1
            f.write(d + "\n")
            written += len(d.encode()) + 1
            if written >= size_mb * 1e6:
                break
    f.close()
    (path / "DONE").write_text("")
    return path


def corpus_files(corpus: Path) -> list[str]:
    return [str(p) for p in sorted(corpus.glob("part-*.txt"))]


# ---------------------------------------------------------------- the three arms (run inside a subprocess)
def arm_tokenizer(args, tokenizer) -> dict:
    tok = tokenizer.backend_tokenizer
    tokens, batch = 0, []
    for path in corpus_files(Path(args.corpus)):
        with open(path, encoding="utf-8") as f:
            for line in f:
                batch.append(line.rstrip("\n"))
                if len(batch) == 10_000:
                    tokens += sum(len(e.ids) + 1 for e in tok.encode_batch_fast(batch, add_special_tokens=False))
                    batch = []
    if batch:
        tokens += sum(len(e.ids) + 1 for e in tok.encode_batch_fast(batch, add_special_tokens=False))
    return {"tokens": tokens, "disk_bytes": 0}


def arm_run_clm(args, tokenizer) -> dict:
    """The recipe of transformers/examples/pytorch/language-modeling/run_clm.py (tokenize, then group_texts)."""
    from itertools import chain

    from datasets import load_dataset

    start = time.perf_counter()
    cache = Path(args.out) / "hf_cache"
    raw = load_dataset("text", data_files={"train": corpus_files(Path(args.corpus))}, cache_dir=str(cache))["train"]

    def tokenize_function(examples):
        return tokenizer(examples["text"])

    tokenized = raw.map(tokenize_function, batched=True, num_proc=args.num_proc, remove_columns=["text"])
    block_size = args.block_size

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total_length = len(concatenated[list(examples.keys())[0]])
        total_length = (total_length // block_size) * block_size
        result = {k: [t[i: i + block_size] for i in range(0, total_length, block_size)]
                  for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    grouped = tokenized.map(group_texts, batched=True, num_proc=args.num_proc)
    seconds = time.perf_counter() - start
    import pyarrow.compute as pc  # count from the memory-mapped Arrow column, not Python lists

    tokens = sum(pc.sum(pc.list_value_length(c)).as_py() for c in tokenized.data.column("input_ids").chunks)
    return {"tokens": tokens + len(raw),  # + one separator per document, as in the other arms
            "packed_tokens": len(grouped) * block_size, "disk_bytes": dir_bytes(cache), "seconds": seconds}


def arm_ours(args, tokenizer) -> dict:
    from dataset import build_token_files

    meta = build_token_files(args.corpus, Path(args.out) / "tokens", tokenizer, block_size=args.block_size,
                             num_workers=args.num_proc, batch_docs=1000, desc="ours")
    tokens = meta["splits"]["train"]["tokens"]
    return {"tokens": tokens, "packed_tokens": tokens // args.block_size * args.block_size,
            "disk_bytes": dir_bytes(Path(args.out) / "tokens")}


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def run_arm(args) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(Path(args.work_dir) / "tokenizer")
    start = time.perf_counter()
    result = globals()[f"arm_{args.arm}"](args, tokenizer)
    result.setdefault("seconds", time.perf_counter() - start)
    print("RESULT " + json.dumps(result))


# ---------------------------------------------------------------- the driver
def measure(cmd: list[str]) -> dict:
    import psutil

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak_tree = peak_main = peak_pss = 0
    done = threading.Event()

    def poll():
        nonlocal peak_tree, peak_main, peak_pss
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [root] + root.children(recursive=True)
                rss = [p.memory_info().rss for p in procs]
                peak_tree, peak_main = max(peak_tree, sum(rss)), max(peak_main, rss[0])
                peak_pss = max(peak_pss, sum(pss(p.pid) for p in procs))
            except (psutil.Error, OSError):
                pass
            time.sleep(0.05)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    out, _ = proc.communicate()
    done.set()
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"benchmark arm failed: {' '.join(cmd)}")
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    return {**result, "peak_rss_mb": peak_tree / 2**20, "peak_rss_main_mb": peak_main / 2**20,
            "peak_pss_mb": peak_pss / 2**20}


def pss(pid: int) -> int:
    """Proportional set size: forked workers share the parent's pages, which a plain RSS sum counts N times."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(BenchArguments).parse_args_into_dataclasses(args=argv)
    if args.arm:
        return run_arm(args)
    work = Path(args.work_dir)
    if not (work / "tokenizer/tokenizer.json").exists():
        import clean_data
        import train_tokenizer

        clean_data.main(["--output_dir", str(work / "clean")])
        train_tokenizer.main(["--input", str(work / "clean"), "--output_dir", str(work / "tokenizer"),
                              "--vocab_size", str(args.vocab_size)])
    results = {}
    for size in args.sizes_mb:
        corpus = make_corpus(work / f"corpus-{size}MB", size, args.shard_mb)
        mb = sum(os.path.getsize(p) for p in corpus_files(corpus)) / 1e6
        runs = {arm: [] for arm in ARMS}
        for rep in range(args.repeats):
            for arm in ARMS[rep % 3:] + ARMS[:rep % 3]:  # rotate the order so no arm always runs first
                out = work / f"out-{size}MB-{arm}"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                cmd = [sys.executable, __file__, "--arm", arm, "--corpus", str(corpus), "--out", str(out),
                       "--work_dir", str(work), "--block_size", str(args.block_size), "--num_proc", str(args.num_proc)]
                r = measure(cmd)
                shutil.rmtree(out, ignore_errors=True)
                r.update(mb=mb, mb_per_s=mb / r["seconds"], bytes_per_token=r["disk_bytes"] / r["tokens"],
                         tokens_per_mb=r["tokens"] / mb)
                runs[arm].append(r)
                print(f"{size:>5} MB {arm:>9} run {rep}: {r['mb_per_s']:6.2f} MB/s  peak RSS {r['peak_rss_mb']:7.0f} MB "
                      f"(main {r['peak_rss_main_mb']:5.0f}, PSS {r['peak_pss_mb']:5.0f})  "
                      f"disk {r['bytes_per_token']:.2f} B/token  {r['tokens'] / 1e6:.1f}M tokens", flush=True)
        for arm, rs in runs.items():
            best = dict(max(rs, key=lambda r: r["mb_per_s"]))
            best.update({k: max(r[k] for r in rs) for k in ("peak_rss_mb", "peak_rss_main_mb", "peak_pss_mb")})
            best["all_mb_per_s"] = [r["mb_per_s"] for r in rs]
            results[f"{size}MB/{arm}"] = best
    report(results, args)
    return results


def report(results: dict, args) -> None:
    lines = [f"cores={args.num_proc}, vocab={args.vocab_size}, block_size={args.block_size}, best of {args.repeats} "
             "interleaved runs (peak memory: the max over runs)"]
    sizes = args.sizes_mb
    for size in sizes:
        tok, clm, ours = (results[f"{size}MB/{a}"] for a in ARMS)
        lines.append(f"{size} MB: ours/tokenizer-alone = {ours['mb_per_s'] / tok['mb_per_s']:.2f}x, "
                     f"ours/run_clm = {ours['mb_per_s'] / clm['mb_per_s']:.2f}x throughput; "
                     f"disk per token run_clm/ours = {clm['bytes_per_token'] / ours['bytes_per_token']:.1f}x")
    if len(sizes) >= 2:
        lo, hi = sizes[0], sizes[-1]
        for arm in ("run_clm", "ours"):
            a, b = results[f"{lo}MB/{arm}"], results[f"{hi}MB/{arm}"]
            lines.append(f"{arm}: peak RSS {a['peak_rss_mb']:.0f} -> {b['peak_rss_mb']:.0f} MB "
                         f"({(b['peak_rss_mb'] / a['peak_rss_mb'] - 1) * 100:+.0f}%), PSS {a['peak_pss_mb']:.0f} -> "
                         f"{b['peak_pss_mb']:.0f} MB ({(b['peak_pss_mb'] / a['peak_pss_mb'] - 1) * 100:+.0f}%) "
                         f"for {hi / lo:.0f}x the corpus")
    big = results[f"{sizes[-1]}MB/ours"]
    clm = results[f"{sizes[-1]}MB/run_clm"]
    for name, r in (("ours", big), ("run_clm", clm)):
        hours = 100e3 / r["mb_per_s"] / 3600
        disk_gb = r["bytes_per_token"] * r["tokens_per_mb"] * 100e3 / 1e9
        lines.append(f"100 GB extrapolated, {name}: {hours:.1f} h on {args.num_proc} cores, {disk_gb:.0f} GB on disk")
    print("\n".join(lines))
    out = Path(args.work_dir) / "results.json"
    out.write_text(json.dumps({"results": results, "summary": lines}, indent=1))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
