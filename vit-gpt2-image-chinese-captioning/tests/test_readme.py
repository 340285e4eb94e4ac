"""The README's commands, run as written: every train.sh command with DRY_RUN=1 (the variables reach the scripts),
the GPU/Hub command until its one-line stop on this CPU machine, the step-by-step python commands in a copy of the
folder with a tiny budget appended, and the serve + curl commands against that copy (SIGTERM stops the server).
`bash train.sh` runs `python train.py`'s recipe."""
import dataclasses
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import HfArgumentParser

import dataset
import model
import train

FOLDER = Path(__file__).resolve().parents[1]
README = (FOLDER / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
TINY_DATA = ["--n_train", "120", "--n_validation", "16", "--n_test", "16", "--n_test_unseen", "16",
             "--image_size", "32"]
BUDGET = ["--image_size", "32", "--patch_size", "8", "--encoder_hidden_size", "32", "--decoder_hidden_size", "32",
          "--encoder_layers", "1", "--decoder_layers", "1", "--num_attention_heads", "2", "--max_steps", "3",
          "--eval_strategy", "no", "--save_strategy", "no", "--max_eval_samples", "8", "--report_to", "none",
          "--disable_tqdm", "true"]


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
    out = subprocess.run(["bash", str(FOLDER / "train.sh"), *args], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return [shlex.split(line) for line in out.stdout.strip().splitlines()]


def resolved(argv: list[str]):
    groups = HfArgumentParser((model.ModelArguments, dataset.DataArguments, train.CaptionTrainingArguments)
                              ).parse_args_into_dataclasses(args=argv)
    return [g.to_dict() if hasattr(g, "to_dict") else dataclasses.asdict(g) for g in groups]


def test_train_sh_and_python_train_py_run_the_same_recipe(shapes, tmp_path):
    *_, default = dry_run({})
    assert default[:2] == ["python", "train.py"]
    flags = dict(zip(default[2::2], default[3::2]))
    assert set(flags) == {"--data_dir", "--output_dir", "--per_device_train_batch_size"}
    assert str((FOLDER / flags["--data_dir"]).resolve()) == dataset.DataArguments.data_dir
    assert str((FOLDER / flags["--output_dir"]).resolve()) == train.CaptionTrainingArguments.output_dir
    assert int(flags["--per_device_train_batch_size"]) == train.CaptionTrainingArguments.per_device_train_batch_size
    *_, cmd = dry_run({"DATA_DIR": str(shapes[1]), "OUTPUT_DIR": str(tmp_path / "o")}, ["--num_train_epochs", "1"])
    assert resolved(cmd[2:]) == resolved(["--data_dir", str(shapes[1]), "--output_dir", str(tmp_path / "o"),
                                          "--num_train_epochs", "1"])


def test_every_variable_the_readme_names_is_read_by_train_sh():
    sh = (FOLDER / "train.sh").read_text(encoding="utf-8")
    named = set(re.findall(r"\b([A-Z][A-Z_]{2,})=", "\n".join(b for b in BLOCKS if "train.sh" in b)))
    named |= set(re.findall(r"`([A-Z][A-Z_]{2,})`", README))
    assert {"ENCODER", "DECODER", "MODEL", "INPUT", "IMAGE_ROOT", "DATA_DIR", "OUTPUT_DIR"} <= named
    for name in sorted(named - {"ZERO_NLP_OUTPUT_DIR", "OMP_NUM_THREADS", "DRY_RUN"}):
        assert "${" + name + ":-" in sh, f"README names {name}, train.sh does not read it"


def test_readme_train_sh_commands_reach_the_scripts():
    found = [c for b in BLOCKS for c in commands(b) if "train.sh" in c and not c.startswith("source")]
    assert len(found) >= 3
    for command in found:
        env, argv = env_and_argv(command)
        cmds = dry_run(env, argv[2:])
        by_script = {next(w for w in c if w.endswith(".py")): " ".join(c) for c in cmds}
        assert "train.py" in by_script and "clean_data.py" in by_script
        assert ("make_data.py" in by_script) == ("INPUT" not in env)
        for var, flag, script in (("ENCODER", "--encoder_name_or_path", "train.py"),
                                  ("DECODER", "--decoder_name_or_path", "train.py"),
                                  ("MODEL", "--model_name_or_path", "train.py"),
                                  ("IMAGE_ROOT", "--image_root", "clean_data.py"),
                                  ("INPUT", "--input", "clean_data.py")):
            if var in env:
                assert f"{flag} {env[var]}" in by_script[script], (var, by_script)
        assert " ".join(argv[2:]) in by_script["train.py"]


def test_gpu_and_hub_commands_stop_with_one_line_on_cpu(shapes):
    gpu = [c for b in BLOCKS for c in commands(b) if "--bf16" in c]
    assert gpu
    for command in gpu:
        env, argv = env_and_argv(command)
        argv = dry_run(env, argv[2:])[-1]
        with pytest.raises(SystemExit) as e:
            train.main(argv[argv.index("train.py") + 1:] + ["--data_dir", str(shapes[1])])  # data of a clone
        assert isinstance(e.value.code, str) and "--bf16" in e.value.code and "\n" not in e.value.code


@pytest.fixture(scope="module")
def copied(tmp_path_factory):
    """A user's clone: the folder's sources copied out (no data/cache, no outputs)."""
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(FOLDER, root / FOLDER.name, ignore=shutil.ignore_patterns(
        "cache", "outputs", "__pycache__", ".ipynb_checkpoints"))
    return root / FOLDER.name


@pytest.fixture(scope="module")
def step_by_step(copied):
    """README's step-by-step block in the copy, a tiny budget appended to make_data.py, train.py, benchmark.py."""
    (block,) = [b for b in BLOCKS if "python make_data.py" in b]
    extra = {"python make_data.py": TINY_DATA, "python train.py": BUDGET,
             "python benchmark.py": ["--n_images", "32", "--n_caption", "4", "--num_workers", "1"]}
    lines = [c + "".join(" " + " ".join(v) for k, v in extra.items() if c.startswith(k)) for c in commands(block)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(lines)], cwd=copied, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, "\n".join(lines) + result.stdout[-2000:] + result.stderr[-3000:]
    return copied, result.stdout


def test_readme_step_by_step_commands_run_as_written(step_by_step):
    copied, stdout = step_by_step
    out = copied / "outputs/captioner"
    assert (out / "model.safetensors").is_file() and (out / "test_results.json").is_file()
    assert (out / "benchmark.json").is_file() and "constant caption" in stdout


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's lines are curl commands: curl is not installed")
def test_readme_serve_and_curl_commands(step_by_step, server_process):
    import json
    copied, _ = step_by_step
    (block,) = [b for b in BLOCKS if "python serve.py" in b]
    serve_line, *curls = commands(block)
    argv = shlex.split(serve_line)[1:]
    del argv[argv.index("--port"):argv.index("--port") + 2]  # server_process appends a free port
    with server_process(argv, cwd=copied, ready="/health") as (root, proc):
        port = root.rsplit(":", 1)[1]
        for line in curls:
            out = subprocess.run(["bash", "-c", line.replace(":8000", f":{port}")], cwd=copied, capture_output=True,
                                 text=True, timeout=120)
            assert out.returncode == 0, out.stderr
            body = json.loads(out.stdout)
            assert isinstance(body["caption"], str) and body["width"] == 32, body
        start = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        assert time.perf_counter() - start < 10
