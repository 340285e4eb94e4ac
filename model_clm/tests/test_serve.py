"""serve.py (/v1/completions) driven by the official openai client over real HTTP on 127.0.0.1.

A tiny LLaMA and a BPE tokenizer are built here (not by other tests); reference ids come from model.generate.
"""
import copy
import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import httpx
import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

import serve
from serve import ServeArguments, create_app

FOLDER = Path(__file__).resolve().parents[1]
CAP = 2048
PROMPT = "中国人民"
TEXTS = ["中国人民银行今天宣布降低存款准备金率。", "北京是中华人民共和国的首都。", "今天天气很好，我们去公园散步。"] * 20


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS, trainer=trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<pad>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>")


def tiny_model(tok):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=2 * CAP + 64,
                         initializer_range=0.5, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return AutoModelForCausalLM.from_config(config).eval()


# Copied from chinese_bloom/tests/test_serve.py:running
@contextmanager
def running(app, port: int):
    import uvicorn
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        app.state.worker.shutdown()
        srv.should_exit = True
        thread.join(timeout=10)


@contextmanager
def no_eos(model):
    """Generations run to their max_tokens (an id beyond the vocabulary is never generated)."""
    with mock.patch.object(model.generation_config, "eos_token_id", model.config.vocab_size + 7):
        yield


@pytest.fixture(scope="module")
def tiny():
    tok = tiny_tokenizer()
    return tok, tiny_model(tok)


@pytest.fixture(scope="module")
def app(tiny):
    tok, model = tiny
    return create_app(model, tok, model_name="tiny", max_tokens_cap=CAP, max_prompt_tokens=64,
                      max_body_bytes=64 * 1024, max_queue=8)


@pytest.fixture(scope="module")
def server(app, free_port):
    with running(app, free_port()) as url:
        yield url


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server, api_key="none", max_retries=0, timeout=30)


def reference(tiny, prompt, max_new_tokens):
    tok, model = tiny
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, top_k=None,
                             eos_token_id=model.generation_config.eos_token_id, pad_token_id=tok.pad_token_id)
    return ids, out[0, len(ids):].tolist()


def test_models(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_completion_counts_and_stream_agree(client, tiny):
    tok, _ = tiny
    prompt_ids, ref = reference(tiny, PROMPT, 6)
    assert len(ref) == 6 and tok.eos_token_id not in ref
    out = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6)
    assert out.choices[0].text == tok.decode(ref, skip_special_tokens=True)
    assert out.choices[0].finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (len(prompt_ids), 6)
    chunks = list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == out.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 6


def test_stop_n_seed_and_tiny_temperature(client, tiny):
    tok, _ = tiny
    _, ref = reference(tiny, PROMPT, 12)
    text = tok.decode(ref, skip_special_tokens=True)
    start = next(i for i in range(1, len(text) - 1) if "\ufffd" not in text[i:i + 2] and text[i:i + 2].strip())
    stop = text[start:start + 2]
    m = next(m for m in range(1, 13) if stop in tok.decode(ref[:m], skip_special_tokens=True))
    out = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, stop=[stop])
    assert out.choices[0].text == text[:text.find(stop)] and out.choices[0].finish_reason == "stop"
    assert out.usage.completion_tokens == m
    greedy = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=1e-300)
    assert greedy.choices[0].text == tok.decode(ref[:6], skip_special_tokens=True)
    a, b = (client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, temperature=1.0, n=2, seed=3)
            for _ in range(2))
    assert [c.text for c in a.choices] == [c.text for c in b.choices] and len({c.text for c in a.choices}) == 2


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompt=""), "empty"),
    (dict(prompt=["a", "b"]), "prompt"),
    (dict(prompt=PROMPT, max_tokens=0), "max_tokens"),
    (dict(prompt=PROMPT, echo=True), "echo"),
    (dict(prompt=PROMPT, logprobs=2), "logprobs"),
    (dict(prompt=PROMPT, suffix="x"), "suffix"),
    (dict(prompt=PROMPT, extra_body={"stream": "yes"}), "stream"),
    (dict(prompt=PROMPT, extra_body={"messages": []}), "messages"),
    (dict(prompt="长" * 2000), "characters"),
    (dict(prompt="长" * 200), "limit of 64"),
])
def test_bad_requests_rejected(client, kwargs, match):
    with pytest.raises(openai.BadRequestError, match=match) as e:
        client.completions.create(model="tiny", **kwargs)
    assert set(e.value.body) == {"message", "type", "param", "code"}


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt=PROMPT)


