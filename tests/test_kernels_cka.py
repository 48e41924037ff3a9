"""Linear CKA, biased and debiased: full batch (cka), streamed (cka_streaming: exact moments and
minibatches), permutation null and unit bootstrap (cka_inference); docs/analyses.md, "Similarity and
inference (kernels)".

References are plain NumPy written from the papers' formulas on UNcentred Gram matrices (Kornblith
et al. 2019: ``tr(KHLH)``; Song et al. 2012: the unbiased HSIC with zeroed diagonals), one layer pair
at a time, never the kernels' algebra.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lamina.engine.kernels.cka as cka_mod
from lamina.engine.errors import InputError
from lamina.engine.kernels.bootstrap import permutations, resample_counts
from lamina.engine.kernels.cka import best_match, cka_matrix, cka_terms, linear_cka
from lamina.engine.kernels.cka_inference import cka_bootstrap_terms, cka_permutation_terms, cka_permutation_test
from lamina.engine.kernels.cka_streaming import (
    merge_minibatch_states,
    merge_moment_states,
    minibatch_cka,
    minibatch_state,
    moment_state,
    moment_terms,
)

# --------------------------------------------------------------------------- references


def ref_hsic_biased(k: np.ndarray, l: np.ndarray) -> float:
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ l @ h)) / (n - 1) ** 2


def ref_hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:
    n = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    one = np.ones(n)
    return float(np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
                 - 2.0 / (n - 2) * (one @ kt @ lt @ one)) / (n * (n - 3))


def ref_cka(x: np.ndarray, y: np.ndarray, debiased: bool = False, centre: bool = False) -> float:
    """x [n, p], y [n, q], not centred (``centre``: features centred first, for large offsets, where
    the Grams of uncentred data lose digits; both HSICs are invariant to the shift)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if centre:
        x, y = x - x.mean(0), y - y.mean(0)
    k, l = x @ x.T, y @ y.T
    hsic = ref_hsic_unbiased if debiased else ref_hsic_biased
    den = hsic(k, k) * hsic(l, l)
    return hsic(k, l) / np.sqrt(den) if den > 0 else np.nan


def ref_matrix(xa: np.ndarray, xb: np.ndarray, debiased: bool = False, centre: bool = False) -> np.ndarray:
    return np.array([[ref_cka(a, b, debiased, centre) for b in xb] for a in xa])


def ref_minibatch(xa: np.ndarray, xb: np.ndarray, m: int) -> np.ndarray:
    """Nguyen et al.: mean over minibatches of HSIC_u, then the ratio."""
    k = xa.shape[1] // m
    out = np.zeros((xa.shape[0], xb.shape[0]))
    for i, a in enumerate(xa):
        for j, b in enumerate(xb):
            num = da = db = 0.0
            for t in range(k):
                sa, sb = a[t * m:(t + 1) * m], b[t * m:(t + 1) * m]
                ka, kb = sa @ sa.T, sb @ sb.T
                num += ref_hsic_unbiased(ka, kb)
                da += ref_hsic_unbiased(ka, ka)
                db += ref_hsic_unbiased(kb, kb)
            out[i, j] = num / np.sqrt(da * db)
    return out


def layered(rng: np.random.Generator, layers: int, n: int, width: int, shared: np.ndarray | None = None,
            offset: float = 3.0) -> np.ndarray:
    """[layer, n, width]: a shared latent (so CKA values spread over (0, 1)), noise, per-feature offsets."""
    z = shared if shared is not None else rng.normal(size=(n, 3))
    out = []
    for i in range(layers):
        mix = rng.normal(size=(3, width)) * (i + 1) / layers
        out.append(z @ mix + rng.normal(size=(n, width)) + offset * rng.normal(size=width))
    return np.stack(out)


def pair(seed: int, la=3, lb=2, n=30, p=7, q=5, offset=3.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3))
    return layered(rng, la, n, p, z, offset), layered(rng, lb, n, q, z, offset)


# --------------------------------------------------------------------------- full batch


@pytest.mark.parametrize("form", ["gram", "feature", "auto"])
@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("same", [False, True])
def test_matrix_vs_numpy_float64(form, debiased, same):
    xa, xb = pair(1)
    ta, tb = torch.from_numpy(xa), torch.from_numpy(xb)
    got = cka_matrix(ta, None if same else tb, debiased=debiased, form=form)
    want = ref_matrix(xa, xa if same else xb, debiased)
    assert got.dtype == torch.float64 and got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)
    assert np.ptp(want) > 0.2  # the data spread the values: a wrong term would show


