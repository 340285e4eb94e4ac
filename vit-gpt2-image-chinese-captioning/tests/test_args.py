"""Every bad argument fails with one line naming it, before any data, tokenizer or model is loaded."""
import pytest

import clean_data
import serve
import train

CASES = [
    (["--bf16"], "--bf16"),
    (["--fp16"], "--fp16"),
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size"),
    (["--learning_rate", "-1"], "--learning_rate"),
    (["--num_train_epochs", "0"], "--num_train_epochs"),
    (["--generation_num_beams", "0"], "--generation_num_beams"),
    (["--generation_max_length", "1"], "--generation_max_length"),
    (["--dataloader_num_workers", "-1"], "--dataloader_num_workers"),
    (["--max_train_samples", "0"], "--max_train_samples"),
    (["--max_eval_samples", "-3"], "--max_eval_samples"),
    (["--image_size", "30", "--patch_size", "8"], "--image_size"),
    (["--patch_size", "0"], "--patch_size"),
    (["--encoder_hidden_size", "30", "--num_attention_heads", "4"], "--encoder_hidden_size"),
    (["--decoder_hidden_size", "30", "--num_attention_heads", "4"], "--decoder_hidden_size"),
    (["--decoder_layers", "0"], "--decoder_layers"),
    (["--max_target_length", "0"], "--max_target_length"),
    (["--dropout", "1.5"], "--dropout"),
    (["--position_init", "learned"], "--position_init"),
    (["--encoder_hidden_size", "6", "--num_attention_heads", "2"], "--encoder_hidden_size"),  # sincos needs 4 | h
    (["--model_name_or_path", "x", "--encoder_name_or_path", "y"], "--model_name_or_path"),
    (["--test_unseen_file", "/no/such.jsonl"], "--test_unseen_file"),
    (["--resume_from_checkpoint", "last"], "--resume_from_checkpoint"),
    (["--resume_from_checkpoint", "/no/such/checkpoint-3"], "--resume_from_checkpoint"),
]


@pytest.fixture
def tiny_data(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "validation", "test"):
        (data / f"{split}.jsonl").write_text('{"image_path": "/x.png", "text": "红色圆形"}\n', encoding="utf-8")
    return data


@pytest.fixture
def loaders_raise(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("loaded something before the arguments were checked")
    for name in ("load_splits", "load_tokenizer", "load_image_processor", "build_model", "with_transform"):
        monkeypatch.setattr(train, name, boom)


@pytest.mark.parametrize("extra,match", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_train_argument_fails_with_one_line_before_loading(extra, match, tiny_data, tmp_path, loaders_raise):
    with pytest.raises(SystemExit, match=match) as e:
        train.main(["--data_dir", str(tiny_data), "--output_dir", str(tmp_path / "out"), *extra])
    assert isinstance(e.value.code, str) and "\n" not in e.value.code and "Fix:" in e.value.code


def test_missing_data_names_its_argument(tmp_path, loaders_raise):
    with pytest.raises(SystemExit, match="--data_dir: .*train.jsonl not found"):
        train.main(["--data_dir", str(tmp_path / "none"), "--output_dir", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="--train_file: .*missing.jsonl not found"):
        train.main(["--train_file", str(tmp_path / "missing.jsonl"), "--output_dir", str(tmp_path / "o")])


@pytest.mark.parametrize("argv, arg", [
    (["--validation_ratio", "0"], "--validation_ratio"),
    (["--max_pixels", "0"], "--max_pixels"),
    (["--num_proc", "0"], "--num_proc"),
    (["--encoding", "nope"], "--encoding"),
    (["--input", "/no/such.csv"], "--input"),
    (["--image_root", "/no/such/dir"], "--image_root"),
])
def test_bad_clean_argument_fails_with_one_line(argv, arg, tmp_path, monkeypatch):
    monkeypatch.setattr(clean_data, "check_images", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    good = tmp_path / "p.jsonl"
    good.write_text('{"image_path": "a.png", "text": "红色"}\n', encoding="utf-8")
    with pytest.raises(SystemExit, match=arg) as e:
        clean_data.main(["--input", str(good), "--output_dir", str(tmp_path / "o"), *argv])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("argv, arg", [
    (["--port", "99999"], "--port"),
    (["--max_body_bytes", "0"], "--max_body_bytes"),
    (["--max_pixels", "0"], "--max_pixels"),
    (["--max_beams", "0"], "--max_beams"),
    (["--model_dir", "/nonexistent"], "--model_dir"),
])
def test_bad_serve_argument_fails_before_the_model_is_loaded(argv, arg, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("loaded before the arguments were checked")
    monkeypatch.setattr(serve, "load_trained", boom)
    monkeypatch.setattr(serve, "create_app", boom)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match=arg) as e:
        serve.main(["--model_dir", str(tmp_path), *argv])
    assert "\n" not in str(e.value) and "Fix:" in str(e.value)
