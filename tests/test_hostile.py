"""The second round of hostile probes (issue "Never lose data, round two"), one test per numbered finding; each
failed on the code before the chunk manifest. Probes of models that must be refused live with the model tests.

Every probe compares files by sha256 before and after (``snapshot``), and a repaired run against a clean one,
bitwise.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr

import lamina
from lamina.analyses import runner
from lamina.analyses.qkv import plots as qkv_plots
from lamina.analyses.cli import main as cli_main
from lamina.engine import destination as dst
from lamina.engine.errors import InputError, RunCorruptError
from lamina.engine.reader import open_run
from lamina.engine.verify import verify

from .test_data_safety import snapshot, texts_file

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def qkv_args(model_dir, out, *extra):
    return ["run", "qkv", "--model", str(model_dir), "--device", "cpu", "--no-progress", "--no-figures",
            "--unit-samples", "8", "--out", str(out), *extra]


def lamina_cli(capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``lamina ARGV`` run in this process."""
    try:
        cli_main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lamina: error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in err, err


def same_arrays(a, b) -> None:
    a, b = open_run(a), open_run(b)
    assert a.arrays() == b.arrays()
    for name in a.arrays():
        np.testing.assert_array_equal(a.numpy(name), b.numpy(name), err_msg=name)


@pytest.fixture
def no_model(monkeypatch):
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))


@pytest.fixture(scope="module")
def clean(gpt2_dir, tmp_path_factory):
    """A complete qkv run of 7 units (the reference every repaired run must equal)."""
    out = tmp_path_factory.mktemp("hostile") / "clean"
    cli_main(qkv_args(gpt2_dir, out))
    return out


def copy_of(clean: Path, tmp_path: Path, name: str) -> Path:
    import shutil

    out = tmp_path / f"damaged-{name}"
    shutil.copytree(clean, out)
    return out


# ---- 1. a user's Zarr data inside a run ----------------------------------------------------------


def test_1_overwrite_keeps_a_users_zarr_arrays_and_groups(gpt2_dir, clean, tmp_path, capsys, no_model):
    out = copy_of(clean, tmp_path, "user-zarr")
    group = zarr.open_group(str(out), mode="r+")
    group.create_array("results/my_derived", shape=(3,), dtype="f4")[...] = [1, 2, 3]
    zarr.open_group(str(out / "my_notes"), mode="w").create_array("x", shape=(2,), dtype="i4")[...] = [5, 6]
    before = snapshot(out)
    code, _, err = lamina_cli(capsys, *qkv_args(gpt2_dir, out, "--seed", "1", "--overwrite"))
    assert code == 2
    one_line(err, "results/my_derived", "my_notes", "lamina did not write")
    assert snapshot(out) == before
    mine = {k: v for k, v in before.items() if k.startswith(("results/my_derived/", "my_notes/"))}
    dst.remove_run(out)  # deleting the run deletes exactly what its manifest lists
    assert snapshot(out) == mine


# ---- 2. symlinks ----------------------------------------------------------------------------------


def test_2_a_symlinked_out_is_resolved_and_never_renamed(gpt2_dir, clean, tmp_path, capsys):
    real = copy_of(clean, tmp_path, "real")
    link = tmp_path / "link"
    link.symlink_to(real)
    code, _, err = lamina_cli(capsys, *qkv_args(gpt2_dir, link, "--seed", "1", "--overwrite"))
    assert code == 0, err
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert open_run(real).attrs["seed"] == 1 and verify(str(real)).ok
    assert not [p.name for p in tmp_path.iterdir() if "lamina-" in p.name]
    # a leftover staging name that is a symlink to the run (what the old swap left) is never acted on
    (tmp_path / ".damaged-real.lamina-old").symlink_to(real)
    before = snapshot(real)
    code, _, err = lamina_cli(capsys, "run", "rsa", "--model", gpt2_dir, "--no-progress", "--no-figures", "--out",
                              real, "--permutations", "5")
    assert code == 2 and "already holds a complete qkv run" in err
    assert snapshot(real) == before and open_run(real).complete
    code, _, err = lamina_cli(capsys, *qkv_args(gpt2_dir, real, "--seed", "2", "--overwrite"))
    assert code == 2 and "lamina did not make what is there" in err and snapshot(real) == before


# ---- 3. resume trusts only chunks that match the manifest ------------------------------------------


