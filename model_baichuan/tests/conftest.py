import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parents[1]  # the folder (tests/..)
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
SEED = int(os.environ.get("ZERO_NLP_TEST_SEED", "42"))  # run the suite with another seed: ZERO_NLP_TEST_SEED=7
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



TEXTS = ["你好，世界！今天天气很好。", "我们一起学习自然语言处理，1+1=2，12345。", "Hello world, this is English text.",
         "问：中国的首都是哪里？\n\n答：北京。", "  两个空格\t制表符\n换行 😀 全角，。！？"]
REAL_DIR = HERE.parent.parent / "shared/reference/baichuan2"  # real Baichuan2 files, optional: tests skip without


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory):
    """A small Baichuan-layout SentencePiece tokenizer.model trained here (no ../shared needed)."""
    from train_tokenizer import train_tokenizer
    out = tmp_path_factory.mktemp("sp")
    train_tokenizer(TEXTS * 20, vocab_size=600, out_dir=out)
    return out / "tokenizer.model"


@pytest.fixture(scope="session")
def real_dir():
    """../shared/reference/baichuan2 (tokenizer.model, config.json of Baichuan2-13B-Chat, ...) or skip."""
    if not (REAL_DIR / "tokenizer.model").is_file():
        pytest.skip(f"{REAL_DIR} not present (real Baichuan2 files are optional)")
    return REAL_DIR


# Copied from chinese_classifier/tests/conftest.py:notebook_runner
@pytest.fixture(scope="session")
def notebook_runner():
    """`run_notebook` as a fixture: `from conftest import ...` would find the repo root's conftest.py."""
    return run_notebook


# Copied from chinese_bloom/tests/conftest.py:free_port
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Copied from chinese_bloom/tests/conftest.py:serve_process
@contextmanager
def serve_process(argv: list[str], cwd=None, ready: str = "/v1/models"):
    """`python *argv --port <free port>` (a serve.py) in its own process with one thread; waits until GET `ready`
    answers 200, yields ("http://127.0.0.1:<port>", process) and kills the process at the end if still running."""
    import httpx
    port = free_port()
    log = tempfile.TemporaryFile(mode="w+")  # not a pipe: a full pipe would block the server
    proc = subprocess.Popen([sys.executable, *argv, "--port", str(port)], cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(480):
            if proc.poll() is not None:
                log.seek(0)
                raise AssertionError(f"{argv} exited with {proc.returncode}: {log.read()[-3000:]}")
            try:
                if httpx.get(url + ready, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.25)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.close()


# Copied from chinese_bloom/tests/conftest.py:free_port_fixture
@pytest.fixture(scope="session", name="free_port")
def free_port_fixture():
    """`free_port()` in tests (a test module cannot import this conftest: the repo root's would be found)."""
    return free_port


# Copied from chinese_bloom/tests/conftest.py:server_process
@pytest.fixture(scope="session")
def server_process():
    """`with server_process(["serve.py", ...], cwd) as (url, proc):` see serve_process."""
    return serve_process


# ----------------------------------------------------------------------------- pipeline fixtures (clean_data / train / serve)
# appended by the pipeline helper (clean_data.py, dataset.py, train.py, serve.py and their tests)
@pytest.fixture(scope="session")
def clean_dir(tmp_path_factory):
    """The generated default task, cleaned (train / validation / test.jsonl)."""
    import clean_data
    out = tmp_path_factory.mktemp("clean")
    clean_data.main(["--output_dir", str(out), "--seed", str(SEED)])
    return out


@pytest.fixture(scope="session")
def bc_tokenizer(sp_model):
    """(tokenizer from the small SentencePiece model, (user_token_id, assistant_token_id)) = Baichuan2-Chat's ids."""
    from tokenization import build_tokenizer
    return build_tokenizer(sp_model), (195, 196)


def _tiny_official(tmp_path_factory, sp_model, variant: str) -> Path:
    from model import write_tiny_official
    out = tmp_path_factory.mktemp(variant) / "official"
    return Path(write_tiny_official(out, variant, sp_model, seed=SEED))


@pytest.fixture(scope="session")
def tiny_alibi_official(tmp_path_factory, sp_model):
    """A tiny random Baichuan2-13B-style checkpoint (ALiBi + NormHead) in the official format: loaded directly."""
    return _tiny_official(tmp_path_factory, sp_model, "baichuan2-13b")


@pytest.fixture(scope="session")
def tiny_rope_official(tmp_path_factory, sp_model):
    """A tiny random Baichuan2-7B-style checkpoint (RoPE + NormHead) in the official format: converted to Llama."""
    return _tiny_official(tmp_path_factory, sp_model, "baichuan2-7b")
