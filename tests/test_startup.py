"""Commands that only read a run start without torch or TransformerLens (start-up time:
benchmarks/startup_bench.py)."""

from __future__ import annotations

import os
import subprocess
import sys

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
                                  ["verify", "RUN"], ["hooks", "--help"]])
def test_reading_commands_do_not_import_torch(small_run, args):
    args = [small_run if a == "RUN" else a for a in args]
    out = subprocess.run([sys.executable, "-c", CHECK, *args], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    heavy = out.stdout.rsplit("HEAVY:", 1)[1].strip()
    assert heavy == "", f"lamina {' '.join(args)} imported {heavy}"
    if args[0] == "info":
        assert "blocks" in out.stdout or "resid_post" in out.stdout  # it did read the run


def test_capture_command_still_listed_and_built(capsys):
    from lamina.analyses.cli import main

    main(["--help"])
    assert "capture" in capsys.readouterr().out
    main(["capture", "--help"])
    assert "--hook" in capsys.readouterr().out