@pytest.mark.parametrize("how", ["deleted", "flipped"])
def test_3_resume_recomputes_a_done_unit_whose_chunk_is_bad(gpt2_dir, clean, tmp_path, capsys, monkeypatch, how):
    from lamina.analyses import qkv

    out = tmp_path / f"damaged-interrupted-{how}"
    real = qkv.histograms
    monkeypatch.setattr(qkv.analysis, "histograms", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    code, _, _ = lamina_cli(capsys, *qkv_args(gpt2_dir, out))  # interrupted after every unit is done
    assert code == 130 and open_run(out).progress()["capture"] == (7, 7)
    monkeypatch.setattr(qkv.analysis, "histograms", real)
    chunk = out / "acts" / "target" / "c" / "1" / "2" / "0"
    if how == "deleted":
        chunk.unlink()
    else:
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2] ^= 0x10
        chunk.write_bytes(bytes(data))
    want = "missing" if how == "deleted" else "checksum mismatch"
    code, _, err = lamina_cli(capsys, "verify", out)
    assert code == 2 and f"acts/target chunk (1, 2, 0): {want}" in err
    code, stdout, err = lamina_cli(capsys, *qkv_args(gpt2_dir, out))  # the same command repairs and finishes
    assert code == 0, err
    assert [ln for ln in stdout.splitlines() if "repairing" in ln] == [
        f"repairing {out}: acts/target chunk (1, 2, 0): {want}; the units concerned are computed again"]
    same_arrays(clean, out)
    assert verify(str(out)).ok


# ---- 4. readers raise; damaged metadata is named as damage -----------------------------------------


def test_4_readers_raise_on_a_missing_chunk(clean, tmp_path):
    out = copy_of(clean, tmp_path, "reader")
    (out / "acts" / "target" / "c" / "0" / "1" / "0").unlink()
    run = open_run(out)
    with pytest.raises(RunCorruptError, match=r"chunk \(0, 1, 0\) of 'acts/target' is missing"):
        run.numpy("acts/target")
    with pytest.raises(RunCorruptError, match="missing"):
        run.datatree()["acts"].target.load()
    with pytest.raises(RunCorruptError, match="missing"):
        run.dataset("acts").target.mean().compute()
    np.testing.assert_array_equal(run.numpy("acts/nontarget"), open_run(clean).numpy("acts/nontarget"))


def test_4_damaged_root_metadata_is_damage_and_overwrite_replaces_it(gpt2_dir, clean, tmp_path, capsys):
    out = copy_of(clean, tmp_path, "root")
    root = out / "zarr.json"
    root.write_bytes(root.read_bytes()[:300])
    for argv in (["info", out], ["verify", out], ["run", "rsa", "--model", gpt2_dir, "--no-progress", "--out", out]):
        code, _, err = lamina_cli(capsys, *argv)
        assert code == 2 and "did not write" not in err, err
        one_line(err, "root zarr.json" if argv[0] != "verify" else "zarr.json (the run's root): not valid JSON")
    code, _, err = lamina_cli(capsys, *qkv_args(gpt2_dir, out, "--seed", "3", "--overwrite"))
    assert code == 0, err
    assert open_run(out).attrs["seed"] == 3 and verify(str(out)).ok


def test_4_a_changed_data_type_is_one_line(clean, tmp_path, capsys):
    import json

    out = copy_of(clean, tmp_path, "dtype")
    for where, edit in (("own", out / "acts" / "target" / "zarr.json"), ("consolidated", out / "zarr.json")):
        doc = json.loads(edit.read_text())
        meta = doc if where == "own" else doc["consolidated_metadata"]["metadata"]["acts/target"]
        meta["data_type"] = "float33"
        edit.write_text(json.dumps(doc))
        for argv in (["verify", out], ["info", out, "--verify"], ["plot", out]):
            code, _, err = lamina_cli(capsys, *argv)
            assert code == 2, (where, argv)
            one_line(err, "float33" if where == "own" or argv[0] == "verify" else "damaged")


# ---- 6. values that failed after the model loaded --------------------------------------------------


