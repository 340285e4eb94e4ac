"""Keep `# Copied from` copies in sync with their source (like transformers' utils/check_copies.py).

Folders share no code at import time; a folder must still work when copied out alone.
When two folders need the same code, one holds the source and the others hold marked copies:

    # Copied from chinese_bloom/device_map.py:balanced_device_map
    def balanced_device_map(...):            # must equal the source object, verbatim

    # Copied from chinese_bloom/serve.py:ChatRequest with bloom->glm, Bloom->GLM
    class ChatRequest(...):                  # equal after replacing in the source text

    # Copied from chinese_classifier/diagram.py       <- line 1, no ":name": the whole file

`:name` may be dotted (`Class.method`). The copy may sit at another indentation level.

Files that cannot carry a comment (JSON) are listed in FULL_COPIES: copy -> source, byte for byte
(like transformers' FULL_COPIES). Shell scripts share marked blocks:

    # >>> launcher (copied: chinese_classifier/train.sh)
    ...                                      # the lines between the two markers must equal the block
    # <<< launcher                           # of the same name in the named file (its source)

A block whose `copied:` path is its own file is the source.

    python utils/check_copies.py           # exit 1 and list every drifted copy
    python utils/check_copies.py --fix     # rewrite drifted copies from their sources
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
import textwrap
import tokenize
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^(?P<indent>\s*)# Copied from (?P<path>[^\s:]+)(?::(?P<name>[\w.]+))?(?:\s+with\s+(?P<repl>.+?))?\s*$")
BLOCK_START = re.compile(r"^# >>> (?P<name>[\w-]+) \(copied: (?P<path>[^\s)]+)\)\s*$")
# copy -> source; whole files compared byte for byte (JSON has no comments to hold a marker)
FULL_COPIES = {f"{folder}/ds_{n}.json": f"chinese_bloom/ds_{n}.json"
               for folder in ("model_clm", "chatglm_v2_6b_lora", "model_baichuan") for n in ("zero2", "zero2_offload", "zero3", "zero3_offload")}
SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", "outputs", "node_modules", ".ipynb_checkpoints"}


@dataclass
class Copy:
    file: Path       # the file holding the copy
    line: int        # 1-based line of the marker
    source: str      # "<folder>/<file>"
    name: str | None
    replacements: list[tuple[str, str]]


@dataclass
class Problem:
    copy: Copy
    message: str
    fixed_lines: list[str] | None = None  # the whole file as --fix would write it


def iter_py_files(root: Path, pattern: str = "*.py"):
    for p in sorted(root.rglob(pattern)):
        rel = p.relative_to(root).parts
        if any(part in SKIP_DIRS or (part.startswith(".") and part != ".") for part in rel[:-1]):
            continue
        yield p


def parse_replacements(text: str | None) -> list[tuple[str, str]]:
    if not text:
        return []
    pairs = []
    for item in text.split(","):
        if "->" not in item:
            raise ValueError(f"bad replacement {item.strip()!r}: expected OLD->NEW")
        old, new = item.strip().split("->", 1)
        pairs.append((old.strip(), new.strip()))
    return pairs


def find_copies(root: Path) -> list[Copy]:
    copies = []
    for f in iter_py_files(root):
        with f.open("rb") as fh:  # real comments only, not markers quoted inside strings
            comments = [t for t in tokenize.tokenize(fh.readline) if t.type == tokenize.COMMENT]
        for t in comments:
            m = MARKER.match(t.line.rstrip("\r\n"))
            if m:
                copies.append(Copy(f, t.start[0], m["path"], m["name"], parse_replacements(m["repl"])))
    return copies


def read_block(path: Path, name: str) -> tuple[int, int] | None:
    """0-based (first, end) line indexes of the lines strictly between `# >>> name ...` and `# <<< name`."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.startswith(f"# >>> {name} ")), None)
    if start is None:
        return None
    end = next((i for i in range(start + 1, len(lines)) if lines[i].rstrip() == f"# <<< {name}"), None)
    return None if end is None else (start + 1, end)


def find_block_copies(root: Path) -> list[Copy]:
    copies = []
    for f in iter_py_files(root, "*.sh"):
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            m = BLOCK_START.match(line)
            if m and (root / m["path"]).resolve() != f.resolve():
                copies.append(Copy(f, i, m["path"], m["name"], []))
    return copies


def check_block(root: Path, c: Copy) -> Problem | None:
    where = f"{c.file.relative_to(root)}:{c.line}"
    src = root / c.source
    if not src.is_file():
        return Problem(c, f"{where}: source file {c.source} does not exist")
    copy_span, src_span = read_block(c.file, c.name), read_block(src, c.name)
    if copy_span is None:
        return Problem(c, f"{where}: block {c.name!r} has no closing '# <<< {c.name}' line")
    if src_span is None:
        return Problem(c, f"{where}: {c.source} has no block {c.name!r}")
    src_lines = src.read_text(encoding="utf-8").splitlines(keepends=True)[slice(*src_span)]
    lines = c.file.read_text(encoding="utf-8").splitlines(keepends=True)
    if lines[slice(*copy_span)] != src_lines:
        return Problem(c, f"{where}: block {c.name!r} has drifted from {c.source}",
                       fixed_lines=lines[:copy_span[0]] + src_lines + lines[copy_span[1]:])
    return None


