"""Bad arguments of train.py / model.py: one line naming the argument (SystemExit), before anything is loaded
(the tokenizer, model and dataset loaders are patched to raise)."""
import pytest
import torch

import train

CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="bf16/fp16 are valid with a GPU")
BAD = [  # (argv, WORLD_SIZE, the argument the message must name)
    (["--schedule", "pipedream"], 1, "--schedule"),
    (["--schedule", "1f1b", "--n_microbatches", "1"], 2, "--n_microbatches"),  # 1F1B: >= one microbatch per stage
    (["--per_device_train_batch_size", "6", "--n_microbatches", "4"], 1, "--n_microbatches"),  # not divisible
    (["--n_microbatches", "0"], 1, "--n_microbatches"),
    (["--schedule", "zbv", "--n_microbatches", "5", "--per_device_train_batch_size", "10",
      "--per_device_eval_batch_size", "10"], 2, "--n_microbatches"),  # not a multiple of the ranks
    (["--n_stages", "4"], 2, "--n_stages"),  # nproc does not match the stages
    (["--schedule", "interleaved1f1b", "--stages_per_rank", "1"], 2, "--stages_per_rank"),
    (["--schedule", "gpipe", "--stages_per_rank", "2"], 2, "--stages_per_rank"),
    (["--schedule", "interleaved1f1b", "--num_hidden_layers", "1"], 1, "--n_stages"),  # 2 stages > 1 layer
    (["--learning_rate", "0"], 1, "--learning_rate"),
    (["--max_steps", "0"], 1, "--max_steps"),
    (["--save_steps", "0"], 1, "--save_steps"),
    (["--eval_steps", "0.5"], 1, "--eval_steps"),  # a Trainer ratio
    (["--block_size", "2048"], 1, "--block_size"),  # > max_position_embeddings
    pytest.param(["--bf16"], 1, "--bf16", marks=CPU_ONLY),
    pytest.param(["--fp16"], 1, "--fp16", marks=CPU_ONLY),
    (["--resume_from_checkpoint", "/no/such/checkpoint-5"], 1, "--resume_from_checkpoint"),
    (["--resume_from_checkpoint", "last"], 1, "--resume_from_checkpoint"),  # an empty output_dir
    (["--model_name_or_path", "/no/such/Llama-2-7b-hf"], 1, "--model_name_or_path"),
    (["--tokenizer_name_or_path", "/no/such/tokenizer"], 1, "--tokenizer_name_or_path"),
    (["--hidden_size", "100", "--num_attention_heads", "8"], 1, "--num_attention_heads"),
    (["--num_key_value_heads", "3"], 1, "--num_key_value_heads"),
    (["--num_hidden_layers", "0"], 1, "--num_hidden_layers"),
]


@pytest.fixture
def nothing_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a loader ran before the argument check")
    for name in ("load_tokenizer", "build_model", "build_pipeline"):
        monkeypatch.setattr(train, name, refuse)
    monkeypatch.setattr(train.DataArguments, "datasets", refuse)


@pytest.mark.parametrize("argv,world,arg", BAD)
def test_bad_argument_fails_in_one_line(argv, world, arg, nothing_loads, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", str(world))
    with pytest.raises(SystemExit, match=arg) as e:
        train.main(["--data_dir", str(tiny_data["tokens"]), "--output_dir", str(tmp_path), *argv])
    assert "\n" not in str(e.value) and "Fix:" in str(e.value)
