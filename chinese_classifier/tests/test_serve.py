import numpy as np
import pytest
from fastapi.testclient import TestClient

from model import load_trained, predict_proba
from serve import ServeArguments, create_app


@pytest.fixture(scope="module")
def client(trained):
    return TestClient(create_app(ServeArguments(model_dir=str(trained[0]), max_texts=4, max_chars=50)))


def test_health(client):
    r = client.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok", "labels": ["neg", "pos"], "multi_label": False}


def test_predict_batch_matches_model(client, trained):
    texts = ["房间很干净，服务也好", "书的印刷质量太差了，很失望"]
    r = client.post("/predict", json={"texts": texts})
    assert r.status_code == 200
    preds = r.json()["predictions"]
    model, tokenizer = load_trained(trained[0])
    expected = predict_proba(texts, model, tokenizer)
    for p, e in zip(preds, expected):
        assert p["label"] == ["neg", "pos"][int(e.argmax())]
        np.testing.assert_allclose([p["probs"]["neg"], p["probs"]["pos"]], e, atol=1e-5)
        assert sum(p["probs"].values()) == pytest.approx(1, abs=1e-4)


@pytest.mark.parametrize("body, status, message", [
    ({"texts": []}, 400, "texts is empty"),
    ({"texts": ["很好", "  "]}, 400, "texts[1] is empty"),
    ({"texts": ["好评"] * 5}, 413, "at most 4 per request"),
    ({"texts": ["长" * 51]}, 413, "has 51 characters; at most 50"),
    ({"text": "很好"}, 422, "texts"),
    ({"texts": "很好"}, 422, "texts"),
])
def test_bad_requests_get_4xx_with_message(client, body, status, message):
    r = client.post("/predict", json=body)
    assert r.status_code == status and message in r.json()["error"]


def test_malformed_json(client):
    r = client.post("/predict", content=b'{"texts": ["oops"', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "malformed JSON" in r.json()["error"]


def test_binds_localhost_by_default():
    assert ServeArguments().host == "127.0.0.1"
