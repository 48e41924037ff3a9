"""NumPy statistics over the pair values of a punct run, shared by its compute and its figures.

>>> pearson(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 7.0]))  # doctest: +ELLIPSIS
0.99...
"""

from __future__ import annotations

import math

import numpy as np


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two 1-D arrays (pairs with a NaN in either dropped); NaN when one is constant.

    "Constant" allows float rounding: at state 0 every vector of a class is the same, so every
    pair has one covariance, but the matrix products behind it may differ in the last bit
    between pairs; a spread below 1e-12 of the magnitude is that, not data.
    """
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size < 2 or any(np.ptp(v) <= 1e-12 * np.abs(v).max() for v in (a, b)):
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / math.sqrt(float((a * a).sum()) * float((b * b).sum())))


def nanmean(v: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN where nothing is finite."""
    ok = np.isfinite(v)
    total = np.where(ok, v, 0.0).sum(-1)
    count = ok.sum(-1)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


def state_stats(mi: np.ndarray, cov: np.ndarray, corr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class and state: means of MI, cov and corr, and Pearson r(cov, MI) over the pairs.

    Args:
        mi, cov, corr: [class, state, pair].

    Returns:
        mean [class, state, stat = mi, cov, corr] with NaN pairs ignored; r_cov_mi [class, state].
    """
    mean = np.stack([nanmean(v) for v in (mi, cov, corr)], axis=-1)
    r = np.array([[pearson(cov[c, s], mi[c, s]) for s in range(mi.shape[1])] for c in range(mi.shape[0])])
    return mean, r
