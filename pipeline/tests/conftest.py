import os
import sys
from pathlib import Path

import pytest

FOLDER = Path(__file__).resolve().parents[1]
if str(FOLDER) not in sys.path:
    sys.path.insert(0, str(FOLDER))
SEED = int(os.environ.get("ZERO_NLP_TEST_SEED", "42"))  # run the suite with another seed: ZERO_NLP_TEST_SEED=7


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


def build_tiny_data(root: Path, n_docs: int = 3000, vocab_size: int = 1024, block_size: int = 32) -> dict:
    """n_docs real People's Daily paragraphs -> clean (4 shards) -> BPE tokenizer -> packed tokens, under root."""
    import clean_data
    import dataset
    import train_tokenizer

    root = Path(root)
    raw = clean_data.write_shards(root / "raw", clean_data.people_daily_docs(n_docs), 4)
    summary = clean_data.main(["--input", str(raw), "--output_dir", str(root / "clean"), "--num_workers", "2",
                               "--validation_ratio", "0.1"])
    train_tokenizer.main(["--input", str(root / "clean"), "--output_dir", str(root / "tokenizer"),
                          "--vocab_size", str(vocab_size)])
    meta = dataset.main(["--input", str(root / "clean"), "--output_dir", str(root / "tokens"), "--tokenizer_name_or_path",
                         str(root / "tokenizer"), "--block_size", str(block_size), "--num_workers", "2",
                         "--batch_docs", "64"])
    return {"root": root, "raw": raw, "clean": root / "clean", "tokenizer": root / "tokenizer",
            "tokens": root / "tokens", "summary": summary, "meta": meta}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Shared, read-only: 3000 real paragraphs, a 1k-vocab byte-level BPE, blocks of 32 tokens (~5 s).
    Keys: root, raw, clean, tokenizer, tokens (the --data_dir), summary (clean_data's), meta (meta.json)."""
    return build_tiny_data(tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture(scope="session")
def tiny_llama(tiny_data, tmp_path_factory):
    """A small random LlamaForCausalLM (4 layers, GQA) on tiny_data's vocab, saved with save_pretrained. -> its dir."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_data["tokenizer"])
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=176, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         tie_word_embeddings=False)
    torch.manual_seed(SEED)
    path = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def torchrun():
    """torchrun(nproc, argv, env=None, timeout=300) -> CompletedProcess: `torchrun --standalone` of argv (a
    script + args) from the folder, one thread per process; raises with the output tail when it fails."""
    import subprocess

    def run(nproc, argv, env=None, timeout=300, check=True):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               *map(str, argv)]
        proc = subprocess.run(cmd, cwd=FOLDER, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", **(env or {})})
        if check and proc.returncode:
            raise AssertionError(f"{cmd} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc
    return run


TINY_MODEL = ["--hidden_size", "64", "--num_hidden_layers", "4", "--num_attention_heads", "4"]


@pytest.fixture(scope="session")
def trained_run(tiny_data, torchrun, tmp_path_factory):
    """One short 2-rank run of train.py on tiny_data (1F1B, 6 steps, checkpoints at 3 and 6, merged at the end).
    -> {"out": output_dir (merged HF checkpoint + checkpoint-3/6 + eval_results.json), "argv", "proc"}. Read-only."""
    out = tmp_path_factory.mktemp("trained_run") / "out"
    argv = ["train.py", "--data_dir", tiny_data["tokens"], "--tokenizer_name_or_path", tiny_data["tokenizer"],
            "--output_dir", out, *TINY_MODEL, "--max_steps", "6", "--per_device_train_batch_size", "8",
            "--eval_steps", "3", "--save_steps", "3", "--logging_steps", "1", "--report_to", "none", "--seed", str(SEED)]
    proc = torchrun(2, argv)
    return {"out": out, "argv": argv, "proc": proc}
