"""Exact buckets by arithmetic, the piece counter and the CPU workers, against np.histogram."""

from __future__ import annotations

import doctest
import math
import threading

import numpy as np
import pytest
import torch

from .hard_values import hard_values
import lamina.engine.kernels.bucketing as bucket_mod
import lamina.engine.kernels.workers as workers_mod
from lamina.engine.kernels.bucketing import _plan, bucket_codes, clamp_free
from lamina.engine.kernels.histogram import PieceCounter, uniform_histogram
from lamina.engine.kernels.workers import run_tasks

RANGES = [(100, -1.0, 1.0), (80, -0.8, 0.8), (50, -8.0, 5.0), (37, -0.9, 1.0), (7, -0.3, 0.7), (1, 0.0, 1.0)]


def reference_buckets(v: np.ndarray, bins: int, lo: float, hi: float) -> np.ndarray:
    """0 below / NaN, 1..bins the bins (np.histogram's), bins + 1 above: from np.histogram one value at a time."""
    edges = np.linspace(lo, hi, bins + 1).astype(v.dtype)
    out = np.empty(v.size, dtype=np.int64)
    for k, x in enumerate(v):
        if np.isnan(x) or x < edges[0]:
            out[k] = 0
        elif x > edges[-1]:
            out[k] = bins + 1
        else:
            out[k] = 1 + int(np.argmax(np.histogram(np.array([x]), bins=bins, range=(lo, hi))[0]))
    return out


@pytest.mark.parametrize("bins,lo,hi", RANGES)
def test_arithmetic_path_is_taken_for_short_decimals(bins, lo, hi):
    plan = _plan(torch.float32, bins, lo, hi)
    assert plan.fast and plan.arith is not None


@pytest.mark.parametrize(
    "dtype,bins,lo,hi",
    [(np.float32, *r) for r in RANGES] + [(np.float64, 8, -1.0, 1.0), (np.float64, 4, 0.0, 1.0), (np.float64, 100, -1.0, 1.0)],
)
def test_bucket_codes_match_numpy(dtype, bins, lo, hi):
    rng = np.random.default_rng(bins)
    v = hard_values(rng, dtype, bins, lo, hi, n=3000)
    plan = _plan(torch.from_numpy(v).dtype, bins, lo, hi)
    if plan.arith is None:  # float64 edges are not always the correctly rounded rationals
        pytest.skip("no exact arithmetic thresholds for this range in float64")
    ref = reference_buckets(v, bins, lo, hi)
    x = torch.from_numpy(v)
    codes = bucket_codes(plan, x, torch.empty_like(x), torch.empty_like(x), nan=True).long().numpy()
    at_hi = v == np.asarray(hi, dtype=dtype)
    np.testing.assert_array_equal(codes[~at_hi], ref[~at_hi])
    assert (codes[at_hi] == bins + 1).all()  # x == hi is coded above the range: the callers' fix-up
    # the clamp-free variant on values that are allowed there
    if clamp_free(plan, max(abs(lo), abs(hi))):
        ok = (np.abs(v) <= max(abs(lo), abs(hi))) | (v == -np.inf)
        xs = torch.from_numpy(np.ascontiguousarray(v[ok]))
        codes = bucket_codes(plan, xs, torch.empty_like(xs), torch.empty_like(xs), nan=False, clamp=False)
        keep = ~at_hi[ok]
        np.testing.assert_array_equal(codes.long().numpy()[keep], ref[ok][keep])


@pytest.mark.parametrize("bins,lo,hi", RANGES + [(13, 0.1234567, 0.7654321), (50, 1e4, 1e4 + 0.1)])
def test_uniform_histogram_paths_agree_with_numpy(bins, lo, hi):
    rng = np.random.default_rng(7)
    rows = np.stack([hard_values(rng, np.float32, bins, lo, hi, n=500)[:500] for _ in range(3)])
    got = uniform_histogram(torch.from_numpy(rows), bins=bins, lo=lo, hi=hi)
    np.testing.assert_array_equal(got.numpy(), np.stack([np.histogram(r, bins=bins, range=(lo, hi))[0] for r in rows]))


@pytest.mark.parametrize("defer_hi", [False, True])
@pytest.mark.parametrize("bound", [None, 1.0])
def test_piece_counter_vs_numpy(defer_hi, bound):
    rng = np.random.default_rng(3)
    c = PieceCounter(torch.float32, bins=100, lo=-1.0, hi=1.0, device=torch.device("cpu"), chunk=700,
                     bound=bound, defer_hi=defer_hi)
    values = []
    for rows, cols in [(7, 100), (3, 33), (1, 1), (5, 9)]:  # odd counts are padded
        piece = c.piece(rows, cols)
        v = rng.uniform(-1.0, 1.0, (rows, cols)).astype(np.float32)
        v.flat[:: 7] = np.linspace(-1, 1, 101).astype(np.float32)[: len(v.flat[::7])]  # on the edges
        v[0, -1] = 1.0  # == hi
        if bound is None:
            v[0, 1 % cols] = 1.5  # above
            v[-1, -1] = -3.0  # below
        drop = np.tril(np.ones((rows, min(rows, cols)), dtype=bool))
        piece.copy_(torch.from_numpy(v))
        c.count(piece, drop=torch.from_numpy(drop))
        v[:, : drop.shape[1]][drop] = np.nan  # what the drop removes
        values.append(v[~np.isnan(v)])
    counts, over = c.flush()
    above = int(sum((v > 1.0).sum() for v in values))
    ref = np.histogram(np.concatenate(values), bins=100, range=(-1.0, 1.0))[0]
    if c.defers_hi:  # values == hi are still among those above the range
        n_hi = int(sum((v == 1.0).sum() for v in values))
        assert int(over) == above + n_hi
        counts[-1] += n_hi
    else:
        assert int(over) == above
    np.testing.assert_array_equal(counts.numpy(), ref)
    assert c.flush()[0].sum() == 0  # flushed


def test_run_tasks_uses_single_threaded_workers_and_restores():
    before = torch.get_num_threads()
    seen = []
    lock = threading.Lock()

    def task(state, item):
        with lock:
            seen.append((threading.get_ident(), torch.get_num_threads()))
        state.append(item)

    states = run_tasks(task, range(50), [[] for _ in range(3)])
    assert sorted(sum(states, [])) == list(range(50))
    assert {n for _, n in seen} == {1}
    assert torch.get_num_threads() == before


def test_run_tasks_reraises_and_restores():
    before = torch.get_num_threads()

    def task(state, item):
        if item == 7:
            raise ValueError("boom at 7")

    with pytest.raises(ValueError, match="boom at 7"):
        run_tasks(task, range(20), [None, None])
    assert torch.get_num_threads() == before


def test_docstrings():
    for mod in (bucket_mod, workers_mod):
        assert doctest.testmod(mod, raise_on_error=False).failed == 0
    assert math.isfinite(_plan(torch.float32, 100, -1.0, 1.0).hi)
