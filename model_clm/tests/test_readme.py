"""The README's commands, run as written: train.sh with DRY_RUN=1 (the commands it would run), the python commands
in a copy of the folder with a tiny budget appended, the GPU/Hub commands until their one-line stop on this CPU
machine, and serve.py until the openai client gets an answer. `bash train.sh` runs `python train.py`'s recipe."""
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

import dataset
import model
import train

FOLDER = Path(__file__).resolve().parents[1]
README = (FOLDER / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
# appended to the README's train.py commands (the commands themselves run as written)
BUDGET = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--max_eval_blocks", "4", "--eval_on_start",
          "false", "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true"]


def commands(block: str) -> list[str]:
    """A block's commands: continuation lines joined, comments and `cd` dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith(("#", "cd "))]


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
    out = subprocess.run(["bash", str(FOLDER / "train.sh"), *args], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [shlex.split(line) for line in out.stdout.strip().splitlines()]


def resolved(argv: list[str]):
    groups = HfArgumentParser((model.ModelArguments, dataset.DataArguments, train.CLMTrainingArguments)
                              ).parse_args_into_dataclasses(args=argv)
    return [g.to_dict() if hasattr(g, "to_dict") else dataclasses.asdict(g) for g in groups]


def test_train_sh_and_python_train_py_run_the_same_recipe(pipeline, tmp_path):
    # the default paths of train.sh are train.py's defaults
    *_, default = dry_run({"NPROC": "1"})
    assert default[:2] == ["python", "train.py"]
    flags = dict(zip(default[2::2], default[3::2]))
    assert set(flags) == {"--data_dir", "--tokenizer_name_or_path", "--output_dir"}  # paths only
    assert str((FOLDER / flags["--data_dir"]).resolve()) == dataset.DataArguments.data_dir
    assert (FOLDER / flags["--tokenizer_name_or_path"]).resolve() == model.DEFAULT_TOKENIZER
    assert str((FOLDER / flags["--output_dir"]).resolve()) == train.CLMTrainingArguments.output_dir
    # on real data the command resolves to exactly the arguments of `python train.py` with the same paths
    env = {"NPROC": "1", "WORK": str(pipeline["root"]), "TOKENIZER": str(pipeline["tok"]),
           "OUTPUT_DIR": str(tmp_path / "out")}
    *_, cmd = dry_run(env, ["--max_steps", "7"])
    paths = ["--data_dir", str(pipeline["tokens"]), "--tokenizer_name_or_path", str(pipeline["tok"]),
             "--output_dir", str(tmp_path / "out")]
    assert resolved(cmd[2:]) == resolved(paths + ["--max_steps", "7"])


def test_every_variable_the_readme_names_is_read_by_train_sh():
    sh = (FOLDER / "train.sh").read_text(encoding="utf-8")
    named = set(re.findall(r"\b([A-Z][A-Z_]{2,})=", "\n".join(b for b in BLOCKS if "train.sh" in b)))
    assert {"RAW", "TEXT_FIELD", "WORK", "TOKENIZER", "MODEL", "DEEPSPEED", "NPROC"} <= named
    for name in sorted(named):
        assert "${" + name + ":-" in sh, f"README names {name}, train.sh does not read it"


def test_readme_train_sh_commands_reach_the_scripts():
    """Every `bash train.sh` command of the README, with DRY_RUN=1: each variable it sets reaches the commands."""
    found = [c for b in BLOCKS for c in commands(b) if "bash train.sh" in c]
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
        if "DEEPSPEED" in env:
            assert by_script["train.py"][0] == "deepspeed" and f"--deepspeed {env['DEEPSPEED']}" in text
        elif env.get("NPROC", "1") != "1":
            assert by_script["train.py"][:3] == ["torchrun", "--nproc_per_node", env["NPROC"]]
        assert " ".join(argv[2:]) in " ".join(by_script["train.py"])  # extra arguments are forwarded


def one_line_stop(argv: list[str]) -> str:
    """train.main(argv) must stop with our one-line message (an unknown flag would exit with argparse's code 2)."""
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    assert isinstance(e.value.code, str) and "\n" not in e.value.code and "Fix:" in e.value.code, e.value.code
    return e.value.code


def test_gpu_and_hub_commands_stop_with_one_line_on_cpu():
    """The README's GPU commands, as written, on a CPU machine without a Hub: one clear line, no traceback
    (also proves every flag in them exists: an unknown flag would be an argparse usage error, exit code 2)."""
    gpu = [c for b in BLOCKS for c in commands(b) if ("torchrun" in c or "bash train.sh --bf16" in c)
           and "--bf16" in c and " ... " not in c]
    assert gpu
    for command in gpu:
        env, argv = env_and_argv(command)
        if argv[0] == "bash":  # the command train.sh would launch, run by one python
            argv = dry_run(env, argv[2:])[-1]
        argv = argv[argv.index("train.py") + 1:]
        assert re.search(r"--(bf16|data_dir|deepspeed)", one_line_stop(argv))
    for name in re.findall(r"--deepspeed (\S+\.json)", README):
        assert (FOLDER / name).is_file(), name


@pytest.fixture(scope="module")
def copied(tmp_path_factory):
    """A user's clone: the folder's sources copied out (no data/cache, no outputs), at repo_root/model_clm."""
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(FOLDER, root / "model_clm", ignore=shutil.ignore_patterns(
        "cache", "outputs", "__pycache__", ".ipynb_checkpoints"))
    return root


def run_block(block: str, cwd: Path) -> subprocess.CompletedProcess:
    script = "\n".join(c + (" " + " ".join(BUDGET) if c.startswith("python train.py") else "") for c in commands(block))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, script + result.stdout[-2000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def step_by_step(copied) -> Path:
    """The four scripts one by one (README block 2) in the copy -> its outputs/clm."""
    (block,) = [b for b in BLOCKS if b.startswith("python clean_data.py ")]
    run_block(block, copied / "model_clm")
    return copied / "model_clm/outputs/clm"


def test_readme_step_by_step_commands_run_as_written(copied, step_by_step):
    """The step-by-step block, then the other-architecture command (it overwrites outputs/clm), in the copy."""
    out = step_by_step
    metrics = json.loads((out / "eval_results.json").read_text())
    assert metrics["unigram_perplexity"] > 100 and (out / "model.safetensors").is_file()
    meta = json.loads((copied / "model_clm/data/cache/people_daily/tokens/meta.json").read_text())
    assert meta["vocab_size"] == 8192 and meta["splits"]["train"]["tokens"] > 1_000_000  # the whole corpus
    (other,) = [c for b in BLOCKS for c in commands(b) if "--model_type qwen2" in c]
    run_block(other, copied / "model_clm")
    config = json.loads((out / "config.json").read_text())
    assert (config["model_type"], config["hidden_size"], config["num_hidden_layers"]) == ("qwen2", 512, 8)


def test_readme_serve_commands_answer_the_openai_client(copied, step_by_step, server_process):
    """README's serve.py commands from the copy's repo root (another free port appended), on the model in
    model_clm/outputs/clm (the step-by-step run's, or the qwen2 one if that test ran first); SIGTERM stops them."""
    from openai import OpenAI
    served = [c for b in BLOCKS for c in commands(b) if c.startswith("python model_clm/serve.py")]
    assert len(served) == 2
    for command in served:
        with server_process(shlex.split(command)[1:], cwd=copied) as (root, proc):
            url = f"{root}/v1"
            client = OpenAI(base_url=url, api_key="none", max_retries=0, timeout=60)
            done = client.completions.create(model="model_clm", prompt="中国", max_tokens=5, temperature=0)
            assert done.usage.completion_tokens <= 5 and done.choices[0].finish_reason in ("length", "stop")
            start = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
            assert time.perf_counter() - start < 10
