"""serve.py over real HTTP on 127.0.0.1 (uvicorn in a thread): SSE streaming, the chat page, 4xx on bad requests.

The tiny random GPT-2 is built here; reference answers come from model.chat on the same dialogue.
"""
import json
import threading
import time
from contextlib import contextmanager

import httpx
import openai
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from model import chat
from serve import create_app
from train_tokenizer import train_tokenizer

MSG = [{"role": "user", "content": "你好，我叫王明。"}]


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
        yield f"http://127.0.0.1:{port}"
    finally:
        app.state.worker.shutdown()
        srv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def tiny():
    from model import build_model, ModelArguments, spaceless
    tok = spaceless(train_tokenizer(["你好我叫王明什么名字今天星期三明天几用户助手：，。？！“”"], min_frequency=1))
    torch.manual_seed(0)
    model = build_model(ModelArguments(n_layer=1, n_embd=32, n_head=2, n_positions=64), tok).eval()
    return model, tok


@pytest.fixture(scope="module")
def server(tiny, free_port):
    model, tok = tiny
    app = create_app(model, tok, model_name="tiny", max_tokens_cap=16, max_prompt_tokens=40, max_prompt_chars=60)
    with running(app, free_port()) as url:
        yield url


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0, timeout=30)


def test_stream_is_sse_and_equals_the_full_answer(client, server, tiny):
    model, tok = tiny
    full = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=8)
    reference = chat(model, tok, MSG, max_new_tokens=8)
    assert full.choices[0].message.content == reference  # the same prompt code and greedy decoding
    with httpx.stream("POST", f"{server}/v1/chat/completions", timeout=30,
                      json={"model": "tiny", "messages": MSG, "max_tokens": 8, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    deltas = [c["choices"][0]["delta"].get("content", "") for c in chunks]
    assert "".join(deltas) == reference and sum(bool(d) for d in deltas) >= 2  # token by token, not at once
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       client.chat.completions.create(model="tiny", messages=MSG, max_tokens=8, stream=True))
    assert streamed == reference


def test_multi_turn_and_system_messages(client, tiny):
    model, tok = tiny
    msgs = MSG + [{"role": "assistant", "content": "你好！"}, {"role": "user", "content": "我叫什么名字？"}]
    out = client.chat.completions.create(model="tiny", messages=[{"role": "system", "content": "你是助手"}] + msgs,
                                         max_tokens=6)
    assert out.choices[0].message.content == chat(model, tok, msgs, max_new_tokens=6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(messages=[{"role": "user", "content": ""}]), "prompt is empty"),
    (dict(messages=[{"role": "user", "content": "   "}]), "prompt is empty"),
    (dict(messages=[{"role": "user", "content": "很长" * 40}]), "characters, more than the limit of 60"),
    (dict(messages=[{"role": "user", "content": "你好" * 25}]), "tokens, more than the limit of 40"),
    (dict(messages=MSG, max_tokens=17), "over this server's cap of 16"),
    (dict(messages=MSG, max_tokens=0), "max_tokens"),
    (dict(messages=[]), "messages"),
    (dict(messages=MSG + [{"role": "assistant", "content": "好"}]), "last message"),
    (dict(messages=MSG, extra_body={"stream": "yes"}), "stream"),
    (dict(messages=MSG, extra_body={"frobnicate": 1}), "frobnicate"),
    (dict(messages=MSG, presence_penalty=0.5), "presence_penalty"),
])
def test_bad_requests_get_400(client, kwargs, match):
    with pytest.raises(openai.BadRequestError, match=match) as e:
        client.chat.completions.create(model="tiny", **kwargs)
    assert set(e.value.body) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("body, status, match", [
    (b"", 400, "empty"), (b"{not json", 400, "not valid JSON"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "\xff"}]}', 400, "UTF-8"),
    (json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "长" * 40000}]}).encode(), 413, "larger"),
])
def test_raw_bad_bodies(server, body, status, match):
    r = httpx.post(f"{server}/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status and match in r.json()["error"]["message"]


def test_unknown_model_is_404_and_page_is_served(client, server):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=MSG)
    page = httpx.get(server + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/v1/chat/completions" in page.text and "getReader" in page.text and '"tiny"' in page.text
    assert [m.id for m in client.models.list().data] == ["tiny"]
