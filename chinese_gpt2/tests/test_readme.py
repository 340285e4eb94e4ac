"""The README's commands, run as written: every `bash train.sh` line with DRY_RUN=1 (the commands it would run, each
variable reaching them), the python commands one after another in a copy of the folder (a tiny budget appended to
train.py), the GPU/Hub commands until their one-line stop on this CPU machine, serve.py until the openai client gets
a streamed answer and SIGTERM stops it. `bash train.sh` runs `python train.py`'s recipe."""
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
from transformers import GPT2Config, HfArgumentParser

import clean_data
import train

FOLDER = Path(__file__).resolve().parents[1]
README = (FOLDER / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
# appended to the README's train.py commands (the commands themselves run as written)
BUDGET = ["--max_steps", "3", "--save_steps", "3", "--eval_strategy", "no", "--eval_on_start", "false",
          "--report_to", "none", "--disable_tqdm", "true", "--max_eval_blocks", "4", "--eval_chats", "4",
          "--sample_max_new_tokens", "2", "--logging_steps", "1", "--max_train_docs", "500"]
CLEAN_BUDGET = ["--max_docs", "2000"]  # appended to the README's clean_data.py commands


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


def dry_run(env: dict, args=()) -> list[list[str]]:
    out = subprocess.run(["bash", str(FOLDER / "train.sh"), *args], env=shell_env(DRY_RUN="1", **env),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [shlex.split(line) for line in out.stdout.strip().splitlines()]


def resolved(argv: list[str]) -> list[dict]:
    groups = HfArgumentParser((train.ModelArguments, train.DataArguments, train.GPT2TrainingArguments)
                              ).parse_args_into_dataclasses(args=argv)
    train.check_args(*groups)
    return [g.to_dict() if hasattr(g, "to_dict") else dataclasses.asdict(g) for g in groups]


def test_train_sh_and_python_train_py_run_the_same_recipe(clean_dir, chat_dir, tmp_path):
    clean, lm, chat_clean, chat = dry_run({"NPROC": "1"})
    assert clean[:2] == ["python", "clean_data.py"] and clean[-2:] == ["--output_dir", "data/cache/clean"]
    assert lm[:2] == ["python", "train.py"] and dict(zip(lm[2::2], lm[3::2])) == {
        "--data_dir": "data/cache/clean", "--output_dir": "outputs/gpt2"}  # paths only: the recipe is train.py's
    assert chat_clean == ["python", "clean_data.py", "--task", "chat", "--output_dir", "data/cache/chat"]
    assert dict(zip(chat[2::2], chat[3::2])) == {"--task": "chat", "--model_name_or_path": "outputs/gpt2",
                                                 "--data_dir": "data/cache/chat", "--output_dir": "outputs/gpt2_chat"}
    assert train.GPT2TrainingArguments().output_dir == str((FOLDER / "outputs/gpt2").resolve())
    # resolved on real data: each stage = `python train.py` with the same paths (and the extra arguments)
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    (data / "clean").symlink_to(clean_dir)
    (data / "chat").symlink_to(chat_dir)
    GPT2Config().save_pretrained(out / "gpt2")  # the lm stage's output, for the chat stage's --model_name_or_path
    _, lm, _, chat = dry_run({"NPROC": "1", "DATA": str(data), "OUT": str(out)}, ["--max_steps", "7"])
    assert resolved(lm[2:]) == resolved(["--data_dir", str(data / "clean"), "--output_dir", str(out / "gpt2"),
                                         "--max_steps", "7"])
    assert resolved(chat[2:]) == resolved(["--task", "chat", "--model_name_or_path", str(out / "gpt2"), "--data_dir",
                                           str(data / "chat"), "--output_dir", str(out / "gpt2_chat"), "--max_steps", "7"])


def test_every_variable_the_readme_names_is_read_by_train_sh():
    sh = (FOLDER / "train.sh").read_text(encoding="utf-8")
    named = set(re.findall(r"\b([A-Z][A-Z_]{2,})=", "\n".join(b for b in BLOCKS if "train.sh" in b)))
    listed = re.search(r"`train.sh` 读的变量.*?\n\n", README, flags=re.S).group(0)
    named |= set(re.findall(r"`([A-Z][A-Z_]{2,})`", listed))
    assert {"RAW", "TEXT_FIELD", "ENCODING", "DOC_SPLIT", "MODEL", "SKIP_CHAT", "NPROC", "DRY_RUN"} <= named
    for name in sorted(named):
        assert "${" + name + ":-" in sh, f"README names {name}, train.sh does not read it"


def test_readme_train_sh_commands_reach_the_scripts():
    found = [c for b in BLOCKS for c in commands(b) if "bash train.sh" in c]
    assert len(found) >= 4
    for command in found:
        env, argv = env_and_argv(command)
        cmds = dry_run(env, argv[2:])
        cleans = [c for c in cmds if "clean_data.py" in c]
        trains = [c for c in cmds if "train.py" in c]
        lm_clean = " ".join(cleans[0])
        for word in env.get("RAW", "").split():
            assert f" {word}" in lm_clean and "--input" in cleans[0]
        for var, flag in (("TEXT_FIELD", "--text_field"), ("ENCODING", "--encoding"), ("DOC_SPLIT", "--doc_split")):
            if var in env:
                assert cleans[0][cleans[0].index(flag) + 1] == env[var]
        assert len(trains) == (1 if env.get("SKIP_CHAT") else 2)
        if "MODEL" in env:
            assert trains[0][trains[0].index("--model_name_or_path") + 1] == env["MODEL"]
        if env.get("NPROC", "1") != "1":
            assert all(t[:3] == ["torchrun", "--nproc_per_node", env["NPROC"]] for t in trains)
        for cmd in trains:
            assert cmd[len(cmd) - len(argv[2:]):] == argv[2:]  # extra arguments reach every stage


@pytest.fixture(scope="module")
def copied(tmp_path_factory):
    """A user's clone: the folder's sources copied out (no data/cache, no outputs) at repo/chinese_gpt2, with the
    files the README's commands name (made up here, in their documented formats)."""
    root = tmp_path_factory.mktemp("repo")
    folder = root / "chinese_gpt2"
    shutil.copytree(FOLDER, folder, ignore=shutil.ignore_patterns("cache", "outputs", "__pycache__",
                                                                   ".ipynb_checkpoints", "runs"))
    with open(clean_data.people_daily_path(), encoding="utf-8") as f:
        docs = [clean_data.strip_pos_tags(next(f))[1] for _ in range(300)]
    (folder / "data/my_corpus.jsonl").write_text(
        "".join(json.dumps({"id": i, "content": d}, ensure_ascii=False) + "\n" for i, d in enumerate(docs)), "utf-8")
    (folder / "news.txt").write_bytes("\n\n".join(docs[:50]).encode("gb18030"))
    (folder / "more_news").mkdir()
    (folder / "more_news/part1.txt").write_bytes("\n\n".join(docs[50:80]).encode("gb18030"))
    return root


def run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=cwd, env=shell_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, command + result.stdout[-2000:] + result.stderr[-3000:]
    return result


def python_commands() -> list[str]:
    return [c for b in BLOCKS for c in commands(b) if c.startswith("python ") and "pytest" not in c
            and "serve.py" not in c and "--bf16" not in c]


@pytest.fixture(scope="module")
def ran(copied):
    """Every offline python command of the README, in README order, in the copy (budgets appended to train.py and
    clean_data.py)."""
    folder = copied / "chinese_gpt2"
    for command in python_commands():
        extra = BUDGET if command.startswith("python train.py") else \
            CLEAN_BUDGET if command.startswith("python clean_data.py") else []
        run(" ".join([command, *extra]), folder)
    return folder


def test_readme_python_commands_run_as_written(ran, capsys):
    assert len(python_commands()) >= 8
    summary = json.loads((ran / "data/cache/news/summary.json").read_text())
    assert summary["read"] == 80 and summary["kept"] + summary["rejected"] == summary["read"]  # GBK, paragraphs
    lm = json.loads((ran / "outputs/gpt2/eval_results.json").read_text())
    assert lm["unigram_perplexity"] > 100 and (ran / "outputs/gpt2/vocab.txt").is_file()
    chat = json.loads((ran / "outputs/gpt2_chat/train_results.json").read_text())
    assert chat["task"] == "chat" and (ran / "outputs/tokenizer/vocab.txt").is_file()
    assert (ran.parent / "images/chinese_gpt2.png").is_file()


def test_readme_gpu_and_hub_commands_stop_with_one_line_on_cpu(copied):
    gpu = [c for b in BLOCKS for c in commands(b) if "--bf16" in c]
    assert len(gpu) >= 2
    for command in gpu:
        env, argv = env_and_argv(command)
        if argv[0] == "bash":
            argv = next(c for c in dry_run(env, argv[2:]) if "train.py" in c)
        argv = argv[argv.index("train.py"):]
        proc = subprocess.run([sys.executable, *argv], cwd=copied / "chinese_gpt2", env=shell_env(),
                              capture_output=True, text=True, timeout=180)
        last = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode == 1 and last.startswith("--bf16: needs a CUDA GPU") and "Traceback" not in proc.stderr


def test_readme_serve_commands_stream_to_the_openai_client(ran, server_process):
    import httpx
    from openai import OpenAI
    served = [c for b in BLOCKS for c in commands(b) if c.startswith("python serve.py")]
    assert len(served) == 2
    for command in served:
        with server_process(shlex.split(command)[1:], cwd=ran) as (root, proc):
            client = OpenAI(base_url=f"{root}/v1", api_key="none", max_retries=0, timeout=60)
            stream = client.chat.completions.create(model="chinese_gpt2", max_tokens=3, stream=True,
                                                    messages=[{"role": "user", "content": "今天是星期三。"}])
            chunks = list(stream)
            assert chunks[-1].choices[0].finish_reason in ("stop", "length")
            assert httpx.get(root + "/").status_code == 200
            start = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
            assert time.perf_counter() - start < 10


def test_readme_notebook_command_is_installed():
    """`jupyter notebook infer.ipynb` needs the notebook package (requirements-dev.txt); the notebook itself runs in
    test_train.py::test_notebook_runs."""
    import importlib.util
    assert importlib.util.find_spec("notebook") is not None, "pip install -r requirements-dev.txt"
