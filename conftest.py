"""Lets one pytest run collect every folder's tests.

Every folder has its own `train.py`, `dataset.py`, ... imported by plain name. Before pytest
collects or runs a test from folder X, we put X first on sys.path and swap sys.modules so
that `import train` means X/train.py. Modules of the other folders are stashed, not lost.
"""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
_stash: dict[str, dict] = {}
_active: list[str] = []  # at most one folder name


def _folder_of(path) -> str | None:
    try:
        rel = Path(path).resolve().relative_to(ROOT)
    except ValueError:
        return None
    if len(rel.parts) < 2 or rel.parts[0].startswith("."):
        return None
    folder = rel.parts[0]
    return folder if (ROOT / folder / "tests").is_dir() else None


def _owned_by(module, folder: str) -> bool:
    f = getattr(module, "__file__", None)
    return bool(f) and Path(f).resolve().is_relative_to(ROOT / folder) and ".venv" not in f


def _activate(folder: str | None) -> None:
    if folder is None or (_active and _active[0] == folder):
        return
    if _active:
        old = _active.pop()
        mods = {n: m for n, m in list(sys.modules.items()) if _owned_by(m, old)}
        for n in mods:
            del sys.modules[n]
        _stash[old] = mods
        while str(ROOT / old) in sys.path:
            sys.path.remove(str(ROOT / old))
    sys.modules.update(_stash.pop(folder, {}))
    sys.path.insert(0, str(ROOT / folder))
    _active.append(folder)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    _activate(_folder_of(collector.path))
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _activate(_folder_of(item.path))
    yield
