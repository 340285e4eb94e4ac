"""The README's commands: every `bash train.sh` command with DRY_RUN=1 reaches the scripts with what it sets, every
variable the README names is read by train.sh, and `bash train.sh`'s last train.py call is `python train.py`'s recipe."""
import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from transformers import HfArgumentParser

import dataset
import train

FOLDER = Path(__file__).resolve().parents[1]
README = (FOLDER / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)


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
    groups = HfArgumentParser((train.StageArguments, dataset.DataArguments, train.ExpandTrainingArguments)
                              ).parse_args_into_dataclasses(args=argv)
    return [g.to_dict() if hasattr(g, "to_dict") else dataclasses.asdict(g) for g in groups]


def test_every_variable_the_readme_names_is_read_by_train_sh():
    sh = (FOLDER / "train.sh").read_text(encoding="utf-8")
    named = set(re.findall(r"\b([A-Z][A-Z_]{2,})=", "\n".join(b for b in BLOCKS if "train.sh" in b)))
    assert {"INPUT", "ENCODING", "LLAMA", "CHINESE_SP", "BLOOM", "NPROC"} <= named
    for name in sorted(named):
        assert "${" + name + ":-" in sh, f"README names {name}, train.sh does not read it"


def test_readme_train_sh_commands_reach_the_scripts():
    found = [c for b in BLOCKS for c in commands(b) if "bash train.sh" in c]
    assert len(found) >= 3
    for command in found:
        env, argv = env_and_argv(command)
        cmds = dry_run({"NPROC": "1", **env} if "NPROC" not in env else env, argv[2:])
        text = " ".join(" ".join(c) for c in cmds)
        scripts = {next(w for w in c if w.endswith(".py")) for c in cmds}
        assert {"clean_data.py", "prune_vocab.py", "expand_vocab.py", "train.py"} <= scripts, cmds
        if "INPUT" in env:
            assert f"--input {env['INPUT']} --encoding {env['ENCODING']}" in text
        if "LLAMA" in env:
            assert f"--model_name_or_path {env['LLAMA']}" in text and "--trainable all" not in text
        if "BLOOM" in env:
            assert f"prune_vocab.py --model_name_or_path {env['BLOOM']}" in text
        if "CHINESE_SP" in env:
            assert f"--chinese_sp_model {env['CHINESE_SP']}" in text
        if env.get("NPROC", "1") != "1":
            assert cmds[-1][:3] == ["torchrun", "--nproc_per_node", env["NPROC"]]
        assert " ".join(argv[2:]) in " ".join(cmds[-1])  # extra arguments are forwarded


def test_train_sh_and_python_train_py_run_the_same_recipe():
    last = dry_run({"NPROC": "1"})[-1]
    assert last[:2] == ["python", "train.py"]
    argv = [str((FOLDER / a).resolve()) if not a.startswith("--") else a for a in last[2:]]
    flags = dict(zip(argv[::2], argv[1::2]))
    assert set(flags) == {"--model_name_or_path", "--train_file", "--validation_file", "--test_file", "--output_dir"}
    defaults = {"--model_name_or_path": train.StageArguments.model_name_or_path,
                "--output_dir": train.ExpandTrainingArguments.output_dir,
                **{f"--{s}_file": getattr(dataset.DataArguments, f"{s}_file") for s in ("train", "validation", "test")}}
    assert flags == defaults  # paths only, and they are train.py's defaults


# appended to each script the README runs (the commands themselves run as written; the last value of a flag wins)
BUDGET = {"clean_data.py": ["--max_docs", "400"], "train_tokenizer.py": ["--max_docs", "300"],
          "train.py": ["--max_steps", "2", "--per_device_train_batch_size", "2", "--max_eval_samples", "4",
                       "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true"]}


# Runs commands one after another in ONE fresh interpreter (imports paid once): each is `runpy`-run as __main__ in
# its cwd with its env; a non-zero SystemExit stops the run with the command named.
DRIVER = r"""
import json, os, runpy, sys
for cwd, env, argv in json.loads(sys.argv[1]):
    os.chdir(cwd); os.environ.update(env); sys.argv = argv
    sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:
        if e.code not in (None, 0):
            sys.exit(f"FAILED {' '.join(argv)}: {e.code}")
    finally:
        sys.path.pop(0)
"""


def planned(command: str, cwd: Path):
    """(cwd, env, argv + budget) for the driver; the benchmark's arguments are only parsed (real shapes: a
    250,680-token BPE, minutes; its numbers are in the README)."""
    env, argv = env_and_argv(command)
    script = Path(argv[1]).name
    if script == "benchmark.py":
        HfArgumentParser(__import__("benchmark").BenchmarkArguments).parse_args_into_dataclasses(args=argv[2:])
        return None
    return str(cwd), env, [argv[1], *argv[2:], *BUDGET.get(script, [])]


def run_all(plan: list, cwd: Path) -> None:
    out = subprocess.run([sys.executable, "-c", DRIVER, json.dumps([p for p in plan if p])], cwd=cwd,
                         capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, f"{out.stdout[-2000:]}\n{out.stderr[-4000:]}"


def test_readme_python_commands_run_in_a_copied_folder(tmp_path):
    """`bash train.sh`'s commands (DRY_RUN=1, each with a tiny budget) make what the README's python commands read;
    then every python command of the README runs as written in the copy (cwd: the folder, or its parent for the
    `python model_modify/...` block)."""
    copy = tmp_path / FOLDER.name
    shutil.copytree(FOLDER, copy, ignore=shutil.ignore_patterns("outputs", "cache", "__pycache__", "*.ipynb"))
    run_all([planned(shlex.join(cmd), copy) for cmd in dry_run({"NPROC": "1"})], copy)
    my_texts = copy / "data/my_texts"  # the README's own-corpus example: GBK-encoded text files
    my_texts.mkdir()
    docs = [json.loads(line)["text"] for split in ("test", "validation", "train")  # train's alone would all hash to train
            for line in (copy / f"data/cache/clean/{split}.jsonl").read_text("utf-8").splitlines()]
    (my_texts / "a.txt").write_bytes("\n".join(docs[:300]).encode("gb18030"))
    plan, ran = [], []
    for command in (c for b in BLOCKS for c in commands(b) if c.startswith("python ")):
        if "../shared/" in command and not (copy.parent.parent / "shared/reference").is_dir():
            continue  # the real LLaMA / Chinese-LLaMA files are optional (the copy's ../shared, as a user's clone)
        root_relative = command.split()[1].startswith(f"{FOLDER.name}/")
        plan.append(planned(command, copy.parent if root_relative else copy))
        ran.append(command.split()[1])
    run_all(plan, copy)
    assert {"expand_vocab.py", "train.py", "clean_data.py", f"{FOLDER.name}/prune_vocab.py",
            f"{FOLDER.name}/benchmark.py"} <= set(ran), ran
    assert (copy / "outputs/stage2_lora/model.safetensors").is_file()
    assert json.loads((copy / "outputs/bloom_pruned/prune_report.json").read_text())["verify"]["ok"]
