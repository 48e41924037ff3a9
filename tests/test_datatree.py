"""A run is labelled data: xarray opens it whole as a DataTree with no warning, every group is a clean Dataset,
and selecting by label gives what the stored arrays hold."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from lamina.engine.reader import open_run

from .course_runs import course_runs

xr = pytest.importorskip("xarray")

ANALYSES = ("qkv", "rsa", "length", "punct")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The tiny complete runs shared with test_compare / test_report (6 blocks)."""
    made = course_runs(tmp_path_factory)
    return {name: open_run(made[name, 6]) for name in ANALYSES}


def open_tree(run):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning (dimension conflicts, repeated dims, metadata) fails
        tree = xr.open_datatree(run.url, engine="zarr")
        for node in tree.subtree:
            node.to_dataset()
    return tree


@pytest.mark.parametrize("name", list(ANALYSES))
def test_opens_whole_without_warnings(runs, name):
    tree = open_tree(runs[name])
    results = tree["results"].to_dataset()
    for var in results.data_vars:
        for dim in results[var].dims:
            if dim in results.coords and results.coords[dim].dtype.kind in "iuf":
                assert np.isfinite(results.coords[dim].values).all()
    assert "layer" in tree["results"].coords or "state" in tree["results"].coords


def test_qkv_select_by_label(runs):
    run, tree = runs["qkv"], open_tree(runs["qkv"])
    res = tree["results"]
    qq = res.cosine_hist.sel(role="target", block="QQ").values
    np.testing.assert_array_equal(qq, run.numpy("results/cosine_hist")[0, :, 0])
    np.testing.assert_array_equal(res.layer.values, np.arange(run["results/cosine_hist"].shape[1]))
    edges = run.numpy("results/bin_edges")
    np.testing.assert_allclose(res.bin.values, (edges[:-1] + edges[1:]) / 2)
    np.testing.assert_array_equal(res.bin_bounds.values, np.stack([edges[:-1], edges[1:]], 1))
    assert res.bin.attrs["bounds"] == "bin_bounds"
    np.testing.assert_array_equal(res.variance.sel(role="nontarget", component="V").values,
                                  run.numpy("results/variance")[1, :, 2])
    assert res.cosine_hist.attrs["units"] == "count" and "long_name" in res.cosine_hist.attrs
    assert tree["acts"].target.dims == ("layer", "sample", "feature")


def test_rsa_select_by_label(runs):
    run, res = runs["rsa"], open_tree(runs["rsa"])["results"]
    np.testing.assert_array_equal(res.selectivity.sel(component="V").values, run.numpy("results/selectivity")[2])
    np.testing.assert_array_equal(res.rsa.sel(pair="QK").values, run.numpy("results/rsa")[0])
    rsm = res.rsm.sel(component="Q", item_a="galaxy", item_b="sun").values
    words = run.labels("results/rsm", "item_a")
    np.testing.assert_array_equal(rsm, run.numpy("results/rsm")[:, 0, words.index("galaxy"), words.index("sun")])


def test_length_select_by_label(runs):
    run, res = runs["length"], open_tree(runs["length"])["results"]
    assert res.corr_hist.dims == ("layer", "corr_bin") and res.median_split_hist.dims == ("split", "split_bin")
    np.testing.assert_array_equal(res.median_split_counts.sel(split="equal").values,
                                  run.numpy("results/median_split_counts")[2])
    assert res.split_bin.size == 50 and res.corr_bin.size == 80
    np.testing.assert_array_equal(res.corr.sel(layer=1).values, run.numpy("results/corr")[1])


def test_punct_select_by_label(runs):
    run, tree = runs["punct"], open_tree(runs["punct"])
    res = tree["results"]
    np.testing.assert_array_equal(res["mean"].sel({"class": "internal", "stat": "mi"}).values,
                                  run.numpy("results/mean")[0, :, 0])
    np.testing.assert_array_equal(res.state.values, np.arange(run["results/mi"].shape[1]))
    hidden = tree["acts"].hidden.sel({"class": "terminal", "state": 0}).values
    np.testing.assert_array_equal(hidden, run.numpy("acts/hidden")[1, 0])
