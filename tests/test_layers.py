"""``--layers`` on every analysis (docs/analyses.md "What every run holds").

The reference of a run with ``--layers 0,2`` is the full run of the same command on the same 3-block
checkpoint: every result at blocks 0 and 2 must equal the full run's there, bitwise, since the forward pass is
the same and each of these statistics is computed per block, independently of the others. One exception: qkv's
random baseline draws one permutation per analysed block from ONE generator in block order, so the subset's
block 2 gets the full run's second draw (block 1's); it is checked for its counts only. And length's Pearson
sums are one float32 product over the neurons of every analysed block at once, whose blocking (so rounding)
depends on that width: its r agree to ~1e-6 relative, its histograms exactly unless an r lies within 1e-5 of a
bin edge.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import lamina
from lamina.analyses import length, punct, qkv, rsa
from lamina.analyses import runner as runner_mod
from lamina.analyses.cli import main as cli_main
from lamina.analyses.options import RunOptions
from lamina.analyses.textfiles import stimulus_path
from lamina.engine.errors import InputError
from lamina.engine.reader import open_run

from .helpers import run_analysis

SUBSET = (0, 2)  # of the 3 blocks of the tiny checkpoints


def _configs():
    corpus = str(stimulus_path("corpus.txt"))
    return {
        "qkv": (qkv.Config(), ["cosine_hist", "correlation_hist", "mean", "variance"]),
        "rsa": (rsa.Config(permutations=20), ["rsm", "selectivity", "selectivity_pvalue", "rsa"]),
        "length": (length.Config(text=corpus, n_seq=4, seq_len=16, block=0),
                   ["corr", "partial_corr", "corr_hist", "partial_corr_hist"]),
        "punct": (punct.Config(marks=8), ["mi", "cov", "corr", "mean", "r_cov_mi"]),
    }


def _opts(folder, out, **kw):
    return RunOptions(model=str(folder), out=str(out), progress=False, **{"figures": False, **kw})


@pytest.fixture(scope="module")
def pair(gpt2_dir, tmp_path_factory):
    """``pair(name)``: (the full run, the run of --layers 0,2 with its figures) of an analysis, made once."""
    made: dict = {}

    def get(name):
        if name not in made:
            cfg, _ = _configs()[name]
            root = tmp_path_factory.mktemp(name)
            made[name] = (run_analysis(name, cfg, _opts(gpt2_dir, root / "full")),
                          run_analysis(name, cfg, _opts(gpt2_dir, root / "part", layers="0,2", figures=True)))
        return made[name]

    return get


def _depth_dim(run, path):
    return "state" if "state" in run.dims(path) else "layer"


@pytest.mark.parametrize("name", ["qkv", "rsa", "length", "punct"])
def test_subset_equals_the_full_run_at_its_blocks(name, pair):
    _, names = _configs()[name]
    full, part = pair(name)
    # punct: hidden states 0 (embeddings) and 1 + each selected block; the others: the blocks themselves
    want = [0, 1, 3] if name == "punct" else list(SUBSET)
    checked = 0
    for path in part.arrays():
        if not path.startswith("results/") or path.rsplit("/", 1)[-1] not in names:
            continue
        dims = part.dims(path)
        d = _depth_dim(part, path)
        if d not in dims:
            continue
        assert [int(v) for v in part.labels(path, d)] == want, path
        axis = dims.index(d)
        expect = np.take(full.numpy(path), want, axis=axis)
        if name == "length" and path.endswith("corr"):  # see the module docstring
            np.testing.assert_allclose(part.numpy(path), expect, rtol=1e-5, atol=1e-6, err_msg=path)
        elif name == "length" and path.endswith("corr_hist"):
            r = full.numpy(path.removesuffix("_hist"))[list(SUBSET)]
            edges = np.linspace(-0.8, 0.8, 81)
            if not (np.abs(r[..., None] - edges) < 1e-5).any():  # no r so near an edge that it may change bin
                np.testing.assert_array_equal(part.numpy(path), expect, err_msg=path)
        else:
            np.testing.assert_array_equal(part.numpy(path), expect, err_msg=path)
        checked += 1
    assert checked == len(names)
    if name == "length":  # the median split at --block 0 (no layer axis)
        np.testing.assert_array_equal(part.numpy("results/median_split_counts"),
                                      full.numpy("results/median_split_counts"))
    # acts keep block numbers too
    acts = [p for p in part.arrays() if p.startswith("acts/") and _depth_dim(part, p) in part.dims(p)]
    for p in acts:
        assert [int(v) for v in part.labels(p, _depth_dim(part, p))] == want, p
    assert part.attrs["key"] != full.attrs["key"]
    assert json.loads(part.attrs["key"])["layers"] == list(SUBSET) and "layers" not in json.loads(full.attrs["key"])
    assert part.attrs["layers"] == list(SUBSET)
    assert full.attrs["layers"] == [0, 1, 2]


def test_qkv_baseline_counts_under_a_subset(gpt2_dir, tmp_path, pair):
    """The baseline's draws follow the analysed blocks (see the module docstring): same shape and totals."""
    full, _ = pair("qkv")
    part = run_analysis("qkv", qkv.Config(), _opts(gpt2_dir, tmp_path / "part", layers="2"))
    for path in ("results/baseline_cosine_hist", "results/baseline_correlation_hist"):
        a, b = part.numpy(path), full.numpy(path)
        assert a.shape == (1, b.shape[1]) and a.sum() == b[2].sum()
        assert [int(v) for v in part.labels(path, "layer")] == [2]


