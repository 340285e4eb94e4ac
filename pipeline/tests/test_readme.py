"""The README's commands, run as written: train.sh with DRY_RUN=1 (the commands it would run, the variables reaching
them), the step-by-step block in a copy of the folder with a tiny budget appended to train.py, the GPU commands until
their one-line stop on this CPU machine, the benchmark commands parsed. `bash train.sh` runs `python train.py`'s
recipe."""
import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import HfArgumentParser

import benchmark
import dataset
import model
import train

FOLDER = Path(__file__).resolve().parents[1]
README = (FOLDER / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
# appended to the README's train.py commands (the commands themselves run as written)
BUDGET = ["--max_steps", "2", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
          "--max_eval_blocks", "4", "--report_to", "none", "--hidden_size", "64", "--num_hidden_layers", "2",
          "--num_attention_heads", "2"]


# Copied from model_clm/tests/test_readme.py:commands
def commands(block: str) -> list[str]:
    """A block's commands: continuation lines joined, comments and `cd` dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith(("#", "cd "))]


# Copied from model_clm/tests/test_readme.py:env_and_argv
def env_and_argv(command: str) -> tuple[dict, list[str]]:
    """`A=1 B=2 bash train.sh --x` -> ({"A": "1", "B": "2"}, ["bash", "train.sh", "--x"])."""
    words = shlex.split(command)
    env = {}
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    return env, words


def dry_run(env: dict, args=()) -> list[list[str]]:
    env = {**os.environ, "DRY_RUN": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **env}
    out = subprocess.run(["bash", str(FOLDER / "train.sh"), *args], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [shlex.split(line) for line in out.stdout.strip().splitlines()]


def resolved(argv: list[str]):
    groups = HfArgumentParser((model.ModelArguments, dataset.DataArguments, train.PipelineTrainingArguments)
                              ).parse_args_into_dataclasses(args=argv)
    return [g.to_dict() if hasattr(g, "to_dict") else dataclasses.asdict(g) for g in groups]


def test_train_sh_and_python_train_py_run_the_same_recipe(tiny_data, tmp_path):
    *_, default = dry_run({})
    assert default[:3] == ["torchrun", "--nproc_per_node", "2"] and default[5] == "train.py"  # 2 ranks on a CPU
    flags = dict(zip(default[6::2], default[7::2]))
    assert set(flags) == {"--data_dir", "--tokenizer_name_or_path", "--output_dir"}  # paths only
    assert str((FOLDER / flags["--data_dir"]).resolve()) == dataset.DataArguments.data_dir
    assert (FOLDER / flags["--tokenizer_name_or_path"]).resolve() == model.DEFAULT_TOKENIZER
    assert str((FOLDER / flags["--output_dir"]).resolve()) == train.PipelineTrainingArguments.output_dir
    # with the same paths, the command resolves to exactly the arguments of `python train.py`
    env = {"NPROC": "1", "WORK": str(tiny_data["root"]), "OUTPUT_DIR": str(tmp_path / "out")}
    *_, cmd = dry_run(env, ["--max_steps", "7"])
    assert cmd[:2] == ["python", "train.py"]
    paths = ["--data_dir", str(tiny_data["tokens"]), "--tokenizer_name_or_path", str(tiny_data["tokenizer"]),
             "--output_dir", str(tmp_path / "out")]
    assert resolved(cmd[2:]) == resolved(paths + ["--max_steps", "7"])


def test_every_variable_the_readme_names_is_read_by_train_sh():
    sh = (FOLDER / "train.sh").read_text(encoding="utf-8")
    named = set(re.findall(r"\b([A-Z][A-Z_]{2,})=", "\n".join(b for b in BLOCKS if "train.sh" in b)))
    assert {"RAW", "TEXT_FIELD", "WORK", "TOKENIZER", "MODEL", "NPROC"} <= named
    for name in sorted(named):
        assert "${" + name + ":-" in sh, f"README names {name}, train.sh does not read it"


def test_readme_train_sh_commands_reach_the_scripts():
    """Every `bash train.sh` command of the README, with DRY_RUN=1: each variable it sets reaches the commands."""
    found = [c for b in BLOCKS for c in commands(b) if "bash pipeline/train.sh" in c]
    assert len(found) >= 4
    for command in found:
        env, argv = env_and_argv(command)
        cmds = dry_run(env, argv[2:])
        by_script = {next(w for w in c if w.endswith(".py")): c for c in cmds}
        text = " ".join(" ".join(c) for c in cmds)
        assert set(by_script) >= {"clean_data.py", "dataset.py", "train.py"}, cmds
        if "RAW" in env:
            assert f"--input {env['RAW']}" in " ".join(by_script["clean_data.py"])
        if "TEXT_FIELD" in env:
            assert f"--text_field {env['TEXT_FIELD']}" in " ".join(by_script["clean_data.py"])
        if "WORK" in env:
            assert f"--data_dir {env['WORK']}/tokens" in " ".join(by_script["train.py"])
        if "TOKENIZER" in env:  # a given tokenizer is used, not trained
            assert "train_tokenizer.py" not in by_script and f"--tokenizer_name_or_path {env['TOKENIZER']}" in text
        if "MODEL" in env:
            assert f"--model_name_or_path {env['MODEL']}" in " ".join(by_script["train.py"])
        nproc = env.get("NPROC", "2")
        if nproc != "1":  # pipeline ranks: always torchrun
            assert by_script["train.py"][:3] == ["torchrun", "--nproc_per_node", nproc]
        assert " ".join(argv[2:]) in " ".join(by_script["train.py"])  # extra arguments are forwarded


def test_gpu_commands_stop_with_one_line_on_cpu():
    """The README's GPU train.py commands, as written, on a CPU machine: one clear line, no traceback (also proves
    every flag exists: an unknown flag would be an argparse usage error, exit code 2)."""
    gpu = [c for b in BLOCKS for c in commands(b) if ("train.py" in c or "train.sh" in c) and "--bf16" in c]
    assert len(gpu) >= 2
    for command in gpu:
        env, argv = env_and_argv(command)
        if argv[0] == "bash":  # the command train.sh would launch, run by one python
            argv = dry_run(env, argv[2:])[-1]
        at = next(i for i, w in enumerate(argv) if w.endswith("train.py"))  # train.py or pipeline/train.py
        with pytest.raises(SystemExit) as e:
            train.main(argv[at + 1:])
        message = e.value.code
        assert isinstance(message, str) and "\n" not in message and "Fix:" in message, message
        assert re.search(r"--(bf16|model_name_or_path|data_dir)", message)


def test_benchmark_and_diagram_commands_parse():
    found = [c for b in BLOCKS for c in commands(b) if c.startswith(("python pipeline/benchmark.py",
                                                                     "python pipeline/diagram.py"))]
    assert any("benchmark" in c for c in found) and any("diagram" in c for c in found)
    for command in found:
        argv = shlex.split(command)[2:]
        if "benchmark" in command:
            HfArgumentParser(benchmark.BenchmarkArguments).parse_args_into_dataclasses(args=argv)


def run_block(block: str, cwd: Path) -> subprocess.CompletedProcess:
    script = "\n".join(c + (" " + " ".join(BUDGET) if "train.py" in c else "") for c in commands(block))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, script + result.stdout[-2000:] + result.stderr[-3000:]
    return result


def test_readme_step_by_step_commands_run_as_written(tmp_path):
    """The step-by-step block from the root of a user's clone (the folder's sources only, no data/cache, no outputs):
    the whole corpus is cleaned and tokenised, train.py runs 2 ranks for 2 steps, and the merged checkpoint loads."""
    shutil.copytree(FOLDER, tmp_path / "pipeline", ignore=shutil.ignore_patterns(
        "cache", "outputs", "__pycache__", ".ipynb_checkpoints"))
    (block,) = [b for b in BLOCKS if b.startswith("python pipeline/clean_data.py")]
    run_block(block, tmp_path)
    meta = json.loads((tmp_path / "pipeline/data/cache/people_daily/tokens/meta.json").read_text())
    assert meta["vocab_size"] == 8192 and meta["splits"]["train"]["tokens"] > 1_000_000  # the whole corpus
    out = tmp_path / "pipeline/outputs/pipeline"
    assert (out / "model.safetensors").is_file() and (out / "checkpoint-2/trainer_state.json").is_file()
    config = json.loads((out / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"]) == ("llama", 2)
