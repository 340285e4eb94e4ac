"""serve.py /caption: uploads (multipart or raw), limits, 4xx on non-images, never 500."""
import io

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import serve
from model import ModelArguments, build_model, caption_images, load_trained
from serve import ServeArguments, create_app
from train_tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random tiny captioner saved like train.py's output (safetensors + tokenizer + image processor)."""
    from model import load_image_processor
    path = tmp_path_factory.mktemp("tiny_captioner")
    margs = ModelArguments(image_size=32, patch_size=8, encoder_hidden_size=32, decoder_hidden_size=32,
                           encoder_layers=1, decoder_layers=1, num_attention_heads=2, max_target_length=12)
    tok = train_tokenizer(["蓝色背景上有两个红色的圆形", "一个黄色正方形"])
    torch.manual_seed(0)
    build_model(margs, tok).save_pretrained(path)
    tok.save_pretrained(path)
    load_image_processor(margs).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def client(model_dir):
    return TestClient(create_app(ServeArguments(model_dir=str(model_dir), max_body_bytes=200_000,
                                                max_pixels=1_000_000)))


def png(size=(40, 30), mode="RGB", fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 120).save(buf, fmt)
    return buf.getvalue()


def _error(r, status):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_caption_multipart_and_raw_match_the_model(client, model_dir):
    r = client.post("/caption", files={"image": ("a.png", png(), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (40, 30)
    model, tok, proc = load_trained(model_dir)
    assert body["caption"] == caption_images([Image.open(io.BytesIO(png())).convert("RGB")], model, tok, proc,
                                             max_new_tokens=model.generation_config.max_length)[0]
    raw = client.post("/caption", content=png(), headers={"content-type": "image/png"})
    assert raw.status_code == 200 and raw.json()["caption"] == body["caption"]
    beam = client.post("/caption?num_beams=3", content=png(), headers={"content-type": "image/png"})
    sample = client.post("/caption?do_sample=true&top_k=5&seed=1", content=png(mode="L"),
                         headers={"content-type": "application/octet-stream"})
    assert beam.status_code == 200 and sample.status_code == 200
    assert client.get("/health").json()["status"] == "ok"


@pytest.mark.parametrize("kwargs, status, code", [
    ({"content": b"", "headers": {"content-type": "image/png"}}, 400, "empty_image"),
    ({"content": "这不是图片".encode(), "headers": {"content-type": "image/png"}}, 415, "unreadable"),
    ({"content": png()[:60], "headers": {"content-type": "image/png"}}, 415, "truncated"),
    ({"content": png((4, 4)), "headers": {"content-type": "image/png"}}, 422, "too_small"),
    ({"content": png((1200, 1000)), "headers": {"content-type": "image/png"}}, 413, "decompression_bomb"),
    ({"content": b"x" * 300_000, "headers": {"content-type": "image/png"}}, 413, "body_too_large"),
    ({"content": b'{"image": 1}', "headers": {"content-type": "application/json"}}, 415, "unsupported_media_type"),
    ({"files": {"other": ("a.png", png(), "image/png")}}, 400, "no_image"),
    ({"files": {"image": ("a.txt", b"hello", "text/plain")}}, 415, "unreadable"),
])
def test_bad_uploads_get_4xx_with_a_message(client, kwargs, status, code):
    err = _error(client.post("/caption", **kwargs), status)
    assert err["code"] == code and err["message"]


@pytest.mark.parametrize("query, param", [
    ("num_beams=0", "num_beams"), ("num_beams=99", "num_beams"), ("num_beams=two", "num_beams"),
    ("do_sample=yes", "do_sample"), ("do_sample=true&temperature=0", "temperature"),
    ("max_new_tokens=0", "max_new_tokens"), ("stream=true", "stream"),
])
def test_bad_parameters_get_400(client, query, param):
    err = _error(client.post(f"/caption?{query}", content=png(), headers={"content-type": "image/png"}), 400)
    assert err["param"] == param


def test_body_is_refused_before_it_is_read(client, monkeypatch):
    calls = []
    monkeypatch.setattr(serve, "caption_images", lambda *a, **k: calls.append(a))

    def chunks():  # no content-length: read until the bound, then refuse
        for _ in range(50):
            yield b"x" * 10_000
    assert _error(client.post("/caption", content=chunks(), headers={"content-type": "image/png"}), 413)
    assert calls == []


def test_unknown_path_and_method(client):
    assert _error(client.get("/nope"), 404)["code"] == "not_found"
    _error(client.get("/caption"), 405)


def test_binds_localhost_by_default():
    assert ServeArguments.__dataclass_fields__["host"].default == "127.0.0.1"
