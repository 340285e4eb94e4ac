import dataclasses
import json
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

import serve
from model import load_trained, predict_proba
from serve import ServeArguments, create_app


def _tiny_model(path, multi=False):
    """A random 1-layer BERT classifier saved like train.py's output (safetensors + tokenizer), in < 1 s."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast
    chars = sorted(set("房间很干净，服务也好书的印刷质量太差了失望早餐丰富价格贵性价比低长评"))
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars]), encoding="utf-8")
    tok = BertTokenizerFast(str(path / "vocab.txt"), model_max_length=64)
    labels = ["价格", "服务", "卫生"] if multi else ["neg", "pos"]
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, num_labels=len(labels),
                     id2label=dict(enumerate(labels)), label2id={lab: i for i, lab in enumerate(labels)},
                     problem_type="multi_label_classification" if multi else "single_label_classification")
    BertForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return _tiny_model(tmp_path_factory.mktemp("tiny_classifier"))


@pytest.fixture(scope="module")
def client(model_dir):
    return TestClient(create_app(ServeArguments(model_dir=str(model_dir), max_texts=4, max_chars=50,
                                                max_body_bytes=100_000)))


def _error(r, status):
    """Every error body has one shape: {"error": {"message", "type", "param", "code"}}."""
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_health(client):
    r = client.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok", "labels": ["neg", "pos"], "multi_label": False}


def test_predict_batch_matches_model(client, model_dir):
    texts = ["房间很干净，服务也好", "书的印刷质量太差了，很失望"]
    r = client.post("/predict", json={"texts": texts})
    assert r.status_code == 200
    preds = r.json()["predictions"]
    model, tokenizer = load_trained(model_dir)
    expected = predict_proba(texts, model, tokenizer)
    for p, e in zip(preds, expected):
        assert p["label"] == ["neg", "pos"][int(e.argmax())]
        np.testing.assert_allclose([p["probs"]["neg"], p["probs"]["pos"]], e, atol=1e-5)
        assert sum(p["probs"].values()) == pytest.approx(1, abs=1e-4)
    top = client.post("/predict", json={"texts": texts, "top_k": 1}).json()["predictions"]
    assert [list(p["probs"]) for p in top] == [[p["label"]] for p in preds]


def test_multi_label_model(tmp_path):
    d = _tiny_model(tmp_path / "ml", multi=True)
    c = TestClient(create_app(ServeArguments(model_dir=str(d))))
    p = c.post("/predict", json={"texts": ["价格太贵"]}).json()["predictions"][0]
    assert set(p["probs"]) == {"价格", "服务", "卫生"} and "label" not in p
    assert p["labels"] == [lab for lab, x in p["probs"].items() if x > 0.5]


@pytest.mark.parametrize("body, status, message", [
    ({"texts": []}, 400, "texts is empty"),
    ({"texts": ["很好", "  "]}, 400, "texts[1] is empty"),
    ({"texts": ["好评"] * 5}, 413, "at most 4 per request"),
    ({"texts": ["长" * 51]}, 413, "has 51 characters; at most 50"),
    ({"text": "很好"}, 422, "texts"),
    ({"texts": "很好"}, 422, "texts"),
    # issue 12 item 7: empty after cleaning (answered 200 before)
    ({"texts": ["\u200b\u200c\ufeff"]}, 400, "texts[0] is empty after cleaning"),
    ({"texts": ["好", "\x01\x02\x7f"]}, 400, "texts[1] is empty after cleaning"),
    ({"texts": ["<p></p><br/>"]}, 400, "texts[0] is empty after cleaning"),
    ({"texts": ["http://example.com/a"]}, 400, "texts[0] is empty after cleaning"),
    # strict types: true is not 1, 1 is not "1"; unknown fields are named
    ({"texts": ["很好"], "top_k": True}, 422, "top_k"),
    ({"texts": ["很好"], "top_k": 0}, 422, "top_k"),
    ({"texts": [1]}, 422, "texts.0"),
    ({"texts": ["很好"], "max_tokens": 3}, 422, "max_tokens: unknown field"),
    ([1, 2], 422, "expected"),
])
def test_bad_requests_get_4xx_with_message(client, body, status, message):
    r = client.post("/predict", json=body)
    assert message in _error(r, status)["message"]


@pytest.mark.parametrize("content, code", [
    (b'{"texts": ["oops"', "invalid_json"),
    (b'{"texts": ["\xff\xfe"]}', "invalid_utf8"),     # was {"detail": "There was an error parsing the body"}
    (b"", "empty_body"),
    (b"[" * 50_000 + b"]" * 50_000, "invalid_json"),  # deep nesting (a RecursionError inside json)
])
def test_malformed_json(client, content, code):
    r = client.post("/predict", content=content, headers={"content-type": "application/json"})
    err = _error(r, 422)
    assert err["code"] == code
    if code == "invalid_json":
        assert "malformed JSON" in err["message"]


def test_unknown_path_and_method_use_the_same_error_format(client):
    assert _error(client.get("/nope"), 404)["code"] == "not_found"
    _error(client.get("/predict"), 405)


def test_body_is_bounded_before_it_is_read_or_tokenised(client, monkeypatch):
    calls = []
    monkeypatch.setattr(serve, "predict_proba", lambda *a, **k: calls.append(a))
    big = json.dumps({"texts": ["长" * 40] * 40_000}).encode()  # ~5 MB
    assert len(big) > 5_000_000
    assert "at most 100000" in _error(client.post("/predict", content=big), 413)["message"]

    def chunks():  # no content-length: read until the bound, then refuse
        for _ in range(50):
            yield b" " * 100_000
    assert _error(client.post("/predict", content=chunks()), 413)["code"] == "body_too_large"
    assert calls == []


@pytest.fixture(scope="module")
def http_server(model_dir):
    """The app under uvicorn on 127.0.0.1, a free port, in a thread -> base URL."""
    import uvicorn
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = create_app(ServeArguments(model_dir=str(model_dir), port=sock.getsockname()[1]))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)


def test_lone_surrogate_is_400_and_the_connection_stays_usable(http_server):
    with httpx.Client(base_url=http_server, limits=httpx.Limits(max_connections=1), timeout=30) as c:
        r1 = c.post("/predict", content=b'{"texts": ["\\ud800abc"]}', headers={"content-type": "application/json"})
        err = _error(r1, 400)  # was a 500, and the next request on the connection got "connection reset"
        assert err["code"] == "invalid_unicode" and "U+D800" in err["message"] and err["param"] == "texts[0]"
        port1 = r1.extensions["network_stream"].get_extra_info("client_addr")[1]
        r2 = c.post("/predict", json={"texts": ["房间很干净，服务也好"]})
        assert r2.status_code == 200 and r2.json()["predictions"][0]["label"] in ("neg", "pos")
        assert r2.extensions["network_stream"].get_extra_info("client_addr")[1] == port1  # same connection


def test_big_body_over_real_http(http_server):
    big = b'{"texts": ["' + "长".encode() * 1_700_000 + b'"]}'  # ~5 MB
    r = httpx.post(http_server + "/predict", content=big, headers={"content-type": "application/json"}, timeout=30)
    assert _error(r, 413)["code"] == "body_too_large"
    assert httpx.get(http_server + "/health", timeout=10).status_code == 200


@pytest.mark.parametrize("argv, arg", [
    (["--port", "99999"], "--port"),
    (["--port", "-1"], "--port"),
    (["--max_texts", "0"], "--max_texts"),
    (["--max_chars", "0"], "--max_chars"),
    (["--max_body_bytes", "0"], "--max_body_bytes"),
    (["--model_dir", "/nonexistent"], "--model_dir"),
])
def test_bad_arguments_fail_before_the_model_is_loaded(model_dir, monkeypatch, argv, arg):
    def boom(*a, **k):
        raise AssertionError("loaded before the arguments were checked")
    monkeypatch.setattr(serve, "load_trained", boom)
    monkeypatch.setattr(serve, "create_app", boom)
    with pytest.raises(SystemExit, match=arg) as e:
        serve.main(["--model_dir", str(model_dir), *argv])
    assert "\n" not in str(e.value) and "Fix:" in str(e.value)


def test_binds_localhost_by_default():
    assert {f.name: f.default for f in dataclasses.fields(ServeArguments)}["host"] == "127.0.0.1"
