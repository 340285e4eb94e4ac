"""The root conftest.py lets one pytest run hold folders that each have their own `model.py`."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _make_folder(root: Path, name: str):
    (root / name / "tests").mkdir(parents=True)
    (root / name / "model.py").write_text(f"NAME = {name!r}\n")
    (root / name / "train.py").write_text("def which():\n    import model  # lazy import, resolved at run time\n"
                                          "    return model.NAME\n")
    (root / name / "tests" / "conftest.py").write_text(
        "import sys\nfrom pathlib import Path\nsys.path.insert(0, str(Path(__file__).resolve().parents[1]))\n")
    (root / name / "tests" / "test_it.py").write_text(
        f"import model\nimport train\n\n\ndef test_own_modules():\n"
        f"    assert model.NAME == {name!r}\n    assert train.which() == {name!r}\n")


def test_one_run_collects_every_folder_with_its_own_modules(tmp_path):
    shutil.copy(ROOT / "conftest.py", tmp_path)
    shutil.copy(ROOT / "pytest.ini", tmp_path)
    for name in ["alpha", "beta-gamma", "delta"]:  # a hyphenated folder name too
        _make_folder(tmp_path, name)
    (tmp_path / "utils" / "tests").mkdir(parents=True)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 passed" in r.stdout
