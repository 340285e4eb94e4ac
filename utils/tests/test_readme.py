"""The top-level README's commands, run as written (with DRY_RUN where they would need a GPU or the Hub)."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_copy_out_block_is_the_one_the_classifier_tests_run():
    """chinese_classifier/tests/test_readme.py executes its README's copy-out block; ours must be the same text."""
    ours = [b for b in bash_blocks(README) if b.startswith("cp -r chinese_classifier")]
    theirs = [b for b in bash_blocks((ROOT / "chinese_classifier/README.md").read_text(encoding="utf-8"))
              if b.startswith("cp -r chinese_classifier")]
    assert len(ours) == 1 and len(theirs) == 1
    assert ours[0] == theirs[0]


def test_real_data_example_reads_every_variable_it_names():
    """The README's real-checkpoint example, run with DRY_RUN=1: the variables it sets reach the commands."""
    (block,) = [b for b in bash_blocks(README) if "INPUT=/data/law/raw.jsonl" in b]
    cmd = block.split("\n# ")[0].strip()  # `cd chinese_classifier` + the first command, before the comments
    assert cmd.startswith("cd chinese_classifier\n") and cmd.endswith("--bf16")
    env = {**os.environ, "DRY_RUN": "1", "NPROC": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(["bash", "-c", cmd], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    clean, train = [ln for ln in out.stdout.splitlines() if "clean_data.py" in ln or "train.py" in ln][:2]
    assert "--input /data/law/raw.jsonl" in clean and "--output_dir data/cache/law" in clean
    assert "--text_column text" in clean and "--label_column label" in clean
    for part in ("--model_name_or_path hfl/chinese-roberta-wwm-ext", "--data_dir data/cache/law",
                 "--output_dir outputs/law", "--learning_rate 2e-5", "--bf16"):
        assert part in train, (part, train)


def test_test_command_is_what_ci_runs():
    cmd = re.search(r"<!-- test-command -->`([^`]+)`", README).group(1)
    assert cmd == "bash scripts/test.sh" and (ROOT / "scripts/test.sh").is_file()
    assert "python utils/check_copies.py" in (ROOT / "scripts/test.sh").read_text()


def test_direct_train_py_example_stops_with_one_line_on_cpu():
    """The README's `python train.py ... --bf16` line, as written, on a CPU machine without a Hub and without
    the law data: one clear line and exit code 1 (an unknown flag would be argparse's exit code 2)."""
    (block,) = [b for b in bash_blocks(README) if "INPUT=/data/law/raw.jsonl" in b]
    line = re.sub(r"\\\n\s*", " ", block.split("# 或直接调用：\n")[1]).strip()
    assert line.startswith("python train.py --model_name_or_path hfl/chinese-roberta-wwm-ext")
    out = subprocess.run([sys.executable, *line.split()[1:]], cwd=ROOT / "chinese_classifier", capture_output=True,
                         text=True, timeout=120)
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 1 and "Fix" in last and "Traceback" not in out.stderr, out.stderr[-2000:]
