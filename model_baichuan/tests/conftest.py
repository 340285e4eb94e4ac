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


def reference_logits(sd: dict, cfg: dict, ids: torch.Tensor) -> torch.Tensor:
    """Logits of an OFFICIAL Baichuan state dict written from the equations (not this folder's code), fp64:
    RMSNorm, fused W_pack = [q; k; v], RoPE (rotate-half, base 10000) or ALiBi (-slope_h * (i - j)), causal softmax,
    SwiGLU, NormHead (rows of lm_head / their L2 norm) when norm_head."""
    import math
    w = {k: v.double() for k, v in sd.items()}
    h, n = cfg["hidden_size"], cfg["num_attention_heads"]
    d, eps, t = h // n, cfg.get("rms_norm_eps", 1e-6), ids.shape[1]
    def norm(x, g):
        return g * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    pos = torch.arange(t, dtype=torch.float64)
    causal = torch.full((t, t), float("-inf"), dtype=torch.float64).triu(1)
    if cfg["position_embedding"] == "ALIBI":
        p2 = 2 ** math.floor(math.log2(n))
        slopes = [2 ** (-8 * (k + 1) / p2) for k in range(p2)] + [2 ** (-8 * (2 * k + 1) / (2 * p2)) for k in range(n - p2)]
        bias = -torch.tensor(slopes, dtype=torch.float64)[:, None, None] * (pos[:, None] - pos[None, :])
    else:
        inv = 1.0 / 10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
        ang = torch.cat([pos[:, None] * inv[None]] * 2, dim=-1)
        cos, sin = ang.cos(), ang.sin()
        def rope(x):
            return x * cos + torch.cat([-x[..., d // 2:], x[..., :d // 2]], dim=-1) * sin
        bias = torch.zeros(n, t, t, dtype=torch.float64)
    x = w["model.embed_tokens.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        a = norm(x, w[p + "input_layernorm.weight"])
        q, k, v = (z.view(*z.shape[:2], n, d).transpose(1, 2) for z in (a @ w[p + "self_attn.W_pack.weight"].T).split(h, -1))
        if cfg["position_embedding"] == "ROPE":
            q, k = rope(q), rope(k)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + bias + causal, dim=-1) @ v
        x = x + att.transpose(1, 2).reshape(*x.shape) @ w[p + "self_attn.o_proj.weight"].T
        m = norm(x, w[p + "post_attention_layernorm.weight"])
        gate, up = m @ w[p + "mlp.gate_proj.weight"].T, m @ w[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    head = w["lm_head.weight"]
    if cfg["norm_head"]:
        head = head / head.norm(dim=-1, keepdim=True)
    return norm(x, w["model.norm.weight"]) @ head.T


def official_state(src) -> dict:
    """All tensors of an official sharded .bin checkpoint."""
    sd = {}
    for f in sorted(Path(src).glob("pytorch_model-*.bin")):
        sd |= torch.load(f, weights_only=True)
    return sd


@pytest.fixture(scope="session")
def reference():
    """(reference_logits, official_state): the equations, for tests (a test module cannot import this conftest)."""
    return reference_logits, official_state


@pytest.fixture(scope="session")
def tiny_variants(tmp_path_factory, sp_model):
    """{variant: official-format dir} for the four variants, tiny random weights (6 heads: a non-power-of-two)."""
    from model import write_tiny_official
    root = tmp_path_factory.mktemp("variants")
    return {v: write_tiny_official(root / v, v, sp_model, seed=SEED, hidden_size=48, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=6, model_max_length=64)
            for v in ("baichuan-7b", "baichuan-13b", "baichuan2-7b", "baichuan2-13b")}


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
