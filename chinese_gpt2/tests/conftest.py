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
# the tiny recipes of the shared training fixtures (2 layers; bash train.sh trains the README's model)
TINY_MODEL = ["--n_layer", "2", "--n_embd", "128", "--n_head", "4", "--n_positions", "128"]
QUIET = ["--report_to", "none", "--disable_tqdm", "true", "--seed", str(SEED)]


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


@pytest.fixture(scope="session")
def clean_dir(tmp_path_factory):
    """The first 3000 paragraphs of People's Daily, cleaned (validation 5%)."""
    import clean_data
    out = tmp_path_factory.mktemp("clean")
    clean_data.main(["--max_docs", "3000", "--validation_ratio", "0.05", "--output_dir", str(out)])
    return out


@pytest.fixture(scope="session")
def chat_dir(tmp_path_factory):
    """1500 generated dialogues, cleaned (validation 10%)."""
    import clean_data
    out = tmp_path_factory.mktemp("chat")
    clean_data.main(["--task", "chat", "--num_chats", "1500", "--output_dir", str(out), "--seed", str(SEED)])
    return out


@pytest.fixture(scope="session")
def lm_args(clean_dir):
    """lm_args(output_dir) -> the tiny lm recipe's arguments (lm_run's; a test may append overrides)."""
    def args(out):
        return ["--data_dir", str(clean_dir), "--output_dir", str(out), *TINY_MODEL, "--block_size", "64",
                "--max_steps", "150", "--per_device_train_batch_size", "16", "--learning_rate", "3e-3",
                "--eval_steps", "75", "--save_steps", "75", "--logging_steps", "10", "--sample_max_new_tokens", "8",
                "--max_eval_blocks", "96",
                "--disable_tqdm", "true", "--seed", str(SEED)]
    return args


@pytest.fixture(scope="session")
def lm_run(lm_args, tmp_path_factory):
    """A tiny GPT-2 trained from scratch on clean_dir, tensorboard on (shared, read-only): (output_dir, metrics)."""
    import train
    out = tmp_path_factory.mktemp("lm")
    return out, train.main(lm_args(out))


@pytest.fixture(scope="session")
def chat_run(chat_dir, tmp_path_factory):
    """A tiny GPT-2 chatbot trained from scratch on chat_dir (shared, read-only): (output_dir, metrics)."""
    import train
    out = tmp_path_factory.mktemp("chat_model")
    metrics = train.main(["--task", "chat", "--data_dir", str(chat_dir), "--output_dir", str(out), *TINY_MODEL,
                          "--max_steps", "120", "--per_device_train_batch_size", "32", "--learning_rate", "3e-3",
                          "--eval_steps", "60", "--save_strategy", "no", "--logging_steps", "20",
                          "--eval_chats", "50", *QUIET])
    return out, metrics
