"""The README's commands, run as written: every `bash train.sh` line with DRY_RUN=1, the user-data line and the clean
lines for real in a copy of the folder (tiny budget appended), the GPU/Hub commands until their one-line stop on this
CPU machine, the serve.py commands until the openai client (the README's own Python snippet) gets an answer.
`bash train.sh` runs `python train.py`'s recipe."""
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
(CLIENT,) = re.findall(r"```python\n(.*?)```", README, flags=re.S)
# appended to the README's training commands (the commands themselves run as written)
BUDGET = ["--max_steps", "2", "--eval_samples", "4", "--max_new_tokens", "4", "--save_strategy", "no",
          "--report_to", "none", "--disable_tqdm", "true"]


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


ALL = [c for b in BLOCKS for c in commands(b)]


def test_train_sh_and_python_train_py_run_the_same_recipe(clean_dir, tmp_path):
    clean, full, lora, merged = dry_run({"NPROC": "1"})
    assert clean == ["python", "clean_data.py", "--output_dir", "data/cache/clean"]
    assert full[:2] == ["python", "train.py"] and dict(zip(full[2::2], full[3::2])) == {
        "--data_dir": "data/cache/clean", "--output_dir": "outputs/baichuan_full"}  # paths only
    assert str((FOLDER / "data/cache/clean").resolve()) == train.DataArguments.data_dir
    assert str((FOLDER / "outputs/baichuan_full").resolve()) == train.SFTTrainingArguments.output_dir
    assert lora[lora.index("--model_name_or_path") + 1] == "outputs/baichuan_full" and "--use_lora" in lora
    assert merged[:2] == ["python", "merge.py"]
    # resolved on real data: train.sh's first stage = `python train.py` with the same paths
    env = {"NPROC": "1", "DATA": str(clean_dir), "OUT": str(tmp_path)}
    _, full, lora, _ = dry_run(env, ["--num_train_epochs", "2"])
    assert resolved(full[2:]) == resolved(["--data_dir", str(clean_dir), "--output_dir", str(tmp_path / "baichuan_full"),
                                           "--num_train_epochs", "2"])


def test_every_variable_the_readme_names_is_read_by_train_sh():
    sh = (FOLDER / "train.sh").read_text(encoding="utf-8")
    named = set(re.findall(r"\b([A-Z][A-Z_]{2,})=", "\n".join(b for b in BLOCKS if "train.sh" in b)))
    listed = re.search(r"`train.sh` 读的变量.*?\n\n", README, flags=re.S).group(0)
    named |= set(re.findall(r"`([A-Z][A-Z_]{2,})`", listed))
    assert {"MODEL", "TRAIN_FILE", "ENCODING", "FULL", "NPROC", "DEEPSPEED", "DRY_RUN", "OUT", "DATA"} <= named
    for name in sorted(named):
        assert "${" + name + ":-" in sh, f"README names {name}, train.sh does not read it"


def test_readme_train_sh_commands_reach_the_scripts():
    found = [c for c in ALL if "bash train.sh" in c]
    assert len(found) >= 4
    for command in found:
        env, argv = env_and_argv(command)
        extra = argv[2:]
        cmds = dry_run(env, extra)
        trains = [c for c in cmds if "train.py" in c]
        if "TRAIN_FILE" in env:
            assert cmds[0][:4] == ["python", "clean_data.py", "--input", env["TRAIN_FILE"]]
            assert cmds[0][cmds[0].index("--encoding") + 1] == env.get("ENCODING", "utf-8")
        if env.get("MODEL"):  # one stage on MODEL: LoRA, or all weights with FULL=1
            assert len(trains) == 1 and trains[0][trains[0].index("--model_name_or_path") + 1] == env["MODEL"]
            use_lora = trains[0][trains[0].index("--use_lora") + 1]
            assert use_lora == ("false" if env.get("FULL") else "true")
            assert any("merge.py" in c for c in cmds) != bool(env.get("FULL"))
        else:
            assert len(trains) == 2
        for cmd in trains:
            if "DEEPSPEED" in env:
                assert cmd[0] == "deepspeed" and cmd[cmd.index("--deepspeed") + 1] == env["DEEPSPEED"]
            elif int(env.get("NPROC", "1")) > 1:
                assert cmd[:3] == ["torchrun", "--nproc_per_node", env["NPROC"]]
            assert cmd[len(cmd) - len(extra):] == extra  # extra arguments reach every stage
    stop = subprocess.run(["bash", str(FOLDER / "train.sh")], env=shell_env(DRY_RUN="1", FULL="1"),
                          capture_output=True, text=True)
    assert stop.returncode == 2 and stop.stderr.startswith("FULL=1: needs MODEL=")


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


BELLE = [{"instruction": f"{kind}的{color}款式怎么搭配？", "input": "", "output": f"{color}的{kind}简约大方，配牛仔裤或半身裙都很合适。"}
         for kind in ("上衣", "裙", "裤", "外套", "衬衫", "卫衣", "毛衣", "夹克") for color in ("白色", "黑色", "红色", "蓝色", "灰色", "绿色")]


