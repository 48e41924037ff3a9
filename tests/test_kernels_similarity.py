"""Feature cosine / correlation, the six Q/K/V blocks, their histograms and the moments (docs/analyses.md "qkv").

References are plain NumPy loops over feature pairs written from the text, not the kernels.
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

import lamina.engine.kernels.moments as moments_mod
import lamina.engine.kernels.similarity as sim_mod
from lamina.engine.errors import InputError
from lamina.engine.kernels.histogram import uniform_histogram
from lamina.engine.kernels.moments import component_mean_variance
from lamina.engine.kernels.similarity import (
    QKV_BLOCKS,
    feature_correlation,
    feature_cosine,
    qkv_block_histograms,
    qkv_block_values,
    random_baseline_histograms,
    random_baseline_values,
)

# --------------------------------------------------------------------------- references


def ref_cosine(x: np.ndarray, center: bool = False) -> np.ndarray:
    """(sample, feature) -> (feature, feature), one pair at a time, float64."""
    x = np.asarray(x, dtype=np.float64)
    if center:
        x = x - x.mean(axis=0)
    f = x.shape[1]
    out = np.zeros((f, f))
    for i in range(f):
        for j in range(f):
            ni, nj = np.sqrt(np.sum(x[:, i] ** 2)), np.sqrt(np.sum(x[:, j] ** 2))
            out[i, j] = 0.0 if ni == 0 or nj == 0 else np.sum(x[:, i] * x[:, j]) / (ni * nj)
    return out


def ref_blocks(x: np.ndarray, center: bool = False) -> dict[str, np.ndarray]:
    """The six blocks of docs/analyses.md "qkv" from the full cosine matrix, with explicit loops."""
    c = ref_cosine(x, center)
    d = x.shape[1] // 3
    comp = {"Q": 0, "K": 1, "V": 2}
    out = {}
    for name in ("QQ", "KK", "VV"):
        s = comp[name[0]] * d
        ii, jj = np.triu_indices(d, 1)
        out[name] = np.array([c[s + i, s + j] for i, j in zip(ii, jj)])
    for name in ("QK", "QV", "KV"):
        r, k = comp[name[0]] * d, comp[name[1]] * d
        out[name] = np.array([c[r + i, k + j] for i in range(d) for j in range(d)])
    return out


def qkv_like(rng: np.random.Generator, samples: int, d: int) -> np.ndarray:
    """Activations with a shared direction (cosines spread over [-1, 1]) and a few constant features."""
    x = rng.normal(size=(samples, 3 * d)) + rng.normal(size=(samples, 1)) * rng.normal(size=3 * d)
    x[:, 1] = 0.0  # a zero feature (cosine 0 with everything)
    x[:, d + 2] = 3.0  # a constant feature (correlation 0 with everything)
    return x


# --------------------------------------------------------------------------- cosine / correlation


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("center", [False, True])
def test_cosine_and_correlation_vs_pair_loop(dtype, center):
    rng = np.random.default_rng(10)
    x = torch.from_numpy(qkv_like(rng, 9, 3)).to(dtype)[None].expand(2, -1, -1).clone()  # (2, sample, 9)
    x[1] *= -2.0
    got = feature_correlation(x) if center else feature_cosine(x)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert got.shape == (2, 9, 9)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    for b in range(2):
        ref = ref_cosine(x[b].double().numpy(), center)
        np.testing.assert_allclose(got[b].double().numpy(), ref, atol=tol, rtol=0)
    assert not torch.isnan(got).any()
    assert (got[0, 1] == 0).all()  # the zero feature


# --------------------------------------------------------------------------- blocks


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("piece", [1 << 18, 20])  # whole blocks; 20 // d = 2 rows per piece
def test_block_values_vs_loops(center, piece, monkeypatch):
    monkeypatch.setattr(sim_mod, "_CPU_PIECE", piece)
    rng = np.random.default_rng(11)
    d = 7
    x = qkv_like(rng, 12, d)
    got = qkv_block_values(torch.from_numpy(x), center=center)
    ref = ref_blocks(x, center)
    assert list(got) == list(QKV_BLOCKS)
    for name in QKV_BLOCKS:
        n = d * (d - 1) // 2 if name[0] == name[1] else d * d
        assert got[name].shape == (n,), name
        np.testing.assert_allclose(got[name].numpy(), ref[name], atol=1e-12, rtol=0, err_msg=name)


def near_edge_count(values: np.ndarray, edges: np.ndarray, eps: float = 1e-6) -> int:
    """How many values lie within eps of an edge (their bin can flip with float rounding)."""
    return int(sum(np.sum(np.abs(values - e) <= eps) for e in edges))


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("piece", [1 << 18, 40])
def test_block_histograms_vs_numpy(center, piece, monkeypatch):
    monkeypatch.setattr(sim_mod, "_CPU_PIECE", piece)
    rng = np.random.default_rng(12)
    d, layers = 10, 3
    x = np.stack([qkv_like(rng, 8, d) for _ in range(layers)])  # (layer, sample, 3d)
    x[1, :, 5] = x[1, :, 6]  # identical features: cosine 1 up to rounding
    x[2, :, 3] = -x[2, :, 2 * d + 4]
    h = qkv_block_histograms(torch.from_numpy(x).float(), center=center)
    assert h.shape == (layers, 6, 100) and h.dtype == torch.int64
    edges = np.linspace(-1, 1, 101)
    for layer in range(layers):
        ref = ref_blocks(x[layer].astype(np.float32), center)
        for b, name in enumerate(QKV_BLOCKS):
            expected = np.histogram(ref[name], bins=100, range=(-1.0, 1.0))[0]
            diff = np.abs(h[layer, b].numpy() - expected).sum()
            # float32 cosines vs float64 loops: only values on an edge may change bin
            # (a value at ±1 may also leave the range)
            assert diff <= 2 * near_edge_count(ref[name], edges), (layer, name, diff)
            if not center:
                assert h[layer, b].sum() <= ref[name].size


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_block_histograms_are_exact_on_their_own_values(dtype, monkeypatch):
    monkeypatch.setattr(sim_mod, "_CPU_PIECE", 64)
    rng = np.random.default_rng(13)
    x = torch.from_numpy(np.stack([qkv_like(rng, 6, 16) for _ in range(2)])).to(dtype)
    for center in (False, True):
        h = qkv_block_histograms(x, center=center, bins=37, lo=-0.9, hi=1.0)
        for layer in range(2):
            vals = qkv_block_values(x[layer], center=center)
            for b, name in enumerate(QKV_BLOCKS):
                v = vals[name].numpy()
                np.testing.assert_array_equal(h[layer, b].numpy(), np.histogram(v, bins=37, range=(-0.9, 1.0))[0])
                assert torch.equal(h[layer, b], uniform_histogram(vals[name], bins=37, lo=-0.9, hi=1.0))


def test_block_counts():
    h = qkv_block_histograms(torch.randn(2, 30, 3 * 8, generator=torch.Generator().manual_seed(0)))
    assert h.sum(-1).tolist() == [[28, 28, 28, 64, 64, 64]] * 2


@pytest.mark.parametrize(
    "shape,fn",
    [((10, 3 * 4), qkv_block_histograms), ((2, 10, 3 * 4 + 1), qkv_block_histograms), ((2, 10, 12), qkv_block_values),
     ((10, 0), qkv_block_values), ((0, 12), qkv_block_values)],
)
def test_block_shape_errors(shape, fn):
    with pytest.raises(InputError, match=r"\d"):
        fn(torch.zeros(shape))


def test_block_histogram_bin_errors():
    with pytest.raises(InputError, match="bins"):
        qkv_block_histograms(torch.zeros(1, 4, 6), bins=0)
    with pytest.raises(InputError, match="lo must not exceed hi"):
        qkv_block_histograms(torch.zeros(1, 4, 6), lo=1.0, hi=-1.0)


# --------------------------------------------------------------------------- random baseline


@pytest.mark.parametrize("center", [False, True])
def test_random_baseline_vs_loop(center):
    rng = np.random.default_rng(14)
    x = torch.from_numpy(rng.normal(size=(11, 9)))
    got = random_baseline_values(x, torch.Generator().manual_seed(5), center=center)
    # the reference reproduces the permutation docs/analyses.md "qkv" specifies: randperm of all elements
    perm = torch.randperm(x.numel(), generator=torch.Generator().manual_seed(5)).numpy()
    shuffled = x.numpy().reshape(-1)[perm].reshape(x.shape)
    c = ref_cosine(shuffled, center)
    ii, jj = np.triu_indices(9, 1)
    np.testing.assert_allclose(got.numpy(), c[ii, jj], atol=1e-12, rtol=0)
    assert sorted(shuffled.reshape(-1).tolist()) == sorted(x.numpy().reshape(-1).tolist())


@pytest.mark.parametrize("features", [2, 13, 30])
def test_random_baseline_histograms_vs_numpy(features):
    """Per layer one permutation (drawn in layer order, shared by both variants), then the histogram of the
    strict upper triangle of the whole cosine / correlation matrix, as NumPy computes it pair by pair."""
    rng = np.random.default_rng(features)
    x = torch.from_numpy(rng.normal(size=(3, 17, features)).astype(np.float32))
    got = random_baseline_histograms(x, torch.Generator().manual_seed(8), bins=20, lo=-1.0, hi=1.0)
    g = torch.Generator().manual_seed(8)
    perms = [torch.randperm(17 * features, generator=g).numpy() for _ in range(3)]
    ii, jj = np.triu_indices(features, 1)
    for name, center in (("cosine", False), ("correlation", True)):
        assert tuple(got[name].shape) == (3, 20)
        for layer in range(3):
            shuffled = x[layer].numpy().reshape(-1)[perms[layer]].reshape(17, features)
            values = ref_cosine(shuffled, center)[ii, jj]
            want = np.histogram(values, bins=20, range=(-1.0, 1.0))[0]
            # float32 products: a value within rounding of a bin edge may sit in the neighbouring bin
            near = int(np.sum(np.abs(values[:, None] - np.linspace(-1, 1, 21)[None]) < 1e-5))
            assert int(np.abs(got[name][layer].numpy() - want).sum()) <= 2 * near, (name, layer)
            assert int(got[name][layer].sum()) == len(values)


def test_random_baseline_histograms_equal_values_path():
    """The fused counter counts exactly the values random_baseline_values gives for the same permutation
    when both make the same products (float64: no rounding left to differ)."""
    x = torch.randn(2, 23, 15, dtype=torch.float64)
    got = random_baseline_histograms(x, torch.Generator().manual_seed(3), bins=50, lo=-1.0, hi=1.0)
    g = torch.Generator().manual_seed(3)
    for layer in range(2):
        state = g.get_state()
        for name, center in (("cosine", False), ("correlation", True)):
            g.set_state(state)
            want = uniform_histogram(random_baseline_values(x[layer], g, center=center), bins=50, lo=-1.0, hi=1.0)
            assert torch.equal(got[name][layer], want), (name, layer)
    with pytest.raises(InputError, match="layer, sample, feature"):
        random_baseline_histograms(torch.zeros(3, 4), torch.Generator())


def test_random_baseline_errors():
    with pytest.raises(InputError, match="sample, feature"):
        random_baseline_values(torch.zeros(2, 3, 4), torch.Generator())


# --------------------------------------------------------------------------- moments


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_component_mean_variance_vs_numpy(dtype):
    rng = np.random.default_rng(15)
    d = 5
    x = torch.from_numpy(rng.normal(2.0, 3.0, size=(4, 13, 3 * d))).to(dtype)  # (layer, sample, 3d)
    mean, var = component_mean_variance(x)
    assert mean.shape == var.shape == (4, 3)
    xs = x.double().numpy()
    for layer in range(4):
        for c in range(3):
            cols = [xs[layer, :, c * d + f] for f in range(d)]
            ref_m = np.mean([np.mean(col) for col in cols])
            ref_v = np.mean([np.var(col, ddof=0) for col in cols])
            tol = 1e-12 if dtype == torch.float64 else 1e-5
            assert abs(mean[layer, c].item() - ref_m) <= tol * max(1, abs(ref_m))
            assert abs(var[layer, c].item() - ref_v) <= tol * max(1, abs(ref_v))


def test_component_mean_variance_errors():
    with pytest.raises(InputError, match="3\\*d_model"):
        component_mean_variance(torch.zeros(4, 10))
    with pytest.raises(InputError, match="sample, 3"):
        component_mean_variance(torch.zeros(12))


def test_docstrings():
    for mod in (sim_mod, moments_mod):
        assert doctest.testmod(mod, raise_on_error=False).failed == 0


# --------------------------------------------------------------------------- unequal widths (GQA), workers, exact hi


def ref_blocks_widths(x: np.ndarray, widths: tuple[int, int, int], center: bool = False) -> dict[str, np.ndarray]:
    """The six blocks for Q|K|V of widths (d_q, d_k, d_v), from the full cosine matrix with loops."""
    c = ref_cosine(x, center)
    start = {"Q": 0, "K": widths[0], "V": widths[0] + widths[1]}
    width = {"Q": widths[0], "K": widths[1], "V": widths[2]}
    out = {}
    for name in ("QQ", "KK", "VV"):
        s, d = start[name[0]], width[name[0]]
        out[name] = np.array([c[s + i, s + j] for i in range(d) for j in range(i + 1, d)])
    for name in ("QK", "QV", "KV"):
        r, k = start[name[0]], start[name[1]]
        out[name] = np.array([c[r + i, k + j] for i in range(width[name[0]]) for j in range(width[name[1]])])
    return out


@pytest.mark.parametrize("widths", [(12, 4, 4), (9, 3, 6), (2, 5, 1), (7, 7, 7)])
@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("piece", [1 << 18, 9])
def test_block_values_unequal_widths_vs_loops(widths, center, piece, monkeypatch):
    monkeypatch.setattr(sim_mod, "_CPU_PIECE", piece)
    rng = np.random.default_rng(sum(widths) + center)
    x = rng.normal(size=(11, sum(widths))) + rng.normal(size=(11, 1)) * rng.normal(size=sum(widths))
    got = qkv_block_values(torch.from_numpy(x), center=center, widths=widths)
    ref = ref_blocks_widths(x, widths, center)
    for name in QKV_BLOCKS:
        assert got[name].shape == ref[name].shape, name
        np.testing.assert_allclose(got[name].numpy(), ref[name], atol=1e-12, rtol=0, err_msg=name)
    if widths[0] == widths[1] == widths[2]:  # widths=None is the same thing
        same = qkv_block_values(torch.from_numpy(x), center=center)
        assert all(torch.equal(same[k], got[k]) for k in QKV_BLOCKS)


@pytest.mark.parametrize("widths", [(16, 4, 4), (6, 10, 2)])
@pytest.mark.parametrize("piece", [1 << 16, 13])
def test_block_histograms_unequal_widths_exact(widths, piece, monkeypatch):
    monkeypatch.setattr(sim_mod, "_CPU_PIECE", piece)
    rng = np.random.default_rng(21)
    x = torch.from_numpy(rng.normal(size=(3, 9, sum(widths))) + rng.normal(size=(3, 9, 1))).float()
    for center in (False, True):
        h = qkv_block_histograms(x, center=center, widths=widths, bins=40, lo=-1.0, hi=1.0)
        for layer in range(3):
            vals = qkv_block_values(x[layer], center=center, widths=widths)
            for b, name in enumerate(QKV_BLOCKS):
                ref = np.histogram(vals[name].numpy(), bins=40, range=(-1.0, 1.0))[0]
                np.testing.assert_array_equal(h[layer, b].numpy(), ref, err_msg=f"{layer} {name}")


def test_component_mean_variance_unequal_widths():
    rng = np.random.default_rng(22)
    widths = (8, 2, 3)
    x = torch.from_numpy(rng.normal(1.0, 2.0, size=(2, 4, 17, sum(widths))))  # (..., sample, feature)
    mean, var = component_mean_variance(x, widths=widths)
    assert mean.shape == var.shape == (2, 4, 3)
    xs = x.numpy()
    bounds = np.cumsum((0,) + widths)
    for c in range(3):
        cols = xs[..., bounds[c] : bounds[c + 1]]
        np.testing.assert_allclose(mean[..., c].numpy(), cols.mean(-2).mean(-1), rtol=1e-12)
        np.testing.assert_allclose(var[..., c].numpy(), cols.var(-2).mean(-1), rtol=1e-12)
    # equal widths given explicitly: bit-identical to the default
    eq = torch.from_numpy(rng.normal(size=(5, 12)))
    assert all(torch.equal(a, b) for a, b in zip(component_mean_variance(eq), component_mean_variance(eq, widths=(4, 4, 4))))


@pytest.mark.parametrize(
    "fn,shape,widths,match",
    [
        (qkv_block_values, (5, 12), (4, 4, 5), "add up to 13"),
        (qkv_block_values, (5, 12), (4, 8), "three positive ints"),
        (qkv_block_histograms, (1, 5, 12), (0, 6, 6), "three positive ints"),
        (component_mean_variance, (5, 12), (4.0, 4, 4), "three positive ints"),
    ],
)
def test_widths_errors(fn, shape, widths, match):
    with pytest.raises(InputError, match=match):
        fn(torch.zeros(shape), widths=widths)


def test_unequal_widths_without_widths_explains():
    with pytest.raises(InputError, match="widths="):
        qkv_block_values(torch.zeros(4, 13))


@pytest.mark.parametrize("hi", [1.0, 0.5])
def test_values_exactly_at_hi_land_in_the_last_bin(hi, monkeypatch):
    """Basis-vector features give cosines of exactly 1 and 0.5: the arithmetic path's hi fix-up."""
    monkeypatch.setattr(sim_mod, "_CPU_PIECE", 24)
    rng = np.random.default_rng(23)
    d = 6
    x = rng.normal(size=(4, 3 * d))
    x[:, 0] = [1.0, 0.0, 0.0, 0.0]  # Q_0 = e_1
    x[:, d] = [1.0, 0.0, 0.0, 0.0]  # K_0 = e_1: cos(Q_0, K_0) = 1 exactly
    x[:, d + 1] = [1.0, 1.0, 1.0, 1.0]  # K_1: cos(Q_0, K_1) = 0.5 exactly
    x[:, 2 * d + 3] = [1.0, 0.0, 0.0, 0.0]  # V_3 = e_1
    xt = torch.from_numpy(np.stack([x, -x])).float()
    for lo in (-1.0, 0.0):
        h = qkv_block_histograms(xt, bins=10, lo=lo, hi=hi)
        for layer in range(2):
            vals = qkv_block_values(xt[layer])
            assert (vals["QK"] == hi).any()
            for b, name in enumerate(QKV_BLOCKS):
                ref = np.histogram(vals[name].numpy(), bins=10, range=(lo, hi))[0]
                np.testing.assert_array_equal(h[layer, b].numpy(), ref, err_msg=name)


