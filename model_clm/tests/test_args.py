"""Bad arguments fail in __post_init__ with one line naming the argument, before anything is loaded."""
import sys

import pytest
import torch

import clean_data
import dataset
import model
import train
import train_tokenizer

HERE = train.HERE


def _refuse(*a, **kw):
    raise AssertionError("loaded something before the bad argument was reported")


@pytest.fixture
def no_loading(monkeypatch):
    """Every loader raises: a test passing under this fixture proves nothing was loaded."""
    for mod, name in ((train, "build_model"), (train, "load_tokenizer"), (model, "build_model"),
                      (dataset, "PackedDataset"), (dataset, "build_token_files"),
                      (clean_data, "_stage1"), (clean_data, "prepare_people_daily"), (train_tokenizer, "Tokenizer")):
        monkeypatch.setattr(mod, name, _refuse)
    monkeypatch.setattr(model.AutoModelForCausalLM, "from_pretrained", _refuse)
    monkeypatch.setattr(model.AutoModelForCausalLM, "from_config", _refuse)
    monkeypatch.setattr(model.AutoTokenizer, "from_pretrained", _refuse)
    monkeypatch.setattr(dataset.AutoTokenizer, "from_pretrained", _refuse)


GPU_ONLY = ("--bf16", "--fp16", "--deepspeed")
TRAIN_CASES = [
    (["--model_type", "t5"], "--model_type"),
    (["--model_type", "no-such-model"], "--model_type"),
    (["--config_name", "/nonexistent"], "--config_name"),
    (["--model_name_or_path", "/nonexistent/model"], "--model_name_or_path"),
    (["--model_name_or_path", "Qwen/Qwen2-0.5B", "--config_overrides", "num_hidden_layers=2"], "--config_overrides"),
    (["--model_name_or_path", "Qwen/Qwen2-0.5B", "--config_name", "gpt2"], "--config_name"),
    (["--tokenizer_name_or_path", "./no/such/tokenizer"], "--tokenizer_name_or_path"),
    (["--block_size", "-8"], "--block_size"),
    (["--block_size", "0"], "--block_size"),  # was: silently the meta.json default
    (["--max_train_blocks", "-1"], "--max_train_blocks"),
    (["--max_eval_blocks", "0"], "--max_eval_blocks"),
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size"),
    (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps"),
    (["--learning_rate", "-1"], "--learning_rate"),
    (["--muon_learning_rate", "0"], "--muon_learning_rate"),
    (["--bf16", "t"], "--bf16"),
    (["--bf16"], "--bf16"),
    (["--bf16=True"], "--bf16"),
    (["--fp16", "true"], "--fp16"),
    (["--deepspeed", str(HERE / "ds_zero2.json")], "--deepspeed"),
    (["--resume_from_checkpoint", "last"], "--resume_from_checkpoint"),
    (["--resume_from_checkpoint", "/nonexistent"], "--resume_from_checkpoint"),
]


@pytest.mark.parametrize("extra, match", TRAIN_CASES, ids=[" ".join(c[0])[:40] for c in TRAIN_CASES])
def test_train_bad_argument_one_line_before_loading(pipeline, tmp_path, no_loading, extra, match):
    if torch.cuda.is_available() and match in GPU_ONLY:
        pytest.skip("GPU present: half precision and DeepSpeed are allowed")
    argv = ["--data_dir", str(pipeline["tokens"]), "--tokenizer_name_or_path", str(pipeline["tok"]),
            "--output_dir", str(tmp_path / "o"), "--report_to", "none", *extra]
    with pytest.raises(SystemExit, match=match) as e:
        train.main(argv)
    assert "\n" not in str(e.value) and "Fix" in str(e.value) or "must be" in str(e.value)


def test_missing_data_dir_before_loading(tmp_path, no_loading):
    with pytest.raises(SystemExit, match="--data_dir"):
        train.main(["--data_dir", str(tmp_path / "nothing"), "--output_dir", str(tmp_path / "o")])


@pytest.mark.parametrize("main, extra, match", [
    ("dataset", ["--block_size", "0"], "--block_size"),  # was: after tokenising the whole corpus
    ("dataset", ["--num_workers", "0"], "--num_workers"),
    ("dataset", ["--input", "/nonexistent"], "--input"),
    ("clean_data", ["--validation_ratio", "1.5"], "--validation_ratio"),
    ("clean_data", ["--min_chars", "0"], "--min_chars"),
    ("clean_data", ["--encoding", "no-such-codec"], "--encoding"),
    ("train_tokenizer", ["--vocab_size", "10"], "--vocab_size"),
])
def test_data_scripts_bad_argument_before_loading(pipeline, tmp_path, no_loading, main, extra, match):
    base = {"dataset": ["--input", str(pipeline["clean"]), "--output_dir", str(tmp_path / "t"),
                        "--tokenizer_name_or_path", str(pipeline["tok"])],
            "clean_data": ["--input", str(pipeline["raw"]), "--output_dir", str(tmp_path / "c")],
            "train_tokenizer": ["--input", str(pipeline["clean"]), "--output_dir", str(tmp_path / "k")]}[main]
    with pytest.raises(SystemExit, match=match) as e:
        sys.modules[main].main(base + extra)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "t").exists() and not (tmp_path / "c").exists()


def test_config_overrides_apply_before_derived_values(tmp_path):
    """qwen2's layer_types is derived from num_hidden_layers in __init__: overriding after construction left 32
    layer types for 8 layers and failed in save_pretrained after training (the README's qwen2 command)."""
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "<s>": 1, "</s>": 2},
                                        unk_token="<pad>")), pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    args = model.ModelArguments(model_type="qwen2", config_overrides="hidden_size=64,intermediate_size=128,"
                                "num_hidden_layers=2,num_attention_heads=4,num_key_value_heads=2")
    config = model.scratch_config(args, tokenizer)
    assert (config.num_hidden_layers, len(config.layer_types), config.vocab_size) == (2, 2, 3)
    config.save_pretrained(tmp_path)  # validates: raised before the fix
    bad = model.ModelArguments(model_type="qwen2", config_overrides="hidden_size=64,num_attention_heads=4")
    with pytest.raises(SystemExit, match="--config_overrides: .*num_key_value_heads=32") as e:
        model.scratch_config(bad, tokenizer)
    assert "\n" not in str(e.value)
