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

FOLDER = Path(__file__).resolve().parents[1]
if str(FOLDER) not in sys.path:
    sys.path.insert(0, str(FOLDER))
SEED = int(os.environ.get("ZERO_NLP_TEST_SEED", "42"))  # run the suite with another seed: ZERO_NLP_TEST_SEED=7
_THREADS = torch.get_num_threads()

# The test task: 32-px scenes, a 1-layer ViT (16 patches of 8 px) + a 1-layer GPT-2, 64 wide: ~20 s of training.
# Every phrasing of every image (6 references): BLEU then measures the attributes, not which template was drawn.
TINY_DATA = ["--n_train", "300", "--n_validation", "40", "--n_test", "80", "--n_test_unseen", "80",
             "--image_size", "32", "--noise", "8", "--captions_per_image", "6"]
TINY_MODEL = ["--image_size", "32", "--patch_size", "8", "--encoder_hidden_size", "64", "--decoder_hidden_size", "64",
              "--encoder_layers", "1", "--decoder_layers", "1", "--num_attention_heads", "2"]


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
def tiny_model():
    return [*TINY_MODEL, "--seed", str(SEED)]


@pytest.fixture(scope="session")
def shapes(tmp_path_factory):
    """make_data.py (tiny, with --odd_images) -> clean_data.py -> (raw dir, clean dir, clean summary)."""
    import clean_data
    import make_data
    raw, clean = tmp_path_factory.mktemp("shapes"), tmp_path_factory.mktemp("clean")
    make_data.main(["--output_dir", str(raw), *TINY_DATA, "--odd_images", "--seed", str(SEED)])
    summary = clean_data.main(["--input", *[str(raw / f"{s}.jsonl") for s in ("train", "validation", "test",
                                                                                 "test_unseen")],
                               "--output_dir", str(clean), "--num_proc", "1"])
    return raw, clean, summary


@pytest.fixture(scope="session")
def trained(shapes, tmp_path_factory):
    """One short training run shared by the tests -> (output_dir, metrics)."""
    import train
    out = tmp_path_factory.mktemp("trained")
    metrics = train.main(["--data_dir", str(shapes[1]), "--output_dir", str(out), *TINY_MODEL, "--seed", str(SEED),
                          "--num_train_epochs", "10", "--learning_rate", "3e-3",
                          # this model's scene accuracy stays near 0 at every epoch, so `auto` would keep an early one
                          "--metric_for_best_model", "bleu4", "--per_device_train_batch_size", "32",
                          "--eval_strategy", "epoch", "--save_strategy", "epoch", "--logging_steps", "10",
                          "--report_to", "tensorboard", "--disable_tqdm", "true"])
    return out, metrics
