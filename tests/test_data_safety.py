"""lamina never loses data: it writes only into new/empty folders or its own runs, deletes only what it wrote,
and --overwrite leaves the old run intact until the new one is complete, whatever fails and wherever.

Every test compares the sha256 of every file in the folder before and after.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import lamina
from lamina.analyses import qkv, runner
from lamina.analyses.qkv import plots as qkv_plots
from lamina.analyses.cli import main as cli_main
from lamina.analyses.options import RunOptions
from lamina.engine import destination as dst
from lamina.engine.errors import NotARunError, StoreExistsError, StoreURLError
from lamina.engine.reader import open_run
from lamina.engine.verify import verify

from .helpers import run_analysis

WORDS = "the cat sat on a mat and then it slept while rain fell softly again".split()


def snapshot(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder`` (hidden ones included)."""
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file() and p.name != dst.LOCK_NAME:
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def texts_file(tmp_path, n=12, seed=None) -> Path:
    rng = np.random.default_rng(seed)
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) for _ in range(n)))
    return path


def capture_args(model_dir, texts, out, *extra):
    return ["capture", "--model", str(model_dir), "--text-file", str(texts), "--out", str(out), "--hook",
            "blocks.{layer}.attn.hook_q", "--no-progress", *extra]


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(runner, "load_model", refuse)


def user_folder(tmp_path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "thesis.pdf").write_bytes(os.urandom(2000))
    (folder / "checkpoint").mkdir()
    (folder / "checkpoint" / "model.safetensors").write_bytes(os.urandom(5000))
    return folder


# ---- 1. folders and groups that are not lamina's --------------------------------------------


@pytest.mark.parametrize("overwrite", [False, True])
def test_folder_with_user_files_is_refused(gpt2_dir, tmp_path, capsys, no_model, overwrite, monkeypatch):
    folder = user_folder(tmp_path)
    before = snapshot(folder)
    texts = texts_file(tmp_path)
    for out in (folder, "."):  # --out FOLDER, and --out . from inside it
        monkeypatch.chdir(folder if out == "." else tmp_path)
        with pytest.raises(SystemExit) as e:
            cli_main(capture_args(gpt2_dir, texts, out, *(["--overwrite"] if overwrite else [])))
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "lamina did not write" in err and "thesis.pdf" in err and "Traceback" not in err
    assert snapshot(folder) == before


def test_foreign_zarr_group_is_refused(gpt2_dir, tmp_path, no_model):
    group = zarr.open_group(str(tmp_path / "theirs"), mode="w", zarr_format=3)
    group.create_array("data", shape=(3,), dtype="f4")[...] = [1, 2, 3]
    before = snapshot(tmp_path / "theirs")
    for overwrite in (False, True):
        with pytest.raises(NotARunError, match="Zarr group that lamina did not write"):
            lamina.run("capture", model=str(gpt2_dir), out=str(tmp_path / "theirs"), overwrite=overwrite,
                       hooks=("blocks.{layer}.attn.hook_q",), text_file=str(texts_file(tmp_path)))
    assert snapshot(tmp_path / "theirs") == before


def test_out_that_is_a_file_or_empty_is_refused_before_loading(gpt2_dir, tmp_path, capsys, no_model):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    for out, needle in ((f, "is a file, not a folder"), ("", "--out is empty")):
        with pytest.raises(SystemExit) as e:
            cli_main(capture_args(gpt2_dir, texts_file(tmp_path), out))
        assert e.value.code == 2 and needle in capsys.readouterr().err
    assert f.read_text() == "mine"


