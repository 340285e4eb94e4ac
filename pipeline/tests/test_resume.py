"""A run killed after step 5 (checkpoints at 3; a half-written checkpoint-5 left behind) and resumed with
`--resume_from_checkpoint last` continues at step 3 and ends with the weights and losses of an uninterrupted run.
The merged output_dir (from_pretrained) reproduces the run's final validation loss."""
import json

import pytest
import torch
from safetensors.torch import load_file

from train import EXIT_AFTER_STEP

TINY = ["--hidden_size", "64", "--num_hidden_layers", "4", "--num_attention_heads", "4", "--num_key_value_heads", "2",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8", "--n_microbatches", "4",
        "--max_steps", "8", "--save_steps", "3", "--eval_steps", "100", "--logging_steps", "1", "--warmup_steps", "2",
        "--max_eval_blocks", "16", "--report_to", "none"]


@pytest.fixture(scope="module")
def runs(torchrun, tiny_data, seed, tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    common = ["train.py", "--data_dir", tiny_data["tokens"], "--tokenizer_name_or_path", tiny_data["tokenizer"],
              "--seed", seed, *TINY]
    torchrun(2, [*common, "--output_dir", root / "full"])
    killed = torchrun(2, [*common, "--output_dir", root / "killed"], env={EXIT_AFTER_STEP: "5"}, check=False)
    half = root / "killed/checkpoint-5"  # a save killed midway: shards but no trainer_state.json
    half.mkdir()
    (half / "stage-00-of-02.safetensors").write_bytes((root / "killed/checkpoint-3/stage-00-of-02.safetensors").read_bytes())
    resumed = torchrun(2, [*common, "--output_dir", root / "killed", "--resume_from_checkpoint", "last"])
    return {"root": root, "killed": killed, "resumed": resumed}


def history(path):
    return json.loads((path / "trainer_state.json").read_text())["log_history"]


def test_kill_then_resume_continues_at_the_right_step(runs):
    root = runs["root"]
    assert runs["killed"].returncode != 0
    # save_total_limit 2 keeps the two newest complete ones; the half-written checkpoint-5 is left for the user
    assert sorted(p.name for p in (root / "killed").glob("checkpoint-*")) == ["checkpoint-5", "checkpoint-6",
                                                                          "checkpoint-8"]
    out = runs["resumed"].stdout + runs["resumed"].stderr
    assert "skipping" in out and "checkpoint-5" in out  # the incomplete save is skipped
    assert f"resumed from {root / 'killed/checkpoint-3'} at step 3" in out
    full, resumed = history(root / "full/checkpoint-8"), history(root / "killed/checkpoint-8")
    steps = lambda h: [e["step"] for e in h if "loss" in e]  # noqa: E731
    assert steps(full) == steps(resumed) == list(range(1, 9))  # steps 1-3 from the checkpoint, 4-8 after the resume
    for a, b in zip(full, resumed):
        for key in ("loss", "eval_loss", "learning_rate"):
            if key in a:
                assert abs(a[key] - b[key]) < 1e-5, (a, b)
    w_full, w_resumed = load_file(root / "full/model.safetensors"), load_file(root / "killed/model.safetensors")
    assert w_full.keys() == w_resumed.keys()
    assert max(float((w_full[k] - w_resumed[k]).abs().max()) for k in w_full) < 1e-5
    assert sorted(p.name for p in (root / "full").glob("checkpoint-*")) == ["checkpoint-6", "checkpoint-8"]  # limit 2


def test_merged_output_reproduces_the_final_validation_loss(runs, tiny_data):
    from transformers import LlamaForCausalLM

    from dataset import PackedDataset
    out = runs["root"] / "full"
    model = LlamaForCausalLM.from_pretrained(out).eval()
    blocks = PackedDataset(tiny_data["tokens"], "validation", None, 16)
    ids = torch.stack([blocks[i]["input_ids"] for i in range(len(blocks))])
    with torch.no_grad():
        loss = float(model(input_ids=ids, labels=ids).loss)  # all 16 blocks = 2 eval batches of the same size
    logged = json.loads((out / "eval_results.json").read_text())["eval_loss"]
    assert abs(loss - logged) < 1e-4, (loss, logged)
    assert (out / "curves.png").stat().st_size > 1000
