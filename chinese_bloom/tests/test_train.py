"""train.py end to end on the generated task: full fine-tuning, LoRA on top, save/merge, resume, notebook."""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import merge
import train
from train_tokenizer import train_tokenizer
from model import SUPPORTED, load_for_inference

FOLDER = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("ZERO_NLP_TEST_SEED", "42"))  # as in conftest.py (not importable: the root has one too)
COMMON = ["--max_length", "128", "--per_device_train_batch_size", "8", "--eval_samples", "150",
          "--disable_tqdm", "True", "--logging_steps", "10"]
# held-out exact match (greedy generation, 150 unseen questions). The test runs are short (5 + 2 epochs);
# bash train.sh trains longer and gets much higher numbers (README).
# Thresholds sit at most halfway between the untrained value and the lowest value measured over
# OMP_NUM_THREADS=1 / default threads x ZERO_NLP_TEST_SEED=42 / 7 on an AMD EPYC, 2 cores (see README).
# Measured (AMD EPYC, 2 cores, OMP_NUM_THREADS=1), since the offline init follows --seed (it was fixed at 0):
# full 0.000 -> 0.473 (seed 42) / 0.213 (seed 7); LoRA 0.473 -> 0.573 (seed 42) / 0.213 -> 0.267 (seed 7).
# Earlier, with the init fixed: full 0.433 / 0.473, LoRA 0.460 / 0.513. The init seed matters a lot at this size.
FULL_EPOCHS = "8"
FULL_THRESHOLD = 0.10   # from-scratch model: 0.0 before; halfway to the lowest measured 0.213 is 0.107
LORA_THRESHOLD = 0.12   # LoRA on top of it (absolute; halfway between 0 and the lowest measured 0.267 is 0.13)
LORA_GAIN = 0.01        # over its base: measured +0.100 / +0.053 (+0.027 / +0.040 with the fixed init)


