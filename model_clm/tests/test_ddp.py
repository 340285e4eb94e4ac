"""torchrun DDP on CPU: 2 processes, gloo backend, tiny model; the loss must go down.

240 steps of 64-token blocks (was 40 of 32: on AMD EPYC, 2 cores the loss fell only 0.39 nats in 40 steps, under the 0.5 asserted)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1]
SEED = os.environ.get("ZERO_NLP_TEST_SEED", "42")  # as in tests/conftest.py


def test_torchrun_two_processes_gloo_loss_decreases(pipeline, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           str(HERE / "train.py"), "--data_dir", str(pipeline["tokens"]), "--tokenizer_name_or_path", str(pipeline["tok"]),
           "--output_dir", str(out), "--ddp_backend", "gloo", "--report_to", "none", "--disable_tqdm", "true",
           "--config_overrides", "hidden_size=64,intermediate_size=128,num_hidden_layers=1,num_attention_heads=4,num_key_value_heads=4",
           "--per_device_train_batch_size", "8", "--max_steps", "240", "--block_size", "64", "--learning_rate", "5e-3", "--logging_steps", "30",
           "--eval_strategy", "no", "--save_steps", "240", "--max_eval_blocks", "32", "--seed", SEED,
           "--ddp_timeout", "120"]  # a stuck collective raises (with its name) after 2 min instead of 30
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:  # ~1 min idle; CI once saw it stall after the step-240 checkpoint: show where, not just "timed out"
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420)
    except subprocess.TimeoutExpired as e:
        tail = lambda b: (b or b"").decode(errors="replace")[-3000:]
        pytest.fail(f"torchrun did not finish in 420 s\n--- stdout\n{tail(e.stdout)}\n--- stderr\n{tail(e.stderr)}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((out / "checkpoint-240/trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert len(losses) == 8
    # measured drop 0.77 nats (AMD EPYC, 2 cores, seed 42, torch.optim.Muon); with Float32Muon (Intel Xeon, 2 cores)
    # 1.127 / 1.118 nats, perplexity / initial 0.111 / 0.115 (seeds 42 / 7): the threshold sits below halfway (0.385)
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.35, losses
    position = json.loads((out / "checkpoint-240/data_position.json").read_text())
    assert position["samples_per_step"] == 2 * 8  # both ranks trained: global batch = world size x per-device
    results = json.loads((out / "eval_results.json").read_text())
    assert results["perplexity"] < 0.6 * results["init_perplexity"]
