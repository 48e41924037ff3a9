"""All-pairs MI / covariance / correlation against the lecture's per-pair NumPy loop (docs/analyses.md, punct)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lamina.engine.errors import InputError
from lamina.engine.kernels.pairs import all_pairs_mi_cov_corr, pair_indices

# --------------------------------------------------------------------------- reference


def ref_pair(x: np.ndarray, y: np.ndarray, bins: int = 15, z_max: float = 5.0) -> dict:
    """One pair exactly as D describes it: z-score, drop, histogram2d, entropies, cov, Pearson."""
    with np.errstate(divide="ignore", invalid="ignore"):
        zx = (x - x.mean()) / x.std(ddof=1)
        zy = (y - y.mean()) / y.std(ddof=1)
    keep = ~((np.abs(zx) > z_max) | (np.abs(zy) > z_max))
    xk, yk = x[keep], y[keep]
    counts, _, _ = np.histogram2d(xk, yk, bins=bins)
    p = counts / counts.sum()
    px, py = p.sum(1), p.sum(0)
    hxy = -np.sum(p * np.log2(p + 1e-12))
    hx = -np.sum(px * np.log2(px + 1e-12))
    hy = -np.sum(py * np.log2(py + 1e-12))
    cov = np.cov(xk, yk)[0, 1]
    flat = xk.min() == xk.max() or yk.min() == yk.max()
    corr = np.nan if flat else np.corrcoef(xk, yk)[0, 1]
    # diagnostic: did the partner's removals move this pair's histogram range?
    own_x, own_y = x[~(np.abs(zx) > z_max)], y[~(np.abs(zy) > z_max)]
    moved = (xk.min(), xk.max(), yk.min(), yk.max()) != (own_x.min(), own_x.max(), own_y.min(), own_y.max())
    return {"mi": hx + hy - hxy, "cov": cov, "corr": corr, "counts": counts, "moved": moved}


def ref_all(x: np.ndarray, **kw) -> dict:
    ii, jj = np.triu_indices(len(x), 1)
    rows = [ref_pair(x[i], x[j], **kw) for i, j in zip(ii, jj)]
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


def hard_vectors(seed: int, n: int = 30, d: int = 200) -> np.ndarray:
    """Heavy tails, shared outlier dims, ties, repeats, a constant, a lone spike, clipped extremes."""
    rng = np.random.default_rng(seed)
    x = rng.standard_t(3, size=(n, d))
    x[:, rng.choice(d, 3, replace=False)] *= 15  # "massive" dims: an outlier in most vectors, not all
    x[rng.integers(0, n, 25), rng.integers(0, d, 25)] *= 10  # scattered outliers
    x[4] = np.round(x[4] * 2) / 2  # many ties
    x[6] = x[5]  # repeated identical vectors
    x[7] = x[5]
    x[8] = 0.1  # constant, with a mean that is not exact in floating point
    x[9] = 0.0
    x[9, 17] = 50.0  # lone spike: dropped by its own z-score, the rest is constant
    x[10] = np.clip(x[10], -1.0, 1.0)  # many values exactly at min and at max
    x[11] = np.linspace(-3, 3, d)  # values exactly on bin edges
    x[12, :] = x[12, :] * 1e-3 + 1e3  # offset far from 0
    return x


# --------------------------------------------------------------------------- exactness


@pytest.fixture(scope="module")
def hard():
    x = hard_vectors(0)
    return x, ref_all(x)


def test_reference_data_covers_the_hard_cases(hard):
    _, ref = hard
    assert ref["moved"].sum() >= 20  # partner removals move an extreme in many pairs
    assert np.isnan(ref["corr"]).sum() >= 29  # the constant vectors


@pytest.mark.parametrize("method", ["gemm", "bincount", "scatter", "onehot"])
@pytest.mark.parametrize("chunk_pairs", [1, 37, 100_000])
def test_matches_per_pair_numpy_loop(hard, method, chunk_pairs):
    x, ref = hard
    out = all_pairs_mi_cov_corr(torch.tensor(x), method=method, chunk_pairs=chunk_pairs)
    assert set(out) == {"mi", "cov", "corr"}
    for k in ("mi", "cov", "corr"):
        got = out[k].numpy()
        assert got.dtype == np.float64 and got.shape == (435,)
        assert np.array_equal(np.isnan(got), np.isnan(ref[k])), k
        np.testing.assert_allclose(got, ref[k], rtol=1e-9, atol=1e-9, equal_nan=True, err_msg=k)
    # one count off moves MI by about 1e-3 bits, so 1e-9 means identical histograms
    assert np.max(np.abs(out["mi"].numpy() - ref["mi"])) < 1e-9


@pytest.mark.parametrize("bins,z_max", [(7, 5.0), (20, 5.0), (15, 2.5)])
def test_other_bins_and_thresholds(bins, z_max):
    x = hard_vectors(1, n=16, d=150)
    ref = ref_all(x, bins=bins, z_max=z_max)
    out = all_pairs_mi_cov_corr(torch.tensor(x), bins=bins, z_max=z_max, chunk_pairs=29)
    for k in ("mi", "cov", "corr"):
        np.testing.assert_allclose(out[k].numpy(), ref[k], rtol=1e-9, atol=1e-9, equal_nan=True, err_msg=k)


def test_gaussian_with_outliers_and_float32_input():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((24, 300)).astype(np.float32)
    x[rng.integers(0, 24, 40), rng.integers(0, 300, 40)] *= 12
    ref = ref_all(x.astype(np.float64))
    out = all_pairs_mi_cov_corr(torch.tensor(x))
    for k in ("mi", "cov", "corr"):
        np.testing.assert_allclose(out[k].numpy(), ref[k], rtol=1e-9, atol=1e-9, err_msg=k)


def test_partner_drops_more_than_eight_extremes():
    """Vector 0's 12 smallest values sit where vector 1 has outliers: the pair's min is rank 13."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 1000))
    x[1, :12] = 80 + rng.random(12)  # outliers of vector 1 at dims 0..11
    x[0, :12] = -4.0 - 0.05 * np.arange(12)  # vector 0's 12 lowest values, kept by vector 0
    x[2, 12:24] = -90 - rng.random(12)
    x[0, 12:24] = 4.0 + 0.05 * np.arange(12)  # and its 12 highest, where vector 2 has outliers
    x[3] = rng.standard_normal(1000) * 1e-150 + 1e-149  # tiny but normal floats
    x[4] = x[0]
    ref = ref_all(x)
    assert ref["moved"][:2].all()  # pairs (0, 1) and (0, 2)
    out = all_pairs_mi_cov_corr(torch.tensor(x))
    for k in ("mi", "cov", "corr"):
        np.testing.assert_allclose(out[k].numpy(), ref[k], rtol=1e-9, atol=1e-9, err_msg=k)


