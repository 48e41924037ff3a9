"""All-pairs mutual information, covariance and correlation of vectors (EXPERIMENTS.md D).

>>> import torch
>>> x = torch.randn(30, 1024, dtype=torch.float64)   # (sample, feature)
>>> out = all_pairs_mi_cov_corr(x)
>>> sorted(out), out["mi"].shape                     # one value per pair i < j
(['corr', 'cov', 'mi'], torch.Size([435]))

Per pair (i < j) with x = row i and y = row j, the feature dimensions being the
samples of the statistics (the lecture's per-pair loop, exactly):

1. z-score x and y (ddof=1) and drop every dimension where |z_x| > z_max or |z_y| > z_max;
2. MI from ``np.histogram2d(x_kept, y_kept, bins)``: edges ``linspace(min, max, bins+1)`` of each
   vector's kept values (``min - 0.5 .. max + 0.5`` when min == max), bin = number of edges
   <= value minus 1, the maximum in the last bin; p = counts / total;
   H = -sum p log2(p + 1e-12) for the joint and both marginals; MI = Hx + Hy - Hxy (bits);
3. cov = sum (x - mean x)(y - mean y) / (n - 1) on the kept dimensions;
4. corr = Pearson r on the kept dimensions, NaN when a kept vector is constant.

How it is done for all pairs at once (no per-pair Python):

* The outlier mask of a vector depends on that vector alone, so ``keep`` (sample, feature)
  is computed once and a pair keeps ``keep_i & keep_j``.
* cov/corr: counts, sums, sums of squares and cross products over the joint mask are
  the matrix products K Kᵀ, (K∘X) Kᵀ, (K∘X²) Kᵀ and (K∘X)(K∘X)ᵀ in float64, after centring
  every vector on its own kept mean (a shift that leaves cov and corr unchanged but avoids
  the cancellation of raw sums of products).
* MI: each vector's bin index comes from its own kept min/max. That is the pair's bin index
  unless the partner's removals drop ALL dims where this vector attains its min (or max);
  those pairs are found exactly with two 0/1 matrix products and recomputed with per-pair
  edges (vectorised; in real data a small fraction of the pairs). For the rest the joint
  histograms are a scatter-add of ``bin_i * (bins + 1) + bin_j`` per pair on the CPU
  (dims not kept by both go to a sentinel row/column), or on CUDA one product of masked
  one-hot encodings (n·bins × D)(D × n·bins).
* Entropies are vectorised over pairs from the integer counts.

The result equals the per-pair NumPy loop to ~1e-12 (MI from identical integer counts).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from lamina.engine.errors import InputError

__all__ = ["pair_indices", "all_pairs_mi_cov_corr"]

_EPS = 1e-12  # the lecture's p + 1e-12 inside the log
_LOG2_E = 1.0 / math.log(2.0)


def pair_indices(n: int, *, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Row and column of every pair i < j, in ``numpy.triu_indices(n, 1)`` order.

    >>> pair_indices(4)
    (tensor([0, 0, 0, 1, 1, 2]), tensor([1, 2, 3, 2, 3, 3]))

    Args:
        n: number of vectors.
        device: where to create the index tensors.

    Returns:
        (i, j), each (pair,) int64 with pair = n (n - 1) / 2.
    """
    if n < 0:
        raise InputError(f"pair_indices: n must be >= 0; got {n}")
    ij = torch.triu_indices(n, n, 1, device=device)
    return ij[0], ij[1]


# --------------------------------------------------------------------------- per-vector steps


def _keep_mask(x: Tensor, z_max: float) -> Tensor:
    """(sample, feature) bool: |z| <= z_max with ddof=1 z-scores; constant vectors keep all.

    A constant vector has z = 0/0 (NaN) in NumPy and ``NaN > 5`` is False, so every
    dimension is kept; we test constancy exactly instead of trusting the rounding of the mean.
    """
    mean = x.mean(1, keepdim=True)
    sd = x.std(1, correction=1, keepdim=True)
    z = (x - mean) / sd
    keep = ~(z.abs() > z_max)
    constant = x.amin(1) == x.amax(1)  # (sample,)
    return keep | constant.unsqueeze(1)