def test_every_block_is_the_key_of_no_layers(gpt2_dir, tmp_path):
    """--layers 0-2 names every block of a 3-block model: the same command as no --layers (it resumes it)."""
    cfg = rsa.Config(permutations=20)
    a = run_analysis("rsa", cfg, _opts(gpt2_dir, tmp_path / "a"))
    b = run_analysis("rsa", cfg, _opts(gpt2_dir, tmp_path / "b", layers="0-2"))
    assert a.attrs["key"] == b.attrs["key"]


def test_cli_and_python_give_the_same_key(gpt2_dir, tmp_path):
    cli_main(["run", "rsa", "--model", str(gpt2_dir), "--permutations", "20", "--layers", "2,0", "--out",
              str(tmp_path / "cli"), "--no-figures", "--no-progress"])
    py = lamina.run("rsa", model=str(gpt2_dir), permutations=20, layers="0,2", out=str(tmp_path / "py"),
                    figures=False, progress=False)
    assert open_run(tmp_path / "cli").attrs["key"] == py.attrs["key"]


@pytest.mark.parametrize("name", ["qkv", "rsa", "length", "punct"])
def test_bad_layers_refused_before_the_weights_load(name, gpt2_dir, tmp_path, monkeypatch):
    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(runner_mod, "load_model", no_load)
    cfg, _ = _configs()[name]
    with pytest.raises(InputError, match=r"layers='3': the model has 3 blocks \(0-2\)"):
        run_analysis(name, cfg, _opts(gpt2_dir, tmp_path / "o", layers="3"))
    assert not (tmp_path / "o").exists()


