"""Bad arguments fail at once with one line naming the argument, before any model, tokenizer or data is loaded."""
import json

import pytest

import clean_data
import model
import serve
import train
import train_tokenizer

FOLDER = train.HERE


@pytest.fixture
def no_loading(monkeypatch):
    """Loaders that raise: a bad argument must be refused before anything is loaded."""
    def refuse(*args, **kwargs):
        raise AssertionError("loaded something before checking the arguments")
    for name in ("read_jsonl", "load_tokenizer", "build_model", "build_lm_dataset", "build_chat_dataset"):
        monkeypatch.setattr(train, name, refuse)
    monkeypatch.setattr(serve, "load_for_inference", refuse)
    monkeypatch.setattr(clean_data, "clean", refuse)
    monkeypatch.setattr(train_tokenizer, "train_tokenizer", refuse)


def _not_gpt2(tmp_path):
    d = tmp_path / "bert"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "bert"}))
    return str(d)


def _empty_train(tmp_path, clean_dir):
    d = tmp_path / "empty"
    d.mkdir()
    (d / "validation.jsonl").write_text((clean_dir / "validation.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    (d / "train.jsonl").write_text("\n")
    return str(d)


TRAIN_BAD = [
    (["--task", "poems"], "--task: 'poems' is not lm or chat"),
    (["--model_name_or_path", "/no/such/dir"], "--model_name_or_path: /no/such/dir does not exist"),
    ("not_gpt2", "--model_name_or_path: .* is a 'bert' model, not gpt2"),
    (["--data_dir", "/no/data"], "--train_file: /no/data/train.jsonl does not exist"),
    ("empty_train", "--train_file: .* has no records"),
    (["--validation_file", "/no/valid.jsonl"], "--validation_file: /no/valid.jsonl does not exist"),
    (["--block_size", "0"], "--block_size: 0 must be > 0"),
    (["--block_size", "512"], "--block_size: 512 > --n_positions 128"),
    (["--max_train_docs", "-1"], "--max_train_docs"),
    (["--max_eval_blocks", "0"], "--max_eval_blocks"),
    (["--eval_chats", "0"], "--eval_chats"),
    (["--n_layer", "0"], "--n_layer: 0 must be >= 1"),
    (["--n_head", "3"], "--n_head: 3 does not divide --n_embd 128"),
    (["--learning_rate", "-1"], "--learning_rate: -1.0 must be > 0"),
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size"),
    (["--resume_from_checkpoint", "/nonexistent"], "--resume_from_checkpoint: /nonexistent is not a complete"),
    (["--resume_from_checkpoint", "last"], "--resume_from_checkpoint: no complete checkpoint"),
    (["--bf16"], "--bf16: needs a CUDA GPU"),
    (["--fp16", "true"], "--fp16: needs a CUDA GPU"),
    (["--deepspeed", "ds_zero2.json"], "--deepspeed: needs a CUDA GPU"),
]


@pytest.mark.parametrize("argv, match", TRAIN_BAD, ids=[str(a) for a, _ in TRAIN_BAD])
def test_train_bad_arguments(argv, match, tmp_path, clean_dir, no_loading):
    if argv == "not_gpt2":
        argv = ["--model_name_or_path", _not_gpt2(tmp_path)]
    elif argv == "empty_train":
        argv = ["--data_dir", _empty_train(tmp_path, clean_dir)]
    if "--data_dir" not in argv:
        argv = argv + ["--data_dir", str(clean_dir)]
    with pytest.raises(SystemExit, match=match) as e:
        train.main(argv + ["--output_dir", str(tmp_path / "out")])
    assert "\n" not in str(e.value) and "Fix:" in str(e.value)


CLEAN_BAD = [
    (["--task", "x"], "--task"), (["--doc_split", "words"], "--doc_split"),
    (["--validation_ratio", "1.5"], "--validation_ratio"), (["--min_chars", "0"], "--min_chars"),
    (["--min_chars", "100", "--max_chars", "50"], "--min_chars: 100 > --max_chars 50"),
    (["--encoding", "nope"], "--encoding: unknown encoding"), (["--input", "/no/file.txt"], "--input: /no/file.txt"),
    (["--max_docs", "0"], "--max_docs"), (["--text_field", ""], "--text_field"),
    (["--min_chinese_ratio", "2"], "--min_chinese_ratio"),
]


@pytest.mark.parametrize("argv, match", CLEAN_BAD, ids=[str(a) for a, _ in CLEAN_BAD])
def test_clean_bad_arguments(argv, match, tmp_path, no_loading):
    with pytest.raises(SystemExit, match=match) as e:
        clean_data.main(argv + ["--output_dir", str(tmp_path / "out")])
    assert "Fix:" in str(e.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, match", [
    (["--model_dir", "/no/model"], "--model_dir: /no/model has no config.json"),
    (["--port", "0"], "--port: 0 is not a TCP port"), (["--max_tokens_cap", "0"], "--max_tokens_cap"),
    (["--max_queue", "-1"], "--max_queue"),
])
def test_serve_bad_arguments(argv, match, no_loading):
    with pytest.raises(SystemExit, match=match):
        serve.main(argv)


def test_tokenizer_bad_arguments(tmp_path, no_loading):
    with pytest.raises(SystemExit, match="--train_file: /no/train.jsonl does not exist"):
        train_tokenizer.main(["--train_file", "/no/train.jsonl"])
    with pytest.raises(SystemExit, match="--min_frequency"):
        train_tokenizer.main(["--min_frequency", "0"])


def test_resume_last_skips_incomplete_newest(tmp_path, capsys):
    """A kill while saving leaves checkpoint-N without trainer_state.json; 'last' skips it."""
    for step, complete in ((10, True), (20, True), (30, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "model.safetensors").write_text("x")
        if complete:
            (d / "trainer_state.json").write_text("{}")
    args = train.GPT2TrainingArguments(output_dir=str(tmp_path), resume_from_checkpoint="last")
    assert args.resume_from_checkpoint == str(tmp_path / "checkpoint-20")
    out = capsys.readouterr().out
    assert "skipping" in out and "checkpoint-30" in out


def test_task_defaults():
    lm = train.GPT2TrainingArguments()
    chat = train.GPT2TrainingArguments(task="chat")
    assert lm.output_dir == str(FOLDER / "outputs/gpt2") and chat.output_dir == str(FOLDER / "outputs/gpt2_chat")
    assert (lm.max_steps, chat.max_steps) == (train.TASK_STEPS["lm"], train.TASK_STEPS["chat"])
    assert train.GPT2TrainingArguments(max_steps=-1, num_train_epochs=2).max_steps == -1
    assert model.ModelArguments().n_layer == model.SMALL_CONFIG["n_layer"]


def test_readme_has_no_machine_paths():
    text = (FOLDER / "README.md").read_text(encoding="utf-8")
    assert "/work/" not in text and "/home/" not in text and "/tmp/" not in text