def test_6_numeric_options_and_destinations_are_refused_before_loading(gpt2_dir, clean, tmp_path, capsys, no_model,
                                                                       monkeypatch):
    texts = texts_file(tmp_path)
    cases = [
        (qkv_args(gpt2_dir, tmp_path / "a", "--seed", "99999999999999999999"), "--seed"),
        (qkv_args(gpt2_dir, tmp_path / "b", "--seed", "-1"), "--seed"),
        (["run", "rsa", "--model", gpt2_dir, "--permutations", "10000000000000", "--out", tmp_path / "c"],
         "--permutations 10000000000000 needs"),
        (qkv_args(gpt2_dir, tmp_path / "d")[:-4] + ["--unit-samples", "99999999999", "--out", tmp_path / "d"],
         "--unit-samples 99999999999 is more than the 54 samples"),
        (["capture", "--model", gpt2_dir, "--hook", "blocks.{layer}.attn.hook_q", "--text-file", texts,
          "--chunk-samples", "1000000000000", "--out", tmp_path / "e"], "--chunk-samples"),
        (["run", "punct", "--model", gpt2_dir, "--bins", "100000", "--out", tmp_path / "f"], "--bins 100000: must"),
        (qkv_args(gpt2_dir, tmp_path / ("x" * 250)), "staging folder"),
        (qkv_args(gpt2_dir, clean / "acts" / "sub"), "is inside the lamina run"),
        (qkv_args(gpt2_dir, "file://relative/run"), "absolute path"),
    ]
    for argv, needle in cases:
        code, _, err = lamina_cli(capsys, *argv)
        assert code == 2, argv
        one_line(err, needle)
    monkeypatch.chdir(clean)
    before = snapshot(clean)
    code, _, err = lamina_cli(capsys, *qkv_args(gpt2_dir, ".", "--overwrite"))
    assert code == 2
    one_line(err, "is the current directory")
    assert snapshot(clean) == before
    assert not [p for p in tmp_path.iterdir() if p.name not in ("texts.txt",)]


def test_6_file_urls_work_end_to_end(gpt2_dir, clean, tmp_path, capsys):
    out = tmp_path / "by-url"
    code, _, err = lamina_cli(capsys, *qkv_args(gpt2_dir, f"file://{out}"))
    assert code == 0, err
    same_arrays(clean, out)
    assert verify(f"file://{out}").ok and open_run(f"file://{out}").complete


# ---- 7. failures after the work is done -------------------------------------------------------------