def _bin_index(v: Tensor, lo: Tensor, hi: Tensor, bins: int) -> Tensor:
    """(row, feature) int64 histogram bin of each value with edges linspace(lo, hi, bins + 1).

    Bit-for-bit NumPy ``histogramdd``: equal lo/hi widen to lo - 0.5 .. hi + 0.5; edges are
    ``arange(bins + 1) * step + lo`` with the last edge set to hi (NumPy's linspace);
    index = searchsorted(edges, v, 'right') - 1 with v == hi in the last bin. Values outside
    [lo, hi] (dims the caller masks out) are clamped into range and must be ignored.

    Args:
        v: (row, feature) float64.
        lo, hi: (row,) float64 min and max of the kept values of each row.
    """
    flat = lo == hi
    lo = torch.where(flat, lo - 0.5, lo)
    hi = torch.where(flat, hi + 0.5, hi)
    delta = hi - lo  # (row,)
    step = delta / bins
    k = torch.arange(bins + 1, dtype=v.dtype, device=v.device)  # (bin+1,)
    edges = torch.where(  # NumPy's denormal branch when step underflows to 0
        (step == 0).unsqueeze(1),
        (k / bins).unsqueeze(0) * delta.unsqueeze(1),
        k.unsqueeze(0) * step.unsqueeze(1),
    ) + lo.unsqueeze(1)  # (row, bin+1)
    edges[:, -1] = hi
    idx = torch.searchsorted(edges, v.contiguous(), right=True) - 1  # (row, feature)
    return idx.clamp_(0, bins - 1)


