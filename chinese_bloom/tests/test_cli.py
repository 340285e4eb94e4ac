"""Bad arguments fail early with one clear message; the DeepSpeed configs are what they claim."""
import json
from pathlib import Path

import pytest

import clean_data
import train

FOLDER = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_loading(monkeypatch):
    """Loaders that raise: a bad argument must be refused before any model, tokenizer or data is loaded."""
    def refuse(*args, **kwargs):
        raise AssertionError("loaded something before checking the arguments")
    for name in ("load_model", "load_tokenizer", "read_clean_records", "build_sft_dataset", "load_splits"):
        monkeypatch.setattr(train, name, refuse)


@pytest.mark.parametrize("flag", [["--deepspeed", "ds_zero2.json"], ["--bf16"], ["--fp16", "True"]])
def test_gpu_only_flags_refused_on_cpu(flag, tmp_path, clean_dir, no_loading):
    with pytest.raises(SystemExit, match=f"{flag[0]}: needs a CUDA GPU"):
        train.main(flag + ["--output_dir", str(tmp_path), "--data_dir", str(clean_dir)])


def test_bf16_false_is_fine_on_cpu(tmp_path):
    args = train.SFTTrainingArguments(output_dir=str(tmp_path), bf16=False, fp16=False)
    assert not args.bf16 and not args.fp16


def test_no_pin_memory_warning_on_cpu(tmp_path):
    """issue 11.15: pin_memory on a machine without GPU only prints a warning every epoch."""
    import torch
    args = train.SFTTrainingArguments(output_dir=str(tmp_path))
    assert args.dataloader_pin_memory == torch.cuda.is_available()
    assert args.ddp_find_unused_parameters is False


def _empty_train(tmp_path, clean_dir):
    d = tmp_path / "data"
    d.mkdir()
    for split in ("validation", "test"):
        (d / f"{split}.jsonl").write_text((clean_dir / f"{split}.jsonl").read_text())
    (d / "train.jsonl").write_text("\n")
    return ["--data_dir", str(d)]


BAD = [
    (["--model_name_or_path", "/no/such/dir"], "--model_name_or_path: /no/such/dir does not exist"),
    (["--template", "nope"], "--template: unknown template"),
    (["--use_lora"], "--use_lora: LoRA needs a trained base"),
    (["--train_file", "/no/train.jsonl"], "--train_file: /no/train.jsonl does not exist"),
    (["--max_length", "-1"], "--max_length: must be > 0"),
    (["--max_length", "0"], "--max_length: must be > 0"),
    (["--max_train_samples", "-5"], "--max_train_samples: must be > 0"),
    (["--eval_samples", "0"], "--eval_samples"),
    ("empty_train", "--train_file: .* has no records"),
    (["--resume_from_checkpoint", "/nonexistent"], "--resume_from_checkpoint: /nonexistent is not a complete"),
    (["--resume_from_checkpoint", "last"], "--resume_from_checkpoint: no complete checkpoint"),
    (["--lora_r", "0"], "--lora_r: must be > 0"),
    (["--lora_alpha", "-1"], "--lora_alpha: must be > 0"),
    (["--lora_dropout", "1.5"], "--lora_dropout"),
    (["--learning_rate", "-1"], "--learning_rate: must be > 0"),
    (["--bf16"], "--bf16: needs a CUDA GPU"),
    (["--deepspeed", "ds_zero2.json"], "--deepspeed: needs a CUDA GPU"),
]


@pytest.mark.parametrize("argv, match", BAD, ids=[str(a) for a, _ in BAD])
def test_bad_arguments(argv, match, tmp_path, clean_dir, no_loading):
    """issue 12.16 / 13.2: one line naming the argument, before anything is loaded (loaders raise)."""
    if argv == "empty_train":
        argv = _empty_train(tmp_path, clean_dir)
    else:
        argv = argv + ["--data_dir", str(clean_dir)]
    with pytest.raises(SystemExit, match=match) as e:
        train.main(argv + ["--output_dir", str(tmp_path / "out")])
    assert "\n" not in str(e.value) and "Fix:" in str(e.value)


@pytest.mark.parametrize("argv, match", [
    (["--validation_ratio", "1.5"], "--validation_ratio: must be in"),
    (["--test_ratio", "-0.1"], "--test_ratio: must be in"),
    (["--validation_ratio", "0.6", "--test_ratio", "0.5"], "--validation_ratio: with --test_ratio"),
    (["--encoding", "nope"], "--encoding: unknown encoding"),
    (["--max_chars", "0"], "--max_chars: must be > 0"),
])
def test_bad_clean_arguments(argv, match, tmp_path, monkeypatch):
    monkeypatch.setattr(clean_data, "clean", lambda *a, **k: (_ for _ in ()).throw(AssertionError("read data")))
    with pytest.raises(SystemExit, match=match):
        clean_data.main(argv + ["--output_dir", str(tmp_path)])
    assert not (tmp_path / "train.jsonl").exists()


def test_resume_without_checkpoint(tmp_path, clean_dir):
    with pytest.raises(SystemExit, match="--resume_from_checkpoint: no complete checkpoint"):
        train.main(["--output_dir", str(tmp_path), "--data_dir", str(clean_dir), "--resume_from_checkpoint", "last",
                    "--max_train_samples", "16", "--eval_samples", "2"])


