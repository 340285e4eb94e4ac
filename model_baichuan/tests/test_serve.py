"""serve.py driven by the official openai client over real HTTP on 127.0.0.1 (uvicorn in a thread).

A tiny random BaichuanForCausalLM (ALiBi + NormHead) with a small tokenizer (bc_tokenizer fixture) is built here.
Reference ids come from model.generate on tokenization.prompt_ids of the same messages, so counts and finish_reason
are checked exactly. chinese_bloom's cases (same shared server code), plus Baichuan2-Chat's prompt and the dirs
serve.py accepts (adapter, official ALiBi dir loaded directly, official RoPE dir converted once).
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
from transformers import AutoModelForCausalLM

import serve
from model import BaichuanConfig
from serve import ServeArguments, create_app
from tokenization import prompt_ids, stop_ids

FOLDER = Path(__file__).resolve().parents[1]
CAP = 4096  # long streams for the disconnect / queue tests
MSG = [{"role": "user", "content": "你好"}]
TEMPLATE = (195, 196)  # Baichuan2-Chat's user_token_id, assistant_token_id


def tiny_model(tok):
    torch.manual_seed(0)
    config = BaichuanConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, initializer_range=0.5, pad_token_id=0, eos_token_id=2)  # peaked
    return AutoModelForCausalLM.from_config(config).eval()


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


@pytest.fixture(scope="module")
def tiny(bc_tokenizer):
    tok, template = bc_tokenizer
    assert template == TEMPLATE
    return tok, tiny_model(tok)


@pytest.fixture(scope="module")
def app(tiny):
    tok, model = tiny
    return create_app(model, tok, TEMPLATE, model_name="tiny", max_tokens_cap=CAP,
                      max_prompt_tokens=64, max_body_bytes=64 * 1024, max_queue=8)


@pytest.fixture(scope="module")
def server(app, free_port):
    with running(app, free_port()) as url:
        yield url


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server, api_key="none", max_retries=0, timeout=30)


def reference(tiny, messages, max_new_tokens, eos=None):
    """(prompt ids, greedy generated ids) computed directly with model.generate."""
    tok, model = tiny
    ids = prompt_ids(tok, messages, *TEMPLATE)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, top_k=None,
                             eos_token_id=model.generation_config.eos_token_id if eos is None else eos,
                             pad_token_id=tok.pad_token_id)
    return ids, out[0, len(ids):].tolist()


def decode(tok, ids):
    return tok.decode(ids, skip_special_tokens=True)


def test_models(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_chat_and_stream_agree(client):
    full = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=6)
    assert full.choices[0].message.role == "assistant"
    assert 1 <= full.usage.completion_tokens <= 6 and full.usage.prompt_tokens >= 3  # 195 你好 196
    chunks = list(client.chat.completions.create(model="tiny", messages=MSG, max_tokens=6, stream=True))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == full.choices[0].message.content  # greedy: same text either way


def test_max_tokens_is_capped(tiny, free_port):
    tok, model = tiny
    with running(create_app(model, tok, TEMPLATE, model_name="tiny", max_tokens_cap=8), free_port()) as url:
        out = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=30).chat.completions.create(
            model="tiny", messages=MSG, max_tokens=10_000)
    assert out.usage.completion_tokens <= 8
    assert out.usage.completion_tokens == 8 and out.choices[0].finish_reason == "length"


@pytest.mark.parametrize("kwargs, match", [
    (dict(messages=[]), "messages"),
    (dict(messages=[{"role": "robot", "content": "hi"}]), "role"),
    (dict(messages=[{"role": "user"}]), "content"),
    (dict(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]), "last message"),
    (dict(messages=MSG, max_tokens=0), "max_tokens"),
    (dict(messages=MSG, temperature=-1), "temperature"),
    (dict(messages=[{"role": "user", "content": "很长" * 200}]), "limit of 64"),
    # strict types: "yes" is not true, true is not 1
    (dict(messages=MSG, extra_body={"stream": "yes"}), "stream"),
    (dict(messages=MSG, extra_body={"max_tokens": True}), "max_tokens"),
    (dict(messages=MSG, extra_body={"n": 0}), "'n'"),
    # parameters that would change the answer and are not implemented: named
    (dict(messages=MSG, logprobs=True), "logprobs"),
    (dict(messages=MSG, presence_penalty=0.5), "presence_penalty"),
    (dict(messages=MSG, tools=[{"type": "function", "function": {"name": "f"}}]), "tools"),
    (dict(messages=MSG, response_format={"type": "json_object"}), "response_format"),
    (dict(messages=MSG, extra_body={"frobnicate": 1}), "frobnicate"),
    (dict(messages=MSG, stop=["a", "b", "c", "d", "e"]), "stop"),
    (dict(messages=MSG, stream_options={"include_usage": True}), "stream_options"),
    (dict(messages=[{"role": "user", "content": "x" * 2000}]), "characters"),
])
def test_bad_requests_rejected(client, kwargs, match):
    with pytest.raises(openai.BadRequestError, match=match) as e:
        client.chat.completions.create(model="tiny", **kwargs)
    assert set(e.value.body) == {"message", "type", "param", "code"}


def test_bad_json_gets_400_with_message(server):
    r = httpx.post(f"{server}/chat/completions", content=b'{"messages": [', headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert "not valid JSON" in r.json()["error"]["message"]


@pytest.mark.parametrize("body, status, match", [
    (b"", 400, "empty"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, "UTF-8"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800abc"}]}', 400, "Unicode"),
    (b"[1, 2]", 400, "JSON object"),
    (b"[" * 20_000, 400, "nested too deeply"),
    (b"{not json}", 400, "not valid JSON"),
    (json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "长" * (2 << 20)}]}).encode(), 413,
     "larger than"),
])
def test_raw_bodies_get_openai_errors_and_connection_survives(server, body, status, match):
    with httpx.Client(timeout=10) as http:
        start = time.perf_counter()
        r = http.post(f"{server}/chat/completions", content=body, headers={"content-type": "application/json"})
        assert time.perf_counter() - start < 3
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and match in err["message"]
        ok = http.post(f"{server}/chat/completions", json={"model": "tiny", "messages": MSG, "max_tokens": 2})
        assert ok.status_code == 200  # the same client (connection pool) goes on working


def test_unknown_model_and_url_are_404_in_openai_format(client, server):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=MSG)
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    r = httpx.post(f"{server}/nowhere", json={})
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_usage_and_finish_reason_are_counted_from_generated_ids(client, tiny, app):
    tok, model = tiny
    prompt_ids, ref = reference(tiny, MSG, 5)
    assert len(ref) == 5 and tok.eos_token_id not in ref
    out = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=5)
    assert out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == 5 and out.usage.prompt_tokens == len(prompt_ids)
    assert out.usage.total_tokens == len(prompt_ids) + 5
    assert out.choices[0].message.content == decode(tok, ref)
    chunks = list(client.chat.completions.create(model="tiny", messages=MSG, max_tokens=5, stream=True,
                                                 stream_options={"include_usage": True}))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert all(c.usage is None for c in chunks[:-1])
    # EOS: make the token greedy decoding writes at position k the end-of-sequence token
    k = max(i for i in range(3) if ref[i] not in ref[:i])
    old = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = ref[k]
    try:
        for stream in (False, True):
            if stream:
                chunks = list(client.chat.completions.create(model="tiny", messages=MSG, max_tokens=5, stream=True,
                                                             stream_options={"include_usage": True}))
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                finish, usage = [c.choices[0].finish_reason for c in chunks if c.choices][-1], chunks[-1].usage
            else:
                out = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=5)
                text, finish, usage = out.choices[0].message.content, out.choices[0].finish_reason, out.usage
            assert finish == "stop" and usage.completion_tokens == k + 1  # the ids up to and with the EOS
            assert text == decode(tok, ref[:k])
    finally:
        model.generation_config.eos_token_id = old


def test_stop_strings(client, tiny):
    tok, _ = tiny
    _, ref = reference(tiny, MSG, 12)
    text = decode(tok, ref)
    start = next(i for i in range(1, len(text) - 1) if "\ufffd" not in text[i:i + 2] and text[i:i + 2].strip())
    stop = text[start:start + 2]
    m = next(m for m in range(1, 13) if stop in decode(tok, ref[:m]))  # ids generated until the stop appeared
    for value in (stop, [stop, "never appears"]):
        out = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=12, stop=value)
        assert out.choices[0].message.content == text[:text.find(stop)]
        assert out.choices[0].finish_reason == "stop" and out.usage.completion_tokens == m
        chunks = list(client.chat.completions.create(model="tiny", messages=MSG, max_tokens=12, stop=value,
                                                     stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == text[:text.find(stop)]
        assert chunks[-1].choices[0].finish_reason == "stop"


def test_max_completion_tokens_wins_over_max_tokens(client):
    out = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=6, max_completion_tokens=3)
    assert out.usage.completion_tokens == 3 and out.choices[0].finish_reason == "length"


def test_n_and_seed(client):
    def ask(seed, **kw):
        return client.chat.completions.create(model="tiny", messages=MSG, max_tokens=8, temperature=1.0, seed=seed,
                                              **kw)
    a, b, c = ask(1, n=2), ask(1, n=2), ask(2, n=2)
    texts = [ch.message.content for ch in a.choices]
    assert [ch.index for ch in a.choices] == [0, 1] and len(set(texts)) == 2  # n samples, different
    assert [ch.message.content for ch in b.choices] == texts  # same seed, same samples
    assert [ch.message.content for ch in c.choices] != texts  # another seed, other samples
    assert a.usage.completion_tokens <= 16 and a.usage.completion_tokens == b.usage.completion_tokens
    assert (a.usage.completion_tokens == 16) == all(ch.finish_reason == "length" for ch in a.choices)
    chunks = list(ask(1, n=2, stream=True))
    streamed = ["".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices[0].index == i) for i in (0, 1)]
    assert streamed == texts


def test_tiny_temperature_is_greedy(client):
    greedy = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=6).choices[0].message.content
    out = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=6, temperature=1e-300)
    assert out.choices[0].message.content == greedy
    chunks = list(client.chat.completions.create(model="tiny", messages=MSG, max_tokens=6, temperature=1e-300,
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == greedy


def test_top_p_narrows_sampling_to_the_top_token(client):
    greedy = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=8).choices[0].message.content
    outs = {client.chat.completions.create(model="tiny", messages=MSG, max_tokens=8, temperature=1.0, top_p=1e-6,
                                           seed=s).choices[0].message.content for s in range(3)}
    assert outs == {greedy}  # top_p keeps only the most likely token
    wide = {client.chat.completions.create(model="tiny", messages=MSG, max_tokens=8, temperature=1.0,
                                           seed=s).choices[0].message.content for s in range(3)}
    assert wide != {greedy}


def test_failed_generation_ends_stream_with_error_and_frees_model(client, tiny):
    _, model = tiny
    with mock.patch.object(model, "forward", side_effect=RuntimeError("boom")):
        start = time.perf_counter()
        with pytest.raises(openai.APIError, match="boom"):
            list(client.chat.completions.create(model="tiny", messages=MSG, max_tokens=6, stream=True))
        with pytest.raises(openai.InternalServerError, match="generation failed"):
            client.chat.completions.create(model="tiny", messages=MSG, max_tokens=6)
        assert time.perf_counter() - start < 5
    start = time.perf_counter()
    assert client.chat.completions.create(model="tiny", messages=MSG, max_tokens=2).usage.completion_tokens == 2
    assert time.perf_counter() - start < 3


@contextmanager
def no_eos(model):
    """Generations run to their max_tokens (an id beyond the vocabulary is never generated)."""
    with mock.patch.object(model.generation_config, "eos_token_id", model.config.vocab_size + 7):
        yield


def test_disconnect_stops_generation_and_frees_model(client, server, app, tiny):
    worker = app.state.worker
    _, model = tiny
    with no_eos(model):
        start = time.perf_counter()
        client.chat.completions.create(model="tiny", messages=MSG, max_tokens=500)
        per_token = (time.perf_counter() - start) / 500
    body = {"model": "tiny", "messages": MSG, "max_tokens": CAP, "stream": True}
    with no_eos(model):
        with httpx.Client(timeout=10) as http, http.stream("POST", f"{server}/chat/completions", json=body) as r:
            lines = r.iter_lines()
            assert sum(1 for line in (next(lines) for _ in range(6)) if line.startswith("data:")) >= 3
        start = time.perf_counter()
        out = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=2)
        waited = time.perf_counter() - start
    assert out.usage.completion_tokens == 2 and not worker.pending
    assert waited < min(1.5, CAP * per_token / 4), (waited, CAP * per_token)  # the 4096-token stream was stopped


def test_non_streaming_client_that_gives_up_frees_model(client, server, app, tiny):
    with no_eos(tiny[1]):
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{server}/chat/completions", json={"model": "tiny", "messages": MSG, "max_tokens": CAP},
                       timeout=0.5)
        start = time.perf_counter()
        out = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=2)
        assert out.usage.completion_tokens == 2 and time.perf_counter() - start < 2 and not app.state.worker.pending


def test_many_concurrent_requests_complete_or_get_503(client, server, tiny):
    results, stream_text = [], []

    def stream():
        chunks = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=300, stream=True)
        stream_text.append("".join(c.choices[0].delta.content or "" for c in chunks))

    def ask(i):
        try:
            return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"问题{i}"}],
                                                  max_tokens=2)
        except openai.APIStatusError as e:
            return e

    with ThreadPoolExecutor(42) as pool, no_eos(tiny[1]):
        s = pool.submit(stream)
        time.sleep(0.2)
        futures = [pool.submit(ask, i) for i in range(40)]
        t = time.perf_counter()
        assert [m.id for m in client.models.list().data] == ["tiny"]  # answers while all that waits
        assert time.perf_counter() - t < 2
        results = [f.result(timeout=60) for f in futures]
        s.result(timeout=60)
    done = [r for r in results if not isinstance(r, Exception)]
    busy = [r for r in results if isinstance(r, Exception)]
    assert all(r.usage.completion_tokens == 2 for r in done) and done
    assert busy and all(e.status_code == 503 and "busy" in e.body["message"] for e in busy)
    assert len(done) + len(busy) == 40 and stream_text
    assert client.chat.completions.create(model="tiny", messages=MSG, max_tokens=2).usage.completion_tokens == 2


def test_concurrent_requests(client):
    def ask(i):
        return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"问题{i}"}],
                                              max_tokens=4, stream=bool(i % 2))
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ask, range(8)))
    assert len(results) == 8
    assert all(r.choices[0].message.content is not None for r in results[::2])
    assert all(list(r)[-1].choices[0].finish_reason for r in results[1::2])


# ----------------------------------------------------------------------------- arguments and the process
def test_default_paths_are_relative_to_the_folder():
    import merge
    assert ServeArguments.__dataclass_fields__["model_dir"].default == str(FOLDER / "outputs/baichuan_lora")
    assert merge.MergeArguments.__dataclass_fields__["adapter_dir"].default == str(FOLDER / "outputs/baichuan_lora")
    assert merge.MergeArguments.__dataclass_fields__["output_dir"].default == str(FOLDER / "outputs/baichuan_merged")


@pytest.mark.parametrize("argv, match", [
    (["--port", "99999"], "--port"),
    (["--port", "0"], "--port"),
    (["--model_dir", "/nonexistent/model"], "--model_dir"),
    (["--max_tokens_cap", "0"], "--max_tokens_cap"),
    (["--max_queue", "-1"], "--max_queue"),
    (["--max_body_bytes", "0"], "--max_body_bytes"),
    (["--num_gpus", "-1"], "--num_gpus"),
    pytest.param(["--num_gpus", "1"], "--num_gpus: 1 requested but 0 visible",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")),
])
def test_bad_arguments_fail_before_loading(tmp_path, argv, match):
    (tmp_path / "config.json").write_text("{}")
    with mock.patch.object(serve, "load_for_inference", side_effect=AssertionError("loaded")):
        with pytest.raises(SystemExit, match=match):
            serve.main(["--model_dir", str(tmp_path), *argv])


def test_model_dir_without_checkpoint_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="--model_dir"):
        serve.main(["--model_dir", str(tmp_path)])


def test_sigterm_stops_server_during_generation(tiny, tmp_path, server_process):
    tok, model = tiny
    endless = copy.deepcopy(model)  # EOS's head row 0: its logit 0 is (almost) never the largest
    with torch.no_grad():
        endless.lm_head.weight[tok.eos_token_id] = 0
    endless.generation_config.user_token_id, endless.generation_config.assistant_token_id = TEMPLATE  # as Baichuan2-Chat
    endless.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    with server_process([str(FOLDER / "serve.py"), "--model_dir", str(tmp_path / "m"),
                         "--model_name", "tiny", "--max_tokens_cap", "100000"]) as (root, proc):
        url = f"{root}/v1"
        first = threading.Event()

        def long_stream():
            try:
                body = {"model": "tiny", "messages": MSG, "max_tokens": 100000, "stream": True}
                with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=60) as r:
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
    """The fix of the ~10x slower non-streaming path (README, benchmark.py --only serving)."""
    source = (FOLDER / "serve.py").read_text()
    assert source.index('os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")') < source.index("import torch")


def test_prompt_is_baichuan2_chats_format(tiny, client):
    """The server's prompt is tokenization.prompt_ids: user_token_id question assistant_token_id ... (usage counts it),
    and generation stops at tokenization.stop_ids."""
    tok, model = tiny
    two = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}, {"role": "user", "content": "再见"}]
    ids = prompt_ids(tok, two, *TEMPLATE)
    assert ids.count(TEMPLATE[0]) == 2 and ids.count(TEMPLATE[1]) == 2 and ids[-1] == TEMPLATE[1]
    out = client.chat.completions.create(model="tiny", messages=two, max_tokens=2)
    assert out.usage.prompt_tokens == len(ids)
    stops = stop_ids(tok, *TEMPLATE)
    assert tok.eos_token_id in stops
    assert set(model.generation_config.eos_token_id if isinstance(model.generation_config.eos_token_id, list)
               else [model.generation_config.eos_token_id]) == set(stops)


def test_serves_an_adapter_dir_and_official_dirs(tiny_alibi_official, tiny_rope_official, tmp_path, server_process):
    """--model_dir: a LoRA adapter (base + adapter), an official ALiBi dir (loaded directly) and an official RoPE dir
    (converted once into --cache_dir)."""
    from peft import LoraConfig, get_peft_model
    base = AutoModelForCausalLM.from_pretrained(tiny_alibi_official)
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["W_pack"]))
    peft_model.save_pretrained(tmp_path / "adapter")
    for model_dir, extra in ((tmp_path / "adapter", []), (tiny_alibi_official, []),
                             (tiny_rope_official, ["--cache_dir", str(tmp_path / "cache")])):
        with server_process([str(FOLDER / "serve.py"), "--model_dir", str(model_dir), "--model_name", "tiny", *extra]) \
                as (root, proc):
            out = openai.OpenAI(base_url=f"{root}/v1", api_key="none", max_retries=0, timeout=60).chat.completions.create(
                model="tiny", messages=MSG, max_tokens=3)
            assert out.usage.completion_tokens <= 3 and out.choices[0].finish_reason in ("length", "stop")
    assert len(list((tmp_path / "cache").iterdir())) == 1  # the official RoPE dir was converted into the cache
