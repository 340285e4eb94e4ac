"""Every bad argument fails with one line naming it, before any data or model is loaded."""
import pytest

import clean_data
import make_data
import train
import train_tokenizer

CASES = [
    (["--bf16"], "--bf16"),
    (["--fp16"], "--fp16"),
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size"),
    (["--per_device_train_batch_size", "1"], "--per_device_train_batch_size: 1 leaves no in-batch negative"),
    (["--learning_rate", "-1"], "--learning_rate"),
    (["--num_train_epochs", "0"], "--num_train_epochs"),
    (["--collapse_ratio", "2"], "--collapse_ratio"),
    (["--max_length", "2"], "--max_length"),
    (["--max_train_samples", "0"], "--max_train_samples"),
    (["--max_train_samples", "10"], "--max_train_samples: 10 images < one global batch"),
    (["--hidden_size", "30", "--num_attention_heads", "4"], "--hidden_size"),
    (["--patch_size", "7"], "--patch_size"),
    (["--num_hidden_layers", "0"], "--num_hidden_layers"),
    (["--logit_scale_init_value", "9"], "--logit_scale_init_value"),
    (["--model_type", "blip"], "--model_type: unknown 'blip'"),
    (["--freeze_vision"], "--freeze_vision: would freeze a randomly initialised tower"),
    (["--freeze_vision", "--freeze_text", "--model_name_or_path", "x"], "--freeze_vision/--freeze_text"),
    (["--vision_model_name_or_path", "google/vit-base-patch16-224"], "--model_type dual_encoder"),
    (["--model_type", "dual_encoder", "--text_model_name_or_path", "a", "--model_name_or_path", "b"],
     "--vision_model_name_or_path/--text_model_name_or_path"),
    (["--test_unseen_file", "/no/such.jsonl"], "--test_unseen_file"),
    (["--resume_from_checkpoint", "last"], "--resume_from_checkpoint"),
    (["--resume_from_checkpoint", "/no/such/checkpoint-3"], "--resume_from_checkpoint"),
]


@pytest.fixture
def tiny_data(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "validation", "test"):
        (data / f"{split}.jsonl").write_text('{"image_path": "/x.png", "text": "红色的圆形"}\n', encoding="utf-8")
    return data


@pytest.fixture
def loaders_raise(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("loaded something before the arguments were checked")
    for name in ("load_data", "load_images_table", "build_model", "with_images"):
        monkeypatch.setattr(train, name, boom)


@pytest.mark.parametrize("extra,match", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_argument_fails_with_one_line_before_loading(extra, match, tiny_data, tmp_path, loaders_raise):
    with pytest.raises(SystemExit, match=match) as e:
        train.main(["--data_dir", str(tiny_data), "--output_dir", str(tmp_path / "out"), *extra])
    assert "\n" not in str(e.value) and "Fix:" in str(e.value)


def test_missing_files_name_their_argument(tiny_data, tmp_path, loaders_raise):
    with pytest.raises(SystemExit, match="--train_file: .*missing.jsonl not found"):
        train.main(["--train_file", str(tmp_path / "missing.jsonl"), "--output_dir", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="--data_dir"):
        train.main(["--data_dir", str(tmp_path / "no-data"), "--output_dir", str(tmp_path / "o")])


@pytest.mark.parametrize("main, argv, match", [
    (clean_data.main, ["--input", "/no/such.csv"], "--input"),
    (clean_data.main, ["--validation_ratio", "0"], "--validation_ratio"),
    (clean_data.main, ["--min_side", "0"], "--min_side"),
    (clean_data.main, ["--max_pixels", "0"], "--max_pixels"),
    (clean_data.main, ["--num_proc", "0"], "--num_proc"),
    (clean_data.main, ["--encoding", "nope"], "--encoding"),
    (clean_data.main, ["--image_root", "/no/such/dir"], "--image_root"),
    (make_data.main, ["--n_train", "0"], "--n_train"),
    (make_data.main, ["--image_size", "10"], "--image_size"),
    (make_data.main, ["--captions_per_image", "9"], "--captions_per_image"),
    (make_data.main, ["--format", "xml"], "--format"),
    (make_data.main, ["--n_heldout", "99"], "--n_heldout"),
    (train_tokenizer.main, ["--train_file", "/no/such.jsonl"], "--train_file"),
])
def test_other_scripts_check_their_arguments(main, argv, match, tmp_path, monkeypatch):
    monkeypatch.setattr(clean_data, "check_images", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    csv = tmp_path / "p.csv"
    csv.write_text("image_path,text\n", encoding="utf-8")
    if main is clean_data.main and "--input" not in argv:
        argv = ["--input", str(csv), *argv]
    with pytest.raises(SystemExit, match=match) as e:
        main([*argv, "--output_dir", str(tmp_path / "o")])
    assert "\n" not in str(e.value) and "Fix:" in str(e.value)


def test_resume_last_skips_a_checkpoint_killed_while_saving(tmp_path):
    for step in (3, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-6" / "trainer_state.json").unlink()
    assert train.resolve_resume("last", str(tmp_path)) == str(tmp_path / "checkpoint-3")
