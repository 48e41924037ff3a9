"""Bootstrap intervals, permutation p-values and multiple-comparison control for per-layer curves.

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> x = torch.randn(40, 3, generator=g, dtype=torch.float64)        # (unit, layer): one value per unit
>>> idx = resample_indices(40, 1000, generator=g)                  # (resample, unit)
>>> ci = interval(x.mean(0), x[idx].mean(1))                       # (bound: lo, est, hi; layer)
>>> ci.shape, bool((ci[0] < ci[1]).all() and (ci[1] < ci[2]).all())
(torch.Size([3, 3]), True)

Definitions (docs/analyses.md, "Similarity and inference (kernels)"):

* Resampling units: sentences (qkv), words within their category (rsa: ``strata``), sequences
  as blocks of tokens (length), marks (punct). :func:`resample_indices` draws B resamples at
  once (``B = 1000`` by default) with a seeded ``torch.Generator``; :func:`resample_counts` the
  same as copies per unit, for statistics that are sums over units.
* Streamed statistics: :func:`poisson_weights` gives every unit ``B`` independent Poisson(1)
  copy counts drawn from its own stream, seeded by ``(seed, unit index)`` alone, so any rank
  may draw any unit's weights in any order; the sums of per-unit states weighted by them
  (:func:`unit_sums`, :func:`weighted_moments`, :func:`weighted_pearson`) are folded in unit
  order with element-wise float64 operations: bitwise the same after a resume, under any number
  of ranks, and on any device.
* Intervals: the percentile interval at ``level`` (0.95): the ``(1-level)/2`` and
  ``(1+level)/2`` quantiles of the replicates, linearly interpolated (NumPy's default); NaN
  replicates are left out.
* Nulls: :func:`permutations` (optionally within strata), :func:`permutation_pvalues`
  ``(1 + #{null >= observed}) / (1 + P)``, family-wise control across layers by the
  max-statistic (Westfall–Young maxT, single-step or step-down: :func:`maxstat_pvalues`), and
  false-discovery control by Benjamini–Hochberg (:func:`benjamini_hochberg`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from lamina.engine.errors import InputError

__all__ = [
    "BOUNDS",
    "DEFAULT_RESAMPLES",
    "DEFAULT_LEVEL",
    "resample_indices",
    "resample_counts",
    "counts_from_indices",
    "block_indices",
    "permutations",
    "poisson_weights",
    "percentile_interval",
    "interval",
    "unit_sums",
    "weighted_mean",
    "weighted_moments",
    "weighted_pearson",
    "permutation_pvalues",
    "maxstat_pvalues",
    "benjamini_hochberg",
]

BOUNDS: tuple[str, str, str] = ("lo", "est", "hi")  # coordinates of an interval's ``bound`` axis
DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95

Alternative = Literal["greater", "less", "two-sided"]


# --------------------------------------------------------------------------- checks


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_generator(generator: torch.Generator) -> torch.device:
    if not isinstance(generator, torch.Generator):
        raise InputError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return generator.device


def _strata_codes(strata: Tensor | Sequence[int], n: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(code [n] in 0..S-1, positions grouped by stratum [n], start of each code's group [S])."""
    labels = torch.as_tensor(strata, device=device)
    if labels.ndim != 1 or labels.shape[0] != n or labels.is_floating_point() or labels.is_complex():
        raise InputError(f"strata must be {n} integer labels (one per unit), got {tuple(labels.shape)} "
                         f"of dtype {labels.dtype}")
    _, code = torch.unique(labels, return_inverse=True)
    grouped = torch.sort(code, stable=True).indices
    sizes = torch.bincount(code)
    return code, grouped, torch.cumsum(sizes, 0) - sizes


# --------------------------------------------------------------------------- resampling