@pytest.mark.parametrize("form", ["gram", "feature"])
def test_matrix_float32_and_bfloat16(form):
    xa, xb = pair(2, n=60, offset=30.0)
    want_b, want_u = ref_matrix(xa, xb), ref_matrix(xa, xb, True)
    for dtype, tol in ((torch.float32, 2e-4), (torch.bfloat16, 5e-2)):
        ta, tb = torch.from_numpy(xa).to(dtype), torch.from_numpy(xb).to(dtype)
        if dtype == torch.bfloat16:  # the reference sees the same rounded inputs
            want_b = ref_matrix(ta.double().numpy(), tb.double().numpy())
            want_u = ref_matrix(ta.double().numpy(), tb.double().numpy(), True)
        t = cka_terms(ta, tb, form=form)
        np.testing.assert_allclose(t.cka().numpy(), want_b, atol=tol)
        np.testing.assert_allclose(t.cka_debiased().numpy(), want_u, atol=tol if dtype == torch.bfloat16 else 1e-3)


@pytest.mark.parametrize("same", [False, True])
def test_tiles_and_blocks_add_up(monkeypatch, same):
    """A tiny budget forces many Gram blocks (each off-diagonal block counted twice) and many layer
    tiles of the feature form; both must still match the reference."""
    monkeypatch.setattr(cka_mod, "_BUDGET", 40)
    xa, xb = pair(3, la=4, lb=3, n=23, p=3, q=2)
    other = None if same else torch.from_numpy(xb)
    for form in ("gram", "feature"):
        t = cka_terms(torch.from_numpy(xa), other, form=form)
        ref_b = xa if same else xb
        np.testing.assert_allclose(t.cka().numpy(), ref_matrix(xa, ref_b), rtol=1e-10)
        np.testing.assert_allclose(t.cka_debiased().numpy(), ref_matrix(xa, ref_b, True), rtol=1e-9, atol=1e-12)


def test_auto_picks_the_cheaper_form():
    gram, feature = cka_mod._costs(48, 1600, 48, 1600, 2048, True)
    assert gram < feature
    gram, feature = cka_mod._costs(2, 8, 2, 8, 100_000, False)
    assert feature < gram


def test_invariances_and_single_pair():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 6))
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    y = rng.normal(size=(40, 3))
    tx = torch.from_numpy(x)
    assert float(linear_cka(tx, torch.from_numpy(3.0 * x @ q + 5.0))) == pytest.approx(1.0, abs=1e-12)
    assert float(linear_cka(tx, torch.from_numpy(y))) == pytest.approx(ref_cka(x, y), rel=1e-10)
    assert float(linear_cka(tx, torch.from_numpy(y), debiased=True)) == pytest.approx(ref_cka(x, y, True), rel=1e-9)


def test_constant_layer_gives_nan_not_an_error():
    xa, xb = pair(5)
    xa[1] = 2.5  # a layer constant over the samples
    got = cka_matrix(torch.from_numpy(xa), torch.from_numpy(xb))
    assert torch.isnan(got[1]).all() and torch.isfinite(got[0]).all()


def test_bad_inputs_are_named():
    x = torch.randn(2, 10, 3)
    with pytest.raises(InputError, match="same samples"):
        cka_matrix(x, torch.randn(2, 11, 3))
    with pytest.raises(InputError, match=r"\[layer, sample, feature\]"):
        cka_matrix(torch.randn(10, 3))
    with pytest.raises(InputError, match="at least 4 samples"):
        cka_matrix(torch.randn(2, 3, 3), debiased=True)
    with pytest.raises(InputError, match="form"):
        cka_matrix(x, form="fast")
    with pytest.raises(InputError, match="real floating"):
        cka_matrix(torch.ones(2, 10, 3, dtype=torch.int64))
    with pytest.raises(InputError, match="sample, feature"):
        linear_cka(x, x)


def test_best_match_vs_numpy():
    rng = np.random.default_rng(6)
    m = rng.random((7, 5))
    m[2, 3] = np.nan
    m[4] = np.nan
    m[5, 1] = m[5, 4] = 2.0  # a tie: the lower index wins
    idx, val = best_match(torch.from_numpy(m))
    for i in range(7):
        row = m[i]
        if np.isnan(row).all():
            assert idx[i] == -1 and torch.isnan(val[i])
        else:
            assert idx[i] == int(np.nanargmax(row)) and val[i] == np.nanmax(row)
    assert idx[5] == 1


