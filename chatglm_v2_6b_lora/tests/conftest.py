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


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory):
    """A small ChatGLM-layout SentencePiece tokenizer.model trained here (no ../shared needed)."""
    from train_tokenizer import train_tokenizer
    out = tmp_path_factory.mktemp("sp")
    train_tokenizer(TEXTS * 20, vocab_size=400, out_dir=out)
    return out / "tokenizer.model"


@pytest.fixture(scope="session")
def tiny_official(tmp_path_factory, sp_model):
    """A tiny random ChatGLM2 checkpoint in the official format (sharded .bin), and its GlmForCausalLM conversion."""
    from model import convert_chatglm, write_tiny_official
    root = tmp_path_factory.mktemp("tiny")
    src = write_tiny_official(root / "official", sp_model, seed=SEED, hidden_size=64, num_layers=2,
                              num_attention_heads=4, kv_channels=16, multi_query_group_num=2, ffn_hidden_size=96)
    return src, convert_chatglm(src, root / "converted")


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


# ----------------------------------------------------------------------------- pipeline fixtures (clean_data / train)
@pytest.fixture(scope="session")
def clean_dir(tmp_path_factory):
    """The generated default task, cleaned (train / validation / test.jsonl)."""
    import clean_data
    out = tmp_path_factory.mktemp("clean")
    clean_data.main(["--output_dir", str(out), "--seed", str(SEED)])
    return out


@pytest.fixture(scope="session")
def glm_tokenizer(sp_model):
    """(fast tokenizer with the ChatGLM2 specials, "chatglm2") from the small sp_model."""
    from tokenization import build_tokenizer
    return build_tokenizer(sp_model, "chatglm2"), "chatglm2"
