"""train.py end to end on the generated task: the offline base (SentencePiece -> official-format tiny ALiBi + NormHead
Baichuan -> load_baichuan) trained fully, LoRA on W_pack on top, adapter-only saves, merge, resume, an official RoPE
(Baichuan2-7B-style) dir as --model_name_or_path (converted to LlamaForCausalLM), torchrun on CPU, and the notebook."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import train

FOLDER = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("ZERO_NLP_TEST_SEED", "42"))  # as in conftest.py (not importable: the root has one too)
COMMON = ["--per_device_train_batch_size", "8", "--eval_samples", "150", "--max_new_tokens", "16",
          "--disable_tqdm", "True", "--logging_steps", "10", "--report_to", "none"]
# Short runs on two of the four generated tasks (unit conversion, next day); bash train.sh trains all four longer
# (README). Held-out exact match: greedy generation on unseen questions. The recipe is chatglm_v2_6b_lora's (constant
# lr 2e-3 after warmup), re-measured on this folder's tiny ALiBi + NormHead model.
# Thresholds sit at most halfway between the untrained value (0.0) and the lowest value measured with
# ZERO_NLP_TEST_SEED=42 / 7 on an AMD EPYC, 2 cores, OMP_NUM_THREADS=1 (README).
TASKS = ["--tasks", "unit,date"]
FULL = ["--num_train_epochs", "4", "--learning_rate", "2e-3", "--warmup_steps", "10"]
LORA = ["--num_train_epochs", "1", "--learning_rate", "2e-3", "--warmup_steps", "10"]
# Measured (AMD EPYC, 2 cores, shared; OMP_NUM_THREADS=1): full 0.000 -> 0.691 (seed 42) / 0.733 (seed 7);
# LoRA on it 0.691 -> 0.901 / 0.733 -> 0.960.
FULL_THRESHOLD = 0.34  # halfway between 0 and the lowest measured 0.691 is 0.3455
LORA_THRESHOLD = 0.45  # halfway between 0 and the lowest measured 0.901 is 0.4505


@pytest.fixture(scope="session")
def full_run(clean_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    metrics = train.main(["--data_dir", str(clean_dir), "--output_dir", str(out), *TASKS, *FULL,
                          "--save_steps", "100", "--save_total_limit", "1", "--seed", str(SEED), *COMMON])
    return out, metrics


@pytest.fixture(scope="session")
def lora_run(full_run, clean_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    metrics = train.main(["--model_name_or_path", str(full_run[0]), "--use_lora", "true", "--data_dir", str(clean_dir),
                          "--output_dir", str(out), *TASKS, *LORA, "--save_strategy", "no", "--seed", str(SEED),
                          *COMMON])
    return out, metrics


def test_full_finetuning_of_the_offline_alibi_model_learns(full_run):
    out, m = full_run
    print(f"measured: full exact_match {m['exact_match_before']:.3f} -> {m['exact_match_after']:.3f}, "
          f"eval_loss/first_loss {m['eval_loss'] / m['first_logged_loss']:.3f}")
    assert m["exact_match_before"] == 0.0 and m["exact_match_after"] >= FULL_THRESHOLD
    assert m["eval_loss"] < 0.5 * m["first_logged_loss"]  # answer-token loss falls from ~ln(vocab)
    assert not m["use_lora"] and m["chat_ids"] == [195, 196]
    # the offline base was written in the official format (remote-code config, W_pack) and loaded from it directly
    official = json.loads((out / "offline_base/official/config.json").read_text())
    assert official["model_type"] == "baichuan" and "auto_map" in official
    assert Path(m["base_model_dir"]) == (out / "offline_base/official")
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_type"] == "baichuan" and saved["architectures"] == ["BaichuanForCausalLM"]
    for name in ("model.safetensors", "curves.png", "test_results.json", "eval_results.json",
                 "train_results.json", "generation_config.json"):
        assert (out / name).exists(), name
    assert list(out.glob("checkpoint-*"))
    test = json.loads((out / "test_results.json").read_text())
    assert "test_loss" in test and "exact_match_after" in test and "eval_loss" not in test


def test_resume_from_last_checkpoint(full_run, clean_dir, capsys):
    out, m = full_run
    last = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    state = json.loads((last / "trainer_state.json").read_text())
    broken = out / "checkpoint-999999"  # a run killed while saving: no trainer_state.json
    shutil.copytree(last, broken)
    (broken / "trainer_state.json").unlink()
    resumed = train.main(["--data_dir", str(clean_dir), "--output_dir", str(out), *TASKS, *FULL, "--save_strategy", "no",
                          "--resume_from_checkpoint", "last", "--seed", str(SEED), *COMMON[:-10], "--eval_samples", "4",
                          "--max_new_tokens", "4", "--disable_tqdm", "True", "--report_to", "none"])
    # picks up at the saved step and finishes the schedule instead of starting over
    assert resumed["global_step"] == m["global_step"] >= state["global_step"] > 0
    assert f"skipping {broken}" in capsys.readouterr().out
    shutil.rmtree(broken)


def test_lora_learns_and_saves_only_the_adapter(lora_run, full_run):
    out, m = lora_run
    print(f"measured: lora exact_match {m['exact_match_before']:.3f} -> {m['exact_match_after']:.3f}")
    assert m["exact_match_before"] == pytest.approx(full_run[1]["exact_match_after"])  # starts from the base
    assert m["use_lora"] and m["exact_match_after"] >= LORA_THRESHOLD
    assert m["exact_match_after"] >= m["exact_match_before"] + 0.1  # measured gains 0.210 / 0.227: at most halfway
    assert m["eval_loss"] < full_run[1]["eval_loss"]
    assert (out / "adapter_model.safetensors").exists() and not (out / "model.safetensors").exists()
    config = json.loads((out / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {"W_pack"}  # the default for ALiBi: the fused q/k/v projection
    assert Path(config["base_model_name_or_path"]) == full_run[0].resolve()
    assert (out / "adapter_model.safetensors").stat().st_size < 0.2 * (full_run[0] / "model.safetensors").stat().st_size


def test_merge_gives_the_adapters_logits(lora_run, tmp_path):
    import merge
    from peft import PeftModel
    out, _ = lora_run
    merged_dir = merge.main(["--adapter_dir", str(out), "--output_dir", str(tmp_path / "merged")])
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    base_dir = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), out).eval()
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    ids = torch.randint(10, 300, (2, 24))
    with torch.no_grad():
        a, b, c = adapted(input_ids=ids).logits, merged(input_ids=ids).logits, base(input_ids=ids).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert (c - b).abs().max() > 1e-3  # the adapter really changed the model
    assert type(merged).__name__ == "BaichuanForCausalLM"


def test_an_official_rope_dir_is_converted_and_trains_with_lora_on_every_projection(tiny_rope_official, clean_dir,
                                                                                   tmp_path):
    """--model_name_or_path <official Baichuan2-7B-style dir>: converted once into --cache_dir as LlamaForCausalLM,
    then LoRA on attention + MLP with gradient checkpointing; then full fine-tuning of the same dir (reusing the
    conversion)."""
    args = ["--model_name_or_path", str(tiny_rope_official), "--cache_dir", str(tmp_path / "cache"),
            "--data_dir", str(clean_dir), "--max_train_samples", "160", "--max_steps", "8", "--learning_rate", "3e-3",
            "--eval_samples", "4", "--max_new_tokens", "4", "--save_strategy", "no", "--report_to", "none",
            "--disable_tqdm", "True", "--logging_steps", "2", "--max_length", "256"]
    targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    m = train.main(args + ["--output_dir", str(tmp_path / "lora"), "--activation_checkpointing", "True",
                           "--lora_target_modules", ",".join(sorted(targets))])
    (converted,) = (tmp_path / "cache").iterdir()
    assert m["use_lora"] and Path(m["base_model_dir"]) == converted and m["eval_loss"] < m["first_logged_loss"]
    assert json.loads((converted / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    config = json.loads((tmp_path / "lora/adapter_config.json").read_text())
    assert set(config["target_modules"]) == targets and Path(config["base_model_name_or_path"]) == converted
    m = train.main(args + ["--output_dir", str(tmp_path / "full"), "--use_lora", "false"])
    assert not m["use_lora"] and m["eval_loss"] < m["first_logged_loss"] and len(list((tmp_path / "cache").iterdir())) == 1
    assert json.loads((tmp_path / "full/config.json").read_text())["model_type"] == "llama"


def test_notebook_runs(lora_run, notebook_runner, tmp_path):
    out, _ = lora_run
    nb = notebook_runner(FOLDER / "infer.ipynb", env={"ZERO_NLP_OUTPUT_DIR": str(out), "ZERO_NLP_CACHE_DIR": str(tmp_path)})
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "PeftModelForCausalLM on BaichuanForCausalLM" in text and "converted config: ['LlamaForCausalLM']" in text
    assert "ALiBi model loads directly: True BaichuanForCausalLM" in text
    assert "stopped at EOS: True" in text and "stream same as chat(): True" in text
    assert "same as base + adapter: True" in text and "6 messages in history" in text
    assert len(list(tmp_path.iterdir())) == 1  # the official-format RoPE checkpoint was converted into the cache


def test_torchrun_two_cpu_processes(clean_dir, tmp_path):
    """Data parallel on CPU (gloo): 2 processes share the epoch, so each takes half the optimizer steps; rank 0
    builds the offline base, rank 1 loads it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(FOLDER / "train.py"), "--data_dir", str(clean_dir), "--output_dir", str(tmp_path),
           "--max_train_samples", "256", "--num_train_epochs", "1", "--eval_samples", "4", "--max_new_tokens", "4",
           "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "True"]
    done = subprocess.run(cmd, env=env, cwd=FOLDER, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    m = json.loads((tmp_path / "train_results.json").read_text())
    assert m["global_step"] == math.ceil(m["train_rows"] / (2 * 8))
