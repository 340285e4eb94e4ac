"""Bad arguments fail early with one clear line, before any model, tokenizer or data is loaded (table-driven);
the DeepSpeed configs are what they claim; train.sh holds no recipe values."""
import json
from pathlib import Path

import pytest

import clean_data
import train

FOLDER = Path(__file__).resolve().parents[1]
LOADERS = ("load_model", "load_tokenizer", "read_clean_records", "build_sft_dataset", "load_splits",
           "build_offline_base", "load_baichuan", "write_tiny_official", "add_lora", "chat_ids")


@pytest.fixture
def no_loading(monkeypatch):
    """Loaders that raise: a bad argument must be refused before any model, tokenizer or data is loaded."""
    def refuse(*args, **kwargs):
        raise AssertionError("loaded something before checking the arguments")
    for name in LOADERS:
        monkeypatch.setattr(train, name, refuse)


def _empty_train(tmp_path, clean_dir):
    d = tmp_path / "data"
    d.mkdir()
    for split in ("validation", "test"):
        (d / f"{split}.jsonl").write_text((clean_dir / f"{split}.jsonl").read_text())
    (d / "train.jsonl").write_text("\n")
    return ["--data_dir", str(d)]


def _dir(tmp_path, name, files: dict) -> str:
    d = tmp_path / name
    d.mkdir()
    for file, content in files.items():
        (d / file).write_text(json.dumps(content))
    return str(d)


BAD = [
    (["--model_name_or_path", "/no/such/dir"], "--model_name_or_path: /no/such/dir does not exist"),
    ("bloom_dir", "--model_name_or_path: model_type 'bloom'"),
    ("adapter_dir", "--model_name_or_path: .* has no config.json .*LoRA adapter"),
    (["--lora_target_modules", "query_key_value"], "--lora_target_modules: unknown"),
    (["--lora_r", "0"], "--lora_r: must be > 0"),
    (["--lora_alpha", "-1"], "--lora_alpha: must be > 0"),
    (["--lora_dropout", "1.5"], "--lora_dropout"),
    (["--use_lora", "true"], "--use_lora: LoRA needs a trained base"),
    (["--tokenizer_vocab_size", "100"], "--tokenizer_vocab_size: must be >= "),
    ("vocab_with_model", "--tokenizer_vocab_size: only for the offline default"),
    (["--train_file", "/no/train.jsonl"], "--train_file: /no/train.jsonl does not exist"),
    (["--max_length", "-1"], "--max_length: must be > 0"),
    (["--max_length", "0"], "--max_length: must be > 0"),
    (["--max_train_samples", "-5"], "--max_train_samples: must be > 0"),
    (["--eval_samples", "0"], "--eval_samples"),
    (["--max_new_tokens", "0"], "--max_new_tokens"),
    ("empty_train", "--train_file: .* has no records"),
    (["--resume_from_checkpoint", "/nonexistent"], "--resume_from_checkpoint: /nonexistent is not a complete"),
    (["--resume_from_checkpoint", "last"], "--resume_from_checkpoint: no complete checkpoint"),
    (["--learning_rate", "-1"], "--learning_rate: must be > 0"),
    (["--num_train_epochs", "0"], "--num_train_epochs: must be > 0"),
    (["--bf16"], "--bf16: needs a CUDA GPU"),
    (["--fp16", "True"], "--fp16: needs a CUDA GPU"),
    (["--deepspeed", "ds_zero2.json"], "--deepspeed: needs a CUDA GPU"),
]


@pytest.mark.parametrize("argv, match", BAD, ids=[str(a) for a, _ in BAD])
def test_bad_arguments(argv, match, tmp_path, clean_dir, no_loading):
    """One line naming the argument and a fix, before anything is loaded (every loader raises)."""
    if argv == "empty_train":
        argv = _empty_train(tmp_path, clean_dir)
    elif argv == "bloom_dir":
        argv = ["--model_name_or_path", _dir(tmp_path, "bloom", {"config.json": {"model_type": "bloom"}})]
    elif argv == "adapter_dir":
        argv = ["--model_name_or_path", _dir(tmp_path, "adapter", {"adapter_config.json": {"r": 8}})]
    elif argv == "vocab_with_model":
        argv = ["--model_name_or_path", _dir(tmp_path, "bc", {"config.json": {"model_type": "baichuan"}}),
                "--tokenizer_vocab_size", "1000"]
    if "--data_dir" not in argv:
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
    (["--num_generated", "0"], "--num_generated: must be > 0"),
    (["--input", "/no/such.json"], "--input: /no/such.json does not exist"),
])
def test_bad_clean_arguments(argv, match, tmp_path, monkeypatch):
    monkeypatch.setattr(clean_data, "clean", lambda *a, **k: (_ for _ in ()).throw(AssertionError("read data")))
    with pytest.raises(SystemExit, match=match):
        clean_data.main(argv + ["--output_dir", str(tmp_path)])
    assert not (tmp_path / "train.jsonl").exists()


