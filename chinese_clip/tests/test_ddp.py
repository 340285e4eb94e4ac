"""Data parallel on CPU with gloo: features are gathered across the processes (every rank's batch is a negative),
and the result equals one process on the global batch; train.py runs under torchrun with 2 processes."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

import train

FOLDER = Path(__file__).resolve().parents[1]


def test_gathered_loss_and_gradients_equal_the_single_process_global_batch(tmp_path, free_port):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(FOLDER / "tests/ddp_gather_worker.py"), str(tmp_path)]
    result = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    torch.manual_seed(0)
    img = torch.randn(16, 8).requires_grad_(True)
    txt = torch.randn(16, 8).requires_grad_(True)
    scale = torch.tensor(3.0, requires_grad=True)
    loss = train.clip_loss(torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1),
                           scale)
    loss.backward()
    # the mean of the ranks' losses is the global-batch loss (each rank: its 8 rows against all 16 columns)
    assert abs(sum(r["loss"] for r in ranks) / 2 - loss.item()) < 1e-5
    # DDP averages parameter gradients over the 2 ranks: rank r's feature gradient / 2 must be the global one
    got_img = torch.tensor(ranks[0]["img_grad"] + ranks[1]["img_grad"]) / 2
    got_txt = torch.tensor(ranks[0]["txt_grad"] + ranks[1]["txt_grad"]) / 2
    torch.testing.assert_close(got_img, img.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got_txt, txt.grad, atol=1e-6, rtol=1e-5)
    assert abs(sum(r["scale_grad"] for r in ranks) / 2 - scale.grad.item()) < 1e-6
    # without the gather each rank would only see its own 8 negatives: a different (smaller) loss
    half = train.clip_loss(torch.nn.functional.normalize(img[:8], dim=-1),
                           torch.nn.functional.normalize(txt[:8], dim=-1), scale)
    assert abs(half.item() - ranks[0]["loss"]) > 1e-3


def test_torchrun_two_cpu_processes_train_and_rank0_reports(clean, tiny_model, tmp_path, free_port):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(FOLDER / "train.py"), "--data_dir", str(clean[0]), "--output_dir", str(out), *tiny_model,
           "--per_device_train_batch_size", "16", "--max_steps", "72", "--learning_rate", "1e-3",
           "--logging_steps", "4", "--eval_strategy", "no", "--save_strategy", "no",
           "--dataloader_num_workers", "0", "--report_to", "none", "--disable_tqdm", "true"]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600, cwd=FOLDER)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("== held-out retrieval") == 1  # rank 0 alone evaluates and prints
    health = json.loads((out / "health.json").read_text())
    assert health["status"] == "ok" and abs(health["chance_loss"] - math.log(32)) < 1e-9  # 2 x 16 negatives
    m = json.loads((out / "test_results.json").read_text())
    assert m["final_train_loss"] < m["chance_train_loss"]