def _masked_min_max(v: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """(row,) min and max of v over the kept entries of each row."""
    inf = torch.tensor(float("inf"), dtype=v.dtype, device=v.device)
    return torch.where(keep, v, inf).amin(1), torch.where(keep, v, -inf).amax(1)


# --------------------------------------------------------------------------- histograms


def _joint_counts_scatter(code_a: Tensor, code_b: Tensor, bins: int) -> Tensor:
    """(pair, bin, bin) int32 joint counts from per-pair bin codes.

    Args:
        code_a: (pair, feature) ``bin_x * (bins + 1)``, with ``bins * (bins + 1)`` where not kept.
        code_b: (pair, feature) ``bin_y``, with ``bins`` where not kept.
    """
    w = bins + 1
    code = (code_a + code_b).long()  # (pair, feature), in [0, w*w)
    counts = torch.zeros(code.shape[0], w * w, dtype=torch.int32, device=code.device)
    ones = torch.ones((1, 1), dtype=torch.int32, device=code.device).expand_as(code)
    counts.scatter_add_(1, code, ones)
    return counts.view(-1, w, w)[:, :bins, :bins]


def _entropy_bits(counts: Tensor, dims: tuple[int, ...]) -> Tensor:
    """H = -sum p log2(p + 1e-12) over ``dims`` with p = counts / total (total over dims).

    Computed from integer counts c and total T as
    ``log2 T - sum c log2 c / T - k * 1e-12 / ln 2`` with k the number of non-empty bins:
    the same number as the literal formula (the first-order expansion of log2(p + 1e-12)
    is exact to ~1e-20 here because p >= 1/T), in one log per bin instead of three ops.
    """
    c = counts.to(torch.float64)
    total = c.sum(dims)
    s = (c * torch.log2(c.clamp_min(1.0))).sum(dims)
    k = (counts > 0).sum(dims).to(torch.float64)
    return torch.log2(total) - s / total - k * (_EPS * _LOG2_E)


def _mi_from_counts(joint: Tensor) -> Tensor:
    """(pair,) MI in bits from (pair, bin, bin) joint counts; marginals are its sums."""
    hxy = _entropy_bits(joint, (1, 2))
    hx = _entropy_bits(joint.sum(2), (1,))
    hy = _entropy_bits(joint.sum(1), (1,))
    return hx + hy - hxy


# --------------------------------------------------------------------------- main kernel


def all_pairs_mi_cov_corr(
    x: Tensor,
    *,
    bins: int = 15,
    z_max: float = 5.0,
    chunk_pairs: int = 1024,
    method: Literal["auto", "scatter", "onehot"] = "auto",
) -> dict[str, Tensor]:
    """MI, covariance and Pearson r of every pair of rows, after pairwise outlier removal.

    >>> x = torch.tensor([[0., 1., 2., 3.], [0., 2., 4., 6.], [3., 2., 1., 0.]])
    >>> out = all_pairs_mi_cov_corr(x, bins=2)
    >>> out["corr"]
    tensor([ 1., -1., -1.], dtype=torch.float64)
    >>> out["mi"]
    tensor([1., 1., 1.], dtype=torch.float64)

    Args:
        x: (sample, feature) vectors, e.g. (sequence, d_model) hidden states at one position.
            Any float dtype; the arithmetic is float64. Must be finite.
        bins: histogram bins per axis (the lecture's 15).
        z_max: a dimension is dropped for a pair when |z| > z_max in either vector.
        chunk_pairs: pairs processed at once; peak extra memory is about
            ``chunk_pairs * feature * 26`` bytes for the scatter method (27 MB for the
            defaults at feature = 1024) plus the (sample, sample) float64 products.
        method: ``"scatter"`` (scatter-add of joint bin codes; the CPU default), ``"onehot"``
            (one float32 product of masked one-hot encodings per block of rows; the CUDA
            default; 0/1 values and fp32 accumulation, also under TF32, keep counts exact up
            to 2**24 dimensions), or ``"auto"``.

    Returns:
        ``{"mi", "cov", "corr"}``, each (pair,) float64 in ``numpy.triu_indices(sample, 1)``
        order (see :func:`pair_indices`). MI is in bits.

    Raises:
        InputError: x not 2-D, fewer than 2 samples or features, non-finite values,
            bins < 1, z_max <= 0, chunk_pairs < 1, or an unknown method.
    """
    if x.ndim != 2:
        raise InputError(
            f"all_pairs_mi_cov_corr: x must be (sample, feature); got shape {tuple(x.shape)}"
        )
    n, d = x.shape
    if n < 2 or d < 2:
        raise InputError(
            f"all_pairs_mi_cov_corr needs at least 2 samples and 2 features; got x {tuple(x.shape)} "
            "(sample, feature)"
        )
    if bins < 1 or chunk_pairs < 1 or not z_max > 0:
        raise InputError(
            f"all_pairs_mi_cov_corr: bins ({bins}) and chunk_pairs ({chunk_pairs}) must be >= 1 "
            f"and z_max ({z_max}) > 0"
        )
    if method == "auto":
        method = "onehot" if x.device.type == "cuda" else "scatter"
    if method not in ("scatter", "onehot"):
        raise InputError(f"all_pairs_mi_cov_corr: method must be 'auto', 'scatter' or 'onehot'; got {method!r}")
    finite = torch.isfinite(x).all(1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten()[:5].tolist()
        raise InputError(
            f"all_pairs_mi_cov_corr: x {tuple(x.shape)} has non-finite values in rows {bad}"
        )

    xf = x.to(torch.float64)  # (sample, feature)
    keep = _keep_mask(xf, z_max)  # (sample, feature)
    lo, hi = _masked_min_max(xf, keep)  # (sample,)
    ii, jj = pair_indices(n, device=x.device)  # (pair,)

    # ---- pairs whose partner's removals move one of this vector's extremes
    kf = keep.to(torch.float32)  # (sample, feature), 0/1 exact
    at_min = (keep & (xf == lo.unsqueeze(1))).to(torch.float32)
    at_max = (keep & (xf == hi.unsqueeze(1))).to(torch.float32)
    moved = ((at_min @ kf.T) == 0) | ((at_max @ kf.T) == 0)  # (sample, sample): i's range moves under j
    exceptional = torch.nonzero(moved[ii, jj] | moved[jj, ii]).flatten()  # (pair_e,)

    # ---- covariance and correlation for all pairs from matrix products
    kd = keep.to(torch.float64)
    own_mean = (xf * kd).sum(1, keepdim=True) / kd.sum(1, keepdim=True)
    xc = torch.where(keep, xf - own_mean, torch.zeros((), dtype=torch.float64, device=x.device))
    cnt = kd @ kd.T  # (sample, sample) dims kept by both
    s1 = xc @ kd.T  # [i, j]: sum of x_i over the dims i and j keep
    s2 = xc.square() @ kd.T  # [i, j]: sum of x_i^2 over them
    sxy = xc @ xc.T
    m = cnt[ii, jj]
    sx, sy = s1[ii, jj], s1[jj, ii]
    cov = (sxy[ii, jj] - sx * sy / m) / (m - 1)
    vx = (s2[ii, jj] - sx.square() / m) / (m - 1)
    vy = (s2[jj, ii] - sy.square() / m) / (m - 1)
    corr = (cov / torch.sqrt(vx * vy)).clamp_(-1.0, 1.0)

    const = lo == hi  # (sample,) kept values of the vector are all equal
    const_x, const_y = const[ii], const[jj]  # (pair,), exact for non-exceptional pairs

    # ---- MI for all pairs with per-vector bins
    b = _bin_index(xf, lo, hi, bins)  # (sample, feature)
    if method == "onehot":
        mi = _mi_onehot(b, keep, bins, chunk_pairs)
    else:
        w = bins + 1
        code_dtype = torch.uint8 if w * w <= 256 else torch.int32
        row_code = torch.where(keep, b * w, bins * w).to(code_dtype)  # (sample, feature)
        col_code = torch.where(keep, b, bins).to(code_dtype)
        mi = torch.empty(ii.shape[0], dtype=torch.float64, device=x.device)
        for s in range(0, ii.shape[0], chunk_pairs):
            ci, cj = ii[s : s + chunk_pairs], jj[s : s + chunk_pairs]
            joint = _joint_counts_scatter(row_code.index_select(0, ci), col_code.index_select(0, cj), bins)
            mi[s : s + chunk_pairs] = _mi_from_counts(joint)

    # ---- exact recomputation of the pairs whose edges move
    if exceptional.numel():
        const_x, const_y = const_x.clone(), const_y.clone()
        w = bins + 1
        for s in range(0, exceptional.shape[0], chunk_pairs):
            e = exceptional[s : s + chunk_pairs]
            ei, ej = ii[e], jj[e]
            xi, xj = xf.index_select(0, ei), xf.index_select(0, ej)  # (pair_e, feature)
            both = keep.index_select(0, ei) & keep.index_select(0, ej)
            lo_i, hi_i = _masked_min_max(xi, both)
            lo_j, hi_j = _masked_min_max(xj, both)
            code_a = torch.where(both, _bin_index(xi, lo_i, hi_i, bins) * w, bins * w)
            code_b = torch.where(both, _bin_index(xj, lo_j, hi_j, bins), bins)
            mi[e] = _mi_from_counts(_joint_counts_scatter(code_a, code_b, bins))
            const_x[e] = lo_i == hi_i
            const_y[e] = lo_j == hi_j

    flat = const_x | const_y
    nan = torch.full_like(corr, float("nan"))
    corr = torch.where(flat, nan, corr)
    cov = torch.where(flat, torch.zeros_like(cov), cov)
    return {"mi": mi, "cov": cov, "corr": corr}


def _mi_onehot(b: Tensor, keep: Tensor, bins: int, chunk_pairs: int) -> Tensor:
    """(pair,) MI of all pairs from one-hot products, in blocks of rows.

    The masked one-hot ``O[i, a, d] = keep[i, d] & (b[i, d] == a)`` makes
    ``(O_i O_jᵀ)[a, c]`` the joint count of bins (a, c) over the dims both vectors keep.
    Float32 holds 0/1 exactly (also as TF32) and accumulates integers exactly below 2**24.

    Args:
        b: (sample, feature) int64 per-vector bins; keep: (sample, feature) bool.
    """
    n, d = b.shape
    k = torch.arange(bins, device=b.device)
    onehot = ((b.unsqueeze(1) == k.view(1, -1, 1)) & keep.unsqueeze(1)).to(torch.float32)  # (sample, bin, feature)
    flat = onehot.reshape(n * bins, d)
    rows = max(1, chunk_pairs // max(1, n))  # block of rows: about chunk_pairs pairs at a time
    out = []
    for r0 in range(0, n - 1, rows):
        r1 = min(n - 1, r0 + rows)
        g = flat[r0 * bins : r1 * bins] @ flat[r0 * bins :].T  # (row·bin, sample'·bin)
        g = g.view(r1 - r0, bins, n - r0, bins).permute(0, 2, 1, 3)  # (row, sample', bin, bin)
        li, lj = torch.triu_indices(r1 - r0, n - r0, 1, device=b.device)  # i < j inside the block
        joint = g[li, lj].round_().to(torch.int32)  # (pair, bin, bin), pairs in triu order
        out.append(_mi_from_counts(joint))
    return torch.cat(out)
