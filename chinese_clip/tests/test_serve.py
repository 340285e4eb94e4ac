"""serve.py: /embed (texts and images), /search over the index built at startup, /zero_shot; bad uploads and
bad requests get 4xx with a message (never 500); arguments are checked before anything is loaded."""
import dataclasses
import io
import json

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import serve
from model import ModelArguments, build_model, embed_images, embed_texts, load_trained
from serve import ServeArguments, create_app


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random tiny ChineseCLIP saved like train.py's output (safetensors + processor), in about a second."""
    path = tmp_path_factory.mktemp("tiny_clip")
    torch.manual_seed(0)
    model, processor = build_model(ModelArguments(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                                  num_attention_heads=2, intermediate_size=64, projection_dim=16),
                                   ["白色背景上有两个红色的圆形", "蓝色正方形绿色三角形菱形一三黑灰"], 32)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def index_file(shapes):
    return shapes[0] / "test.jsonl"


@pytest.fixture(scope="module")
def client(model_dir, index_file):
    return TestClient(create_app(ServeArguments(model_dir=str(model_dir), index_file=str(index_file),
                                                max_upload_bytes=200_000, max_texts=4, max_chars=50)))


def _error(r, status):
    """Every error body has one shape: {"error": {"message", "type", "param", "code"}}."""
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def _png(size=32, mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (size, size), "red" if mode != "L" else 128).save(buf, "PNG")
    return buf.getvalue()


def test_health_reports_the_index(client, index_file):
    n = len({json.loads(line)["image_path"] for line in index_file.read_text(encoding="utf-8").splitlines()})
    assert client.get("/health").json() == {"status": "ok", "index_size": n, "model": "ChineseCLIPModel"}


def test_embed_texts_and_images_match_the_model(client, model_dir):
    model, processor = load_trained(str(model_dir))
    r = client.post("/embed", json={"texts": ["红色的圆形", "蓝色"]})
    assert r.status_code == 200
    torch.testing.assert_close(torch.tensor(r.json()["embeddings"]), embed_texts(["红色的圆形", "蓝色"], model, processor))
    r = client.post("/embed", files=[("image", ("a.png", _png(), "image/png")), ("image", ("b.png", _png(mode="L")))])
    assert r.status_code == 200
    got = torch.tensor(r.json()["embeddings"])
    want = embed_images([Image.open(io.BytesIO(_png())).convert("RGB"),
                         Image.open(io.BytesIO(_png(mode="L"))).convert("RGB")], model, processor)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert torch.allclose(got.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_search_ranks_the_index_by_cosine(client):
    r = client.post("/search", json={"text": "白色背景上有两个红色的圆形", "top_k": 3})
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["rank"] for x in results] == [1, 2, 3]
    assert results[0]["score"] >= results[1]["score"] >= results[2]["score"]
    assert all(x["image_path"].endswith(".png") for x in results)