def test_resume_last_skips_incomplete_newest(tmp_path, capsys):
    """A kill while saving leaves checkpoint-N without trainer_state.json; 'last' skips it and says so."""
    for step, complete in ((10, True), (20, True), (30, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "adapter_model.safetensors").write_text("x")
        if complete:
            (d / "trainer_state.json").write_text("{}")
    args = train.SFTTrainingArguments(output_dir=str(tmp_path), resume_from_checkpoint="last")
    assert args.resume_from_checkpoint == str(tmp_path / "checkpoint-20")
    out = capsys.readouterr().out
    assert "skipping" in out and "checkpoint-30" in out


def test_late_defaults_depend_on_the_model(tmp_path, clean_dir):
    """Offline: full fine-tuning from scratch; LoRA on the offline model; LoRA 2e-4 / full 2e-5 on real ones;
    constant lr after warmup for the offline model, cosine on a real checkpoint, unless given."""
    real = _dir(tmp_path, "real", {"config.json": {"model_type": "baichuan", "hidden_size": 5120, "num_hidden_layers": 40}})
    offline = _dir(tmp_path, "offline", {"config.json": {"model_type": "baichuan", **{
        k: train.SMALL_CONFIG[k] for k in ("hidden_size", "num_hidden_layers")}}})
    parser = train.HfArgumentParser((train.ModelArguments, train.DataArguments, train.SFTTrainingArguments))
    const, cosine = "constant_with_warmup", "cosine"
    for argv, lr, epochs, lora, schedule in (
            ([], train.LR_OFFLINE, train.EPOCHS_FULL, False, const),
            (["--model_name_or_path", offline], train.LR_OFFLINE, train.EPOCHS_LORA, True, const),
            (["--model_name_or_path", real], 2e-4, 3, True, cosine),
            (["--model_name_or_path", real, "--use_lora", "false"], 2e-5, 3, False, cosine),
            (["--model_name_or_path", real, "--lr_scheduler_type", "linear"], 2e-4, 3, True, "linear"),
            (["--model_name_or_path", real, "--learning_rate", "5e-5"], 5e-5, 3, True, cosine)):
        groups = parser.parse_args_into_dataclasses(argv + ["--data_dir", str(clean_dir), "--output_dir", str(tmp_path / "o")])
        train.check_args(*groups)
        got = (groups[2].learning_rate, groups[2].num_train_epochs, groups[0].use_lora, groups[2].lr_scheduler_type)
        assert got == (lr, epochs, lora, schedule), argv


def test_no_pin_memory_warning_and_no_unused_parameter_search_on_cpu(tmp_path):
    import torch
    args = train.SFTTrainingArguments(output_dir=str(tmp_path))
    assert args.dataloader_pin_memory == torch.cuda.is_available() and args.ddp_find_unused_parameters is False


def test_train_sh_has_no_recipe_values():
    text = (FOLDER / "train.sh").read_text()
    sh = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "--learning_rate" not in sh and "--num_train_epochs" not in sh and "--max_length" not in sh
    assert '"$@"' in sh and "# >>> launcher (copied: chinese_classifier/train.sh)" in text


def test_readme_has_no_machine_paths():
    text = (FOLDER / "README.md").read_text()
    assert "/work/" not in text and "/home/" not in text and "/tmp/" not in text


@pytest.mark.parametrize("name, stage, offload", [
    ("ds_zero2", 2, set()), ("ds_zero3", 3, set()),
    ("ds_zero2_offload", 2, {"offload_optimizer"}), ("ds_zero3_offload", 3, {"offload_optimizer", "offload_param"}),
])
def test_deepspeed_configs(name, stage, offload):
    cfg = json.loads((FOLDER / f"{name}.json").read_text())
    zero = cfg["zero_optimization"]
    assert zero["stage"] == stage
    assert {k for k in ("offload_optimizer", "offload_param") if k in zero} == offload
    assert cfg["train_micro_batch_size_per_gpu"] == "auto" and cfg["gradient_accumulation_steps"] == "auto"
    assert cfg["bf16"]["enabled"] == "auto" and "scheduler" not in cfg  # Trainer's --lr_scheduler_type wins


def test_serve_and_merge_bad_dirs(tmp_path):
    import merge
    import serve
    with pytest.raises(SystemExit, match="--model_dir: .* does not exist"):
        serve.main(["--model_dir", str(tmp_path / "nope")])
    with pytest.raises(SystemExit, match="--adapter_dir"):
        merge.main(["--adapter_dir", str(tmp_path)])


def test_all_dropped_fails_naming_max_length_before_training(tmp_path, clean_dir):
    with pytest.raises(SystemExit, match="--max_length: all .* train records were dropped"):
        train.main(["--data_dir", str(clean_dir), "--output_dir", str(tmp_path), "--max_length", "8",
                    "--max_train_samples", "32", "--eval_samples", "2", "--report_to", "none"])
    assert not (tmp_path / "train_results.json").exists()


def test_diagram_writes_the_png(tmp_path):
    import diagram
    assert diagram.OUT == FOLDER.parent / "images" / "model_baichuan.png" and diagram.OUT.is_file()
    out = diagram.main(["--out", str(tmp_path / "flow.png")])
    assert out.stat().st_size > 10_000