def test_7_a_run_is_complete_only_with_its_figures(gpt2_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "figs"
    real = qkv_plots.plot

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(qkv_plots, "plot", full_disk)
    argv = [a for a in qkv_args(gpt2_dir, out) if a != "--no-figures"]
    code, _, err = lamina_cli(capsys, *argv)
    assert code == 2
    one_line(err, "No space left on device")
    assert open_run(out).status == "drawing" and not (out / dst.REPORT).exists()
    monkeypatch.setattr(qkv_plots, "plot", real)
    code, _, err = lamina_cli(capsys, *argv)  # the same command finishes the figures and the report
    assert code == 0, err
    assert open_run(out).complete and (out / dst.REPORT).exists()
    assert (out / "figures" / "qkv_mean_variance.png").exists()


@pytest.mark.parametrize("fail_at", [3, 40, 90])
def test_7_a_full_disk_is_one_line_wherever_it_strikes(gpt2_dir, tmp_path, fail_at):
    """zarr's local writes fail with ENOSPC from the ``fail_at``-th file on: stderr is one line, nothing else."""
    script = textwrap.dedent(f"""
        import errno, sys, zarr.storage._local as local
        real, calls = local._put, [0]
        def put(*a, **k):
            calls[0] += 1
            if calls[0] >= {fail_at}:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(*a, **k)
        local._put = put
        from lamina.analyses.cli import main
        main(sys.argv[1:])
    """)
    res = subprocess.run([sys.executable, "-c", script, *qkv_args(gpt2_dir, tmp_path / "full")[0:]], env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    one_line(res.stderr, "No space left on device", "run the same command again")


def test_7_a_refused_capture_leaves_nothing_behind(gpt2_dir, tmp_path, capsys):
    texts = texts_file(tmp_path)
    out = tmp_path / "cap"
    base = ["capture", "--model", gpt2_dir, "--text-file", texts, "--out", out, "--no-progress"]
    for hook in ("blocks.{layer}.attn.hook_qq", "blocks.{layer}.attn.hook_pattern"):
        code, _, err = lamina_cli(capsys, *base, "--hook", hook)
        assert code == 2 and not out.exists(), err
    code, _, err = lamina_cli(capsys, *base, "--hook", "blocks.{layer}.attn.hook_q")  # the corrected command
    assert code == 0 and open_run(out).complete, err


# ---- 8. plugins -------------------------------------------------------------------------------------


def plugin_site(root: Path, entries: dict[str, str], module: str = "") -> Path:
    """A folder on sys.path holding a module ``fake_plugin`` and a distribution declaring ``entries``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "fake_plugin.py").write_text(module, encoding="utf-8")
    info = root / "fake_plugin-0.3.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugin\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[lamina.analyses]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()))
    return root


def run_with_site(site: Path, *argv) -> subprocess.CompletedProcess:
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "lamina.analyses.cli", *map(str, argv)], env=env,
                          capture_output=True, text=True, timeout=300)


IMPOSTOR = textwrap.dedent("""
    import dataclasses
    from lamina.analyses import qkv
    IMPOSTOR = dataclasses.replace(qkv.ANALYSIS)            # calls itself "qkv"
    GOOD = dataclasses.replace(qkv.ANALYSIS, name="good")
""")


def test_8_broken_and_impostor_plugins_cannot_break_the_cli(tmp_path):
    site = plugin_site(tmp_path / "site", {"broken": "no_such_module:ANALYSIS", "impostor": "fake_plugin:IMPOSTOR",
                                           "qkv": "fake_plugin:GOOD"}, IMPOSTOR)
    listing = run_with_site(site, "analyses")
    assert listing.returncode == 0 and "Traceback" not in listing.stderr, listing.stderr
    lines = listing.stdout.splitlines()
    assert sum("broken" in ln for ln in lines) == 1 and "broken       BROKEN:" in listing.stdout
    assert "ModuleNotFoundError" in listing.stdout and "rsa " in listing.stdout
    for argv in (["run", "--help"], ["run", "rsa", "--help"], ["--help"]):
        res = run_with_site(site, *argv)
        assert res.returncode == 0 and "Traceback" not in res.stderr, (argv, res.stderr)
    res = run_with_site(site, "run", "broken")
    assert res.returncode == 2
    one_line(res.stderr, "'broken = no_such_module:ANALYSIS' from fake-plugin 0.3 cannot be loaded")
    res = run_with_site(site, "run", "impostor", "--help")
    one_line(res.stderr, "holds an analysis called 'qkv'")
    res = run_with_site(site, "run", "qkv", "--help")
    one_line(res.stderr, "two analyses are called 'qkv'", "built-in", "fake-plugin 0.3")


def test_8_a_run_records_where_its_analysis_came_from(gpt2_dir, tmp_path):
    site = plugin_site(tmp_path / "site", {"good": "fake_plugin:GOOD"}, IMPOSTOR)
    out = tmp_path / "run"
    res = run_with_site(site, *qkv_args(gpt2_dir, out)[:1], "good", *qkv_args(gpt2_dir, out)[2:])
    assert res.returncode == 0, res.stderr[-2000:]
    assert open_run(out).attrs["analysis"] == {"name": "good", "kind": "plugin",
                                               "entry_point": "good = fake_plugin:GOOD",
                                               "distribution": "fake-plugin 0.3"}
    assert open_run(out).experiment == "good"


# ---- 9. the Python front door ------------------------------------------------------------------------


def test_9_capture_checks_its_arguments(gpt2_dir):
    model = lamina.load_model(str(gpt2_dir))
    hooks = "blocks.{layer}.attn.hook_q"
    cases = [
        (dict(model=model, texts="Hello"), "texts=", "texts=['Hello']"),
        (dict(model=model, texts=[None]), "texts=", "texts[0] is None"),
        (dict(model=str(gpt2_dir), texts=["a b"]), "model=", "lamina.load_model("),
        (dict(model=model, texts=["a b"], micro_batch=0), "micro_batch=", "positive"),
        (dict(model=model, texts=["a b"], micro_batch=-1), "micro_batch=", "positive"),
        (dict(model=model, texts=["a b"], positions=[0.5]), "positions=", "0.5"),
        (dict(model=model, texts=["a b"], layers=[]), "layers=", "empty"),
    ]
    for kwargs, param, needle in cases:
        with pytest.raises(InputError) as e:
            lamina.capture(hooks=hooks, **kwargs)
        assert f"lamina.capture({param}...)" in str(e.value) and needle in str(e.value), str(e.value)
    acts = lamina.capture(model, ["a b", "c d e"], hooks=hooks, micro_batch=1, positions=[0, 1], layers=[0, 2])
    assert acts[hooks].shape == (2, 2, model.d_model)