def test_zero_shot_returns_a_distribution(client):
    r = client.post("/zero_shot", files={"image": ("a.png", _png())}, data={"labels": "红色,绿色,蓝色"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body["probs"]) == {"红色", "绿色", "蓝色"} and abs(sum(body["probs"].values()) - 1) < 1e-4
    assert body["label"] == max(body["probs"], key=body["probs"].get)
    r = client.post("/zero_shot", files={"image": ("a.png", _png())},
                    data={"labels": '["圆形", "正方形"]', "templates": '["一张{}的图片"]'})
    assert r.status_code == 200 and set(r.json()["probs"]) == {"圆形", "正方形"}


def _truncated() -> bytes:
    data = _png(64)
    return data[: len(data) // 2]


@pytest.mark.parametrize("name, data, code", [
    ("empty.png", b"", "zero_byte"),
    ("text.png", "不是图片".encode(), "unreadable"),
    ("half.png", None, "truncated"),
    ("tiny.png", None, "too_small"),
    ("bomb.png", None, "decompression_bomb"),
])
def test_bad_images_are_400_with_the_cleaners_reason(client, name, data, code):
    from make_data import _png_with_size
    data = {"half.png": _truncated, "tiny.png": lambda: _png(8),
            "bomb.png": lambda: _png_with_size(40000, 40000)}.get(name, lambda: data)()
    for path, extra in (("/embed", {}), ("/zero_shot", {"labels": "红色,绿色"})):
        err = _error(client.post(path, files={"image": (name, data)}, data=extra), 400)
        assert err["code"] == code and err["param"] == "image", err


def test_oversized_uploads_are_413_before_they_are_read(client):
    big = b"\x89PNG" + b"0" * 300_000
    assert _error(client.post("/embed", files={"image": ("big.png", big)}), 413)["code"] == "body_too_large"
    assert _error(client.post("/zero_shot", files={"image": ("big.png", big)}, data={"labels": "a,b"}),
                  413)["code"] == "body_too_large"
    assert _error(client.post("/search", content=b'{"text": "' + b"a" * 300_000 + b'"}',
                              headers={"content-type": "application/json"}), 413)["code"] == "body_too_large"


@pytest.mark.parametrize("path, kwargs, status, message", [
    ("/embed", {"json": {"texts": []}}, 400, "texts is empty"),
    ("/embed", {"json": {"texts": ["红"] * 5}}, 413, "at most 4"),
    ("/embed", {"json": {"texts": ["长" * 51]}}, 413, "at most 50"),
    ("/embed", {"json": {"texts": ["\u200b "]}}, 400, "empty"),
    ("/embed", {"json": {"texts": [1]}}, 422, "texts.0"),
    ("/embed", {"json": {"text": "红"}}, 422, "unknown field"),
    ("/embed", {"content": b'{"texts": ["x"', "headers": {"content-type": "application/json"}}, 422, "malformed"),
    ("/embed", {"content": b"\xff\xfe", "headers": {"content-type": "application/json"}}, 422, "UTF-8"),
    ("/embed", {"content": b"", "headers": {"content-type": "application/json"}}, 422, "empty body"),
    ("/search", {"json": {"text": "红", "top_k": 0}}, 422, "top_k"),
    ("/search", {"json": {"text": "红", "top_k": True}}, 422, "top_k"),
    ("/search", {"json": {"text": "红", "top_k": 1000}}, 413, "at most 100"),
    ("/search", {"json": {"texts": ["红"]}}, 422, "text"),
    ("/search", {"content": b'{"text": "\\ud800"}', "headers": {"content-type": "application/json"}}, 400,
     "lone surrogate"),
    ("/zero_shot", {"json": {"labels": ["a", "b"]}}, 415, "multipart"),
    ("/zero_shot", {"files": {"image": ("a.png", b"x")}}, 400, "no labels"),
    ("/zero_shot", {"files": {"image": ("a.png", b"x")}, "data": {"labels": "红色"}}, 400, "2 to 4"),
    ("/zero_shot", {"files": {"image": ("a.png", b"x")}, "data": {"labels": "红,红"}}, 400, "different"),
    ("/zero_shot", {"files": {"image": ("a.png", b"x")}, "data": {"labels": "[1, 2]"}}, 422, "strings"),
    ("/zero_shot", {"files": {"image": ("a.png", b"x")}, "data": {"labels": "a,b", "templates": '["no slot"]'}},
     422, "templates"),
    ("/zero_shot", {"data": {"labels": "a,b"}, "files": {"other": ("a.png", b"x")}}, 400, "no image file"),
])
def test_bad_requests_get_4xx_with_a_message(client, path, kwargs, status, message):
    assert message in _error(client.post(path, **kwargs), status)["message"]


def test_unknown_path_and_method_use_the_same_error_format(client):
    assert _error(client.get("/nope"), 404)["code"] == "not_found"
    _error(client.get("/search"), 405)


@pytest.mark.parametrize("argv, arg", [
    (["--port", "99999"], "--port"),
    (["--max_upload_bytes", "0"], "--max_upload_bytes"),
    (["--max_top_k", "0"], "--max_top_k"),
    (["--max_index_images", "0"], "--max_index_images"),
    (["--model_dir", "/nonexistent"], "--model_dir"),
    (["--index_file", "/nonexistent.jsonl"], "--index_file"),
])
def test_bad_arguments_fail_before_the_model_is_loaded(model_dir, index_file, monkeypatch, argv, arg):
    def boom(*a, **k):
        raise AssertionError("loaded before the arguments were checked")
    monkeypatch.setattr(serve, "load_trained", boom)
    monkeypatch.setattr(serve, "create_app", boom)
    with pytest.raises(SystemExit, match=arg) as e:
        serve.main(["--model_dir", str(model_dir), "--index_file", str(index_file), *argv])
    assert "\n" not in str(e.value) and "Fix:" in str(e.value)


def test_binds_localhost_by_default():
    assert {f.name: f.default for f in dataclasses.fields(ServeArguments)}["host"] == "127.0.0.1"
