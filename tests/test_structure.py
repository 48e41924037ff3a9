"""The shape of the code base: no import cycles, figures never import their analysis, no file refers outside
the repository, analysis modules stay small, and every runnable docstring example runs."""

from __future__ import annotations

import ast
import doctest
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"lamina": ROOT / "lamina", "lamina.engine": ROOT / "engine", "lamina.analyses": ROOT / "analyses",
            "lamina.benchmarks": ROOT / "benchmarks"}


def modules() -> dict[str, Path]:
    out = {}
    for pkg, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([pkg, *parts])] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every lamina module ``name`` imports, anywhere in the file (function-level imports included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            # ``from pkg import mod`` imports the module mod (the package is its parent, not a dependency)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and not (t in PACKAGES and t != "lamina"):
                found.add(t)
    return found


def test_no_import_cycles():
    mods = modules()
    graph = {m: imports_of(m, p, set(mods)) for m, p in mods.items()}
    graph["lamina"] = set()  # the front door re-exports; nothing imports it back but user code and examples
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


BUILTINS = ("qkv", "rsa", "length", "punct", "capture")


def test_figures_never_import_their_analysis():
    """plots and curves read the run through the schema, never the analysis' code."""
    mods = modules()
    for name, path in mods.items():
        if name.rsplit(".", 1)[-1] in ("plots", "curves") and name.count(".") == 3:
            package = name.rsplit(".", 1)[0]
            found = imports_of(name, path, set(mods))
            assert f"{package}.analysis" not in found and package not in found, f"{name} imports its analysis"


def test_nothing_refers_outside_the_repository():
    offenders = []
    for path in ROOT.rglob("*"):
        if any(p in path.parts for p in (".git", ".venv", "__pycache__", "runs", "bench-results")) or not path.is_file():
            continue
        if path.suffix in (".py", ".md", ".toml", ".txt", ".j2", ".html", ".cfg") or path.name in ("Makefile", "run"):
            text = path.read_text(encoding="utf-8", errors="ignore")
            if ".." + "/shared" in text or "EXPERIMENTS" + ".md" in text:
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders


@pytest.mark.parametrize("name", BUILTINS)
def test_analysis_modules_stay_small(name):
    for path in (ROOT / "analyses" / name).glob("*.py"):
        lines = len(path.read_text().splitlines())
        assert lines <= 300, f"{path.relative_to(ROOT)} has {lines} lines"


def test_no_analysis_touches_zarr_ranks_or_the_cli():
    for name in BUILTINS:
        for path in (ROOT / "analyses" / name).glob("*.py"):
            text = path.read_text()
            for forbidden in ("import zarr", "distributed", "barrier", "import click", "import typer", "is_main"):
                assert forbidden not in text, f"{path.relative_to(ROOT)}: {forbidden}"


PATH = re.compile(r"^(results|inputs|acts)/\w+")


@pytest.mark.parametrize("name", BUILTINS)
def test_every_builtin_is_a_folder_with_a_schema_and_no_string_paths(name):
    """analyses/NAME/ holds ANALYSIS (in __init__), a schema declaring every array, and no string array path
    outside the schema; the registry names the folder, and the Analysis carries its schema (and captions)."""
    from lamina.analyses import registry
    from lamina.analyses.protocol import results_of

    folder = ROOT / "analyses" / name
    assert (folder / "__init__.py").is_file() and (folder / "schema.py").is_file(), name
    assert not (ROOT / "analyses" / f"{name}.py").exists()
    assert registry.BUILTIN[name] == f"lamina.analyses.{name}:ANALYSIS"
    a = registry.get(name)
    assert results_of(a.schema) and not isinstance(a.plot, str) and not isinstance(a.curves, str)
    assert a.plot is None or a.captions, f"{name} draws figures without captions"
    for path in folder.glob("*.py"):
        if path.name == "schema.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            parts = node.values if isinstance(node, ast.JoinedStr) else [node]
            for part in parts:
                if isinstance(part, ast.Constant) and isinstance(part.value, str) and PATH.match(part.value):
                    pytest.fail(f"{path.relative_to(ROOT)}:{node.lineno}: {part.value!r} outside schema.py")


def test_no_module_outside_benchmarks_imports_benchmarks():
    mods = modules()
    for name, path in mods.items():
        if not name.startswith("lamina.benchmarks"):
            found = {m for m in imports_of(name, path, set(mods)) if m.startswith("lamina.benchmarks")}
            assert not found, f"{name} imports {sorted(found)}"


DOCTESTED = sorted(m for m, p in modules().items()
                   if ">>>" in p.read_text(encoding="utf-8") and not m.endswith("__main__"))


@pytest.mark.parametrize("name", DOCTESTED)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags, verbose=False, report=True)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"


def test_front_door_surface():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import lamina; print(lamina.__all__)"], capture_output=True,
                         text=True, check=True).stdout
    names = eval(out)
    assert {"load_model", "capture", "run", "open_run", "errors"} <= set(names)
    import lamina

    for n in names:
        obj = getattr(lamina, n)
        doc = getattr(obj, "__doc__", "") or ""
        assert re.search(r">>>", doc) or n == "errors" or n == "Run", f"lamina.{n} has no example"


STORE_MODULES = {"lamina.engine.store", "lamina.engine.chunk_writer", "lamina.engine.chunk_store"}  # writers
READER_MODULES = {"lamina.engine.reader", "lamina.engine.verify"}


def test_only_the_store_and_reader_modules_import_zarr():
    """The store is the only Zarr boundary: everything else writes through RunWriter / ChunkWriter and reads through
    Run. (benchmarks/ measure zarr itself next to lamina's store, and are not part of the product.)"""
    offenders = []
    for name, path in modules().items():
        if name.startswith("lamina.benchmarks"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(n == "zarr" or n.startswith("zarr.") for n in names):
                offenders.append(name)
    assert set(offenders) == STORE_MODULES | READER_MODULES, sorted(set(offenders) ^ (STORE_MODULES | READER_MODULES))


def test_runner_pipeline_and_partials_write_only_through_the_store():
    """No reaching into the Zarr group, and no silent rank guards in the store: the owner (rank 0) holds a
    RunWriter, every rank a ChunkWriter."""
    for rel in ("analyses/runner.py", "engine/pipeline.py", "engine/partials.py"):
        text = (ROOT / rel).read_text(encoding="utf-8")
        for forbidden in (".group[", ".group.", "fsspec", "import zarr"):
            assert forbidden not in text, f"{rel}: {forbidden}"
    for rel in ("engine/store.py", "engine/chunk_writer.py"):
        text = (ROOT / rel).read_text(encoding="utf-8")
        assert "self.rank" not in text and not re.search(r"\brank\s*[!=<>]", text) and "is_main" not in text, rel


def test_every_analysis_folder_is_an_installed_package():
    """A folder under analyses/ with an __init__.py is listed in pyproject's packages (else a wheel lacks it)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {f"lamina.analyses.{p.parent.name}" for p in (ROOT / "analyses").glob("*/__init__.py")}
    assert folders <= listed, sorted(folders - listed)
