"""RSM, selectivity index, its permutation p-value, and RSA (docs/analyses.md "rsa").

The SI reference is the lecture's literal label-product mask: G = triu(g gᵀ, 1),
within-category codes 1, 4, 9 and between-category codes 2, 3, 6.
"""

from __future__ import annotations

import doctest
import itertools

import numpy as np
import pytest
import scipy.stats
import torch

import lamina.engine.kernels.rsa as rsa_mod
from lamina.engine.errors import InputError
from lamina.engine.kernels.rsa import row_cosine_rsm, rsa_pearson, selectivity_index, selectivity_permutation_pvalue

# --------------------------------------------------------------------------- references


def ref_rsm(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            ni, nj = np.linalg.norm(x[i]), np.linalg.norm(x[j])
            out[i, j] = 0.0 if ni == 0 or nj == 0 else np.dot(x[i], x[j]) / (ni * nj)
    return out


def ref_si_products(rsm: np.ndarray, g: np.ndarray) -> float:
    """docs/analyses.md "rsa" verbatim, for labels 1, 2, 3."""
    G = np.triu(np.outer(g, g), 1)
    within = np.mean([np.mean(rsm[G == c]) for c in (1, 4, 9)])
    between = np.mean([np.mean(rsm[G == c]) for c in (2, 3, 6)])
    return within / between


def ref_si_pairs(rsm: np.ndarray, g: np.ndarray) -> float:
    """Any number of categories: group cells i < j by their unordered label pair."""
    cells: dict[tuple, list[float]] = {}
    n = len(g)
    for i in range(n):
        for j in range(i + 1, n):
            key = tuple(sorted((g[i], g[j])))
            cells.setdefault(key, []).append(rsm[i, j])
    within = [np.mean(v) for k, v in cells.items() if k[0] == k[1]]
    between = [np.mean(v) for k, v in cells.items() if k[0] != k[1]]
    return np.mean(within) / np.mean(between)


def category_items(rng: np.random.Generator, sizes, d=12, spread=0.5, labels=None) -> tuple[np.ndarray, np.ndarray]:
    """Items clustered by category around positive prototypes (cosines mostly positive), in shuffled order."""
    if labels is None:
        labels = np.concatenate([[c + 1] * n for c, n in enumerate(sizes)])[rng.permutation(sum(sizes))]
    protos = np.abs(rng.normal(size=(labels.max(), d))) + 0.5
    x = protos[labels - 1] + spread * rng.normal(size=(len(labels), d))
    return x, labels


# --------------------------------------------------------------------------- RSM


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_rsm_vs_loop(dtype):
    rng = np.random.default_rng(20)
    x = rng.normal(size=(2, 3, 7, 5))  # (layer, component, item, feature)
    x[0, 1, 3] = 0.0  # a zero item
    xt = torch.from_numpy(x).to(dtype)
    got = row_cosine_rsm(xt)
    assert got.shape == (2, 3, 7, 7)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    for a, b in itertools.product(range(2), range(3)):
        np.testing.assert_allclose(got[a, b].double().numpy(), ref_rsm(xt[a, b].double().numpy()), atol=tol, rtol=0)
    assert (got[0, 1, 3] == 0).all() and not torch.isnan(got).any()


# --------------------------------------------------------------------------- selectivity


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_si_three_categories_equals_product_formula(dtype):
    rng = np.random.default_rng(21)
    sizes = (10, 13, 11)  # space, interior, fruit
    labels = category_items(rng, sizes)[1]
    rsms = [ref_rsm(category_items(rng, sizes, labels=labels)[0]) for _ in range(4)]
    rsm = np.stack(rsms).reshape(2, 2, 34, 34)
    rsm[1, 1] += np.triu(rng.normal(0, 0.05, size=(34, 34)), 1)  # not symmetric: only the upper triangle counts
    got = selectivity_index(torch.from_numpy(rsm).to(dtype), torch.from_numpy(labels))
    assert got.shape == (2, 2) and got.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for a, b in itertools.product(range(2), range(2)):
        ref = ref_si_products(rsm[a, b], labels)
        assert abs(got[a, b].item() - ref) <= tol * abs(ref), (a, b)
        assert ref > 1  # the clusters are real


def test_si_four_categories_uses_pairs_not_products():
    rng = np.random.default_rng(22)
    x, labels = category_items(rng, (4, 5, 3, 6))
    rsm = ref_rsm(x)
    got = selectivity_index(torch.from_numpy(rsm), torch.from_numpy(labels)).item()
    assert got == pytest.approx(ref_si_pairs(rsm, labels), rel=1e-12)
    # labels are names, not numbers: any distinct integers give the same SI
    relabelled = np.array([10, -3, 7, 42])[labels - 1]
    assert selectivity_index(torch.from_numpy(rsm), torch.from_numpy(relabelled)).item() == pytest.approx(got, rel=1e-12)
    # with three categories the pair keys are the product codes
    x3, l3 = category_items(rng, (5, 4, 6))
    r3 = ref_rsm(x3)
    assert ref_si_pairs(r3, l3) == pytest.approx(ref_si_products(r3, l3), rel=1e-12)


@pytest.mark.parametrize(
    "labels,match",
    [
        ([1, 1, 1, 1, 1, 1], "at least 2 categories"),
        ([1, 1, 2, 2, 2, 3], r"categories \[3\] have a single item"),
        ([1, 1, 2, 2, 3], r"\[item\] = \[6\]"),
        ([1.0, 1.0, 2.0, 2.0, 3.0, 3.0], "integers"),
    ],
)
def test_si_label_errors(labels, match):
    with pytest.raises(InputError, match=match):
        selectivity_index(torch.eye(6), torch.tensor(labels))


def test_si_rsm_shape_error():
    with pytest.raises(InputError, match=r"\[\.\.\., item, item\]"):
        selectivity_index(torch.zeros(3, 4), [1, 1, 2])


# --------------------------------------------------------------------------- permutation test


def test_pvalue_structured_data_is_small():
    rng = np.random.default_rng(23)
    x, labels = category_items(rng, (10, 13, 11), spread=0.2)
    rsm = torch.from_numpy(ref_rsm(x))
    p = selectivity_permutation_pvalue(rsm, torch.from_numpy(labels), n_permutations=499,
                                       generator=torch.Generator().manual_seed(0))
    assert p.shape == () and p.item() == pytest.approx(1 / 500)


def test_pvalue_unstructured_data_is_roughly_uniform():
    rng = np.random.default_rng(24)
    n_items, batch = 15, 120
    x = np.abs(rng.normal(size=(batch, n_items, 6))) + 0.2  # no category structure
    rsm = row_cosine_rsm(torch.from_numpy(x))
    labels = torch.tensor([1] * 5 + [2] * 5 + [3] * 5)
    p = selectivity_permutation_pvalue(rsm, labels, n_permutations=99, generator=torch.Generator().manual_seed(1))
    assert p.shape == (batch,)
    assert ((p > 0) & (p <= 1)).all()
    assert (p * 100).round().sub(p * 100).abs().max() < 1e-9  # multiples of 1 / (1 + 99)
    assert 0.4 < p.mean().item() < 0.6
    assert 0.05 < (p <= 0.1).double().mean().item() < 0.2


def test_pvalue_same_permutations_for_every_leading_index(monkeypatch):
    rng = np.random.default_rng(25)
    rsm = torch.stack([torch.from_numpy(ref_rsm(category_items(rng, (4, 4, 4), spread=2.0)[0])) for _ in range(3)])
    labels = torch.tensor([1, 2, 3] * 4)
    whole = selectivity_permutation_pvalue(rsm, labels, n_permutations=60, generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(rsa_mod, "_PERM_CHUNK_ELEMENTS", 500)  # several permutation chunks
    for b in range(3):
        one = selectivity_permutation_pvalue(rsm[b], labels, n_permutations=60, generator=torch.Generator().manual_seed(2))
        assert one.item() == whole[b].item()


def test_pvalue_matches_counting_with_explicit_shuffles():
    """p = (1 + #{SI_perm >= SI_obs}) / (1 + n), checked with the kernel's own shuffles recomputed by hand."""
    rng = np.random.default_rng(26)
    x, labels = category_items(rng, (5, 4, 6), spread=1.5)
    rsm = ref_rsm(x)
    n_perm = 40
    p = selectivity_permutation_pvalue(torch.from_numpy(rsm), torch.from_numpy(labels), n_permutations=n_perm,
                                       generator=torch.Generator().manual_seed(3)).item()
    # the kernel draws its shuffles as argsort of float64 uniforms from the generator
    keys = torch.rand(n_perm, len(labels), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    shuffles = keys.argsort(dim=-1).numpy()
    observed = ref_si_products(rsm, labels)
    count = sum(ref_si_products(rsm, labels[s]) >= observed for s in shuffles)
    assert p == pytest.approx((1 + count) / (1 + n_perm))
    assert 0 < p <= 1


def test_pvalue_argument_errors():
    with pytest.raises(InputError, match="n_permutations"):
        selectivity_permutation_pvalue(torch.eye(4), [1, 1, 2, 2], n_permutations=0, generator=torch.Generator())


# --------------------------------------------------------------------------- RSA


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rsa_vs_scipy(dtype):
    rng = np.random.default_rng(27)
    a = rng.normal(size=(3, 9, 9))
    b = 0.5 * a + rng.normal(size=(3, 9, 9))
    got = rsa_pearson(torch.from_numpy(a).to(dtype), torch.from_numpy(b).to(dtype))
    assert got.shape == (3,)
    ii, jj = np.triu_indices(9, 1)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for k in range(3):
        ref = scipy.stats.pearsonr(a[k][ii, jj], b[k][ii, jj])[0]
        assert abs(got[k].item() - ref) <= tol


def test_rsa_reads_only_the_strict_upper_triangle_and_broadcasts():
    rng = np.random.default_rng(28)
    a = torch.from_numpy(rng.normal(size=(6, 6)))
    b = torch.from_numpy(rng.normal(size=(2, 6, 6)))
    messy = a + torch.tril(torch.from_numpy(rng.normal(size=(6, 6))))  # change diagonal and lower part
    assert torch.allclose(rsa_pearson(messy, b), rsa_pearson(a, b), atol=1e-14)
    assert rsa_pearson(a, b).shape == (2,)


def test_rsa_errors():
    with pytest.raises(InputError, match="same items"):
        rsa_pearson(torch.eye(4), torch.eye(5))
    with pytest.raises(InputError, match="at least 3 items"):
        rsa_pearson(torch.eye(2), torch.eye(2))
    with pytest.raises(InputError, match="broadcast"):
        rsa_pearson(torch.zeros(2, 4, 4), torch.zeros(3, 4, 4))


def test_docstrings():
    assert doctest.testmod(rsa_mod, raise_on_error=False).failed == 0