def test_bad_layers_on_the_command_line(gpt2_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["run", "rsa", "--model", str(gpt2_dir), "--layers", "40", "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--layers '40': the model has 3 blocks (0-2)" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as e:
        cli_main(["run", "rsa", "--model", str(gpt2_dir), "--layers", "2-x", "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "--layers '2-x'" in capsys.readouterr().err


def test_length_block_outside_the_layers(gpt2_dir, tmp_path):
    cfg = length.Config(text=str(stimulus_path("corpus.txt")), n_seq=4, seq_len=16, block=1)
    with pytest.raises(InputError, match="--block 1 is not among the blocks of --layers"):
        run_analysis("length", cfg, _opts(gpt2_dir, tmp_path / "o", layers="0,2"))
    assert not (tmp_path / "o").exists()


def test_capture_keeps_its_own_layers(gpt2_dir, tmp_path):
    """``lamina run capture --layers`` is capture's own option (one --layers, in the Config)."""
    (tmp_path / "t.txt").write_text("a b c\n")
    cli_main(["run", "capture", "--model", str(gpt2_dir), "--hook", "blocks.{layer}.hook_resid_post", "--layers",
              "1", "--text-file", str(tmp_path / "t.txt"), "--out", str(tmp_path / "c"), "--no-figures",
              "--no-progress"])
    key = json.loads(open_run(tmp_path / "c").attrs["key"])
    assert key["config"]["layers"] == "1" and "layers" not in key


@pytest.mark.parametrize("name", ["rsa", "punct"])
def test_compare_places_a_subset_at_the_models_depth(name, pair, tmp_path, monkeypatch):
    """relative depth = block / (n_blocks - 1) of the MODEL (state / n_blocks for punct), not the subset's count."""
    from lamina.analyses import compare_plots
    from lamina.analyses.compare import compare

    xs: dict[str, list] = {}
    original = compare_plots.save_figure

    def spy(fig, figdir, stem):
        for ax in fig.axes:
            for line in ax.get_lines():
                if line.get_label().endswith(("blocks)", "states)")):  # a run's line, "LABEL (n blocks)"
                    xs.setdefault(line.get_label(), []).append(np.asarray(line.get_xdata(), float))
        return original(fig, figdir, stem)

    monkeypatch.setattr(compare_plots, "save_figure", spy)
    full, part = pair(name)
    compare([full.url, part.url], out=tmp_path / "cmp")
    want = {"full": np.array([0, 1, 2, 3]) / 3 if name == "punct" else np.array([0, 1, 2]) / 2,
            "part": np.array([0, 1, 3]) / 3 if name == "punct" else np.array([0, 2]) / 2}
    seen = set()
    for label, lines in xs.items():
        which = "part" if "part" in label else "full"
        for x in lines:
            np.testing.assert_allclose(x, want[which], rtol=0, atol=1e-12, err_msg=label)
        seen.add(which)
    assert seen == {"full", "part"}


@pytest.mark.parametrize("name", ["qkv", "rsa", "length", "punct"])
def test_figures_and_summary_name_the_models_blocks(name, pair):
    _, run = pair(name)
    figures = {p.name for p in (Path(run.folder) / "figures").iterdir()}
    summary = run.attrs["summary"]
    if name == "qkv":  # --layer 6 (the default) is clipped to the last block: block 2, the subset's 2nd
        assert "qkv_block2_cosine.png" in figures
        assert "QQ target cosine, share |c| >= 0.9 at blocks [0, 2]" in summary
    elif name == "rsa":
        assert "SI_Q at blocks 0/2" in summary
    elif name == "punct":  # states 0, 1, 3; --state 1 (the default) is one of them
        assert "punct_hist_state1.png" in figures
    assert len(figures) > 2


def test_cka_subset_is_the_full_matrix_at_its_blocks(gpt2_dir, tmp_path):
    """CKA of a layer pair depends on those two layers only; the streamed moments of all analysed layers are one
    float32 product whose blocking depends on their count, so the values agree to rounding, not bitwise."""
    from lamina.analyses import registry

    cfg = registry.get("cka").Config(text=str(stimulus_path("corpus.txt")), n_seq=4, seq_len=24)
    full = run_analysis("cka", cfg, _opts(gpt2_dir, tmp_path / "full"))
    part = run_analysis("cka", cfg, _opts(gpt2_dir, tmp_path / "part", layers="0,2"))
    sel = list(SUBSET)
    for path in ("results/cka", "results/cka_debiased"):
        assert [int(v) for v in part.labels(path, "layer_a")] == sel == [int(v) for v in part.labels(path, "layer_b")]
        np.testing.assert_allclose(part.numpy(path), full.numpy(path)[np.ix_(sel, sel)], rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(part.numpy("results/depth_a"), [0.0, 1.0])  # block / (3 - 1)
    assert json.loads(part.attrs["key"])["layers"] == sel and part.attrs["key"] != full.attrs["key"]


def test_an_analysis_ignoring_the_subset_is_refused(gpt2_dir, tmp_path):
    """A plugin that captures every block whatever ``model.layers`` says must not record a subset it ignored."""
    import dataclasses

    from lamina.analyses import registry

    a = registry.get("rsa")

    def every_block(cfg, model):
        return a.spec(cfg, dataclasses.replace(model, layers=tuple(range(model.n_layers))))

    ignoring = dataclasses.replace(a, spec=every_block)
    with pytest.raises(InputError, match=r"does not analyse a subset of blocks \(it would read blocks \[0, 1, 2\]\)"):
        runner_mod.execute(ignoring, rsa.Config(permutations=20), _opts(gpt2_dir, tmp_path / "o", layers="0,2"),
                           echo=lambda s: None)
    assert not (tmp_path / "o").exists()
