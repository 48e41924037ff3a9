"""Bootstrap resampling, intervals, weighted per-unit states, permutation p-values, maxT and BH
(docs/analyses.md, "Similarity and inference (kernels)").

References: NumPy on explicitly resampled data, ``np.nanquantile``, SciPy's
``false_discovery_control``, and a plain loop of Westfall & Young's maxT algorithm. Coverage is
checked by simulation against known answers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from lamina.engine.errors import InputError
from lamina.engine.kernels.bootstrap import (
    BOUNDS,
    benjamini_hochberg,
    block_indices,
    counts_from_indices,
    interval,
    maxstat_pvalues,
    percentile_interval,
    permutation_pvalues,
    permutations,
    poisson_weights,
    resample_counts,
    resample_indices,
    unit_sums,
    weighted_mean,
    weighted_moments,
    weighted_pearson,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def one_thread():
    """Many small ops in a row: one intra-op thread avoids OpenMP barriers waiting for a descheduled
    thread on a shared CPU (the simulations are vectorised over data sets instead)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- resampling


def test_resample_indices_uniform_and_seeded():
    idx = resample_indices(12, 4000, generator=gen(0))
    assert idx.shape == (4000, 12) and idx.dtype == torch.int64
    assert torch.equal(idx, resample_indices(12, 4000, generator=gen(0)))
    assert not torch.equal(idx, resample_indices(12, 4000, generator=gen(1)))
    counts = np.bincount(idx.flatten().numpy(), minlength=12)
    # every unit drawn 4000 times on average; binomial SE sqrt(48000 * (1/12) * (11/12)) ~ 60
    assert np.abs(counts - 4000).max() < 5 * 60


def test_stratified_keeps_every_stratum_and_is_uniform_within():
    strata = torch.tensor([7, 7, 3, 3, 3, 9, 7, 3])
    idx = resample_indices(8, 3000, generator=gen(2), strata=strata)
    assert torch.equal(strata[idx], strata.expand(3000, 8))  # position i draws from i's stratum
    c = resample_counts(8, 3000, generator=gen(2), strata=strata)
    for label in (7, 3, 9):
        members = (strata == label).nonzero().flatten()
        assert torch.equal(c[:, members].sum(1), torch.full((3000,), len(members)))
        freq = c[:, members].double().mean(0)  # each member ~1 copy per resample
        assert torch.allclose(freq, torch.ones_like(freq), atol=0.08)
    assert (c[:, 5] == 1).all()  # a stratum of one unit is always itself


def test_counts_from_indices_vs_bincount():
    idx = resample_indices(9, 50, generator=gen(3))
    c = counts_from_indices(idx, 9)
    for row, want in zip(c.numpy(), idx.numpy()):
        np.testing.assert_array_equal(row, np.bincount(want, minlength=9))


def test_block_indices():
    idx = block_indices(23, 5, 200, generator=gen(4))
    assert idx.shape == (200, 23)
    blocks = idx[:, :20].reshape(200, 4, 5)
    assert ((blocks[..., 1:] - blocks[..., :-1]) == 1).all()
    starts = idx[:, ::5]
    assert starts.min() == 0 and starts.max() == 23 - 5
    with pytest.raises(InputError, match="block"):
        block_indices(4, 5, 2, generator=gen(0))


def test_permutations_within_strata():
    strata = torch.tensor([0, 1, 0, 1, 1, 2, 0])
    p = permutations(7, 3000, generator=gen(5), strata=strata)
    assert torch.equal(p.sort(1).values, torch.arange(7).expand(3000, 7))
    assert torch.equal(strata[p], strata.expand(3000, 7))
    # uniform within a stratum: position 0 goes to each of 0, 2, 6 a third of the time
    freq = np.bincount(p[:, 0].numpy(), minlength=7)[[0, 2, 6]] / 3000
    np.testing.assert_allclose(freq, 1 / 3, atol=0.04)
    free = permutations(5, 4000, generator=gen(6))
    np.testing.assert_allclose(np.bincount(free[:, 2].numpy(), minlength=5) / 4000, 0.2, atol=0.03)


