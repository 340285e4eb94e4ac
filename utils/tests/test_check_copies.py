import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import check_copies  # noqa: E402

SOURCE = '''import torch


def helper(x):
    """Doubles x."""
    return 2 * x


class Server:
    name = "bloom"

    def route(self):
        return "/v1/bloom"
'''

COPY = '''import os


# Copied from a/lib.py:helper
def helper(x):
    """Doubles x."""
    return 2 * x


class Wrapper:
    # Copied from a/lib.py:Server.route with bloom->glm
    def route(self):
        return "/v1/glm"


def own():
    return os.sep
'''


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "lib.py").write_text(SOURCE)
    (tmp_path / "b" / "use.py").write_text(COPY)
    (tmp_path / "b" / "whole.py").write_text("# Copied from a/lib.py\n" + SOURCE)
    return tmp_path


def test_in_sync_copies_pass(repo):
    assert len(check_copies.find_copies(repo)) == 3
    assert check_copies.check(repo) == []
    assert check_copies.main(["--root", str(repo)]) == 0


def test_drifted_function_copy_is_caught_and_fixed(repo, capsys):
    use = repo / "b" / "use.py"
    use.write_text(COPY.replace("return 2 * x", "return 3 * x"))
    problems = check_copies.check(repo)
    assert [p.message for p in problems] == ["b/use.py:4: copy of a/lib.py:helper has drifted from its source"]
    assert check_copies.main(["--root", str(repo)]) == 1
    assert "1 of 3 copies out of sync" in capsys.readouterr().out

    assert check_copies.main(["--root", str(repo), "--fix"]) == 0
    assert use.read_text() == COPY  # restored byte for byte, the rest of the file untouched


def test_replacement_and_indented_method(repo):
    use = repo / "b" / "use.py"
    use.write_text(COPY.replace('return "/v1/glm"', 'return "/v1/bloom"'))  # forgot the bloom->glm rename
    (p,) = check_copies.check(repo)
    assert p.message == "b/use.py:11: copy of a/lib.py:Server.route has drifted from its source"
    check_copies.check(repo, fix=True)
    assert use.read_text() == COPY


def test_source_edit_propagates_with_fix(repo):
    src = repo / "a" / "lib.py"
    src.write_text(SOURCE.replace('"""Doubles x."""', '"""Returns x doubled."""'))
    assert {p.message.split(":")[0] for p in check_copies.check(repo)} == {"b/use.py", "b/whole.py"}
    assert check_copies.check(repo, fix=True) == []
    assert '"""Returns x doubled."""' in (repo / "b" / "use.py").read_text()
    assert (repo / "b" / "whole.py").read_text() == "# Copied from a/lib.py\n" + src.read_text()


def test_whole_file_drift(repo):
    whole = repo / "b" / "whole.py"
    whole.write_text(whole.read_text() + "\nEXTRA = 1\n")
    (p,) = check_copies.check(repo)
    assert p.message == "b/whole.py:1: whole-file copy differs from a/lib.py"


def test_broken_markers_are_reported(repo):
    (repo / "b" / "bad.py").write_text("# Copied from a/lib.py:nope\ndef nope():\n    pass\n\n"
                                       "# Copied from a/missing.py:f\ndef f():\n    pass\n")
    msgs = sorted(p.message for p in check_copies.check(repo))
    assert msgs == ["b/bad.py:1: a/lib.py has no top-level def/class 'nope'",
                    "b/bad.py:5: source file a/missing.py does not exist"]


def test_this_repository_is_in_sync():
    problems = check_copies.check(check_copies.ROOT)
    assert problems == [], "\n".join(p.message for p in problems)


def test_drifted_json_full_copy_is_caught_and_fixed(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    src = '{\n  "zero_optimization": {"stage": 2},\n  "optimizer": {"params": {"lr": "auto"}}\n}\n'
    (tmp_path / "a" / "ds.json").write_text(src)
    (tmp_path / "b" / "ds.json").write_text(src)
    full = {"b/ds.json": "a/ds.json"}
    assert check_copies.check(tmp_path, full_copies=full) == []
    (tmp_path / "b" / "ds.json").write_text(src.replace('"stage": 2', '"stage": 3'))
    (p,) = check_copies.check(tmp_path, full_copies=full)
    assert p.message == "b/ds.json: full copy differs from a/ds.json"
    assert check_copies.check(tmp_path, fix=True, full_copies=full) == []
    assert (tmp_path / "b" / "ds.json").read_text() == src
    (tmp_path / "b" / "ds.json").unlink()
    (p,) = check_copies.check(tmp_path, full_copies=full)
    assert "missing file" in p.message


SH_SOURCE = """#!/usr/bin/env bash
X=1
# >>> launcher (copied: a/train.sh)
LAUNCH=(python)
if [ "$NPROC" -gt 1 ]; then LAUNCH=(torchrun); fi
# <<< launcher
echo a
"""


def test_shell_block_copy(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "train.sh").write_text(SH_SOURCE)  # names itself: the source, not a copy
    copy = SH_SOURCE.replace("X=1", "Y=2\nZ=3").replace("echo a", "echo b")
    (tmp_path / "b" / "train.sh").write_text(copy)
    assert len(check_copies.find_block_copies(tmp_path)) == 1
    assert check_copies.check(tmp_path, full_copies={}) == []
    (tmp_path / "b" / "train.sh").write_text(copy.replace("LAUNCH=(torchrun)", "LAUNCH=(deepspeed)"))
    (p,) = check_copies.check(tmp_path, full_copies={})
    assert p.message == "b/train.sh:4: block 'launcher' has drifted from a/train.sh"
    assert check_copies.check(tmp_path, fix=True, full_copies={}) == []
    assert (tmp_path / "b" / "train.sh").read_text() == copy  # lines outside the block untouched
    (tmp_path / "b" / "train.sh").write_text(copy.replace("# <<< launcher\n", ""))
    (p,) = check_copies.check(tmp_path, full_copies={})
    assert "no closing '# <<< launcher'" in p.message


def test_deepspeed_configs_are_one_marked_source():
    """Every ds_*.json in the repo is either a FULL_COPIES source or copy, and none overrides Trainer's
    scheduler (a DeepSpeed scheduler silently replaces --lr_scheduler_type)."""
    import json
    root = check_copies.ROOT
    covered = set(check_copies.FULL_COPIES) | set(check_copies.FULL_COPIES.values())
    found = {str(p.relative_to(root)) for p in root.glob("*/ds_*.json")}
    assert found <= covered, found - covered
    for name in found:
        cfg = json.loads((root / name).read_text())
        assert "scheduler" not in cfg, name
        assert cfg["optimizer"]["params"]["lr"] == "auto", name
