import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1]
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
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


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """3000 real paragraphs -> clean (4 shards) -> 1k-vocab BPE tokenizer -> tokens (block 32). Shared, read-only."""
    import clean_data
    import dataset
    import train_tokenizer

    root = tmp_path_factory.mktemp("clm_pipeline")
    raw = clean_data.write_shards(root / "raw", clean_data.people_daily_docs(3000), 4)
    summary = clean_data.main(["--input", str(raw), "--output_dir", str(root / "clean"), "--num_workers", "2",
                               "--validation_ratio", "0.1"])
    train_tokenizer.main(["--input", str(root / "clean"), "--output_dir", str(root / "tok"), "--vocab_size", "1024"])
    meta = dataset.main(["--input", str(root / "clean"), "--output_dir", str(root / "tokens"), "--tokenizer_name_or_path",
                         str(root / "tok"), "--block_size", "32", "--num_workers", "2", "--batch_docs", "64"])
    return {"root": root, "raw": raw, "clean": root / "clean", "tok": root / "tok", "tokens": root / "tokens",
            "summary": summary, "meta": meta}


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