def check_full_copy(root: Path, c: Copy) -> Problem | None:
    src, copy = root / c.source, c.file
    where = str(copy.relative_to(root))
    if not src.is_file() or not copy.is_file():
        return Problem(c, f"{where}: FULL_COPIES names a missing file ({c.source} -> {where})")
    if copy.read_bytes() != src.read_bytes():
        return Problem(c, f"{where}: full copy differs from {c.source}",
                       fixed_lines=src.read_text(encoding="utf-8").splitlines(keepends=True))
    return None


def all_copies(root: Path, full_copies: dict[str, str]) -> list[tuple[Copy, object]]:
    pairs = [(c, check_copy) for c in find_copies(root)] + [(c, check_block) for c in find_block_copies(root)]
    return pairs + [(Copy(root / dst, 0, src, None, []), check_full_copy) for dst, src in full_copies.items()]


def _node_span(node: ast.AST) -> tuple[int, int]:
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return start, node.end_lineno


def find_object(tree: ast.Module, dotted: str):
    body = tree.body
    node = None
    for part in dotted.split("."):
        node = next((n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                     and n.name == part), None)
        if node is None:
            return None
        body = node.body
    return node


def object_at_line(tree: ast.Module, line: int):
    """The def/class (at any depth) whose first line, decorators included, is `line`."""
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and _node_span(n)[0] == line:
            return n
    return None


def _apply(text: str, replacements) -> str:
    for old, new in replacements:
        text = text.replace(old, new)
    return text


def check_copy(root: Path, c: Copy) -> Problem | None:
    src_file = root / c.source
    where = f"{c.file.relative_to(root)}:{c.line}"
    if not src_file.is_file():
        return Problem(c, f"{where}: source file {c.source} does not exist")
    src_text = src_file.read_text(encoding="utf-8")
    copy_lines = c.file.read_text(encoding="utf-8").splitlines(keepends=True)

    if c.name is None:  # whole file
        if c.line != 1:
            return Problem(c, f"{where}: a whole-file marker (no ':name') must be on line 1")
        expected = _apply(src_text, c.replacements)
        if "".join(copy_lines[1:]) != expected:
            return Problem(c, f"{where}: whole-file copy differs from {c.source}",
                           fixed_lines=[copy_lines[0]] + expected.splitlines(keepends=True))
        return None

    src_node = find_object(ast.parse(src_text), c.name)
    if src_node is None:
        return Problem(c, f"{where}: {c.source} has no top-level def/class {c.name!r}")
    s0, s1 = _node_span(src_node)
    src_block = textwrap.dedent("".join(src_text.splitlines(keepends=True)[s0 - 1:s1]))
    src_block = _apply(src_block, c.replacements)

    copy_node = object_at_line(ast.parse("".join(copy_lines)), c.line + 1)
    if copy_node is None:
        return Problem(c, f"{where}: the marker must be directly above a def or class")
    c0, c1 = _node_span(copy_node)
    indent = re.match(r"\s*", copy_lines[c0 - 1]).group(0)
    copy_block = textwrap.dedent("".join(copy_lines[c0 - 1:c1]))
    if copy_block != src_block:
        new_block = textwrap.indent(src_block, indent, lambda ln: ln.strip() != "")
        return Problem(c, f"{where}: copy of {c.source}:{c.name} has drifted from its source",
                       fixed_lines=copy_lines[:c0 - 1] + new_block.splitlines(keepends=True) + copy_lines[c1:])
    return None


def check(root: Path = ROOT, fix: bool = False, full_copies: dict[str, str] | None = None) -> list[Problem]:
    problems = []
    if full_copies is None:  # the table describes this repository only
        full_copies = FULL_COPIES if root.resolve() == ROOT else {}
    pairs = all_copies(root, full_copies)
    # bottom-up inside each file, so fixing one copy never shifts the marker lines still to check
    for c, check_one in sorted(pairs, key=lambda pc: (str(pc[0].file), -pc[0].line)):
        try:
            p = check_one(root, c)
        except (SyntaxError, ValueError) as e:
            p = Problem(c, f"{c.file.relative_to(root)}:{c.line}: {e}")
        if p is None:
            continue
        if fix and p.fixed_lines is not None:
            c.file.write_text("".join(p.fixed_lines), encoding="utf-8")
            p = check_one(root, c)
        if p is not None:
            problems.append(p)
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fix", action="store_true", help="rewrite drifted copies from their sources")
    ap.add_argument("--root", type=Path, default=ROOT, help="repository root (default: this repo)")
    args = ap.parse_args(argv)
    root = args.root.resolve()
    n = len(all_copies(root, FULL_COPIES if root == ROOT else {}))
    problems = check(root, fix=args.fix)
    for p in problems:
        print(p.message)
    if problems:
        print(f"{len(problems)} of {n} copies out of sync. Fix: edit the source, then run "
              f"`python utils/check_copies.py --fix`.")
        return 1
    print(f"check_copies: {n} copies in sync")
    return 0


if __name__ == "__main__":
    sys.exit(main())
