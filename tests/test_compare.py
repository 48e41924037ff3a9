"""``lamina compare``: two runs of each analysis (tiny GPT-2s of 3 and 6 blocks) drawn on one relative-depth axis.

The plotted numbers are taken from the figures themselves (``save_figure`` is wrapped to read every
line and heatmap back out of the axes before saving) and checked against an independent NumPy
recomputation from the stored arrays (tests/course_runs.py); so is key_numbers.csv.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from lamina.analyses import compare_plots, length
from lamina.analyses.cli import main as cli_main
from lamina.analyses.compare import compare
from lamina.analyses.options import RunOptions
from lamina.engine.errors import InputError, LaminaError, RunCorruptError
from lamina.engine.store import consolidate

from .course_runs import ANALYSES, DEPTHS, checkpoints, course_runs, n_depth, reference_curves
from .helpers import run_analysis

CURVES = {"qkv": {"cosine_far", "cosine_sd"}, "rsa": {"selectivity", "rsa"},
          "length": {"corr_mean", "corr_sd", "corr_density"},
          "punct": {"mean_mi", "mean_cov", "mean_corr", "r_cov_mi"}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return course_runs(tmp_path_factory)


@pytest.fixture
def plotted(monkeypatch):
    """{figure stem: figure} of every comparison figure drawn while the test runs (read before saving)."""
    seen: dict[str, dict] = {}
    original = compare_plots.save_figure

    def spy(fig, figdir, stem):
        seen[stem] = _read_figure(fig)
        return original(fig, figdir, stem)

    monkeypatch.setattr(compare_plots, "save_figure", spy)
    return seen


def _read_figure(fig) -> dict:
    """{"lines": {(panel title, legend label): (x, y)}, "meshes": {panel title: array}}."""
    lines, meshes = {}, {}
    for ax in fig.axes:
        for line in ax.get_lines():
            label = line.get_label()
            if not label.startswith("_") and "(" in label:  # a run's line ("LABEL (n blocks)"), not a reference
                title = ax.get_title()  # "role = target · block = QQ": every panel names what its labels label
                assert all(" = " in part for part in title.split(" · ") if title), title
                title = " · ".join(part.split(" = ", 1)[-1] for part in title.split(" · "))
                lines[title, label] = (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float))
        for coll in ax.collections:
            if hasattr(coll, "get_array") and coll.get_array() is not None and ax.get_title():
                meshes[ax.get_title()] = np.asarray(coll.get_array(), dtype=float)
    return {"lines": lines, "meshes": meshes}


def _legend(label: str, url: str, analysis: str) -> str:
    unit = "states" if analysis == "punct" else "blocks"
    return f"{label} ({n_depth(url, analysis)} {unit})"


@pytest.mark.parametrize("analysis", ANALYSES)
def test_compare_plots_the_runs_curves_on_relative_depth(analysis, runs, plotted, tmp_path, capsys):
    urls = [runs[analysis, n] for n in DEPTHS]
    out = tmp_path / "cmp"
    cli_main(["compare", *urls, "--out", str(out)])
    printed = capsys.readouterr().out
    assert "report.html" in printed and "key_numbers.csv" in printed

    data = json.loads((out / "comparison.json").read_text())
    labels = [r["label"] for r in data["runs"]]
    assert [lab.startswith(f"cmp-gpt2-{n}") for lab, n in zip(labels, DEPTHS)] == [True, True]  # the models' names
    for name in CURVES[analysis]:
        stem = f"compare_{analysis}_{name}"
        assert (out / "figures" / f"{stem}.png").stat().st_size > 10_000
        assert (out / "figures" / f"{stem}.pdf").is_file()
    assert (out / "report.html").is_file() and (out / "key_numbers.csv").is_file()
    for i, url in enumerate(urls):
        ref = reference_curves(url, analysis)
        n = n_depth(url, analysis)
        legend = _legend(labels[i], url, analysis)
        for name, series in ref.items():
            fig = plotted[f"compare_{analysis}_{name}"]
            if name == "corr_density":  # side-by-side heatmaps: each run's block x r densities, as stored
                mesh = fig["meshes"][legend]
                np.testing.assert_allclose(mesh.reshape(series[()].shape), np.nan_to_num(series[()]), rtol=1e-6)
                continue
            for key, expected in series.items():
                title = " · ".join(key)
                x, y = fig["lines"][title, legend]
                assert len(x) == n and x[0] == 0.0 and x[-1] == 1.0
                np.testing.assert_allclose(x, np.arange(n) / (n - 1), rtol=0, atol=1e-12)  # block / (n_blocks - 1)
                np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-9, equal_nan=True)
    _check_csv(out / "key_numbers.csv", labels, urls, analysis)


def _check_csv(path: Path, labels, urls, analysis) -> None:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["curve", "quantity", "series", "at", *labels]
    got = {(r[0], r[2], r[3]): r[4:] for r in rows[1:]}
    n_checked = 0
    for i, url in enumerate(urls):
        for name, series in reference_curves(url, analysis).items():
            if name == "corr_density":
                continue
            for key, y in series.items():
                ats = {"first block": y[0], "middle block (n // 2)": y[len(y) // 2], "last block": y[-1],
                       "mean over blocks": np.nanmean(y) if np.isfinite(y).any() else np.nan}
                for at, expected in ats.items():
                    cell = got[name, " · ".join(key), at][i]
                    if not np.isfinite(expected):
                        assert cell == ""
                    else:
                        assert float(cell) == pytest.approx(float(expected), rel=1e-6, abs=1e-9)  # float32 data
                    n_checked += 1
    assert n_checked == (len(rows) - 1) * len(urls)  # every row of the table was checked


def test_compare_python_api_and_labels(runs, tmp_path):
    urls = [runs["rsa", n] for n in DEPTHS]
    cmp = compare(urls, out=tmp_path / "py")
    assert cmp.experiment == "rsa" and cmp.runs == tuple(urls) and len(set(cmp.labels)) == 2
    assert Path(cmp.report).is_file() and Path(cmp.table).is_file()
    assert sorted(Path(p).name for p in cmp.figures) == ["compare_rsa_rsa.pdf", "compare_rsa_rsa.png",
                                                         "compare_rsa_selectivity.pdf", "compare_rsa_selectivity.png"]
    again = compare(urls, out=tmp_path / "py")  # an existing comparison folder is rewritten
    assert again.figures == cmp.figures


# ---- refusals ------------------------------------------------------------------------------------------------


def _cli_error(args, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        cli_main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lamina: error: ") and len(err.splitlines()) == 1, err
    return err


def test_refuses_fewer_than_two_runs_and_the_same_run_twice(runs, tmp_path, capsys):
    with pytest.raises(InputError, match="at least 2 runs"):
        compare([runs["qkv", 3]], out=tmp_path / "o")
    assert "at least 2 runs" in _cli_error(["compare", runs["qkv", 3], "--out", str(tmp_path / "o")], capsys)
    with pytest.raises(InputError, match="given twice"):
        compare([runs["qkv", 3], runs["qkv", 3] + "/"], out=tmp_path / "o")
    assert not (tmp_path / "o").exists()  # nothing written for a refused comparison


def test_refuses_runs_of_different_analyses(runs, tmp_path, capsys):
    err = _cli_error(["compare", runs["qkv", 3], runs["rsa", 6], "--out", str(tmp_path / "o")], capsys)
    assert "different analyses" in err and "(qkv)" in err and "(rsa)" in err


def test_refuses_an_out_that_is_a_run(runs, capsys):
    err = _cli_error(["compare", runs["rsa", 3], runs["rsa", 6], "--out", runs["rsa", 3]], capsys)
    assert "Zarr group" in err


def _copy(url: str, to: Path) -> str:
    shutil.copytree(url, to)
    return str(to)


def test_refuses_an_incomplete_run(runs, tmp_path, capsys):
    copy = _copy(runs["rsa", 6], tmp_path / "running")
    zarr.open_group(copy, mode="r+").attrs["status"] = "running"
    consolidate(copy)
    err = _cli_error(["compare", runs["rsa", 3], copy, "--out", str(tmp_path / "o")], capsys)
    assert "is running" in err and "running" in err.split("'")[1]


def test_refuses_a_corrupted_run(runs, tmp_path, capsys):
    copy = _copy(runs["rsa", 6], tmp_path / "damaged-rsa")  # damaged-*: skipped by the session-end verify
    chunk = next(p for p in (Path(copy) / "results" / "selectivity").rglob("*") if p.is_file() and p.name != "zarr.json")
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    with pytest.raises(RunCorruptError, match="checksum"):
        compare([runs["rsa", 3], copy], out=tmp_path / "o")
    err = _cli_error(["compare", runs["rsa", 3], copy, "--out", str(tmp_path / "o")], capsys)
    assert "damaged" in err and "results/selectivity" in err


def test_different_stimuli_need_the_flag(runs, tmp_path_factory, tmp_path, capsys):
    ckpt = checkpoints(tmp_path_factory)
    other = run_analysis("length", length.Config(n_seq=2, seq_len=24, block=1),
                         RunOptions(model=str(ckpt[6]), out=str(tmp_path / "other"), progress=False, figures=False))
    args = ["compare", runs["length", 3], other.url, "--out", str(tmp_path / "o")]
    err = _cli_error(args, capsys)
    assert "different stimuli" in err and "--allow-different-stimuli" in err
    with pytest.raises(LaminaError):
        compare([runs["length", 3], other.url], out=tmp_path / "o")
    cli_main([*args, "--allow-different-stimuli"])
    page = (tmp_path / "o" / "report.html").read_text()
    assert "different stimuli" in page
    assert json.loads((tmp_path / "o" / "comparison.json").read_text())["same_stimuli"] is False


def test_out_with_user_files_or_inside_a_run_is_refused_and_left_alone(runs, tmp_path, capsys):
    """--out is a new or empty folder or an earlier comparison: a folder holding someone's files, a fake
    comparison.json, or a folder inside a run is refused and not touched."""
    import hashlib

    def snap(folder: Path) -> dict:
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    pair = [runs["rsa", 3], runs["rsa", 6]]
    mine = tmp_path / "mine"
    (mine / "figures").mkdir(parents=True)
    (mine / "report.html").write_text("my report")
    (mine / "figures" / "compare_notes.txt").write_text("my notes")
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "comparison.json").write_text('{"name": "my config"}')
    inside = Path(runs["rsa", 3]) / "sub"
    for out, why in ((mine, "lamina did not write"), (fake, "lamina did not write"), (inside, "inside the Zarr group")):
        before = snap(out) if out.exists() else None
        assert why in _cli_error(["compare", *pair, "--out", str(out)], capsys)
        assert (snap(out) if out.exists() else None) == before
    assert not inside.exists()
    earlier = compare(pair, out=tmp_path / "earlier")  # an earlier comparison, plus one file of the user's
    (Path(earlier.out) / "figures" / "my_mark.png").write_bytes(b"x")
    assert "figures/my_mark.png" in _cli_error(["compare", *pair, "--out", earlier.out], capsys)
    (Path(earlier.out) / "figures" / "my_mark.png").unlink()
    assert compare(pair, out=earlier.out).figures == earlier.figures  # and without it, it is rewritten


def test_report_of_a_folder_that_is_not_a_comparison_is_one_error(tmp_path, capsys):
    for text in ('{"name": "my config"}', "{garbage"):
        folder = tmp_path / f"f{len(text)}"
        folder.mkdir()
        (folder / "comparison.json").write_text(text)
        err = _cli_error(["report", str(folder)], capsys)
        assert "comparison.json" in err and not (folder / "report.html").exists()
