"""serve.py driven by the official openai client over real HTTP on 127.0.0.1."""
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, BloomConfig

from dataset import TEMPLATES, train_tokenizer
from serve import create_app

CAP = 8


@pytest.fixture(scope="module")
def server():
    import uvicorn
    tok = train_tokenizer(["Human: 你好，今天天气怎么样？\n\nAssistant: 很好。"] * 20, vocab_size=300)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(BloomConfig(vocab_size=len(tok), hidden_size=32, n_layer=2, n_head=4,
                                                         eos_token_id=tok.eos_token_id)).eval()
    app = create_app(model, tok, TEMPLATES["belle"], model_name="tiny", max_tokens_cap=CAP, max_prompt_tokens=64)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(100):
        if srv.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server, api_key="none", max_retries=0)


MSG = [{"role": "user", "content": "你好"}]


def test_models(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_chat_and_stream_agree(client):
    full = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=6)
    assert full.choices[0].message.role == "assistant"
    assert 1 <= full.usage.completion_tokens <= 6 and full.usage.prompt_tokens > 3
    chunks = list(client.chat.completions.create(model="tiny", messages=MSG, max_tokens=6, stream=True))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == full.choices[0].message.content  # greedy: same text either way


def test_max_tokens_is_capped(client):
    out = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=10_000)
    assert out.usage.completion_tokens <= CAP


@pytest.mark.parametrize("kwargs, match", [
    (dict(messages=[]), "messages"),
    (dict(messages=[{"role": "robot", "content": "hi"}]), "role"),
    (dict(messages=[{"role": "user"}]), "content"),
    (dict(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]), "last message"),
    (dict(messages=MSG, max_tokens=0), "max_tokens"),
    (dict(messages=MSG, temperature=-1), "temperature"),
    (dict(messages=[{"role": "user", "content": "很长" * 200}]), "limit of 64"),
])
def test_bad_requests_rejected(client, kwargs, match):
    with pytest.raises(openai.BadRequestError, match=match):
        client.chat.completions.create(model="tiny", **kwargs)


def test_bad_json_gets_400_with_message(server):
    r = httpx.post(f"{server}/chat/completions", content=b'{"messages": [', headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert "not valid JSON" in r.json()["error"]["message"]


def test_concurrent_requests(client):
    def ask(i):
        return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"问题{i}"}],
                                              max_tokens=4, stream=bool(i % 2))
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ask, range(8)))
    assert len(results) == 8
    assert all(r.choices[0].message.content is not None for r in results[::2])
    assert all(list(r)[-1].choices[0].finish_reason for r in results[1::2])