@pytest.mark.parametrize("body, status", [
    (b"", 400), (b'{"model": "tiny", "prompt": "\xff"}', 400), (b'{"model": "tiny", "prompt": "\\ud800abc"}', 400),
    (b"{bad", 400), (json.dumps({"model": "tiny", "prompt": "x" * (1 << 20)}).encode(), 413),
])
def test_raw_bodies_get_openai_errors(server, body, status):
    with httpx.Client(timeout=10) as http:
        r = http.post(f"{server}/completions", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status and set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert http.post(f"{server}/completions", json={"model": "tiny", "prompt": PROMPT, "max_tokens": 2}
                         ).status_code == 200
    assert httpx.post(f"{server}/chat/completions", json={}).status_code == 404  # no chat template here


def test_disconnect_frees_model_and_failures_end_streams(client, server, app, tiny):
    _, model = tiny
    with no_eos(model):
        with httpx.Client(timeout=10) as http, http.stream(
                "POST", f"{server}/completions", json={"model": "tiny", "prompt": PROMPT, "max_tokens": CAP,
                                                       "stream": True}) as r:
            lines = r.iter_lines()
            assert sum(1 for line in (next(lines) for _ in range(6)) if line.startswith("data:")) >= 3
        start = time.perf_counter()
        assert client.completions.create(model="tiny", prompt=PROMPT, max_tokens=2).usage.completion_tokens == 2
        assert time.perf_counter() - start < 1.5 and not app.state.worker.pending
    with mock.patch.object(model, "forward", side_effect=RuntimeError("boom")):
        with pytest.raises(openai.APIError, match="boom"):
            list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=4, stream=True))
    assert client.completions.create(model="tiny", prompt=PROMPT, max_tokens=2).usage.completion_tokens == 2


def test_many_concurrent_requests_complete_or_get_503(client, tiny):
    def ask(i):
        try:
            return client.completions.create(model="tiny", prompt=f"{PROMPT}{i}", max_tokens=2)
        except openai.APIStatusError as e:
            return e

    with ThreadPoolExecutor(41) as pool, no_eos(tiny[1]):
        s = pool.submit(lambda: list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=300,
                                                               stream=True)))
        time.sleep(0.2)
        futures = [pool.submit(ask, i) for i in range(40)]
        t = time.perf_counter()
        assert client.models.list().data and time.perf_counter() - t < 2
        results = [f.result(timeout=60) for f in futures]
        assert s.result(timeout=60)
    busy = [r for r in results if isinstance(r, Exception)]
    assert busy and all(e.status_code == 503 for e in busy)
    assert all(r.usage.completion_tokens == 2 for r in results if not isinstance(r, Exception))


@pytest.mark.parametrize("argv, match", [
    (["--port", "99999"], "--port"),
    (["--model_dir", "/nonexistent/model"], "--model_dir"),
    (["--max_tokens_cap", "0"], "--max_tokens_cap"),
    (["--max_queue", "-1"], "--max_queue"),
])
def test_bad_arguments_fail_before_loading(tmp_path, argv, match):
    (tmp_path / "config.json").write_text("{}")
    with mock.patch.object(serve.AutoModelForCausalLM, "from_pretrained", side_effect=AssertionError("loaded")), \
            mock.patch.object(serve.AutoTokenizer, "from_pretrained", side_effect=AssertionError("loaded")):
        with pytest.raises(SystemExit, match=match):
            serve.main(["--model_dir", str(tmp_path), *argv])
    assert ServeArguments.__dataclass_fields__["model_dir"].default == str(FOLDER / "outputs/clm")


def test_sigterm_stops_server_during_generation(tiny, tmp_path, server_process):
    tok, model = tiny
    endless = copy.deepcopy(model)
    with torch.no_grad():
        endless.get_output_embeddings().weight[tok.eos_token_id] = 0  # EOS's logit 0 is never the largest
    endless.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    with server_process([str(FOLDER / "serve.py"), "--model_dir", str(tmp_path / "m"),
                         "--model_name", "tiny", "--max_tokens_cap", "2000"]) as (root, proc):
        url = f"{root}/v1"
        first = threading.Event()

        def long_stream():
            try:
                body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 2000, "stream": True}
                with httpx.stream("POST", f"{url}/completions", json=body, timeout=60) as r:
                    for line in r.iter_lines():
                        if line.startswith("data:"):
                            first.set()
            except httpx.HTTPError:
                pass
        threading.Thread(target=long_stream, daemon=True).start()
        assert first.wait(30)
        start = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=8)
        assert time.perf_counter() - start < 6


def test_omp_wait_policy_is_passive_before_torch_is_imported():
    source = (FOLDER / "serve.py").read_text()
    assert source.index('os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")') < source.index("import torch")
