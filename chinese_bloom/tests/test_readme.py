"""The README's commands, run as written: every `bash train.sh` line with DRY_RUN=1, the user-data line for real
in a copy of the folder (tiny budget appended), the GPU/Hub commands until their one-line stop on this CPU
machine, serve.py until the openai client gets an answer. `bash train.sh` runs `python train.py`'s recipe."""
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
from transformers import HfArgumentParser

import train

FOLDER = Path(__file__).resolve().parents[1]
README = (FOLDER / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
# appended to the README's training commands (the commands themselves run as written)
BUDGET = ["--max_steps", "2", "--eval_samples", "4", "--max_new_tokens", "4", "--save_strategy", "no",
          "--report_to", "none", "--disable_tqdm", "true", "--tokenizer_vocab_size", "400"]


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


def shell_env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **extra}


def dry_run(env: dict, args=(), folder=FOLDER) -> list[list[str]]:
    out = subprocess.run(["bash", str(folder / "train.sh"), *args], env=shell_env(DRY_RUN="1", **env),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [shlex.split(line) for line in out.stdout.strip().splitlines()]


def resolved(argv: list[str]) -> list[dict]:
    groups = HfArgumentParser((train.ModelArguments, train.DataArguments, train.SFTTrainingArguments)
                              ).parse_args_into_dataclasses(args=argv)
    train.check_args(*groups)
    return [g.to_dict() if hasattr(g, "to_dict") else dataclasses.asdict(g) for g in groups]


def test_train_sh_and_python_train_py_run_the_same_recipe(clean_dir, tmp_path):
    clean, full, lora, merged = dry_run({"NPROC": "1"})
    assert clean == ["python", "clean_data.py", "--output_dir", "data/cache/clean"]
    assert full[:2] == ["python", "train.py"] and dict(zip(full[2::2], full[3::2])) == {
        "--data_dir": "data/cache/clean", "--output_dir": "outputs/bloom_full"}  # paths only
    assert str((FOLDER / "data/cache/clean").resolve()) == train.DataArguments.data_dir
    assert str((FOLDER / "outputs/bloom_full").resolve()) == train.SFTTrainingArguments.output_dir
    assert lora[lora.index("--model_name_or_path") + 1] == "outputs/bloom_full" and "--use_lora" in lora
    # resolved on real data: train.sh's first stage = `python train.py` with the same paths
    env = {"NPROC": "1", "DATA": str(clean_dir), "OUT": str(tmp_path)}
    _, full, lora, _ = dry_run(env, ["--num_train_epochs", "2"])
    assert resolved(full[2:]) == resolved(["--data_dir", str(clean_dir), "--output_dir", str(tmp_path / "bloom_full"),
                                           "--num_train_epochs", "2"])


def test_every_variable_the_readme_names_is_read_by_train_sh():
    sh = (FOLDER / "train.sh").read_text(encoding="utf-8")
    named = set(re.findall(r"\b([A-Z][A-Z_]{2,})=", "\n".join(b for b in BLOCKS if "train.sh" in b)))
    listed = re.search(r"`train.sh` 读的变量.*?\n\n", README, flags=re.S).group(0)
    named |= set(re.findall(r"`([A-Z][A-Z_]{2,})`", listed))
    assert {"MODEL", "TRAIN_FILE", "ENCODING", "LORA_ONLY", "NPROC", "DEEPSPEED", "DRY_RUN"} <= named
    for name in sorted(named):
        assert "${" + name + ":-" in sh, f"README names {name}, train.sh does not read it"


def test_readme_train_sh_commands_reach_the_scripts():
    found = [c for b in BLOCKS for c in commands(b) if "bash train.sh" in c]
    assert len(found) >= 4
    for command in found:
        env, argv = env_and_argv(command)
        cmds = dry_run(env, argv[2:])
        trains = [c for c in cmds if "train.py" in c]
        if "TRAIN_FILE" in env:
            assert cmds[0][:4] == ["python", "clean_data.py", "--input", env["TRAIN_FILE"]]
            assert cmds[0][cmds[0].index("--encoding") + 1] == env.get("ENCODING", "utf-8")
        if env.get("LORA_ONLY"):
            assert len(trains) == 1 and trains[0][trains[0].index("--model_name_or_path") + 1] == env["MODEL"]
        else:
            assert len(trains) == 2
        for cmd in trains:
            if "DEEPSPEED" in env:
                assert cmd[0] == "deepspeed" and cmd[cmd.index("--deepspeed") + 1] == env["DEEPSPEED"]
            assert cmd[len(cmd) - len(argv[2:]):] == argv[2:]  # extra arguments reach every stage
    assert subprocess.run(["bash", str(FOLDER / "train.sh")], env=shell_env(DRY_RUN="1", LORA_ONLY="1"),
                          capture_output=True, text=True).stderr.startswith("LORA_ONLY=1: needs MODEL=")


def one_line_stops(argvs: list[list[str]], cwd: Path) -> list[str]:
    """Run the python commands at once; each must stop with our one-line message (exit code 1, no traceback;
    an unknown flag would be argparse's usage error, exit code 2)."""
    procs = [subprocess.Popen([sys.executable, *argv], cwd=cwd, env=shell_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for argv in argvs]
    lines = []
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        last = err.strip().splitlines()[-1] if err.strip() else ""
        assert proc.returncode == 1 and "Fix:" in last and "Traceback" not in err, err[-2000:]
        lines.append(last)
    return lines


@pytest.fixture(scope="module")
def copied(tmp_path_factory):
    """A user's clone: the folder's sources copied out (no data/cache, no outputs), at repo_root/chinese_bloom,
    with the files the README's commands name (made up here, in their documented formats)."""
    root = tmp_path_factory.mktemp("repo")
    folder = root / "chinese_bloom"
    shutil.copytree(FOLDER, folder, ignore=shutil.ignore_patterns("cache", "outputs", "__pycache__",
                                                                   ".ipynb_checkpoints", "runs"))
    cities = ["北京", "上海", "广州", "深圳", "杭州", "成都", "武汉", "西安", "南京", "重庆"]
    alpaca = [{"instruction": f"请介绍一下{c}的第{i}个景点。", "input": "",
               "output": f"{c}的第{i}个景点历史悠久，每年吸引很多游客，适合春秋两季前往。"}
              for i in range(1, 9) for c in cities]
    (folder / "data").mkdir(exist_ok=True)
    (folder / "data/my_sft.json").write_text(json.dumps(alpaca, ensure_ascii=False, indent=1), encoding="utf-8")
    (folder / "belle_cn.json").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in alpaca[:40]),
                                          encoding="utf-8")
    (folder / "sharegpt.jsonl").write_text("\n".join(json.dumps({"conversations": [
        {"from": "human", "value": f"{c}今天天气怎么样？"}, {"from": "gpt", "value": f"{c}今天晴，适合出门。"}]},
        ensure_ascii=False) for c in cities), encoding="utf-8")
    return root