def test_memory_urls_are_refused_on_the_command_line_and_kept_in_python(gpt2_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(capture_args(gpt2_dir, texts_file(tmp_path), "memory://lamina-test/run"))
    assert e.value.code == 2 and "memory://" in capsys.readouterr().err
    assert not Path("memory:").exists()
    run = lamina.run("capture", model=str(gpt2_dir), out="memory://lamina-test/py", progress=False,
                     hooks=("blocks.{layer}.attn.hook_q",), text_file=str(texts_file(tmp_path)))
    assert run.complete and run.numpy("acts/capture").shape[1] == 12 and verify(run).ok


def test_missing_fsspec_backend_is_named_before_loading(gpt2_dir, tmp_path, no_model, monkeypatch):
    import fsspec

    def missing(protocol):
        raise ImportError(f"Install s3fs to access {protocol}")

    monkeypatch.setattr(fsspec, "get_filesystem_class", missing)
    with pytest.raises(StoreURLError, match="pip install s3fs"):
        lamina.run("capture", model=str(gpt2_dir), out="s3://bucket/run", hooks=("blocks.{layer}.attn.hook_q",),
                   text_file=str(texts_file(tmp_path)))
    with pytest.raises(StoreURLError, match="pip install s3fs"):
        open_run("s3://bucket/run")


def test_complete_run_and_bad_layers_are_refused_before_loading(gpt2_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    cli_main(capture_args(gpt2_dir, texts_file(tmp_path), out))
    before = snapshot(out)
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    with pytest.raises(SystemExit) as e:
        cli_main(capture_args(gpt2_dir, texts_file(tmp_path), out))
    assert e.value.code == 2 and "already holds a complete capture run" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli_main(capture_args(gpt2_dir, texts_file(tmp_path), tmp_path / "other", "--layers", "3-1"))
    assert e.value.code == 2 and "is empty (it goes down)" in capsys.readouterr().err
    assert not (tmp_path / "other").exists() and snapshot(out) == before


def test_overwrite_of_a_run_holding_user_files_is_refused(gpt2_dir, tmp_path, no_model):
    out = tmp_path / "run"
    (out / "figures").mkdir(parents=True)
    zarr.open_group(str(out), mode="w", zarr_format=3).attrs.update({"lamina_version": "0", "status": "complete",
                                                                     "experiment": "capture"})
    (out / "notes.txt").write_text("my notes on this run")
    before = snapshot(out)
    with pytest.raises(NotARunError, match="notes.txt"):
        dst.check_destination(out, overwrite=True)
    with pytest.raises(StoreExistsError):
        dst.check_destination(out, overwrite=False)
    assert snapshot(out) == before


def test_user_files_inside_a_runs_folders_are_found_and_kept(gpt2_dir, old_qkv, no_model):
    """Files of the user's inside a run's figures folder or inside a Zarr node are not the run's: --overwrite
    is refused naming them, and deleting the run (remove_run) deletes everything else but keeps them."""
    out, _ = old_qkv
    (out / "figures" / "my_annotated.png").write_bytes(os.urandom(300))
    (out / "results" / "notes.txt").write_text("why block 3 looks odd")
    chunk_dir = next(p for p in (out / "results").rglob("c") if p.is_dir())
    (chunk_dir / "scratch").write_text("mine too")
    lamina_figs = [p.name for p in (out / "figures").iterdir() if p.suffix == ".png" and p.name != "my_annotated.png"]
    assert lamina_figs
    foreign = dst.foreign_entries(out)
    assert foreign == sorted(["figures/my_annotated.png", "results/notes.txt",
                              str((chunk_dir / "scratch").relative_to(out))])
    with pytest.raises(NotARunError, match="my_annotated.png"):
        dst.check_destination(out, overwrite=True)
    mine = {f: hashlib.sha256((out / f).read_bytes()).hexdigest() for f in foreign}
    dst.remove_run(out)
    assert snapshot(out) == mine  # exactly the user's three files are left


# ---- 2. --overwrite: the old run survives a failure at every stage ------------------------------


@pytest.fixture
def old_qkv(gpt2_dir, tmp_path):
    """A complete qkv run (with figures) and the snapshot of its files."""
    out = tmp_path / "run"
    run_analysis("qkv", qkv.Config(), RunOptions(model=str(gpt2_dir), out=str(out), progress=False, seed=1))
    return out, snapshot(out)


def _intact(out: Path, before: dict) -> None:
    assert snapshot(out) == before
    run = open_run(out)
    assert run.complete and run.attrs["seed"] == 1 and verify(run).ok


def test_overwrite_failing_before_the_model_loads(gpt2_dir, old_qkv, tmp_path, no_model):
    out, before = old_qkv
    with pytest.raises(lamina.errors.InputError, match="does not exist"):
        run_analysis("qkv", qkv.Config(sentences=str(tmp_path / "nope.txt")),
                     RunOptions(model=str(gpt2_dir), out=str(out), overwrite=True, progress=False))
    _intact(out, before)
    assert not Path(dst.sibling(str(out), "new")).exists()


def test_overwrite_failing_in_the_kernels_then_resumed(gpt2_dir, old_qkv, monkeypatch):
    out, before = old_qkv
    opts = RunOptions(model=str(gpt2_dir), out=str(out), overwrite=True, progress=False, seed=2)

    def boom(*a, **k):
        raise RuntimeError("kernel failure")

    real = qkv.histograms
    monkeypatch.setattr(qkv.analysis, "histograms", boom)
    with pytest.raises(RuntimeError, match="kernel failure"):
        run_analysis("qkv", qkv.Config(), opts)
    _intact(out, before)
    staged = Path(dst.sibling(str(out), "new"))
    assert staged.exists() and open_run(staged).status == "running"
    monkeypatch.setattr(qkv.analysis, "histograms", real)
    new = run_analysis("qkv", qkv.Config(), opts)  # the same command: continues the staged run, then swaps
    assert new.complete and new.attrs["seed"] == 2 and "resumed" in new.attrs and verify(new).ok
    assert not staged.exists() and not Path(dst.sibling(str(out), "old")).exists()


def test_overwrite_failing_in_the_figures_then_resumed(gpt2_dir, old_qkv, monkeypatch):
    out, before = old_qkv
    opts = RunOptions(model=str(gpt2_dir), out=str(out), overwrite=True, progress=False, seed=2)
    real = qkv_plots.plot
    monkeypatch.setattr(qkv_plots, "plot", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("figure failure")))
    with pytest.raises(RuntimeError, match="figure failure"):
        run_analysis("qkv", qkv.Config(), opts)
    _intact(out, before)
    staged = open_run(dst.sibling(str(out), "new"))
    assert staged.status == "drawing"  # the data is final; the figures, report and swap are still to come
    monkeypatch.setattr(qkv_plots, "plot", real)
    new = run_analysis("qkv", qkv.Config(), opts)
    assert new.attrs["seed"] == 2 and (out / "figures" / "qkv_mean_variance.png").exists()


def test_overwrite_killed_during_capture_then_resumed_bitwise(gpt2_dir, tmp_path):
    texts = texts_file(tmp_path, n=150, seed=7)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ref, out = tmp_path / "ref", tmp_path / "run"
    cmd = [sys.executable, "-m", "lamina.analyses.cli"]
    extra = ["--micro-batch", "1", "--chunk-samples", "1", "--positions", "all"]
    subprocess.run(cmd + capture_args(gpt2_dir, texts, ref, *extra), check=True, env=env, capture_output=True)
    (tmp_path / "old").mkdir()
    old_texts = texts_file(tmp_path / "old", n=5, seed=1)
    subprocess.run(cmd + capture_args(gpt2_dir, old_texts, out), check=True, env=env, capture_output=True)
    before = snapshot(out)

    staged = Path(dst.sibling(str(out), "new"))
    flags = staged / "_progress" / "capture" / "c"
    proc = subprocess.Popen(cmd + capture_args(gpt2_dir, texts, out, "--overwrite", *extra), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while (not flags.exists() or len(list(flags.iterdir())) < 20) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert snapshot(out) == before and open_run(out).complete  # the old run, untouched
    done, total = open_run(staged).progress()["capture"]
    assert 0 < done < total

    subprocess.run(cmd + capture_args(gpt2_dir, texts, out, "--overwrite", *extra), check=True, env=env,
                   capture_output=True)
    new, want = open_run(out), open_run(ref)
    assert new.complete and new.attrs.get("resumed") and not staged.exists()
    np.testing.assert_array_equal(new.numpy("acts/capture"), want.numpy("acts/capture"))
    assert verify(new).ok


def test_a_crash_between_the_two_renames_is_repaired(gpt2_dir, tmp_path):
    """Swap = rename run -> .run.lamina-old, then .run.lamina-new -> run. Interrupted after the first rename,
    the next open undoes it (nothing is deleted: the old run is back in place), and the same command then
    finishes the replacement from its staged run."""
    texts = texts_file(tmp_path)
    for complete_new in (True, False):
        out = tmp_path / f"run-{complete_new}"
        args = dict(model=str(gpt2_dir), progress=False, hooks=("blocks.{layer}.attn.hook_q",), text_file=str(texts))
        lamina.run("capture", out=str(out), seed=1, **args)
        staged = Path(dst.sibling(str(out), "new"))
        lamina.run("capture", out=str(staged), seed=2, **args)
        if not complete_new:
            zarr.open_group(str(staged), mode="r+").attrs["status"] = "running"
        os.replace(out, dst.sibling(str(out), "old"))  # the crash: only the first rename happened
        dst.recover(str(out))
        assert open_run(out).attrs["seed"] == 1 and staged.exists()
        assert not Path(dst.sibling(str(out), "old")).exists()
        run = lamina.run("capture", out=str(out), seed=2, overwrite=True, **args)  # the same command
        assert run.attrs["seed"] == 2 and run.complete and verify(run).ok and run.attrs.get("resumed") != complete_new
        assert not staged.exists() and not Path(dst.sibling(str(out), "old")).exists()