def test_poisson_weights_depend_only_on_seed_and_unit():
    w = poisson_weights(11, range(40), 500)
    assert w.shape == (500, 40) and w.dtype == torch.int64
    # any subset, any order, any "rank" gives the same columns, bitwise
    rank0 = poisson_weights(11, [38, 0, 12], 500)
    assert torch.equal(rank0, w[:, [38, 0, 12]])
    assert torch.equal(poisson_weights(11, torch.tensor([5]), 500)[:, 0], w[:, 5])
    assert not torch.equal(poisson_weights(12, range(40), 500), w)
    # Poisson(1): mean 1, variance 1, and the pmf
    many = poisson_weights(3, range(200), 1000).flatten().numpy()
    assert abs(many.mean() - 1) < 5 * math.sqrt(1 / many.size)
    assert abs(many.var() - 1) < 5 * math.sqrt(2 / many.size) + 0.01
    pmf = np.bincount(many, minlength=6)[:6] / many.size
    np.testing.assert_allclose(pmf, scipy.stats.poisson.pmf(np.arange(6), 1.0), atol=0.004)
    with pytest.raises(InputError, match="seed"):
        poisson_weights(-1, [0])
    with pytest.raises(InputError, match="units"):
        poisson_weights(1, [0, -3])


# --------------------------------------------------------------------------- intervals


def test_percentile_interval_vs_numpy_with_nan():
    rng = np.random.default_rng(7)
    reps = rng.normal(size=(999, 4, 3))
    reps[::7, 1, 2] = np.nan
    reps[:, 3, 0] = np.nan
    got = percentile_interval(torch.from_numpy(reps), 0.9).numpy()
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        want = np.nanquantile(reps, [0.05, 0.95], axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True)
    est = torch.from_numpy(rng.normal(size=(4, 3)))
    ci = interval(est, torch.from_numpy(reps))
    assert ci.shape == (len(BOUNDS), 4, 3) and torch.equal(ci[1], est)
    for bad in (0.0, 1.0, 95):
        with pytest.raises(InputError, match="level"):
            percentile_interval(torch.from_numpy(reps), bad)


# --------------------------------------------------------------------------- weighted per-unit states


def units_of(rng: np.random.Generator, sizes: list[int], offset: float) -> list[np.ndarray]:
    """Per unit [size, 2, 3] samples of (x, y) per 'layer', correlated, with a large offset."""
    out = []
    for s in sizes:
        x = rng.normal(size=(s, 3)) + offset
        y = 0.6 * (x - offset) + rng.normal(size=(s, 3)) - 2 * offset
        out.append(np.stack([x, y], 1))
    return out


def test_weighted_moments_and_pearson_vs_resampled_numpy():
    rng = np.random.default_rng(8)
    sizes = [4, 1, 6, 3, 5, 2]
    units = units_of(rng, sizes, 1e6)  # large means: the merge must not cancel
    count = torch.tensor(sizes)
    mean = torch.from_numpy(np.stack([u.mean(0) for u in units]))  # [U, 2, 3]
    m2 = torch.from_numpy(np.stack([((u - u.mean(0)) ** 2).sum(0) for u in units]))
    cxy = torch.from_numpy(np.stack([((u[:, 0] - u[:, 0].mean(0)) * (u[:, 1] - u[:, 1].mean(0))).sum(0)
                                     for u in units]))
    total = torch.from_numpy(np.stack([u.sum(0) for u in units]))
    w = torch.cat([resample_counts(6, 5, generator=gen(9)), poisson_weights(4, range(6), 5)])
    n_b, mean_b, m2_b = weighted_moments(count, mean, m2, w)
    r_b = weighted_pearson(count, mean[:, 0], mean[:, 1], m2[:, 0], m2[:, 1], cxy, w)
    wm = weighted_mean(count, total, w)
    for b, row in enumerate(w.numpy()):
        data = np.concatenate([units[u] for u in range(6) for _ in range(row[u])])
        assert n_b[b] == len(data)
        np.testing.assert_allclose(mean_b[b].numpy(), data.mean(0), rtol=1e-14)
        np.testing.assert_allclose(wm[b].numpy(), data.mean(0), rtol=1e-14)
        np.testing.assert_allclose(m2_b[b].numpy(), ((data - data.mean(0)) ** 2).sum(0), rtol=1e-9)
        want_r = [np.corrcoef(data[:, 0, k], data[:, 1, k])[0, 1] for k in range(3)]
        np.testing.assert_allclose(r_b[b].numpy(), want_r, rtol=1e-9)


