"""uniform_histogram against np.histogram, bit for bit, including every kind of edge case."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch

from .hard_values import hard_values
import lamina.engine.kernels.histogram as hist_mod
from lamina.engine.errors import InputError
from lamina.engine.kernels.histogram import histogram_edges, uniform_histogram

RANGES = [
    (100, -1.0, 1.0),  # the Q/K/V cosine histograms
    (50, -8.0, 5.0),  # activation histograms (C)
    (80, -0.8, 0.8),  # correlation histograms (C)
    (7, -0.3, 0.7),
    (1, 0.0, 1.0),
    (13, 2.5, 2.5),  # empty range: NumPy widens it to [2.0, 3.0]
    (50, 1e4, 1e4 + 0.1),  # float32 edges a few ulp apart: exercises the binary-search path
]
DTYPES = [np.float16, np.float32, np.float64]


def numpy_or_none(v: np.ndarray, bins: int, lo: float, hi: float, **kw):
    try:
        return np.histogram(v, bins=bins, range=(lo, hi), **kw)[0]
    except ValueError:  # NumPy: too many bins for the range in this dtype
        return None


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("bins,lo,hi", RANGES)
def test_matches_numpy_batched(dtype, bins, lo, hi):
    rng = np.random.default_rng(1000 + bins)
    rows = [hard_values(rng, dtype, bins, lo, hi) for _ in range(6)]
    n = min(r.size for r in rows)
    batch = np.stack([r[:n] for r in rows]).reshape(2, 3, n)  # (2, 3, n)
    expected = [numpy_or_none(r, bins, lo, hi) for r in batch.reshape(6, n)]
    if any(e is None for e in expected):
        with pytest.raises(InputError, match="too many bins"):
            uniform_histogram(torch.from_numpy(batch), bins=bins, lo=lo, hi=hi)
        return
    got = uniform_histogram(torch.from_numpy(batch), bins=bins, lo=lo, hi=hi)
    assert got.dtype == torch.int64 and got.shape == (2, 3, bins)
    np.testing.assert_array_equal(got.reshape(6, bins).numpy(), np.stack(expected))
    # density: the same float64 values NumPy computes
    dens = uniform_histogram(torch.from_numpy(batch), bins=bins, lo=lo, hi=hi, density=True)
    assert dens.dtype == torch.float64
    expected_d = np.stack([np.histogram(r, bins=bins, range=(lo, hi), density=True)[0] for r in batch.reshape(6, n)])
    np.testing.assert_array_equal(dens.reshape(6, bins).numpy(), expected_d)


def test_both_bucket_paths_are_exercised():
    plan = hist_mod._plan
    assert plan(torch.float32, 100, -1.0, 1.0).fast
    assert plan(torch.float16, 100, -1.0, 1.0).fast
    assert not plan(torch.float32, 50, 1e4, 1e4 + 0.1).fast


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_binary_search_path_equals_fast_path(dtype, monkeypatch):
    rng = np.random.default_rng(7)
    v = torch.from_numpy(hard_values(rng, np.float64, 100, -1.0, 1.0)).to(dtype)
    fast = uniform_histogram(v, bins=100, lo=-1.0, hi=1.0)
    slow_plan = hist_mod._plan.__wrapped__(dtype, 100, -1.0, 1.0)
    monkeypatch.setattr(hist_mod, "_plan", lambda *a: hist_mod._Plan(**{**slow_plan.__dict__, "fast": False}))
    assert torch.equal(uniform_histogram(v, bins=100, lo=-1.0, hi=1.0), fast)


def bf16_round(x: float) -> float:
    """Round a float64 to bfloat16 (8 significant bits, round half to even), plain Python."""
    if x == 0:
        return x
    m, e = math.frexp(x)
    return math.ldexp(round(m * 256), e - 8)


def test_bfloat16_uses_bfloat16_edges():
    rng = np.random.default_rng(3)
    bins, lo, hi = 100, -1.0, 1.0
    edges = np.array([bf16_round(e) for e in np.linspace(lo, hi, bins + 1)])
    v32 = np.concatenate([rng.uniform(-1.2, 1.2, 3000), edges, [np.nan]]).astype(np.float32)
    v = torch.from_numpy(v32).to(torch.bfloat16)
    vals = v.float().numpy()  # exact
    # explicit edges: NumPy bins with edges[i] <= x < edges[i+1], the last bin closed
    expected = np.histogram(vals[~np.isnan(vals)], bins=edges)[0]
    np.testing.assert_array_equal(uniform_histogram(v, bins=bins, lo=lo, hi=hi).numpy(), expected)


def test_integer_input_like_numpy():
    rng = np.random.default_rng(4)
    v = rng.integers(-5, 15, size=(3, 200))
    got = uniform_histogram(torch.from_numpy(v), bins=9, lo=0, hi=9)
    np.testing.assert_array_equal(got.numpy(), np.stack([np.histogram(r, bins=9, range=(0, 9))[0] for r in v]))


def test_constant_and_all_nan_rows():
    x = torch.tensor([[0.5] * 6, [float("nan")] * 6, [1.0] * 6, [-1.0] * 6, [0.0] * 6], dtype=torch.float32)
    got = uniform_histogram(x, bins=4, lo=-1.0, hi=1.0)
    expected = np.stack([np.histogram(r, bins=4, range=(-1.0, 1.0))[0] for r in x.numpy()])
    np.testing.assert_array_equal(got.numpy(), expected)
    assert got[1].sum() == 0
    dens = uniform_histogram(x, bins=4, lo=-1.0, hi=1.0, density=True)
    assert torch.isnan(dens[1]).all()  # 0 / 0, as NumPy


@pytest.mark.parametrize("chunk", [7, 64, 1 << 18])
def test_chunking_does_not_change_counts(chunk, monkeypatch):
    rng = np.random.default_rng(5)
    v = rng.normal(0, 0.6, size=(5, 300)).astype(np.float32)
    monkeypatch.setattr(hist_mod, "_CPU_CHUNK", chunk)
    got = uniform_histogram(torch.from_numpy(v), bins=100, lo=-1.0, hi=1.0)
    np.testing.assert_array_equal(got.numpy(), np.stack([np.histogram(r, bins=100, range=(-1, 1))[0] for r in v]))


def test_empty_inputs():
    assert torch.equal(uniform_histogram(torch.zeros(0), bins=3, lo=0.0, hi=1.0), torch.zeros(3, dtype=torch.int64))
    assert uniform_histogram(torch.zeros(4, 0), bins=3, lo=0.0, hi=1.0).shape == (4, 3)
    assert uniform_histogram(torch.zeros(0, 5), bins=3, lo=0.0, hi=1.0).shape == (0, 3)


def test_edges_match_linspace():
    for bins, lo, hi in RANGES:
        ref = np.histogram(np.zeros(1), bins=bins, range=(lo, hi))[1]  # float64 data -> float64 edges
        np.testing.assert_array_equal(histogram_edges(bins, lo, hi).numpy(), ref)
        assert histogram_edges(bins, lo, hi).dtype == torch.float64


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(bins=0, lo=0.0, hi=1.0), "bins"),
        (dict(bins=2.5, lo=0.0, hi=1.0), "bins"),
        (dict(bins=3, lo=1.0, hi=0.0), "lo must not exceed hi"),
        (dict(bins=3, lo=0.0, hi=float("inf")), "not finite"),
        (dict(bins=3, lo=float("nan"), hi=1.0), "not finite"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(InputError, match=match):
        uniform_histogram(torch.zeros(4), **kwargs)


def test_bad_values():
    with pytest.raises(InputError, match="0-d"):
        uniform_histogram(torch.tensor(1.0), bins=3, lo=0.0, hi=1.0)
    with pytest.raises(InputError, match="real"):
        uniform_histogram(torch.zeros(3, dtype=torch.complex64), bins=3, lo=0.0, hi=1.0)
    with pytest.raises(InputError, match="too many bins"):
        uniform_histogram(torch.zeros(3, dtype=torch.float16), bins=5000, lo=0.0, hi=1.0)


def test_docstrings():
    assert doctest.testmod(hist_mod, raise_on_error=False).failed == 0