@pytest.fixture(scope="module")
def copied(tmp_path_factory):
    """A user's clone: the folder's sources copied out (no data/cache, no outputs), at repo_root/model_baichuan,
    with the files the README's commands name (made up here, in their documented formats: Alpaca/BELLE, sharegpt)."""
    root = tmp_path_factory.mktemp("repo")
    folder = root / "model_baichuan"
    shutil.copytree(FOLDER, folder, ignore=shutil.ignore_patterns("cache", "outputs", "__pycache__",
                                                                   ".ipynb_checkpoints", "runs"))
    for path in ("data/my_belle.json", "belle.json", "data/belle.json"):
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in BELLE), encoding="utf-8")
    (folder / "sharegpt.jsonl").write_text("\n".join(json.dumps({"conversations": [
        {"from": "human", "value": f"{n}千米等于多少米？"}, {"from": "gpt", "value": f"{n * 1000}米"},
        {"from": "human", "value": f"那{n + 1}千米呢？"}, {"from": "gpt", "value": f"{(n + 1) * 1000}米"}]},
        ensure_ascii=False) for n in range(1, 21)), encoding="utf-8")
    return root


def run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=cwd, env=shell_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, command + result.stdout[-2000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def cleaned(copied):
    """The README's `python clean_data.py --input ...` lines, as written, in the copy."""
    folder = copied / "model_baichuan"
    found = [c for c in ALL if c.startswith("python clean_data.py --input")]
    assert len(found) == 2
    for command in found:
        run(command, folder)
    return {c.split("--output_dir ")[1].split()[0]: json.loads((folder / c.split("--output_dir ")[1].split()[0]
                                                                / "summary.json").read_text()) for c in found}


def test_readme_clean_commands_run_as_written(cleaned):
    assert cleaned["data/cache/belle"]["kept"] == len(BELLE)
    mine = cleaned["data/cache/mine"]
    assert mine["read"] == len(BELLE) + 20 and mine["kept"] == len(BELLE) + 20 and mine["rejected"] == 0


@pytest.fixture(scope="module")
def user_data_run(copied) -> subprocess.CompletedProcess:
    """`TRAIN_FILE=data/my_belle.json bash train.sh` for real (budget appended): clean -> offline base -> full -> LoRA
    -> merge."""
    (command,) = [c for c in ALL if c.startswith("TRAIN_FILE=data/my_belle.json bash train.sh")]
    return run(command + " " + " ".join(BUDGET), copied / "model_baichuan")


def test_readme_user_data_train_sh_runs_as_written(copied, user_data_run):
    out = copied / "model_baichuan/outputs"
    assert (out / "baichuan_lora/adapter_config.json").is_file() and (out / "baichuan_merged/config.json").is_file()
    assert "baichuan_lora: held-out exact match" in user_data_run.stdout
    m = json.loads((out / "baichuan_full/train_results.json").read_text())
    assert m["train_samples"] > 30 and not m["use_lora"] and m["global_step"] == 2


def test_readme_gpu_and_hub_commands_stop_with_one_line_on_cpu(copied, cleaned, user_data_run):
    """As written on this CPU machine without a Hub (on the clean data made above): one clear line each (the GPU
    flag, or the checkpoint that is not on this machine); the merge line (an adapter of a real run, which this clone
    does not have) names --adapter_dir."""
    folder = copied / "model_baichuan"
    gpu = [c for c in ALL if "--bf16" in c or "--num_gpus" in c]
    assert len(gpu) >= 5
    argvs = []
    for command in gpu:
        env, argv = env_and_argv(command)
        if argv[0] == "bash":
            argv = next(c for c in dry_run(env, argv[2:], folder=folder) if "train.py" in c)
        argvs.append(argv[next(i for i, a in enumerate(argv) if a.endswith(".py")):])
    (merge,) = [c for c in ALL if c.startswith("python merge.py --adapter_dir outputs/baichuan2_7b_belle")]
    argvs.append(shlex.split(merge)[1:])  # no such adapter here: one line naming --adapter_dir
    lines = one_line_stops(argvs, folder)
    for argv, line in zip(argvs, lines):
        expected = (("--adapter_dir: outputs/baichuan2_7b_belle",) if argv[0] == "merge.py" else
                    ("--num_gpus: 2 requested but 0 visible",) if "--num_gpus" in argv else
                    ("--bf16: needs a CUDA GPU", f"--model_name_or_path: {argv[argv.index('--model_name_or_path') + 1]}"))
        assert line.startswith(expected), (argv, line)
    for name in re.findall(r"(ds_zero\w+\.json)", README):
        assert (FOLDER / name).is_file(), name


def test_readme_serve_commands_answer_the_openai_client(copied, user_data_run, server_process):
    """Every README serve.py command (another free port appended) on what the user-data run trained, answered through
    the README's own client snippet (its port replaced); SIGTERM stops it within seconds."""
    served = [c for c in ALL if re.match(r"python (model_baichuan/)?serve.py", c) and "--num_gpus" not in c]
    assert len(served) == 2
    for command in served:
        cwd = copied if command.startswith("python model_baichuan/") else copied / "model_baichuan"
        with server_process(shlex.split(command)[1:], cwd=cwd) as (root, proc):
            snippet = CLIENT.replace("http://127.0.0.1:8000", root).replace(
                "messages=[", "max_tokens=3, messages=[")
            done = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=120,
                                  env=shell_env())
            assert done.returncode == 0, done.stderr[-2000:]
            start = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
            assert time.perf_counter() - start < 10


def test_readme_quick_start_lines():
    """`bash train.sh` = the recipe compared above; `jupyter notebook` needs the notebook package (the notebook runs in
    test_train.py); the pytest line is this suite's own command."""
    import importlib.util
    quick = commands(BLOCKS[0])
    assert quick[0] == "bash train.sh" and quick[1] == "jupyter notebook infer.ipynb"
    assert importlib.util.find_spec("notebook") is not None, "pip install -r requirements-dev.txt"
    tests = [c for c in ALL if c.startswith("python -m pytest")]
    assert tests and all(c == "python -m pytest tests -p no:cacheprovider --import-mode=importlib" for c in tests)
