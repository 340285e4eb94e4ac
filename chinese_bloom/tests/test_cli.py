"""Bad arguments fail early with one clear message; the DeepSpeed configs are what they claim."""
import json
from pathlib import Path

import pytest

import train

FOLDER = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("flag", [["--deepspeed", "ds_zero2.json"], ["--bf16"], ["--fp16", "True"]])
def test_gpu_only_flags_refused_on_cpu(flag, tmp_path):
    with pytest.raises(SystemExit, match=f"{flag[0]}: needs a CUDA GPU"):
        train.main(flag + ["--output_dir", str(tmp_path)])


def test_bf16_false_is_fine_on_cpu():
    train.check_cpu_flags(["--bf16", "False", "--fp16=false"])


@pytest.mark.parametrize("argv, match", [
    (["--model_name_or_path", "/no/such/dir"], "--model_name_or_path: /no/such/dir does not exist"),
    (["--template", "nope"], "--template: unknown template"),
    (["--use_lora"], "--use_lora: LoRA needs a trained base"),
    (["--train_file", "/no/train.jsonl"], "--train_file: /no/train.jsonl does not exist"),
])
def test_bad_arguments(argv, match, tmp_path, clean_dir):
    with pytest.raises(SystemExit, match=match):
        train.main(argv + ["--output_dir", str(tmp_path), "--data_dir", str(clean_dir)])


def test_resume_without_checkpoint(tmp_path, clean_dir):
    with pytest.raises(SystemExit, match="--resume_from_checkpoint: no checkpoint"):
        train.main(["--output_dir", str(tmp_path), "--data_dir", str(clean_dir), "--resume_from_checkpoint", "last",
                    "--max_train_samples", "16", "--eval_samples", "2"])


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
