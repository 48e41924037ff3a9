"""Commands that only read a run start without torch or TransformerLens (start-up time:
benchmarks/startup_bench.py): --help (of run NAME too), --version, info, verify, analyses, report and compare."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CHECK = """
import sys
from lamina.analyses.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    assert not e.code, e.code
heavy = sorted(m for m in ("torch", "transformer_lens", "transformers") if m in sys.modules)
print("HEAVY:", ",".join(heavy))
"""


@pytest.fixture(scope="module")
def small_run(gpt2_dir, tmp_path_factory):
    import lamina

    model = lamina.load_model(str(gpt2_dir))
    out = tmp_path_factory.mktemp("startup") / "run"
    lamina.capture(model, ["the cat sat", "a dog ran far"], hooks="blocks.{layer}.hook_resid_post", out=str(out))
    return str(out)


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["info", "RUN"], ["info", "RUN", "--json"],
                                  ["verify", "RUN"], ["hooks", "--help"], ["run", "qkv", "--help"],
                                  ["run", "cka", "--help"], ["plot", "--help"], ["similarity", "--help"]])
def test_reading_commands_do_not_import_torch(small_run, args):
    args = [small_run if a == "RUN" else a for a in args]
    out = subprocess.run([sys.executable, "-c", CHECK, *args], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    heavy = out.stdout.rsplit("HEAVY:", 1)[1].strip()
    assert heavy == "", f"lamina {' '.join(args)} imported {heavy}"
    if args[0] == "info":
        assert "blocks" in out.stdout or "resid_post" in out.stdout  # it did read the run


def _lamina(*args: str) -> str:
    """``lamina ARGS`` in a fresh process: its stdout, after checking it exits 0 without torch or TransformerLens."""
    out = subprocess.run([sys.executable, "-c", CHECK, *args], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    text, heavy = out.stdout.rsplit("HEAVY:", 1)
    assert heavy.strip() == "", f"lamina {' '.join(args)} imported {heavy.strip()}"
    return text


@pytest.fixture(scope="module")
def rsa_runs(gpt2_dir, tmp_path_factory):
    """Two complete rsa runs of the tiny GPT-2 (seeds 0 and 1: different permutation nulls), one with figures."""
    from lamina.analyses import rsa
    from lamina.analyses.options import RunOptions

    from .helpers import run_analysis

    root = tmp_path_factory.mktemp("startup-rsa")
    return [run_analysis("rsa", rsa.Config(permutations=20),
                         RunOptions(model=str(gpt2_dir), out=str(root / f"rsa-{seed}"), seed=seed, progress=False,
                                    figures=seed == 0)).url
            for seed in (0, 1)]


def test_analyses_lists_every_builtin_without_torch():
    from lamina.analyses import registry

    lines = _lamina("analyses").splitlines()
    for name in registry.BUILTIN:
        a = registry.get(name)
        assert f"{name:<12} {a.title} (default model {a.default_model})" in lines


def test_report_of_a_run_without_torch(rsa_runs):
    from lamina.engine.reader import open_run

    url = rsa_runs[0]
    page = Path(_lamina("report", url).strip().splitlines()[-1])
    assert page == Path(url) / "report.html" and page.is_file()
    html = page.read_text(encoding="utf-8")
    summary = open_run(url).attrs["summary"]
    assert "RSA between Q, K, V" in html and summary and "figures/" in html  # title, key numbers, figures


def test_compare_without_torch_writes_what_compare_in_process_writes(rsa_runs, tmp_path):
    """The torch-free `lamina compare` and lamina.analyses.compare.compare (torch loaded) write the same table."""
    from lamina.analyses.compare import compare

    out = _lamina("compare", *rsa_runs, "--out", str(tmp_path / "cli")).splitlines()
    assert out[0].startswith("compared 2 rsa runs")
    table = tmp_path / "cli" / "key_numbers.csv"
    assert str(table) in out and (tmp_path / "cli" / "report.html").is_file()
    assert any(p.endswith(".png") for p in out)
    ref = compare(rsa_runs, out=str(tmp_path / "py"))
    assert table.read_text(encoding="utf-8") == Path(ref.table).read_text(encoding="utf-8")


def test_capture_command_still_listed_and_built(capsys):
    from lamina.analyses.cli import main

    main(["--help"])
    assert "capture" in capsys.readouterr().out
    main(["capture", "--help"])
    assert "--hook" in capsys.readouterr().out