def test_unit_sums_vs_numpy_and_bitwise_across_threads():
    rng = np.random.default_rng(10)
    states = torch.from_numpy(rng.normal(size=(37, 4, 5)) * 10.0 ** rng.integers(-8, 8, size=(37, 4, 5)))
    w = poisson_weights(2, range(37), 300)
    got = unit_sums(states, w)
    np.testing.assert_allclose(got.numpy(), np.einsum("bu,uij->bij", w.numpy().astype(float), states.numpy()),
                               rtol=1e-10, atol=1e-3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = unit_sums(states, w)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(got, one)
    # two ranks each drew their own units' weights: the table is the same, so are the bits
    halves = torch.cat([poisson_weights(2, range(0, 20), 300), poisson_weights(2, range(20, 37), 300)], 1)
    assert torch.equal(unit_sums(states, halves), got)


def test_weighted_bad_inputs():
    with pytest.raises(InputError, match=r"\[resample, 3 units\]"):
        unit_sums(torch.ones(3, 2), torch.ones(2, 4))
    with pytest.raises(InputError, match="non-negative"):
        unit_sums(torch.ones(3, 2), -torch.ones(2, 3))


# --------------------------------------------------------------------------- coverage by simulation


def _coverage_tolerance(reps: int, deficit: float) -> tuple[float, float]:
    """[0.95 - 3 SE - deficit, 0.95 + 3 SE]: SE the binomial standard error of a coverage estimated from
    ``reps`` replications, ``deficit`` the percentile interval's known small-sample under-coverage."""
    se = math.sqrt(0.95 * 0.05 / reps)
    return 0.95 - 3 * se - deficit, 0.95 + 3 * se


def test_coverage_mean_and_pearson_multinomial(one_thread):
    """2000 data sets of n = 100 bivariate normals (rho = 0.5); B = 1000 multinomial resamples each,
    all resamples of 40 data sets in one product. The 95% percentile intervals of the mean (truth 0)
    and of Pearson r (truth 0.5) must cover the truth 95% of the time, within 3 binomial SE
    (0.015) above and 3 SE + 1.5 points below: at n = 100 the percentile interval under-covers by
    about 0.5 (mean: P(|t_99| <= 1.96·sqrt(0.99)) = 0.946) to 1 point (r, measured 0.941 in 4000
    data sets)."""
    reps, n, b, rho, chunk = 2000, 100, 1000, 0.5, 40
    g = gen(12)
    hit_mean = hit_r = 0
    for _ in range(reps // chunk):
        z = torch.randn(chunk, n, 2, generator=g, dtype=torch.float64)
        x, y = z[..., 0], rho * z[..., 0] + math.sqrt(1 - rho * rho) * z[..., 1]
        feats = torch.stack([x, y, x * x, y * y, x * y], -1)  # [set, n, 5]
        w = resample_counts(n, chunk * b, generator=g).view(chunk, b, n).double()
        m = (w @ feats) / n  # [set, B, 5] resampled moments
        mx, my = m[..., 0], m[..., 1]
        r = (m[..., 4] - mx * my) / torch.sqrt((m[..., 2] - mx * mx) * (m[..., 3] - my * my))
        ci = percentile_interval(mx.T)
        hit_mean += int(((ci[0] <= 0.0) & (0.0 <= ci[1])).sum())
        ci = percentile_interval(r.T)
        hit_r += int(((ci[0] <= rho) & (rho <= ci[1])).sum())
    lo, hi = _coverage_tolerance(reps, 0.015)
    print(f"coverage: mean {hit_mean / reps:.4f}, r {hit_r / reps:.4f}, accepted [{lo:.4f}, {hi:.4f}]")
    assert lo <= hit_mean / reps <= hi, hit_mean / reps
    assert lo <= hit_r / reps <= hi, hit_r / reps


def test_coverage_streamed_poisson_units(one_thread):
    """The streamed path: 600 data sets of 40 units (2 normal samples each, mean 3); per-unit states
    (count, mean, M2) and per-unit Poisson(1) weights seeded by (data set, unit); the mean from
    :func:`weighted_moments`. 95% coverage within 3 binomial SE above and 3 SE + 1.5 points below
    (40 units: P(|t_39| <= 1.96·sqrt(39/40)) = 0.939)."""
    reps, units, b = 600, 40, 1000
    g = gen(13)
    hits = 0
    for rep in range(reps):
        x = 3.0 + torch.randn(units, 2, generator=g, dtype=torch.float64)
        mean = x.mean(1)
        m2 = (x - mean[:, None]).square().sum(1)
        _, mean_b, _ = weighted_moments(torch.full((units,), 2), mean, m2, poisson_weights(rep, range(units), b))
        ci = percentile_interval(mean_b)
        hits += int(ci[0] <= 3.0 <= ci[1])
    lo, hi = _coverage_tolerance(reps, 0.015)
    print(f"coverage: streamed mean {hits / reps:.4f}, accepted [{lo:.4f}, {hi:.4f}]")
    assert lo <= hits / reps <= hi, hits / reps


# --------------------------------------------------------------------------- permutation p-values, maxT, BH


def ref_maxt(obs: np.ndarray, null: np.ndarray, step_down: bool) -> np.ndarray:
    """Westfall & Young (1993) maxT, written as loops."""
    k, p = obs.size, null.shape[0]
    order = sorted(range(k), key=lambda i: -obs[i])
    adj = np.empty(k)
    prev = 0.0
    for j, h in enumerate(order):
        rest = order[j:] if step_down else order
        hits = sum(1 for q in range(p) if max(null[q, i] for i in rest) >= obs[h])
        prev = max(prev, (1 + hits) / (1 + p))
        adj[h] = prev
    return adj


@pytest.mark.parametrize("step_down", [True, False])
def test_maxstat_vs_loop(step_down):
    rng = np.random.default_rng(14)
    null = rng.normal(size=(199, 12))
    obs = rng.normal(size=12) + np.linspace(0, 4, 12)
    got = maxstat_pvalues(torch.from_numpy(obs), torch.from_numpy(null), step_down=step_down)
    np.testing.assert_allclose(got.numpy(), ref_maxt(obs, null, step_down))
    unc = permutation_pvalues(torch.from_numpy(obs), torch.from_numpy(null)).numpy()
    np.testing.assert_allclose(unc, (1 + (null >= obs).sum(0)) / 200)
    assert (got.numpy() >= unc - 1e-15).all()


def test_maxstat_alternatives_nan_and_shapes():
    rng = np.random.default_rng(15)
    null = rng.normal(size=(99, 3, 4))
    obs = rng.normal(size=(3, 4)) * 3
    obs[1, 2] = np.nan
    got = maxstat_pvalues(torch.from_numpy(obs), torch.from_numpy(null), "two-sided").numpy()
    assert got.shape == (3, 4) and np.isnan(got[1, 2]) and np.isfinite(np.delete(got.ravel(), 6)).all()
    keep = ~np.isnan(obs.ravel())
    want = ref_maxt(np.abs(obs.ravel()[keep]), np.abs(null.reshape(99, -1)[:, keep]), True)
    np.testing.assert_allclose(got.ravel()[keep], want)
    less = permutation_pvalues(torch.from_numpy(obs), torch.from_numpy(null), "less").numpy()
    np.testing.assert_allclose(less[0], (1 + (null[:, 0] <= obs[0]).sum(0)) / 100)
    with pytest.raises(InputError, match="alternative"):
        permutation_pvalues(torch.from_numpy(obs), torch.from_numpy(null), "bigger")
    with pytest.raises(InputError, match="null must be"):
        maxstat_pvalues(torch.zeros(3), torch.zeros(5, 4))


def test_maxstat_controls_familywise_error_under_the_null(one_thread):
    """All 10 'layers' null and correlated: the max-statistic p < 0.05 somewhere in about 5% of
    experiments (SE 0.007 over 1000), where uncorrected p-values reject far more often."""
    g = gen(16)
    exps, perms, k = 1000, 199, 10
    base = torch.randn(exps, perms + 1, 1, generator=g, dtype=torch.float64)
    stats = 0.7 * base + 0.7 * torch.randn(exps, perms + 1, k, generator=g, dtype=torch.float64)
    fwe = unc = 0
    for e in range(exps):  # row 0 observed, rows 1.. the permutation null (exchangeable under H0)
        fwe += bool((maxstat_pvalues(stats[e, 0], stats[e, 1:]) < 0.05).any())
        unc += bool((permutation_pvalues(stats[e, 0], stats[e, 1:]) < 0.05).any())
    assert fwe / exps <= 0.05 + 3 * 0.0069
    assert unc / exps > 0.15


def test_benjamini_hochberg_vs_scipy():
    rng = np.random.default_rng(17)
    p = rng.random((5, 30)) ** 3
    got = benjamini_hochberg(torch.from_numpy(p)).numpy()
    np.testing.assert_allclose(got, scipy.stats.false_discovery_control(p, axis=-1), rtol=1e-12)
    np.testing.assert_allclose(benjamini_hochberg(torch.from_numpy(p.T), dim=0).numpy(), got.T, rtol=1e-12)
    with_nan = p[0].copy()
    with_nan[[3, 9]] = np.nan
    got = benjamini_hochberg(torch.from_numpy(with_nan)).numpy()
    keep = ~np.isnan(with_nan)
    np.testing.assert_allclose(got[keep], scipy.stats.false_discovery_control(with_nan[keep]), rtol=1e-12)
    assert np.isnan(got[~keep]).all()
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        benjamini_hochberg(torch.tensor([0.5, 1.5]))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_unit_sums_bitwise_and_generators():
    rng = np.random.default_rng(18)
    states = torch.from_numpy(rng.normal(size=(50, 7)) * 1e3)
    w = poisson_weights(5, range(50), 1000)
    assert torch.equal(unit_sums(states.cuda(), w.cuda()).cpu(), unit_sums(states, w))
    count = torch.randint(1, 5, (50,))
    cpu = weighted_moments(count, states, states.abs(), w)
    gpu = weighted_moments(count.cuda(), states.cuda(), states.abs().cuda(), w.cuda())
    assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu, gpu))
    g = torch.Generator(device="cuda").manual_seed(0)
    idx = resample_indices(30, 100, generator=g, strata=torch.arange(30, device="cuda") % 3)
    assert idx.is_cuda and torch.equal((idx % 3).cpu(), (torch.arange(30) % 3).expand(100, 30))
    p = permutations(30, 10, generator=g)
    assert torch.equal(p.sort(1).values.cpu(), torch.arange(30).expand(10, 30))
    q = benjamini_hochberg(torch.rand(4, 9, device="cuda"))
    assert q.is_cuda