# --------------------------------------------------------------------------- streamed: exact moments


def fold(states, merge):
    total = states[0]
    for s in states[1:]:
        total = merge(total, s)
    return total


def tree(states, merge):
    while len(states) > 1:
        states = [merge(states[i], states[i + 1]) if i + 1 < len(states) else states[i]
                  for i in range(0, len(states), 2)]
    return states[0]


@pytest.mark.parametrize("same", [False, True])
def test_moments_streamed_equal_full_batch(same):
    xa, xb = pair(7, la=3, lb=2, n=61, p=4, q=3, offset=1e3)  # large means: the merge must not cancel
    ta, tb = torch.from_numpy(xa), None if same else torch.from_numpy(xb)
    cuts = [0, 1, 9, 10, 30, 47, 61]  # uneven units, one of a single sample
    states = [moment_state(ta[:, a:b], None if tb is None else tb[:, a:b]) for a, b in zip(cuts, cuts[1:])]
    ref_b = xa if same else xb
    for total in (fold(states, merge_moment_states), tree(states, merge_moment_states)):
        t = moment_terms(total)
        assert int(total["count"]) == 61
        np.testing.assert_allclose(t.cka().numpy(), ref_matrix(xa, ref_b, centre=True), rtol=1e-9)
        np.testing.assert_allclose(t.cka_debiased().numpy(), ref_matrix(xa, ref_b, True, centre=True), rtol=1e-8,
                                   atol=1e-10)
    whole = moment_terms(moment_state(ta, tb))
    streamed = moment_terms(fold(states, merge_moment_states))
    np.testing.assert_allclose(streamed.cka().numpy(), whole.cka().numpy(), rtol=1e-12)


def test_moments_empty_state_is_the_identity():
    x = torch.randn(2, 12, 3, dtype=torch.float64)
    s = moment_state(x)
    empty = {k: torch.zeros_like(v) for k, v in s.items()}
    assert merge_moment_states(empty, s) is s and merge_moment_states(s, empty) is s


# --------------------------------------------------------------------------- streamed: minibatches


@pytest.mark.parametrize("same", [False, True])
def test_minibatch_vs_numpy_and_one_go(same):
    xa, xb = pair(8, n=96)
    ta, tb = torch.from_numpy(xa), None if same else torch.from_numpy(xb)
    m = 16
    one_go = minibatch_state(ta, tb, batch_size=m)
    assert int(one_go["batches"]) == 6 and int(one_go["unused"]) == 0
    want = ref_minibatch(xa, xa if same else xb, m)
    np.testing.assert_allclose(minibatch_cka(one_go).numpy(), want, rtol=1e-9)
    # streamed over units whose sizes are multiples of m: the same minibatches
    cuts = [0, 16, 64, 80, 96]
    units = [minibatch_state(ta[:, a:b], None if tb is None else tb[:, a:b], batch_size=m) for a, b in zip(cuts, cuts[1:])]
    np.testing.assert_allclose(minibatch_cka(fold(units, merge_minibatch_states)).numpy(), want, rtol=1e-9)


def test_minibatch_unused_tail_and_batched_chunks(monkeypatch):
    monkeypatch.setattr(cka_mod, "_BUDGET", 300)  # a few minibatches per batched product
    xa, xb = pair(9, n=70)
    s = minibatch_state(torch.from_numpy(xa), torch.from_numpy(xb), batch_size=8)
    assert int(s["batches"]) == 8 and int(s["unused"]) == 6
    np.testing.assert_allclose(minibatch_cka(s).numpy(), ref_minibatch(xa[:, :64], xb[:, :64], 8), rtol=1e-9)
    with pytest.raises(InputError, match="no complete minibatch"):
        minibatch_cka(minibatch_state(torch.from_numpy(xa[:, :5]), batch_size=8))
    with pytest.raises(InputError, match="batch_size"):
        minibatch_state(torch.from_numpy(xa), batch_size=3)


