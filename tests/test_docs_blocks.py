"""Every code block of README.md and docs/*.md runs (tiny checkpoints stand in for the models it names:
tests/doc_models.py), or is marked ``<!-- not run: why -->`` on the line before it.

- ```python blocks run as scripts;
- ```bash / ```console blocks: each line that is a ``lamina`` command (after ``VAR=value`` prefixes) runs; other
  lines (make, pip, venv, pytest) are set-up and are not run here. A block with no ``lamina`` line must be marked;
- blocks without a language (output, layouts) and other languages (toml) are text.

The blocks of one file run in order, in one process (each python block in a fresh namespace) and one temporary
folder, so a later block reads the runs an earlier one made.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from .doc_models import PRELUDE, make_folders

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = ("bash", "console", "sh", "shell")
NOT_RUN = re.compile(r"<!--\s*not run:\s*(.+?)\s*-->")


@dataclasses.dataclass
class Block:
    path: Path
    line: int
    lang: str
    text: str
    not_run: str | None

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    out, lines, i = [], path.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start, lang, body = i, m.group(1).lower(), []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        before = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
        marker = NOT_RUN.search(before)
        if lang == "python" or lang in SHELL:
            out.append(Block(path, start + 1, lang, "\n".join(body), marker.group(1) if marker else None))
    return out


def lamina_commands(text: str) -> list[list[str]]:
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip().removeprefix("$ ")
        words = shlex.split(line, comments=True) if line else []
        while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
            words = words[1:]
        if words and words[0] == "lamina":
            out.append(words[1:])
    return out


@pytest.fixture(scope="module")
def doc_env(tmp_path_factory):
    folders = make_folders(tmp_path_factory.mktemp("doc-models"))
    return {**os.environ, "HF_HUB_OFFLINE": "1", "LAMINA_DOC_MODELS": json.dumps(folders), "MPLBACKEND": "Agg",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def test_every_block_runs_or_says_why_not():
    for path in DOCS:
        for b in blocks(path):
            if b.lang in SHELL and not b.not_run:
                assert lamina_commands(b.text), f"{b.where()}: no `lamina` command; mark it <!-- not run: why -->"


DRIVER = PRELUDE + """
import json, sys, traceback
from lamina.analyses.cli import main
for where, kind, payload in json.loads(sys.argv[1]):
    try:
        if kind == "python":
            exec(compile(payload, where, "exec"), {"__name__": "__main__"})
        else:
            try:
                main(payload)
            except SystemExit as e:
                if e.code:
                    raise RuntimeError(f"lamina {' '.join(payload)} exited {e.code}") from None
    except BaseException:
        print(f"FAILED {where} ({'the block' if kind == 'python' else 'lamina ' + ' '.join(payload)})", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
"""


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_doc_blocks_run(path, doc_env, tmp_path):
    """One process per file (the imports once), the blocks in order, each python block in a fresh namespace."""
    steps = []
    for b in blocks(path):
        if b.not_run:
            continue
        if b.lang == "python":
            steps.append((b.where(), "python", b.text))
        else:
            steps.extend((b.where(), "lamina", args) for args in lamina_commands(b.text))
    if not steps:
        return
    res = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(steps)], cwd=tmp_path, env=doc_env,
                         capture_output=True, text=True)
    assert res.returncode == 0, f"{res.stdout[-1500:]}\n{res.stderr[-4000:]}"
