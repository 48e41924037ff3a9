"""A capture killed with SIGKILL mid-run and started again equals an uninterrupted run, bitwise."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from lamina.engine.reader import open_run

WORDS = "the cat sat on a mat and then it slept while rain fell, softly. again".split()


def lamina_cmd(model_dir, texts, out, *extra):
    return [sys.executable, "-m", "lamina.analyses.cli", "capture", "--model", str(model_dir), "--text-file",
            str(texts), "--out", str(out), "--hook", "blocks.{layer}.attn.hook_q", "--hook",
            "blocks.{layer}.mlp.hook_pre", "--positions", "all", "--micro-batch", "1", "--chunk-samples", "1",
            "--no-progress", *extra]


def done_units(out: Path) -> int:
    folder = out / "_progress" / "capture" / "c"
    return len(list(folder.iterdir())) if folder.exists() else 0


def test_sigkill_then_resume_is_bitwise_identical(tmp_path, gpt2_dir):
    rng = np.random.default_rng()
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(" ".join(rng.choice(WORDS, size=int(rng.integers(3, 40)))) for _ in range(200)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ref, out = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(lamina_cmd(gpt2_dir, texts, ref), check=True, env=env, capture_output=True)

    proc = subprocess.Popen(lamina_cmd(gpt2_dir, texts, out), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while done_units(out) < 20 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run = open_run(out)
    done, total = run.progress()["capture"]
    assert run.status == "running" and 0 < done < total, (done, total)

    info = subprocess.run([sys.executable, "-m", "lamina.analyses.cli", "info", str(out)], env=env,
                          capture_output=True, text=True, check=True).stdout
    assert "RUNNING" in info and f"{done}/{total} units" in info

    resumed = subprocess.run(lamina_cmd(gpt2_dir, texts, out), check=True, env=env, capture_output=True, text=True)
    assert resumed.stdout.count("resuming:") == 1 and f"resuming: {done}/{total} units done" in resumed.stdout
    a, b = open_run(ref), open_run(out)
    assert b.complete and b.attrs.get("resumed")
    assert a.arrays() == b.arrays()
    for name in a.arrays():
        np.testing.assert_array_equal(a.numpy(name), b.numpy(name), err_msg=name)