def resample_indices(n: int, resamples: int = DEFAULT_RESAMPLES, *, generator: torch.Generator,
                     strata: Tensor | Sequence[int] | None = None) -> Tensor:
    """B bootstrap resamples of n units at once: Tensor[B, n] int64 on the generator's device.

    >>> import torch
    >>> idx = resample_indices(5, 3, generator=torch.Generator().manual_seed(1), strata=[0, 0, 1, 1, 1])
    >>> bool((idx[:, :2] < 2).all() and (idx[:, 2:] >= 2).all())      # each stratum from itself
    True

    Row b lists the units of resample b: position i holds a unit drawn uniformly with
    replacement from the units of i's stratum (all units without ``strata``), so every stratum
    keeps its size (the stratified bootstrap: rsa's words within their categories). One call
    to ``generator`` decides everything (``torch.randint``; with strata ``torch.rand(B, n,
    dtype=float64)``, position i taking member ``floor(u·size)`` of its stratum).

    Args:
        n: units.
        resamples: B.
        generator: a seeded torch.Generator; its device is the result's.
        strata: n integer labels, or None.
    """
    _positive_int(n, "n")
    _positive_int(resamples, "resamples")
    dev = _check_generator(generator)
    if strata is None:
        return torch.randint(0, n, (resamples, n), generator=generator, device=dev)
    u = torch.rand(resamples, n, generator=generator, dtype=torch.float64, device=dev)
    code, grouped, start = _strata_codes(strata, n, dev)
    size = torch.bincount(code)[code]  # [n] size of each position's stratum
    pick = (u * size).long().minimum(size - 1)
    return grouped[start[code] + pick]


def counts_from_indices(indices: Tensor, n: int) -> Tensor:
    """Tensor[B, m] of unit indices -> Tensor[B, n] int64: copies of each unit per resample."""
    if not isinstance(indices, Tensor) or indices.ndim != 2:
        raise InputError(f"indices must be a tensor [resample, draw], got {getattr(indices, 'shape', indices)!r}")
    out = torch.zeros(indices.shape[0], n, dtype=torch.int64, device=indices.device)
    return out.scatter_add_(1, indices.long(), torch.ones_like(indices, dtype=torch.int64))


def resample_counts(n: int, resamples: int = DEFAULT_RESAMPLES, *, generator: torch.Generator,
                    strata: Tensor | Sequence[int] | None = None) -> Tensor:
    """:func:`resample_indices` as copy counts: Tensor[B, n] int64 (multinomial; each row sums to
    n, and to each stratum's size within it).

    >>> import torch
    >>> c = resample_counts(10, 4, generator=torch.Generator().manual_seed(0))
    >>> c.shape, c.sum(1).tolist()
    (torch.Size([4, 10]), [10, 10, 10, 10])
    """
    return counts_from_indices(resample_indices(n, resamples, generator=generator, strata=strata), n)