def assert_counts_of_values(x: torch.Tensor, bins: int = 100, lo: float = -1.0, hi: float = 1.0, **kw) -> None:
    """qkv_block_histograms(x) equals np.histogram of qkv_block_values(x[layer]) for every layer and block."""
    h = qkv_block_histograms(x, bins=bins, lo=lo, hi=hi, **kw)
    for layer in range(x.shape[0]):
        vals = qkv_block_values(x[layer], **kw)
        for b, name in enumerate(QKV_BLOCKS):
            ref = np.histogram(vals[name].numpy(), bins=bins, range=(lo, hi))[0]
            np.testing.assert_array_equal(h[layer, b].numpy(), ref, err_msg=f"layer {layer} {name}")


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_histograms_do_not_depend_on_workers_and_match_values_at_size(threads, monkeypatch):
    """Realistic shapes (MKL's real kernels): any number of workers gives the counts of the values."""
    rng = np.random.default_rng(24)
    x = torch.from_numpy(rng.normal(size=(2, 54, 3 * 160)) + rng.normal(size=(2, 54, 1))).float()
    monkeypatch.setattr(sim_mod, "_CPU_PIECE", 1 << 12)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for center in (False, True):
            assert_counts_of_values(x, center=center)
    finally:
        torch.set_num_threads(old)
    assert torch.get_num_threads() == old


def test_non_finite_input_uses_the_general_path():
    x = torch.randn(2, 8, 12)
    x[1, 3, 5] = float("nan")
    assert_counts_of_values(x)


def test_whole_blocks_and_per_piece_hi_counts_as_on_accelerators(monkeypatch):
    """The accelerator layout (one piece per block, values == hi counted per piece) on the CPU."""
    import lamina.engine.kernels.histogram as hist_mod

    monkeypatch.setattr(sim_mod, "_piece_elements", lambda device: None)
    real = hist_mod.PieceCounter

    def eager(*args, **kwargs):
        kwargs["defer_hi"] = False
        return real(*args, **kwargs)

    monkeypatch.setattr(sim_mod, "PieceCounter", eager)
    rng = np.random.default_rng(25)
    x = rng.normal(size=(2, 5, 3 * 7))
    x[:, :, 0] = x[:, :, 7]  # identical features: cosine (about) 1
    x[0, :, 1] = [1.0, 0.0, 0.0, 0.0, 0.0]
    x[0, :, 8] = [1.0, 0.0, 0.0, 0.0, 0.0]  # exactly 1
    xt = torch.from_numpy(x).float()
    for widths in (None, (9, 6, 6)):
        assert_counts_of_values(xt, widths=widths)
