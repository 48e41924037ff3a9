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


def _first_kept(order: Tensor, vec: Tensor, partner: Tensor, keep: Tensor) -> Tensor:
    """(query,) the first dim in ``order[vec]`` that both vec and partner keep.

    A loop over ranks, not pairs: a partner drops few dims, so it ends in a few rounds.

    Args:
        order: (sample, feature) each vector's dims sorted by the extreme wanted (ascending
            values for the min, descending for the max), its own kept dims first.
        vec, partner: (query,) int64 vector indices; every pair must share a kept dim.
        keep: (sample, feature) bool.
    """
    out = torch.full_like(vec, -1)
    pending = torch.arange(vec.numel(), device=vec.device)
    for r in range(order.shape[1]):
        if pending.numel() == 0:
            break
        v, p = vec[pending], partner[pending]
        d = order[v, r]
        ok = keep[v, d] & keep[p, d]
        out[pending[ok]] = d[ok]
        pending = pending[~ok]
    return out


def _range_variants(
    xf: Tensor, keep: Tensor, lo: Tensor, hi: Tensor, ii: Tensor, jj: Tensor, shared: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Histogram ranges of every pair's two vectors, as rows of a small table.

    Row r < sample of the table is vector r with its own kept range; further rows are
    (vector, min, max) variants met when a partner's removals drop all of a vector's
    min-attaining (or max-attaining) dims. ``moved[i, j]`` is found exactly from
    ``at_min @ keepᵀ`` (how many of i's minima j keeps; 0/1 float32, exact).

    Args:
        xf: (sample, feature) float64; keep: (sample, feature) bool; lo, hi: (sample,).
        ii, jj: (pair,) pair indices; shared: (pair,) bool, the pair keeps >= 1 common dim.

    Returns:
        table_vec (row,), table_lo (row,), table_hi (row,), and ri, rj (pair,): the table
        row holding the range of x (vector ii) and of y (vector jj) in each pair.
    """
    n = xf.shape[0]
    kf = keep.to(torch.float32)
    at_min = (keep & (xf == lo.unsqueeze(1))).to(torch.float32)
    at_max = (keep & (xf == hi.unsqueeze(1))).to(torch.float32)
    moved = ((at_min @ kf.T) == 0) | ((at_max @ kf.T) == 0)  # (sample, sample) [vector, partner]
    vec = torch.cat([ii, jj])  # (2·pair,): side x of every pair, then side y
    partner = torch.cat([jj, ii])
    rows = vec.clone()
    q = torch.nonzero(moved[vec, partner] & torch.cat([shared, shared])).flatten()
    table_vec, table_lo, table_hi = torch.arange(n, device=xf.device), lo, hi
    if q.numel():
        vq, pq = vec[q], partner[q]
        inf = torch.tensor(float("inf"), dtype=xf.dtype, device=xf.device)
        asc = torch.argsort(torch.where(keep, xf, inf), dim=1)
        desc = torch.argsort(torch.where(keep, xf, -inf), dim=1, descending=True)
        qlo = xf[vq, _first_kept(asc, vq, pq, keep)]
        qhi = xf[vq, _first_kept(desc, vq, pq, keep)]
        first, inv = _unique_rows(vq, qlo, qhi)  # a few distinct ranges per vector
        rows[q] = n + inv
        table_vec = torch.cat([table_vec, vq[first]])
        table_lo = torch.cat([lo, qlo[first]])
        table_hi = torch.cat([hi, qhi[first]])
    p = ii.shape[0]
    return table_vec, table_lo, table_hi, rows[:p], rows[p:]


def _unique_rows(*cols: Tensor) -> tuple[Tensor, Tensor]:
    """Distinct rows of equal-length columns: (unique,) index of a first member, (query,) group id.

    A lexicographic stable sort (``torch.unique(dim=0)`` is slow on the CPU).
    """
    order = torch.arange(cols[0].numel(), device=cols[0].device)
    for c in reversed(cols):
        order = order[torch.sort(c[order], stable=True).indices]
    new = torch.zeros(order.numel(), dtype=torch.bool, device=order.device)
    new[0] = True
    for c in cols:
        s = c[order]
        new[1:] |= s[1:] != s[:-1]
    group_sorted = torch.cumsum(new, 0) - 1
    inv = torch.empty_like(order)
    inv[order] = group_sorted
    return order[new], inv


# --------------------------------------------------------------------------- histograms


def _xlog2x_table(n_max: int, device: torch.device) -> Tensor:
    """(n_max + 1,) float64 c·log2(c), with 0 for c = 0."""
    c = torch.arange(n_max + 1, dtype=torch.float64, device=device)
    return c * torch.log2(c.clamp_min(1.0))


def _mi_from_counts(joint: Tensor, bins: int, xlog2x: Tensor) -> Tensor:
    """(pair,) MI in bits from (pair, w, w) integer joint counts, w >= bins; [:bins, :bins] is used.

    With c the counts, T their total, S = sum c log2 c and k the number of non-empty bins,
    H = -sum p log2(p + 1e-12) = log2 T - S / T - k·1e-12/ln 2 (p = c/T >= 1/T, so the
    first-order expansion of log2(p + 1e-12) is exact to ~1e-20). Marginals are sums of the
    joint counts, so MI = Hx + Hy - Hxy = log2 T - (Sx + Sy - Sxy)/T - (kx + ky - kxy)·1e-12/ln 2.
    """
    c, w = joint.shape[0], joint.shape[1]
    valid = joint[:, :bins, :bins]  # (pair, bin, bin)
    s_xy = xlog2x.index_select(0, joint.reshape(-1)).view(c, w, w)[:, :bins, :bins].sum((1, 2))
    k_xy = torch.count_nonzero(valid, dim=(1, 2))
    mx, my = valid.sum(2), valid.sum(1)  # (pair, bin)
    total = mx.sum(1).to(torch.float64)
    s_x = xlog2x.index_select(0, mx.reshape(-1)).view(c, bins).sum(1)
    s_y = xlog2x.index_select(0, my.reshape(-1)).view(c, bins).sum(1)
    k = torch.count_nonzero(mx, dim=1) + torch.count_nonzero(my, dim=1) - k_xy
    return torch.log2(total) - (s_x + s_y - s_xy) / total - k.to(torch.float64) * (_EPS * _LOG2_E)


def _joint_counts_scatter(code_x: Tensor, code_y: Tensor, bins: int) -> Tensor:
    """(pair, bins + 1, bins + 1) int32 joint counts; row/column ``bins`` is the sentinel.

    Args:
        code_x: (pair, feature) ``bin_x * (bins + 1)``, or ``bins * (bins + 1)`` where x drops the dim.
        code_y: (pair, feature) ``bin_y``, or ``bins`` where y drops the dim.
    """
    w = bins + 1
    code = (code_x + code_y).long()  # (pair, feature) in [0, w·w)
    counts = torch.zeros(code.shape[0], w * w, dtype=torch.int32, device=code.device)
    ones = torch.ones((1, 1), dtype=torch.int32, device=code.device).expand_as(code)
    counts.scatter_add_(1, code, ones)
    return counts.view(-1, w, w)


def _mi_scatter(
    b: Tensor, keep: Tensor, ri: Tensor, rj: Tensor, bins: int, chunk_pairs: int, xlog2x: Tensor
) -> Tensor:
    """(pair,) MI of pairs (row ri, row rj) of the bin table, chunk_pairs at a time.

    Args:
        b: (row, feature) int64 bins; keep: (row, feature) bool; ri, rj: (pair,) table rows.
    """
    w = bins + 1
    code_dtype = torch.uint8 if w * w <= 256 else torch.int32
    row_code = torch.where(keep, b * w, bins * w).to(code_dtype)  # (row, feature)
    col_code = torch.where(keep, b, bins).to(code_dtype)
    mi = torch.empty(ri.shape[0], dtype=torch.float64, device=b.device)
    for s in range(0, ri.shape[0], chunk_pairs):
        joint = _joint_counts_scatter(
            row_code.index_select(0, ri[s : s + chunk_pairs]),
            col_code.index_select(0, rj[s : s + chunk_pairs]),
            bins,
        )
        mi[s : s + chunk_pairs] = _mi_from_counts(joint, bins, xlog2x)
    return mi


def _mi_onehot(b: Tensor, keep: Tensor, bins: int, chunk_pairs: int, xlog2x: Tensor) -> Tensor:
    """(pair,) MI of all pairs i < j of the rows of b from one-hot products, in blocks of rows.

    ``O[i, a, d] = keep[i, d] & (b[i, d] == a)`` makes ``(O_i O_jᵀ)[a, c]`` the joint count of
    bins (a, c) over the dims both vectors keep. float32 holds 0/1 exactly (also as TF32)
    and accumulates integers exactly below 2**24.

    Args:
        b: (sample, feature) int64 per-vector bins; keep: (sample, feature) bool.
    """
    n, d = b.shape
    k = torch.arange(bins, device=b.device)
    onehot = (b.unsqueeze(1) == k.view(1, -1, 1)) & keep.unsqueeze(1)  # (sample, bin, feature)
    flat = onehot.to(torch.float32).reshape(n * bins, d)
    rows = max(1, chunk_pairs // n)  # rows per block: about chunk_pairs pairs at a time
    out = []
    for r0 in range(0, n - 1, rows):
        r1 = min(n - 1, r0 + rows)
        g = flat[r0 * bins : r1 * bins] @ flat[r0 * bins :].T  # (row·bin, sample'·bin)
        g = g.view(r1 - r0, bins, n - r0, bins).permute(0, 2, 1, 3)  # (row, sample', bin, bin)
        li, lj = torch.triu_indices(r1 - r0, n - r0, 1, device=b.device)  # pairs i < j, triu order
        joint = g[li, lj].round_().to(torch.int64)  # (pair, bin, bin)
        out.append(_mi_from_counts(joint, bins, xlog2x))
    return torch.cat(out)


# --------------------------------------------------------------------------- main kernel


def all_pairs_mi_cov_corr(
    x: Tensor,
    *,
    bins: int = 15,
    z_max: float = 5.0,
    chunk_pairs: int = 2048,
    method: Literal["auto", "scatter", "onehot"] = "auto",
) -> dict[str, Tensor]:
    """MI, covariance and Pearson r of every pair of rows, after pairwise outlier removal.

    >>> x = torch.tensor([[0., 1., 2., 3.], [0., 2., 4., 6.], [3., 2., 1., 0.]])
    >>> out = all_pairs_mi_cov_corr(x, bins=2)
    >>> out["corr"]
    tensor([ 1., -1., -1.], dtype=torch.float64)
    >>> out["mi"].round(decimals=6)   # 1 bit: both split evenly into the same halves
    tensor([1., 1., 1.], dtype=torch.float64)

    Args:
        x: (sample, feature) vectors, e.g. (sequence, d_model) hidden states at one position.
            Any float dtype; the arithmetic is float64. Must be finite.
        bins: histogram bins per axis (the lecture's 15).
        z_max: a dimension is dropped for a pair when |z| > z_max in either vector.
        chunk_pairs: pairs whose histograms are built at once. Peak extra memory is about
            ``chunk_pairs * feature * 12`` bytes (25 MB at the defaults and feature = 1024)
            plus four (sample, sample) float64 matrices and the (pair,) outputs.
        method: ``"scatter"`` (scatter-add of joint bin codes; the CPU default), ``"onehot"``
            (a float32 product of masked one-hot encodings per block of rows; the CUDA
            default; 0/1 values with fp32 accumulation, also under TF32, keep the counts
            exact below 2**24 features), or ``"auto"``.

    Returns:
        ``{"mi", "cov", "corr"}``, each (pair,) float64 in ``numpy.triu_indices(sample, 1)``
        order (see :func:`pair_indices`); MI in bits. NaN where a pair keeps fewer than 2
        dims (MI: none); corr NaN and cov 0 where a kept vector is constant.

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
            f"all_pairs_mi_cov_corr needs at least 2 samples and 2 features; got x "
            f"{tuple(x.shape)} (sample, feature)"
        )
    if bins < 1 or chunk_pairs < 1 or not z_max > 0:
        raise InputError(
            f"all_pairs_mi_cov_corr: bins ({bins}) and chunk_pairs ({chunk_pairs}) must be >= 1 "
            f"and z_max ({z_max}) > 0"
        )
    if method == "auto":
        method = "onehot" if x.device.type == "cuda" else "scatter"
    if method not in ("scatter", "onehot"):
        raise InputError(
            f"all_pairs_mi_cov_corr: method must be 'auto', 'scatter' or 'onehot'; got {method!r}"
        )
    finite = torch.isfinite(x).all(1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten()[:5].tolist()
        raise InputError(
            f"all_pairs_mi_cov_corr: x {tuple(x.shape)} (sample, feature) has non-finite "
            f"values in rows {bad}"
        )

    xf = x.to(torch.float64)  # (sample, feature)
    keep = _keep_mask(xf, z_max)  # (sample, feature)
    lo, hi = _masked_min_max(xf, keep)  # (sample,)
    ii, jj = pair_indices(n, device=x.device)  # (pair,)

    # ---- covariance and correlation: sums over each pair's joint mask from matrix products
    kd = keep.to(torch.float64)
    own_mean = (xf * kd).sum(1, keepdim=True) / kd.sum(1, keepdim=True)  # (sample, 1)
    xc = (xf - own_mean) * kd  # (sample, feature), 0 where dropped
    m = (kd @ kd.T)[ii, jj]  # (pair,) dims both keep
    s1 = xc @ kd.T  # [i, j]: sum of x_i over the dims i and j keep
    s2 = xc.square() @ kd.T  # [i, j]: sum of x_i^2 over them
    sx, sy = s1[ii, jj], s1[jj, ii]
    cov = ((xc @ xc.T)[ii, jj] - sx * sy / m) / (m - 1)
    vx = (s2[ii, jj] - sx.square() / m) / (m - 1)
    vy = (s2[jj, ii] - sy.square() / m) / (m - 1)
    corr = (cov / torch.sqrt(vx * vy)).clamp(-1.0, 1.0)

    # ---- histogram ranges per pair side (own range, or an exact variant for the rare moves)
    shared = m > 0
    table_vec, table_lo, table_hi, ri, rj = _range_variants(xf, keep, lo, hi, ii, jj, shared)
    b = _bin_index(xf.index_select(0, table_vec), table_lo, table_hi, bins)  # (row, feature)
    keep_t = keep.index_select(0, table_vec)
    xlog2x = _xlog2x_table(d, x.device)
    if method == "onehot":
        mi = _mi_onehot(b[:n], keep, bins, chunk_pairs, xlog2x)
        redo = torch.nonzero((ri >= n) | (rj >= n)).flatten()
        if redo.numel():
            mi[redo] = _mi_scatter(b, keep_t, ri[redo], rj[redo], bins, chunk_pairs, xlog2x)
    else:
        mi = _mi_scatter(b, keep_t, ri, rj, bins, chunk_pairs, xlog2x)

    # ---- degenerate pairs
    const = table_lo == table_hi  # (row,) the kept values are all equal
    flat = const[ri] | const[rj]
    nan = torch.full_like(corr, float("nan"))
    corr = torch.where(flat, nan, corr)
    cov = torch.where(flat, torch.zeros_like(cov), cov)
    few = m < 2
    cov = torch.where(few, nan, cov)
    corr = torch.where(few, nan, corr)
    mi = torch.where(shared, mi, nan)
    return {"mi": mi, "cov": cov, "corr": corr}
