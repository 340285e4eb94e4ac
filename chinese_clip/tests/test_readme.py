"""The README's commands run as written: train.sh with DRY_RUN=1 (and `bash train.sh` = `python train.py`'s recipe),
the step-by-step python commands in a copy of the folder with a tiny budget appended, the GPU/Hub command until its
one-line stop, the serve.py command + its curl lines against the copy's model; SIGTERM stops the server."""
import dataclasses
import json
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

import dataset
import train

FOLDER = Path(__file__).resolve().parents[1]
README = (FOLDER / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
TINY = {"make_data.py": ["--n_train", "256", "--n_validation", "32", "--n_test", "64", "--n_test_unseen", "32",
                         "--image_size", "32"],
        "train.py": ["--image_size", "32", "--patch_size", "8", "--hidden_size", "64", "--num_attention_heads", "2",
                     "--intermediate_size", "128", "--projection_dim", "64", "--per_device_train_batch_size", "16",
                     "--max_steps", "80", "--eval_strategy", "no", "--save_strategy", "no",
                     "--dataloader_num_workers", "0", "--report_to", "none", "--disable_tqdm", "true"]}


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


def _parsed(argv):
    model_args, data_args, args = train.parse_args(argv)
    return dataclasses.asdict(model_args), dataclasses.asdict(data_args), args.to_dict()


def test_train_sh_and_python_train_py_run_the_same_recipe(clean, tmp_path):
    make, cleaner, default = dry_run({"NPROC": "1"})
    assert make[:2] == ["python", "make_data.py"] and cleaner[:2] == ["python", "clean_data.py"]
    assert str((FOLDER / default[default.index("--data_dir") + 1]).resolve()) == dataset.DEFAULT_DATA_DIR
    assert str((FOLDER / default[default.index("--output_dir") + 1]).resolve()) == \
        train.CLIPTrainingArguments.output_dir
    data, out = str(clean[0]), str(tmp_path / "out")
    *_, cmd = dry_run({"NPROC": "1", "DATA_DIR": data, "OUTPUT_DIR": out})
    assert cmd[:2] == ["python", "train.py"]
    assert _parsed(cmd[2:]) == _parsed(["--data_dir", data, "--output_dir", out])
    *_, cmd = dry_run({"NPROC": "2", "DATA_DIR": data, "OUTPUT_DIR": out})  # the same global batch, 2 x 32
    assert cmd[:3] == ["torchrun", "--nproc_per_node", "2"]
    sh, py = _parsed(cmd[cmd.index("train.py") + 1:]), _parsed(["--data_dir", data, "--output_dir", out])
    assert sh[2].pop("per_device_train_batch_size") * 2 == py[2].pop("per_device_train_batch_size") == 64
    assert sh == py


def test_every_variable_the_readme_names_is_read_by_train_sh():
    sh = (FOLDER / "train.sh").read_text(encoding="utf-8")
    named = set(re.findall(r"\b([A-Z][A-Z_]{2,})=", "\n".join(b for b in BLOCKS if "train.sh" in b)))
    listed = re.search(r"`train.sh` 读的变量.*?\n\n", README, flags=re.S).group(0)
    named |= set(re.findall(r"`([A-Z][A-Z_]{2,})`", listed))
    assert {"MODEL", "INPUT", "IMAGE_ROOT", "DATA_DIR", "OUTPUT_DIR", "NPROC"} <= named
    for name in sorted(named):
        assert "${" + name + ":-" in sh, f"README names {name}, train.sh does not read it"


def test_readme_train_sh_commands_reach_the_scripts():
    found = [c for b in BLOCKS for c in commands(b) if "bash train.sh" in c]
    assert len(found) >= 3
    for command in found:
        env, argv = env_and_argv(command)
        cmds = dry_run(env, argv[2:])
        by_script = {next(w for w in c if w.endswith(".py")): c for c in cmds}
        if "INPUT" in env:
            assert "make_data.py" not in by_script
            assert " ".join(by_script["clean_data.py"]).count(env["INPUT"]) == 1
        else:
            assert "--odd_images" in by_script["make_data.py"]
        if "IMAGE_ROOT" in env:
            assert f"--image_root {env['IMAGE_ROOT']}" in " ".join(by_script["clean_data.py"])
        if "MODEL" in env:
            assert f"--model_name_or_path {env['MODEL']}" in " ".join(by_script["train.py"])
        if env.get("NPROC", "1") != "1":
            assert by_script["train.py"][:3] == ["torchrun", "--nproc_per_node", env["NPROC"]]
        assert " ".join(argv[2:]) in " ".join(by_script["train.py"])  # extra arguments are forwarded


def test_gpu_and_hub_command_stops_with_one_line_on_cpu():
    (command,) = [c for b in BLOCKS for c in commands(b) if "--bf16" in c]
    env, argv = env_and_argv(command)
    argv = dry_run(env, argv[2:])[-1]
    with pytest.raises(SystemExit) as e:
        train.main(argv[argv.index("train.py") + 1:])
    # one line naming a flag: --bf16 (no GPU), or --data_dir first where the paths are relative to another folder
    assert re.search(r"--(bf16|data_dir)", str(e.value)) and "Fix:" in str(e.value) and "\n" not in str(e.value)


@pytest.fixture(scope="module")
def copied(tmp_path_factory):
    """A user's clone: the folder's sources copied out (no data/cache, no outputs), the step-by-step block run in it."""
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(FOLDER, root / "chinese_clip", ignore=shutil.ignore_patterns(
        "cache", "outputs", "__pycache__", ".ipynb_checkpoints"))
    (block,) = [b for b in BLOCKS if b.startswith("python make_data.py")]
    script = "\n".join(c + " " + " ".join(TINY.get(shlex.split(c)[1], [])) for c in commands(block))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=root / "chinese_clip", env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, script + result.stdout[-2000:] + result.stderr[-3000:]
    return root / "chinese_clip", result


def test_readme_step_by_step_commands_run_as_written(copied):
    folder, result = copied
    summary = json.loads((folder / "data/cache/clean/summary.json").read_text())
    assert summary["rejected"] == 6 and summary["kept"] + summary["rejected"] == summary["read"]
    assert (folder / "outputs/clip/model.safetensors").is_file()
    assert json.loads((folder / "outputs/clip/health.json").read_text())["status"] == "ok"
    assert "== held-out retrieval" in result.stdout


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's lines are curl commands: curl is not installed")
def test_readme_serve_commands_answer(copied, server_process):
    folder, _ = copied
    (block,) = [b for b in BLOCKS if b.startswith("python serve.py")]
    serve_line, *curls = commands(block)
    argv = shlex.split(serve_line)[1:]
    del argv[argv.index("--port"):argv.index("--port") + 2]  # server_process appends a free port
    with server_process(argv, cwd=folder, ready="/health") as (root, proc):
        port = root.rsplit(":", 1)[1]
        answers = [json.loads(subprocess.run(["bash", "-c", line.replace(":8000", f":{port}")], cwd=folder,
                                             capture_output=True, text=True, timeout=60, check=True).stdout)
                   for line in curls]
        health, search, text_emb, image_emb, zero_shot = answers
        assert health["status"] == "ok" and health["index_size"] == 64
        assert [r["rank"] for r in search["results"]] == [1, 2, 3]
        assert len(text_emb["embeddings"]) == 1 and len(image_emb["embeddings"]) == 1
        assert set(zero_shot["probs"]) == {"红色", "绿色", "蓝色"}
        start = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        assert time.perf_counter() - start < 10
