"""Mutual k-nearest-neighbour alignment (Huh et al. 2024; docs/analyses.md, "Similarity and inference
(kernels)"), against NumPy written from the definition, one layer pair at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lamina.engine.kernels.knn as knn_mod
from lamina.engine.errors import InputError
from lamina.engine.kernels.knn import knn_indices, mutual_knn


def ref_knn(x: np.ndarray, k: int) -> np.ndarray:
    """[n, d] -> [n, k]: cosine neighbours, self excluded, nearest first, ties by lower index."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    xn = x / np.where(norm > 0, norm, 1.0)
    out = []
    for i in range(x.shape[0]):
        sim = xn @ xn[i]
        sim[i] = -np.inf
        out.append(np.argsort(-sim, kind="stable")[:k])
    return np.array(out)


def ref_mutual(a: np.ndarray, b: np.ndarray, k: int) -> float:
    na, nb = ref_knn(a, k), ref_knn(b, k)
    return float(np.mean([len(set(na[i]) & set(nb[i])) / k for i in range(a.shape[0])]))


def data(seed: int, layers: int, n: int, d: int, dupes: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 4))
    out = np.stack([z @ rng.normal(size=(4, d)) * (l + 1) + rng.normal(size=(n, d)) * (layers - l) for l in range(layers)])
    if dupes:  # identical vectors (the first token of every sequence): exact ties
        out[:, 5] = out[:, 3]
        out[:, 9] = out[:, 3]
        out[:, 7] = 0.0  # an all-zero vector: similarity 0 with everything
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_knn_indices_vs_numpy_with_ties(dtype, monkeypatch):
    monkeypatch.setattr(knn_mod, "_BUDGET", 2 * 40 * 7)  # blocks of 7 rows
    x = data(0, 2, 40, 6)
    got = knn_indices(torch.from_numpy(x).to(dtype), 5)
    assert got.shape == (2, 40, 5)
    for layer in range(2):
        np.testing.assert_array_equal(got[layer].numpy(), ref_knn(x[layer], 5))


@pytest.mark.parametrize("same", [False, True])
def test_mutual_knn_vs_numpy(same, monkeypatch):
    monkeypatch.setattr(knn_mod, "_BUDGET", 60 * 60)  # one A layer per mask group
    xa, xb = data(1, 3, 60, 7), data(2, 2, 60, 5)
    xb[:, :30] = xa[1:3, :30, :5] + 0.3 * np.random.default_rng(3).normal(size=(2, 30, 5))  # partly shared
    other = xa if same else xb
    got = mutual_knn(torch.from_numpy(xa), None if same else torch.from_numpy(xb), k=6)
    want = np.array([[ref_mutual(a, b, 6) for b in other] for a in xa])
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-15)
    assert np.ptp(want) > 0.1


def test_mutual_knn_bad_inputs():
    x = torch.randn(2, 10, 3)
    with pytest.raises(InputError, match="same samples"):
        mutual_knn(x, torch.randn(2, 9, 3))
    with pytest.raises(InputError, match="1 <= k < 10"):
        mutual_knn(x, k=10)
    with pytest.raises(InputError, match="NaN"):
        mutual_knn(torch.full((1, 10, 3), float("nan")))
    with pytest.raises(InputError, match=r"\[layer, sample, feature\]"):
        knn_indices(torch.randn(10, 3), 2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_equals_cpu_with_ties():
    x = torch.from_numpy(data(4, 3, 80, 9))
    assert torch.equal(knn_indices(x.cuda(), 7).cpu(), knn_indices(x, 7))
    assert torch.equal(mutual_knn(x.cuda(), k=7).cpu(), mutual_knn(x, k=7))