@pytest.fixture(scope="session")
def full_run(clean_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    metrics = train.main(["--data_dir", str(clean_dir), "--output_dir", str(out), "--num_train_epochs", FULL_EPOCHS,
                          "--learning_rate", "2e-3", "--save_steps", "200", "--save_total_limit", "1",
                          "--seed", str(SEED), *COMMON])
    return out, metrics


@pytest.fixture(scope="session")
def lora_run(full_run, clean_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    metrics = train.main(["--model_name_or_path", str(full_run[0]), "--use_lora", "--data_dir", str(clean_dir),
                          "--output_dir", str(out), "--num_train_epochs", "2", "--learning_rate", "2e-3",
                          "--save_strategy", "no", "--seed", str(SEED), *COMMON])
    return out, metrics


def test_full_finetuning_learns(full_run):
    out, m = full_run
    print(f"measured: full exact_match {m['exact_match_before']:.3f} -> {m['exact_match_after']:.3f}, "
          f"eval_loss/first_loss {m['eval_loss'] / m['first_logged_loss']:.3f}")
    assert m["eval_loss"] < 0.35 * m["first_logged_loss"]  # answer-token loss falls from ~ln(vocab)
    assert m["exact_match_before"] == 0.0 and m["exact_match_after"] >= FULL_THRESHOLD
    for name in ("model.safetensors", "config.json", "tokenizer.json", "curves.png", "test_results.json",
                 "eval_results.json", "train_results.json"):
        assert (out / name).exists(), name
    assert list(out.glob("checkpoint-*")) and list((out / "runs").iterdir())
    # issue 13.5: files are named after what they hold
    test = json.loads((out / "test_results.json").read_text())
    assert "test_loss" in test and "exact_match_after" in test and "eval_loss" not in test
    assert "eval_loss" in json.loads((out / "eval_results.json").read_text())


def test_resume_from_last_checkpoint(full_run, clean_dir, capsys):
    out, m = full_run
    last = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    state = json.loads((last / "trainer_state.json").read_text())
    # issue 12.1: a run killed while saving leaves a newer checkpoint without trainer_state.json
    broken = out / "checkpoint-999999"
    shutil.copytree(last, broken)
    (broken / "trainer_state.json").unlink()
    resumed = train.main(["--data_dir", str(clean_dir), "--output_dir", str(out), "--num_train_epochs", FULL_EPOCHS,
                          "--learning_rate", "2e-3", "--save_strategy", "no", "--resume_from_checkpoint", "last",
                          *COMMON[:-4], "--eval_samples", "8"])
    # picks up at the saved step and finishes the schedule instead of starting over
    assert resumed["global_step"] == m["global_step"] >= state["global_step"]
    assert f"skipping {broken}" in capsys.readouterr().out
    shutil.rmtree(broken)


def test_lora_learns_held_out_task(lora_run, full_run):
    out, m = lora_run
    print(f"measured: lora exact_match {m['exact_match_before']:.3f} -> {m['exact_match_after']:.3f}")
    assert m["exact_match_before"] == pytest.approx(full_run[1]["exact_match_after"])  # starts from the base
    assert m["exact_match_after"] >= LORA_THRESHOLD
    assert m["exact_match_after"] >= m["exact_match_before"] + LORA_GAIN
    # only the adapter is saved
    assert (out / "adapter_model.safetensors").exists() and not (out / "model.safetensors").exists()
    adapter = (out / "adapter_model.safetensors").stat().st_size
    assert adapter < 0.5 * (full_run[0] / "model.safetensors").stat().st_size


def test_adapter_save_load_merge_same_logits(lora_run, tmp_path):
    out, _ = lora_run
    model, tok = load_for_inference(str(out))
    merged_dir = merge.main(["--adapter_dir", str(out), "--output_dir", str(tmp_path / "merged")])
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    assert AutoTokenizer.from_pretrained(merged_dir).get_vocab() == tok.get_vocab()
    ids = tok(["Human: 37千米等于多少米？\n\nAssistant: "], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, merged(input_ids=ids).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # and the adapter really changed the base model
    base = AutoModelForCausalLM.from_pretrained(json.loads((out / "adapter_config.json").read_text())
                                                ["base_model_name_or_path"]).eval()
    with torch.no_grad():
        assert (base(input_ids=ids).logits - b).abs().max() > 1e-2


@pytest.mark.parametrize("model_type", [t for t in SUPPORTED if t != "bloom"])
def test_real_checkpoint_path_other_architectures(model_type, tiny_config, clean_dir, tmp_path):
    """--model_name_or_path with Falcon / GPT-NeoX / LLaMA checkpoints (tiny, saved with save_pretrained)."""
    texts = [line for line in open(clean_dir / "train.jsonl", encoding="utf-8")][:500]
    tok = train_tokenizer(texts, vocab_size=400)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, vocab_size=len(tok)))
    model.save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    args = ["--model_name_or_path", str(tmp_path / "ckpt"), "--data_dir", str(clean_dir), "--max_train_samples", "400",
            "--num_train_epochs", "2", "--learning_rate", "3e-3", "--save_strategy", "no", *COMMON[:-4],
            "--eval_samples", "4", "--logging_steps", "2"]
    m = train.main(args + ["--output_dir", str(tmp_path / "full")])
    assert m["eval_loss"] < 0.8 * m["first_logged_loss"]
    m = train.main(args + ["--output_dir", str(tmp_path / "lora"), "--use_lora", "--lora_target_modules",
                           "all-linear", "--gradient_checkpointing", "True"])
    assert m["eval_loss"] < m["first_logged_loss"]
    assert (tmp_path / "lora" / "adapter_model.safetensors").exists()


def test_notebook_runs(lora_run, notebook_runner):
    out, m = lora_run
    nb = notebook_runner(FOLDER / "infer.ipynb", env={"ZERO_NLP_OUTPUT_DIR": str(out)})
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "PeftModel" in text  # base + adapter were loaded
    assert "stopped at EOS: True" in text


def test_torchrun_two_cpu_processes(clean_dir, tmp_path):
    """Data parallel on CPU (gloo): 2 processes share the epoch, so each takes half the optimizer steps."""
    import math
    import os
    import subprocess
    import sys
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           str(FOLDER / "train.py"), "--data_dir", str(clean_dir), "--output_dir", str(tmp_path),
           "--max_train_samples", "256", "--num_train_epochs", "1", "--eval_samples", "4", "--save_strategy", "no",
           "--report_to", "none", "--disable_tqdm", "True"]
    subprocess.run(cmd, check=True, env=env, cwd=FOLDER, capture_output=True, timeout=300)
    m = json.loads((tmp_path / "train_results.json").read_text())
    assert m["global_step"] == math.ceil(m["train_rows"] / (2 * 8))
