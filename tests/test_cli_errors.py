"""The command line never shows a traceback for a user error: one line `lamina: error: ...`, exit 2;
Ctrl-C: one line saying the same command resumes, exit 130."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lamina.analyses.qkv import plots as qkv_plots
from lamina.analyses.cli import main as cli_main
from lamina.engine.reader import open_run

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def lamina(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lamina.analyses.cli", *map(str, args)], env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(res: subprocess.CompletedProcess, *needles: str) -> str:
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    err = res.stderr.strip()
    assert "Traceback" not in err and err.startswith("lamina: error: "), err
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


def test_usage_errors_are_one_line_exit_2(gpt2_dir, tmp_path):
    one_line_error(lamina("run", "qkv", "--bogus", "3"), "No such option '--bogus'", "lamina run qkv --help")
    one_line_error(lamina("run", "qkvv"), "No such command 'qkvv'")
    one_line_error(lamina("run", "qkv", "--micro-batch", "abc"), "--micro-batch", "'abc' is not a valid integer")
    one_line_error(lamina("run", "qkv", "--micro-batch", "0", "--model", gpt2_dir), "--micro-batch 0: must be >= 1")
    one_line_error(lamina("run", "qkv", "--dtype", "float8"), "--dtype")
    one_line_error(lamina("frobnicate"), "No such command 'frobnicate'")


@pytest.mark.parametrize("value", ["-1", "0"])
def test_chunk_samples_must_be_positive(gpt2_dir, tmp_path, value):
    texts = tmp_path / "t.txt"
    texts.write_text("one two\nthree four\n")
    one_line_error(lamina("capture", "--model", gpt2_dir, "--hook", "blocks.{layer}.attn.hook_q", "--text-file", texts,
                          "--out", tmp_path / "o", "--chunk-samples", value), "--chunk-samples must be a positive")
    assert not (tmp_path / "o").exists()


def test_device_that_is_not_a_device(gpt2_dir, tmp_path):
    texts = tmp_path / "t.txt"
    texts.write_text("one two\n")
    one_line_error(lamina("capture", "--model", gpt2_dir, "--hook", "blocks.{layer}.attn.hook_q", "--text-file", texts,
                          "--out", tmp_path / "o", "--device", "tpu"), "device 'tpu' is not a device")
    assert not (tmp_path / "o").exists()


def test_ctrl_c_exits_130_and_the_run_resumes(gpt2_dir, tmp_path):
    rng = np.random.default_rng()
    words = "a long road runs past the old mill then north rivers bend twice".split()
    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(" ".join(rng.choice(words, size=12)) for _ in range(300)))
    out = tmp_path / "run"
    args = ["capture", "--model", gpt2_dir, "--hook", "blocks.{layer}.mlp.hook_pre", "--text-file", texts, "--out", out,
            "--positions", "all", "--micro-batch", "1", "--chunk-samples", "1", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "lamina.analyses.cli", *map(str, args)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    flags = out / "_progress" / "capture" / "c"
    deadline = time.time() + 120
    while (not flags.exists() or len(list(flags.iterdir())) < 5) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "run the same command again" in err and "Traceback" not in err
    assert open_run(out).status == "running"
    res = lamina(*args)
    assert res.returncode == 0, res.stderr[-2000:]
    assert open_run(out).complete


def test_plot_into_a_read_only_run_is_one_line(gpt2_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    cli_main(["run", "qkv", "--model", str(gpt2_dir), "--out", str(out), "--no-figures", "--no-progress"])

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(qkv_plots, "plot", read_only)
    with pytest.raises(SystemExit) as e:
        cli_main(["plot", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "cannot write the figures" in err and "Read-only file system" in err


def test_not_a_run_is_one_line(tmp_path):
    one_line_error(lamina("info", tmp_path), "is not a lamina run")
    one_line_error(lamina("plot", tmp_path / "nope"), "is not a lamina run")


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.decode().strip()[:80]}): disk-full not exercised")
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)


def test_disk_full_is_one_line_and_resumable(gpt2_dir, tmp_path, tiny_disk):
    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(f"the cat sat on the mat on a fine day number {i}" for i in range(200)))
    args = ["capture", "--model", gpt2_dir, "--hook", "blocks.{layer}.mlp.hook_pre", "--positions", "all",
            "--text-file", texts, "--no-progress"]
    res = lamina(*args, "--out", tiny_disk / "run")
    one_line_error(res, "No space left on device", "run the same command again to resume")
    assert open_run(tiny_disk / "run").status == "running"
    assert Path(tiny_disk / "run" / "zarr.json").exists()