def block_indices(n: int, block: int, resamples: int = DEFAULT_RESAMPLES, *, generator: torch.Generator) -> Tensor:
    """Moving-block bootstrap of one sequence of n tokens: Tensor[B, n] int64.

    >>> import torch
    >>> idx = block_indices(10, 4, 2, generator=torch.Generator().manual_seed(0))
    >>> bool(((idx[:, 1:4] - idx[:, :3]) == 1).all())      # runs of consecutive tokens
    True

    Each resample is ``ceil(n / block)`` blocks of ``block`` consecutive positions, each block
    starting uniformly in ``0..n-block`` (Künsch 1989), concatenated and cut to n. For
    statistics streamed per unit, resample the units instead (:func:`resample_counts`,
    :func:`poisson_weights`): there a unit is the block.
    """
    _positive_int(n, "n")
    _positive_int(block, "block")
    if block > n:
        raise InputError(f"block ({block}) must not exceed the sequence length n ({n})")
    dev = _check_generator(generator)
    k = -(-n // block)
    starts = (torch.rand(resamples, k, generator=generator, dtype=torch.float64, device=dev) * (n - block + 1)).long()
    starts.clamp_(max=n - block)
    return (starts[:, :, None] + torch.arange(block, device=dev)).flatten(1)[:, :n]


def permutations(n: int, count: int, *, generator: torch.Generator,
                 strata: Tensor | Sequence[int] | None = None) -> Tensor:
    """``count`` random permutations of 0..n-1 at once: Tensor[P, n] int64.

    >>> import torch
    >>> p = permutations(6, 2, generator=torch.Generator().manual_seed(0), strata=[0, 0, 0, 1, 1, 1])
    >>> bool((p[:, :3] < 3).all()), sorted(p[0].tolist())           # within strata
    (True, [0, 1, 2, 3, 4, 5])

    Argsort of i.i.d. float64 uniforms (ties have probability ~0); with ``strata`` each position
    receives a random position of its own stratum (permuting token lengths within sequences).
    """
    _positive_int(n, "n")
    _positive_int(count, "count")
    dev = _check_generator(generator)
    u = torch.rand(count, n, generator=generator, dtype=torch.float64, device=dev)
    if strata is None:
        return u.argsort(dim=1)
    code, grouped, _ = _strata_codes(strata, n, dev)
    order = (code.to(torch.float64) + u).argsort(dim=1)  # positions by stratum, random within
    out = torch.empty_like(order)
    out[:, grouped] = order
    return out


# Poisson(1) cumulative probabilities F(0..24) in float64: w = #{k : F(k) <= u}.
_POISSON1_CDF = np.cumsum([np.exp(-1.0 - np.sum(np.log(np.arange(1, k + 1)))) for k in range(25)])


def poisson_weights(seed: int, units: Iterable[int] | Tensor, resamples: int = DEFAULT_RESAMPLES) -> Tensor:
    """Poisson(1) bootstrap copy counts of the given units: Tensor[B, U] int64 on the CPU.

    >>> w = poisson_weights(7, [0, 1, 2], 5)
    >>> w.shape, w.dtype
    (torch.Size([5, 3]), torch.int64)
    >>> bool((poisson_weights(7, [2], 5)[:, 0] == w[:, 2]).all())  # a unit's weights depend on (seed, unit) only
    True

    Unit u's B weights come from its own stream, NumPy's ``SeedSequence(seed, spawn_key=(u,))``
    (the u-th child of ``SeedSequence(seed)``) driving PCG64: B uniforms ``r`` in [0, 1), each
    turned into ``#{k : F(k) <= r}`` with ``F`` the Poisson(1) distribution function (exact
    inversion, float64). The result depends only on ``(seed, u, B)``: not on which other units
    are drawn, in which order, by which rank, or on which device the run is. Move it to the
    device where the states are.

    Args:
        seed: a non-negative int (record it with the run).
        units: unit indices (non-negative ints).
        resamples: B.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a non-negative int, got {seed!r}")
    _positive_int(resamples, "resamples")
    ids = units.tolist() if isinstance(units, Tensor) else list(units)
    if any(isinstance(u, bool) or not isinstance(u, int) or u < 0 for u in ids):
        raise InputError(f"units must be non-negative ints, got {ids[:5]!r}...")
    out = np.empty((resamples, len(ids)), dtype=np.int64)
    for j, u in enumerate(ids):
        r = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(u,)))).random(resamples)
        out[:, j] = np.searchsorted(_POISSON1_CDF, r, side="right")
    return torch.from_numpy(out)


# --------------------------------------------------------------------------- intervals


def _check_level(level: float) -> None:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < float(level) < 1.0:
        raise InputError(f"level must be a number strictly between 0 and 1, got {level!r}")


def percentile_interval(replicates: Tensor, level: float = DEFAULT_LEVEL) -> Tensor:
    """The percentile interval of bootstrap replicates: Tensor[2, ...] (lo, hi).

    >>> import torch
    >>> [round(v, 9) for v in percentile_interval(torch.arange(101.0)[:, None], 0.9).flatten().tolist()]
    [5.0, 95.0]

    The ``(1-level)/2`` and ``(1+level)/2`` quantiles over the resample axis (dim 0), linear
    interpolation (``numpy.quantile``'s default); NaN replicates are left out (all NaN: NaN).

    Args:
        replicates: Tensor[B, ...] float.
        level: e.g. 0.95.
    """
    _check_level(level)
    if not isinstance(replicates, Tensor) or replicates.ndim < 1 or replicates.shape[0] < 1:
        got = getattr(replicates, "shape", replicates)
        raise InputError(f"replicates must be a tensor [resample, ...], got {got!r}")
    x = replicates if replicates.is_floating_point() else replicates.double()
    q = torch.tensor([(1.0 - level) / 2.0, (1.0 + level) / 2.0], dtype=x.dtype, device=x.device)
    flat = x.reshape(x.shape[0], -1)
    step = max(1, (1 << 24) // max(1, flat.shape[0]))
    parts = [torch.nanquantile(flat[:, i:i + step], q, dim=0) for i in range(0, max(flat.shape[1], 1), step)]
    return torch.cat(parts, dim=1).reshape(2, *x.shape[1:])


def interval(estimate: Tensor, replicates: Tensor, level: float = DEFAULT_LEVEL) -> Tensor:
    """Tensor[3, ...]: the percentile interval's lo, the estimate, hi (``BOUNDS`` order), for a
    curve's ``bound`` axis.

    >>> import torch
    >>> ci = interval(torch.tensor([0.5]), torch.linspace(0, 1, 101, dtype=torch.float64)[:, None])
    >>> [round(v, 9) for v in ci.flatten().tolist()]
    [0.025, 0.5, 0.975]
    """
    bounds = percentile_interval(replicates, level)
    if not isinstance(estimate, Tensor) or tuple(estimate.shape) != tuple(replicates.shape[1:]):
        raise InputError(f"estimate must have the replicates' trailing shape {tuple(replicates.shape[1:])}, "
                         f"got {getattr(estimate, 'shape', estimate)!r}")
    return torch.stack([bounds[0], estimate.to(bounds.dtype), bounds[1]])


# --------------------------------------------------------------------------- weighted per-unit states


def _weights(weights: Tensor, units: int, device: torch.device) -> Tensor:
    if not isinstance(weights, Tensor) or weights.ndim != 2 or weights.shape[1] != units:
        got = getattr(weights, "shape", weights)
        raise InputError(f"weights must be a tensor [resample, {units} units], got {got!r}")
    w = weights.to(device=device, dtype=torch.float64)
    if not (bool((w >= 0).all()) and bool(torch.isfinite(w.sum()))):  # NaN fails >= 0; then inf shows in the sum
        raise InputError("weights must be finite and non-negative")
    return w


def _fold(states: Tensor, w: Tensor) -> Tensor:
    """:func:`unit_sums` on checked float64 weights [B, U]."""
    s = states.to(torch.float64).reshape(states.shape[0], 1, -1)  # [U, 1, K]
    out = torch.zeros(w.shape[0], s.shape[2], dtype=torch.float64, device=states.device)
    for u in range(states.shape[0]):
        out += w[:, u, None] * s[u]
    return out.reshape(w.shape[0], *states.shape[1:])


def unit_sums(states: Tensor, weights: Tensor) -> Tensor:
    """``out[b] = Σ_u weights[b, u] · states[u]`` in float64, folded in unit order: Tensor[B, ...].

    >>> import torch
    >>> unit_sums(torch.tensor([[1.0], [10.0]]), torch.tensor([[1, 2], [0, 1]])).flatten().tolist()
    [21.0, 10.0]

    One element-wise multiply and one add per unit, u = 0, 1, ... (no matrix product, no fused
    multiply-add): the result is a function of the table of states and weights alone, bitwise,
    whatever order the units were computed in and on whatever device.

    Args:
        states: Tensor[U, ...] per-unit sufficient statistics.
        weights: Tensor[B, U] copies (multinomial counts or Poisson weights).
    """
    if not isinstance(states, Tensor) or states.ndim < 1:
        raise InputError(f"states must be a tensor [unit, ...], got {getattr(states, 'shape', states)!r}")
    return _fold(states, _weights(weights, states.shape[0], states.device))


def weighted_mean(count: Tensor, total: Tensor, weights: Tensor) -> Tensor:
    """Per resample, the mean over all samples of the resampled units: Tensor[B, ...] float64.

    >>> import torch
    >>> weighted_mean(torch.tensor([2, 1]), torch.tensor([4.0, 9.0]), torch.tensor([[1, 1], [2, 0]])).tolist()
    [4.333333333333333, 2.0]

    Args:
        count: Tensor[U] samples per unit; total: Tensor[U, ...] their sums; weights: Tensor[B, U].
    """
    w = _weights(weights, total.shape[0], total.device)
    return _fold(total, w) / _fold(count, w).reshape(-1, *([1] * (total.ndim - 1)))


def _centred_parts(count: Tensor, mean: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(count as [U, 1...] float64, global mean g [...], d = mean - g [U, ...])."""
    c = count.to(torch.float64).reshape(-1, *([1] * (mean.ndim - 1)))
    m = mean.to(torch.float64)
    g = (c * m).sum(0) / c.sum(0)
    return c, g, m - g


def weighted_moments(count: Tensor, mean: Tensor, m2: Tensor, weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per resample, count, mean and centred sum of squares of the resampled units' samples.

    >>> import torch
    >>> c, m, s = weighted_moments(torch.tensor([2, 2]), torch.tensor([1.0, 3.0]), torch.tensor([2.0, 0.0]),
    ...                            torch.tensor([[1, 1]]))
    >>> c.tolist(), m.tolist(), s.tolist()        # samples 0, 2, 3, 3
    ([4.0], [2.0], [6.0])

    From per-unit (count ``n_u``, mean ``μ_u``, ``M2_u = Σ(x - μ_u)²``): with ``d_u = μ_u - g``
    (``g`` the all-unit mean), ``N = Σ w n``, ``D = Σ w n d``: mean ``g + D/N`` and
    ``M2 = Σ w (M2_u + n d²) - D²/N`` (Chan et al.'s merge, written around g so nothing large
    cancels). Every sum is :func:`unit_sums` (bitwise reproducible).

    Args:
        count: Tensor[U]; mean, m2: Tensor[U, ...]; weights: Tensor[B, U].

    Returns:
        (count Tensor[B], mean Tensor[B, ...], m2 Tensor[B, ...]), float64.
    """
    w = _weights(weights, mean.shape[0], mean.device)
    c, g, d = _centred_parts(count, mean)
    n = _fold(count, w)
    shape = (-1, *([1] * (mean.ndim - 1)))
    dn = _fold(c * d, w)
    m2_b = _fold(m2.to(torch.float64) + c * d * d, w) - dn * dn / n.reshape(shape)
    return n, g + dn / n.reshape(shape), m2_b


def weighted_pearson(count: Tensor, mean_x: Tensor, mean_y: Tensor, m2_x: Tensor, m2_y: Tensor, c_xy: Tensor,
                     weights: Tensor) -> Tensor:
    """Per resample, Pearson r of x and y over the resampled units' samples: Tensor[B, ...].

    From per-unit counts, means, centred sums of squares and ``c_xy = Σ(x-μx)(y-μy)``, merged as
    in :func:`weighted_moments`; NaN where a variance is 0.

    Args:
        count: Tensor[U]; the rest Tensor[U, ...]; weights: Tensor[B, U].
    """
    w = _weights(weights, mean_x.shape[0], mean_x.device)
    c, _, dx = _centred_parts(count, mean_x)
    _, _, dy = _centred_parts(count, mean_y)
    n = _fold(count, w).reshape(-1, *([1] * (mean_x.ndim - 1)))
    sx, sy = _fold(c * dx, w), _fold(c * dy, w)
    vx = _fold(m2_x.to(torch.float64) + c * dx * dx, w) - sx * sx / n
    vy = _fold(m2_y.to(torch.float64) + c * dy * dy, w) - sy * sy / n
    cxy = _fold(c_xy.to(torch.float64) + c * dx * dy, w) - sx * sy / n
    den = vx * vy
    ok = den > 0
    return torch.where(ok, cxy / torch.sqrt(torch.where(ok, den, torch.ones_like(den))), torch.nan)


# --------------------------------------------------------------------------- permutation nulls


def _oriented(x: Tensor, alternative: Alternative) -> Tensor:
    if alternative == "greater":
        return x
    if alternative == "less":
        return -x
    if alternative == "two-sided":
        return x.abs()
    raise InputError(f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}")


def _check_null(observed: Tensor, null: Tensor) -> None:
    if not isinstance(observed, Tensor) or not isinstance(null, Tensor) or null.ndim != observed.ndim + 1 \
            or tuple(null.shape[1:]) != tuple(observed.shape) or null.shape[0] < 1:
        raise InputError(f"null must be [permutation, *observed.shape]: observed {getattr(observed, 'shape', None)}, "
                         f"null {getattr(null, 'shape', None)}")


def permutation_pvalues(observed: Tensor, null: Tensor, alternative: Alternative = "greater") -> Tensor:
    """Per statistic, ``(1 + #{null >= observed}) / (1 + P)`` (uncorrected): Tensor[...] float64.

    >>> import torch
    >>> permutation_pvalues(torch.tensor([2.0]), torch.tensor([[1.0], [3.0], [2.0]])).tolist()
    [0.75]

    "less" compares ``-x``, "two-sided" ``|x|``. NaN null values are left out of both counts
    (P counts the finite ones); a NaN observed value gives NaN.
    """
    _check_null(observed, null)
    t, tn = _oriented(observed.double(), alternative), _oriented(null.double(), alternative)
    valid = ~torch.isnan(tn)
    hits = ((tn >= t) & valid).sum(0).to(torch.float64)
    p = (1.0 + hits) / (1.0 + valid.sum(0).to(torch.float64))
    return torch.where(torch.isnan(t), torch.nan, p)


def maxstat_pvalues(observed: Tensor, null: Tensor, alternative: Alternative = "greater", *,
                    step_down: bool = True) -> Tensor:
    """Family-wise error controlled p-values across all statistics (e.g. layers) by the
    max-statistic (Westfall & Young 1993, maxT): Tensor[...] float64.

    >>> import torch
    >>> null = torch.tensor([[0.0, 0.1], [0.5, 3.0], [0.2, 0.4]])   # (permutation, layer)
    >>> maxstat_pvalues(torch.tensor([2.0, 1.0]), null, step_down=False).tolist()
    [0.5, 0.5]

    Each permutation (a row of ``null``, the SAME permutation for every statistic, so their
    dependence is kept) contributes its maximum. Single-step: ``p_k = (1 + #{max_j T_pj >= t_k})
    / (1 + P)``. Step-down (default, uniformly more powerful): statistics sorted by decreasing
    observed value ``t_(1) >= t_(2) >= ...``; ``p_(j)`` uses the maximum over the statistics
    ``(j), (j+1), ...`` only; then made monotone (``p_(j) = max(p_(j-1), p_(j))``). NaN observed
    statistics get NaN and take no part; NaN null values count as -inf.

    Args:
        observed: Tensor[...] statistics (all elements form the family).
        null: Tensor[P, ...] the same statistics under each permutation.
        alternative: "greater", "less" (uses -x) or "two-sided" (uses |x|).
        step_down: step-down (True) or single-step (False).
    """
    _check_null(observed, null)
    t = _oriented(observed.double(), alternative).reshape(-1)
    tn = _oriented(null.double(), alternative).reshape(null.shape[0], -1)
    tn = torch.where(torch.isnan(tn), -torch.inf, tn)
    out = torch.full_like(t, torch.nan)
    valid = torch.nonzero(~torch.isnan(t)).flatten()
    if valid.numel() == 0:
        return out.reshape(observed.shape)
    tv, nv = t[valid], tn[:, valid]
    order = torch.argsort(tv, descending=True, stable=True)
    ts, ns = tv[order], nv[:, order]  # decreasing observed
    if step_down:
        succ = ns.flip(1).cummax(1).values.flip(1)  # succ[p, j] = max over j, j+1, ...
    else:
        succ = ns.amax(1, keepdim=True).expand_as(ns)
    p = (1.0 + (succ >= ts).sum(0).to(torch.float64)) / (1.0 + null.shape[0])
    p = p.cummax(0).values
    pv = torch.empty_like(p)
    pv[order] = p
    out[valid] = pv
    return out.reshape(observed.shape)


def benjamini_hochberg(pvalues: Tensor, dim: int = -1) -> Tensor:
    """Benjamini–Hochberg adjusted p-values (q-values) along ``dim``: reject where q <= α to control
    the false discovery rate at α. Tensor of pvalues' shape, float64.

    >>> import torch
    >>> benjamini_hochberg(torch.tensor([0.01, 0.04, 0.03, 0.20], dtype=torch.float64)).tolist()
    [0.04, 0.05333333333333334, 0.05333333333333334, 0.2]

    With the m non-NaN p-values sorted ``p_(1) <= ... <= p_(m)``: ``q_(i) = min_{j >= i}
    min(1, p_(j)·m/j)``. NaN p-values stay NaN and do not count in m.
    """
    if not isinstance(pvalues, Tensor) or pvalues.ndim < 1:
        raise InputError(f"pvalues must be a tensor with at least one dim, got {getattr(pvalues, 'shape', pvalues)!r}")
    p = pvalues.double().movedim(dim, -1)
    nan = torch.isnan(p)
    if bool(((p < 0) | (p > 1)).any()):
        raise InputError("p-values must lie in [0, 1]")
    m = (~nan).sum(-1, keepdim=True).to(torch.float64)
    ps, order = torch.sort(torch.where(nan, torch.inf, p), dim=-1, stable=True)
    rank = torch.arange(1, p.shape[-1] + 1, dtype=torch.float64, device=p.device)
    q = ps * m / rank
    q = torch.where(torch.isinf(ps), torch.inf, q).flip(-1).cummin(-1).values.flip(-1).clamp(max=1.0)
    out = torch.empty_like(q)
    out.scatter_(-1, order, q)
    out = torch.where(nan, torch.nan, out)
    return out.movedim(-1, dim)