def test_minibatch_bitwise_under_two_ranks_and_resume():
    """Per-unit states folded in unit order: whoever computed a unit, and whenever, the bits agree."""
    rng = np.random.default_rng(10)
    x = torch.from_numpy(rng.normal(size=(3, 8 * 32, 6)))
    units = [x[:, i * 32:(i + 1) * 32] for i in range(8)]
    sequential = fold([minibatch_state(u, batch_size=8) for u in units], merge_minibatch_states)
    rank = {i: minibatch_state(units[i], batch_size=8) for i in range(1, 8, 2)}  # rank 1: odd units
    rank.update({i: minibatch_state(units[i], batch_size=8) for i in range(0, 8, 2)})  # rank 0: even
    two_ranks = fold([rank[i] for i in range(8)], merge_minibatch_states)
    before = {i: minibatch_state(units[i], batch_size=8) for i in range(3)}  # killed after unit 2
    after = {i: minibatch_state(units[i], batch_size=8) for i in range(3, 8)}  # resumed
    resumed = fold([{**before, **after}[i] for i in range(8)], merge_minibatch_states)
    for other in (two_ranks, resumed):
        assert all(torch.equal(sequential[k], other[k]) for k in sequential)
        assert torch.equal(minibatch_cka(sequential), minibatch_cka(other))


# --------------------------------------------------------------------------- permutation null


@pytest.mark.parametrize("same", [False, True])
def test_permutation_terms_vs_numpy(same, monkeypatch):
    monkeypatch.setattr(cka_mod, "_BUDGET", 2 * 3 * 20 * 20)  # chunks of permutations
    xa, xb = pair(11, n=20)
    perms = permutations(20, 7, generator=torch.Generator().manual_seed(3))
    t = cka_permutation_terms(torch.from_numpy(xa), None if same else torch.from_numpy(xb), permutations=perms)
    other = xa if same else xb
    for debiased in (False, True):
        got = t.cka(debiased=debiased).numpy()
        for k, pi in enumerate(perms.numpy()):
            np.testing.assert_allclose(got[k], ref_matrix(xa, other[:, pi], debiased), rtol=1e-9, atol=1e-12)


def test_permutation_test_pvalues():
    xa, xb = pair(12, la=2, lb=2, n=40)
    xb[1] = np.random.default_rng(0).normal(size=xb[1].shape)  # B's layer 1 unrelated to anything
    perms = permutations(40, 199, generator=torch.Generator().manual_seed(4))
    r = cka_permutation_test(torch.from_numpy(xa), torch.from_numpy(xb), permutations=perms)
    null = r["null"].numpy()
    obs = ref_matrix(xa, xb)
    np.testing.assert_allclose(r["observed"].numpy(), obs, rtol=1e-9)
    want_p = (1 + (null >= r["observed"].numpy()).sum(0)) / 200
    np.testing.assert_allclose(r["p"].numpy(), want_p)
    assert (r["p"][:, 0] <= 0.01).all() and (r["p"][:, 1] > 0.01).all()
    assert (r["p_fwer"] >= r["p"]).all()
    with pytest.raises(InputError, match="permutation of 0..n-1"):
        cka_permutation_terms(torch.from_numpy(xa), permutations=torch.zeros(2, 40, dtype=torch.int64))


# --------------------------------------------------------------------------- bootstrap over units


@pytest.mark.parametrize("same", [False, True])
def test_bootstrap_terms_vs_resampled_numpy(same, monkeypatch):
    monkeypatch.setattr(cka_mod, "_BUDGET", 500)  # chunks of resamples
    sizes = [3, 1, 5, 4, 2, 6]
    xa, xb = pair(13, n=sum(sizes))
    w = resample_counts(len(sizes), 9, generator=torch.Generator().manual_seed(5))
    w[0] = torch.tensor([0, 3, 1, 0, 2, 0])  # a unit of one sample three times: copies pair up
    t = cka_bootstrap_terms(torch.from_numpy(xa), None if same else torch.from_numpy(xb), weights=w, unit_sizes=sizes)
    starts = np.cumsum([0] + sizes)
    other = xa if same else xb
    for b, row in enumerate(w.numpy()):
        rows = np.concatenate([np.arange(starts[u], starts[u + 1]) for u in range(len(sizes)) for _ in range(row[u])])
        for debiased in (False, True):
            np.testing.assert_allclose(t.cka(debiased=debiased)[b].numpy(),
                                       ref_matrix(xa[:, rows], other[:, rows], debiased), rtol=1e-8, atol=1e-10)
        assert float(t.n[b]) == len(rows)


def test_bootstrap_terms_float32_with_ones_is_the_estimate():
    xa, xb = pair(14, n=40, offset=20.0)
    ta, tb = torch.from_numpy(xa).float(), torch.from_numpy(xb).float()
    t = cka_bootstrap_terms(ta, tb, weights=torch.ones(2, 8), unit_sizes=torch.full((8,), 5))
    np.testing.assert_allclose(t.cka()[1].numpy(), ref_matrix(xa, xb), atol=2e-4)
    np.testing.assert_allclose(t.cka_debiased()[0].numpy(), ref_matrix(xa, xb, True), atol=2e-3)