def crowded_bins(seed: int, n: int = 10, d: int = 2000) -> np.ndarray:
    """Most of each vector's dims in one bin (a tight cluster, a wide kept spread): counts far above 256."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * 1e-3
    spread = rng.choice(d, 300, replace=False)
    x[:, spread] = rng.uniform(-1, 1, (n, 300))  # |z| < 5 for all: nothing dropped, 1700 dims in the middle bins
    x[1] = x[0]  # the same vector twice: the heaviest joint cell holds ~1700
    x[2, :256] = 0.5  # exactly 256 values in one bin
    x[3, :257] = -0.5  # and 257
    x[4, 5] = 40.0  # one outlier that this vector drops (and the rest keep)
    return x


@pytest.mark.parametrize("method", ["gemm", "bincount"])
def test_counts_above_256_per_bin(method):
    """The gemm path keeps bfloat16 counts <= 256 by moving the rest of a bin to extra rows: still exact."""
    x = crowded_bins(6)
    ref = ref_all(x)
    assert ref["counts"].max() > 1024  # cells of up to ~1700 counts
    out = all_pairs_mi_cov_corr(torch.tensor(x), method=method)
    for k in ("mi", "cov", "corr"):
        np.testing.assert_allclose(out[k].numpy(), ref[k], rtol=1e-9, atol=1e-9, err_msg=k)
    assert np.max(np.abs(out["mi"].numpy() - ref["mi"])) < 1e-12


def test_gemm_blocks_of_every_size(monkeypatch):
    """Tasks of 1..3 vectors against 1..5 partners: every pair lands at its triu index exactly once."""
    import lamina.engine.kernels.pairs as pairs_mod

    x = hard_vectors(4, n=23, d=120)
    ref = all_pairs_mi_cov_corr(torch.tensor(x), method="bincount")
    for rows, cols in ((1, 1), (3, 5), (2, 64)):
        monkeypatch.setattr(pairs_mod, "_GEMM_ROWS", rows)
        monkeypatch.setattr(pairs_mod, "_GEMM_COLS", cols)
        out = all_pairs_mi_cov_corr(torch.tensor(x), method="gemm")
        np.testing.assert_allclose(out["mi"].numpy(), ref["mi"].numpy(), rtol=0, atol=1e-12, equal_nan=True)


def test_auto_method_falls_back_when_bfloat16_rounds(monkeypatch):
    """A CPU whose bfloat16 products round: auto takes bincount, and gemm is refused with the fix."""
    import lamina.engine.kernels.pairs as pairs_mod

    x = torch.tensor(hard_vectors(5, n=14, d=60))
    want = all_pairs_mi_cov_corr(x, method="bincount")
    monkeypatch.setattr(pairs_mod, "_bf16_verdict", {"exact": False})
    called = []
    monkeypatch.setattr(pairs_mod, "_mi_gemm", lambda *a, **k: called.append(1))
    got = all_pairs_mi_cov_corr(x)
    assert not called
    np.testing.assert_array_equal(got["mi"].numpy(), want["mi"].numpy())
    with pytest.raises(InputError, match="bincount"):
        all_pairs_mi_cov_corr(x, method="gemm")


# --------------------------------------------------------------------------- invariants


def test_identical_vectors_have_identical_mi(hard):
    x, _ = hard
    out = all_pairs_mi_cov_corr(torch.tensor(x))
    ii, jj = np.triu_indices(len(x), 1)
    mi = np.full((len(x), len(x)), np.nan)
    mi[ii, jj] = mi[jj, ii] = out["mi"].numpy()
    others = [k for k in range(len(x)) if k not in (5, 6, 7)]
    np.testing.assert_array_equal(mi[5, others], mi[6, others])
    np.testing.assert_array_equal(mi[5, others], mi[7, others])


def test_layer0_sanity_all_identical_vectors():
    """State 0 of D: every sequence has the same vector, so every pair has the same MI and cov."""
    rng = np.random.default_rng(3)
    v = rng.standard_t(3, 1024)
    x = np.tile(v, (12, 1))
    out = all_pairs_mi_cov_corr(torch.tensor(x))
    ref = ref_pair(v, v)
    for k in ("mi", "cov", "corr"):
        got = out[k].numpy()
        assert np.ptp(got) == 0, k
        np.testing.assert_allclose(got[0], ref[k], rtol=1e-12, atol=1e-12)
    assert abs(float(out["corr"][0]) - 1.0) < 1e-12


def test_pair_indices_is_triu_order():
    for n in (0, 1, 2, 7):
        i, j = pair_indices(n)
        ri, rj = np.triu_indices(n, 1)
        assert np.array_equal(i.numpy(), ri) and np.array_equal(j.numpy(), rj)


# --------------------------------------------------------------------------- errors


def test_bad_input_raises_input_error():
    with pytest.raises(InputError, match=r"\(5,\)"):
        all_pairs_mi_cov_corr(torch.randn(5))
    with pytest.raises(InputError, match=r"\(1, 10\)"):
        all_pairs_mi_cov_corr(torch.randn(1, 10))
    bad = torch.randn(4, 10)
    bad[2, 3] = float("nan")
    with pytest.raises(InputError, match=r"rows \[2\]"):
        all_pairs_mi_cov_corr(bad)
    with pytest.raises(InputError, match="bins"):
        all_pairs_mi_cov_corr(torch.randn(4, 10), bins=0)
    with pytest.raises(InputError, match="method"):
        all_pairs_mi_cov_corr(torch.randn(4, 10), method="gpu")  # type: ignore[arg-type]
