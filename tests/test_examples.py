"""examples/walkthrough.py runs as a user runs it (offline, a fresh process), twice: the second time reuses its
complete runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import lamina

ROOT = Path(__file__).resolve().parents[1]


def test_walkthrough_runs_offline(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "walk"
    for _ in range(2):
        res = subprocess.run([sys.executable, str(ROOT / "examples" / "walkthrough.py"), "--out", str(out)],
                             capture_output=True, text=True, env=env, cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
    assert "residual stream (4, 3, 64)" in res.stdout and "<lamina.Run rsa" in res.stdout
    runs = [lamina.open_run(out / name) for name in ("rsa-seed0", "rsa-seed1")]
    assert all(r.complete and lamina.verify(r).ok for r in runs)
    printed = res.stdout.split("category selectivity of V per block ", 1)[1].splitlines()[0]
    selectivity = runs[0].numpy("results/selectivity")[runs[0].labels("results/selectivity", "component").index("V")]
    np.testing.assert_allclose(eval(printed), selectivity, atol=1e-3)
    assert (out / "compare-rsa" / "report.html").is_file()