def test_resume_last_skips_incomplete_newest(tmp_path, capsys):
    """issue 12.1: a kill while saving leaves checkpoint-N without trainer_state.json; 'last' skips it."""
    for step, complete in ((10, True), (20, True), (30, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "model.safetensors").write_text("x")
        if complete:
            (d / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-40").write_text("a file, not a checkpoint")
    args = train.SFTTrainingArguments(output_dir=str(tmp_path), resume_from_checkpoint="last")
    assert args.resume_from_checkpoint == str(tmp_path / "checkpoint-20")
    out = capsys.readouterr().out
    assert "skipping" in out and "checkpoint-30" in out


def test_learning_rate_default_depends_on_the_model(tmp_path, clean_dir):
    """issue 13.3: the LoRA lr is train.py's default (not train.sh's): 1e-3 offline, 2e-4 / 2e-5 on real ones."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "config.json").write_text(json.dumps({"model_type": "bloom", "hidden_size": 1024, "n_layer": 24, "n_head": 16}))
    offline = tmp_path / "offline"
    offline.mkdir()
    (offline / "config.json").write_text(json.dumps({"model_type": "bloom", "hidden_size": 128, "n_layer": 4, "n_head": 4}))
    parser = train.HfArgumentParser((train.ModelArguments, train.DataArguments, train.SFTTrainingArguments))
    for argv, lr in ([[], 1e-3], [["--model_name_or_path", str(offline), "--use_lora"], 1e-3],
                     [["--model_name_or_path", str(real), "--use_lora"], 2e-4], [["--model_name_or_path", str(real)], 2e-5],
                     [["--model_name_or_path", str(real), "--learning_rate", "5e-5"], 5e-5]):
        groups = parser.parse_args_into_dataclasses(argv + ["--data_dir", str(clean_dir), "--output_dir", str(tmp_path / "o")])
        train.check_args(*groups)
        assert groups[2].learning_rate == lr, argv


def test_train_sh_has_no_recipe_values():
    sh = "\n".join(line for line in (FOLDER / "train.sh").read_text().splitlines() if not line.lstrip().startswith("#"))
    assert "--learning_rate" not in sh and "--num_train_epochs" not in sh and "--max_length" not in sh
    assert '"$@"' in sh and "# >>> launcher" in (FOLDER / "train.sh").read_text()


def test_readme_has_no_machine_paths():
    """issue 13.8: commands in the README are relative to the repository."""
    text = (FOLDER / "README.md").read_text()
    assert "/work/" not in text and "/home/" not in text


@pytest.mark.parametrize("name, stage, offload", [
    ("ds_zero2", 2, set()), ("ds_zero3", 3, set()),
    ("ds_zero2_offload", 2, {"offload_optimizer"}), ("ds_zero3_offload", 3, {"offload_optimizer", "offload_param"}),
])
def test_deepspeed_configs(name, stage, offload):
    cfg = json.loads((FOLDER / f"{name}.json").read_text())
    zero = cfg["zero_optimization"]
    assert zero["stage"] == stage
    present = {k for k in ("offload_optimizer", "offload_param") if k in zero}
    assert present == offload
    for key in offload:
        assert zero[key] == {"device": "cpu", "pin_memory": True}
    # batch sizes / precision / optimizer come from TrainingArguments ("auto"), so they never disagree
    assert cfg["train_micro_batch_size_per_gpu"] == "auto" and cfg["gradient_accumulation_steps"] == "auto"
    assert cfg["bf16"]["enabled"] == "auto" and cfg["fp16"]["enabled"] == "auto"
    if stage == 3:
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True  # save_pretrained gets real weights
    ints = [v for v in zero.values() if isinstance(v, float)]
    assert not ints, "DeepSpeed wants integer sizes"


def test_serve_and_merge_bad_dirs(tmp_path):
    import merge
    import serve
    with pytest.raises(SystemExit, match="--model_dir: .* does not exist"):
        serve.main(["--model_dir", str(tmp_path / "nope")])
    with pytest.raises(SystemExit, match="--adapter_dir: .* has no adapter_config.json"):
        merge.main(["--adapter_dir", str(tmp_path)])


def test_all_dropped_fails_naming_max_length_before_training(tmp_path, clean_dir):
    """issue 11.8: was `ValueError: num_samples ... 0` (or KeyError: 'eval_loss' after training)."""
    with pytest.raises(SystemExit, match="--max_length: all .* train records were dropped"):
        train.main(["--data_dir", str(clean_dir), "--output_dir", str(tmp_path), "--max_length", "8",
                    "--max_train_samples", "32", "--eval_samples", "2", "--report_to", "none"])
    assert not (tmp_path / "train_results.json").exists()


def test_prints_validation_loss_perplexity_and_answers(tmp_path, clean_dir, capfd):
    """issue 11.10: on open-ended data exact match is 0: the loss, perplexity and a few answers say more."""
    m = train.main(["--data_dir", str(clean_dir), "--output_dir", str(tmp_path), "--max_train_samples", "64",
                    "--num_train_epochs", "1", "--eval_samples", "4", "--save_strategy", "no", "--report_to", "none",
                    "--disable_tqdm", "True"])
    out = capfd.readouterr().out
    assert "validation loss" in out and "perplexity" in out and "  Q: " in out and "  A: " in out
    assert "dropped 0 of" in out and "pin_memory" not in out
    assert m["eval_perplexity"] > 1 and m["test_perplexity"] > 1