def test_bootstrap_bad_inputs():
    x = torch.randn(2, 10, 3)
    with pytest.raises(InputError, match="add up to the 10 samples"):
        cka_bootstrap_terms(x, weights=torch.ones(1, 2), unit_sizes=[5, 4])
    with pytest.raises(InputError, match=r"\[resample, 2 units\]"):
        cka_bootstrap_terms(x, weights=torch.ones(3), unit_sizes=[5, 5])
    with pytest.raises(InputError, match="non-negative integers"):
        cka_bootstrap_terms(x, weights=torch.tensor([[0.5, 1.0]]), unit_sizes=[5, 5])


# --------------------------------------------------------------------------- device


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_equals_cpu():
    xa, xb = pair(20, la=3, lb=2, n=120)
    ta, tb = torch.from_numpy(xa), torch.from_numpy(xb)
    ga, gb = ta.cuda(), tb.cuda()
    for form in ("gram", "feature"):
        for debiased in (False, True):
            np.testing.assert_allclose(cka_matrix(ga, gb, debiased=debiased, form=form).cpu().numpy(),
                                       cka_matrix(ta, tb, debiased=debiased, form=form).numpy(), rtol=1e-10)
    w = resample_counts(12, 50, generator=torch.Generator().manual_seed(0))
    cpu = cka_bootstrap_terms(ta, tb, weights=w, unit_sizes=[10] * 12)
    gpu = cka_bootstrap_terms(ga, gb, weights=w.cuda(), unit_sizes=[10] * 12)
    np.testing.assert_allclose(gpu.cka_debiased().cpu().numpy(), cpu.cka_debiased().numpy(), rtol=1e-9)
    perms = permutations(120, 20, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(cka_permutation_terms(ga, gb, permutations=perms.cuda()).cka().cpu().numpy(),
                               cka_permutation_terms(ta, tb, permutations=perms).cka().numpy(), rtol=1e-10)
    state = {k: v.cpu() for k, v in minibatch_state(ga, gb, batch_size=32).items()}
    np.testing.assert_allclose(minibatch_cka(state).numpy(), minibatch_cka(minibatch_state(ta, tb, batch_size=32)).numpy(),
                               rtol=1e-10)
    merged = merge_moment_states(moment_state(ga[:, :50], gb[:, :50]), moment_state(ga[:, 50:], gb[:, 50:]))
    np.testing.assert_allclose(moment_terms(merged).cka().cpu().numpy(), ref_matrix(xa, xb, centre=True), rtol=1e-9)
    # float32 on the GPU (TF32 off by default for matmuls in torch)
    np.testing.assert_allclose(cka_matrix(ga.float(), gb.float()).cpu().numpy(), ref_matrix(xa, xb), atol=2e-4)


def test_cka_bench_tiny_runs_and_reports(tmp_path, capsys):
    """The benchmark's smoke run (no speed asserted): every variant timed, ratios and agreement reported."""
    import json

    from lamina.benchmarks.cka_bench import main

    out = tmp_path / "cka.json"
    main(["--tiny", "--device", "cpu", "--repeats", "1", "--max-repeats", "1", "--warmup", "0", "--out", str(out)])
    assert "per-pair feature loop / lamina" in capsys.readouterr().out
    case = json.loads(out.read_text())["cka"]
    assert set(case["variants"]) == {"lamina", "floor", "per_pair_feature", "per_pair_gram", "bootstrap", "minibatch"}
    assert all(v["seconds"] > 0 for v in case["variants"].values())
    assert case["checks"]["max_abs_diff_vs_per_pair_feature"] < 1e-4
    assert case["checks"]["max_abs_diff_vs_per_pair_gram"] < 1e-4


def test_too_few_samples_in_a_resample_give_nan():
    x = torch.randn(2, 12, 3, dtype=torch.float64)
    w = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0]])  # 3, 0 and 6 samples
    t = cka_bootstrap_terms(x, weights=w, unit_sizes=[3] * 4)
    assert torch.isnan(t.cka_debiased()[:2]).all() and torch.isnan(t.cka()[1]).all()
    assert torch.isfinite(t.cka()[0]).all() and torch.isfinite(t.cka_debiased()[2]).all()