def run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=cwd, env=shell_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, command + result.stdout[-2000:] + result.stderr[-3000:]
    return result


def test_readme_clean_command_runs_as_written(copied):
    (command,) = [c for b in BLOCKS for c in commands(b) if c.startswith("python clean_data.py --input belle_cn.json")]
    run(command, copied / "chinese_bloom")
    summary = json.loads((copied / "chinese_bloom/data/cache/clean/summary.json").read_text())
    assert summary["kept"] == 50 and summary["kept"] + summary["rejected"] == summary["read"]


@pytest.fixture(scope="module")
def user_data_run(copied) -> subprocess.CompletedProcess:
    """`TRAIN_FILE=data/my_sft.json bash train.sh` for real (budget appended): clean -> full -> LoRA -> merge."""
    (command,) = [c for b in BLOCKS for c in commands(b) if c.startswith("TRAIN_FILE=data/my_sft.json bash train.sh")]
    return run(command + " " + " ".join(BUDGET), copied / "chinese_bloom")


def test_readme_user_data_train_sh_runs_as_written(copied, user_data_run):
    result = user_data_run
    out = copied / "chinese_bloom/outputs"
    assert (out / "bloom_lora/adapter_config.json").is_file() and (out / "bloom_merged/model.safetensors").is_file()
    assert "bloom_lora: held-out exact match" in result.stdout
    assert json.loads((out / "bloom_full/train_results.json").read_text())["train_samples"] > 50


def test_readme_gpu_and_hub_commands_stop_with_one_line_on_cpu(copied, user_data_run):
    """As written on this CPU machine without a Hub (on the user-data run's clean data): one clear line."""
    gpu = [c for b in BLOCKS for c in commands(b) if "--bf16" in c and " ... " not in c]
    assert len(gpu) >= 3
    argvs = []
    for command in gpu:
        env, argv = env_and_argv(command)
        if argv[0] == "bash":
            argv = dry_run(env, argv[2:], folder=copied / "chinese_bloom")[1]
        argvs.append(argv[argv.index("train.py"):])
    (command,) = [c for b in BLOCKS for c in commands(b) if c.startswith("python merge.py --adapter_dir outputs/falcon")]
    argvs.append(shlex.split(command)[1:])
    *trains, merged = one_line_stops(argvs, copied / "chinese_bloom")
    assert all(line.startswith("--bf16: needs a CUDA GPU") for line in trains), trains
    assert merged.startswith("--adapter_dir")
    for name in re.findall(r"(ds_zero\w+\.json)", README):
        assert (FOLDER / name).is_file(), name


def test_readme_serve_commands_answer_the_openai_client(copied, user_data_run, server_process):
    """Every README serve.py command (another free port appended) on what the user-data run trained; SIGTERM
    stops it within seconds."""
    from openai import OpenAI
    served = [c for b in BLOCKS for c in commands(b) if re.match(r"python (chinese_bloom/)?serve.py", c)]
    assert len(served) == 3
    for command in served:
        cwd = copied if command.startswith("python chinese_bloom/") else copied / "chinese_bloom"
        with server_process(shlex.split(command)[1:], cwd=cwd) as (root, proc):
            url = f"{root}/v1"
            client = OpenAI(base_url=url, api_key="none", max_retries=0, timeout=60)
            done = client.chat.completions.create(model="chinese_bloom", max_tokens=3, temperature=0,
                                                  messages=[{"role": "user", "content": "请介绍一下北京的第1个景点。"}])
            assert done.usage.completion_tokens <= 3 and done.choices[0].finish_reason in ("length", "stop")
            start = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
            assert time.perf_counter() - start < 10


def test_readme_notebook_command_is_installed():
    """`jupyter notebook infer.ipynb` needs the notebook package (requirements-dev.txt); the notebook itself runs
    in test_train.py::test_notebook_runs."""
    import importlib.util
    assert importlib.util.find_spec("notebook") is not None, "pip install -r requirements-dev.txt"
