"""Values that break histogram code: every edge and its neighbours, the range ends, outside values, NaN, ±inf, ties."""

from __future__ import annotations

import numpy as np


def hard_values(rng: np.random.Generator, dtype, bins: int, lo: float, hi: float, n: int = 400) -> np.ndarray:
    """Random values plus every edge in ``dtype``, its two neighbours, lo, hi, outside values, NaN, ±inf,
    tiny values around 0, ties on an interior edge and inside a bin; shuffled. ``lo == hi`` is widened to
    ``[lo - 0.5, hi + 0.5]`` as NumPy does."""
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1).astype(dtype)
    width = hi - lo
    parts = [
        rng.uniform(lo - 0.2 * width, hi + 0.2 * width, n).astype(dtype),
        edges,
        np.nextafter(edges, np.inf, dtype=dtype),
        np.nextafter(edges, -np.inf, dtype=dtype),
        np.array([lo, hi, hi, -0.0, 0.0, np.nan, np.inf, -np.inf, np.nan, lo - 10 * width, hi + 10 * width],
                 dtype=dtype),
        np.array([1e-30, -1e-30, 1e-45, -1e-45], dtype=dtype),  # tiny values around an edge at 0
        np.full(5, edges[bins // 2], dtype=dtype),  # ties on an interior edge
        np.full(5, rng.uniform(lo, hi), dtype=dtype),  # ties inside a bin
    ]
    v = np.concatenate(parts).astype(dtype)
    return v[rng.permutation(v.size)]
