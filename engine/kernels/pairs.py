"""All-pairs mutual information, covariance and correlation of vectors (docs/analyses.md, punct).

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

How it is done for all pairs at once (no per-pair Python; loops only over chunks of pairs):

* The outlier mask of a vector depends on that vector alone, so ``keep`` (sample, feature)
  is computed once and a pair keeps ``keep_i & keep_j``.
* cov/corr: the pair's count, sums and sums of squares are each vector's own sums minus
  those over the partner's dropped dims (few, so an index_add over them replaces the products
  K Kᵀ, (K∘X) Kᵀ, (K∘X²) Kᵀ), and the cross products are one GEMM (K∘X)(K∘X)ᵀ, all in
  float64 after centring every vector on its own kept mean (a shift that changes neither cov
  nor corr but avoids the cancellation of raw sums of products).
* MI: each vector's bins come from its own kept min/max. That is the pair's binning unless
  the partner's removals drop ALL dims where the vector attains its min (or max). Those
  sides are found exactly (how many of i's extremes j keeps is a 0/1 product) and get the
  pair's true range; the few distinct (vector, min, max) variants become extra rows of the
  bin table, so every pair is then exact with no special path. The joint histograms are
  counted, on a CPU with fast bfloat16 products (AMX, AVX-512 BF16), as one-hot products:
  (vector·bin × feature) 0/1 matrices multiplied in blocks of vectors, exact because every
  count is kept at most 256 (:func:`_mi_gemm`). Elsewhere they are counted from the codes
  ``bin_i * 16 + bin_j`` (dims either vector drops go to cells that
  are then zeroed). On a CPU the pairs (i, i+1..n-1) of a row are contiguous, so a group of
  rows is one broadcast add per row and one ``bincount`` (:func:`_mi_rows`), the pairs with a
  variant range one more row or column per variant, all as tasks on single-threaded workers
  next to the covariance task; else a scatter-add of gathered codes, or on CUDA one product of
  masked one-hot encodings (n·bins × D)(D × n·bins).
* Entropies are vectorised over pairs from the integer counts.

The result equals the per-pair NumPy loop to ~1e-14 (MI from identical integer counts).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from lamina.engine.errors import InputError
from lamina.engine.kernels.workers import cpu_workers, run_tasks

__all__ = ["pair_indices", "all_pairs_mi_cov_corr", "default_method"]

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
    xc = x - x.mean(1, keepdim=True)
    sd = (xc.square().sum(1, keepdim=True) / (x.shape[1] - 1)).sqrt()  # NumPy's std(ddof=1)
    z = xc / sd
    keep = ~(z.abs() > z_max)
    constant = x.amin(1) == x.amax(1)  # (sample,)
    return keep | constant.unsqueeze(1)


def _bin_index(v: Tensor, lo: Tensor, hi: Tensor, bins: int) -> Tensor:
    """(row, feature) int64 histogram bin of each value with edges linspace(lo, hi, bins + 1).

    Bit-for-bit NumPy ``histogramdd``: equal lo/hi widen to lo - 0.5 .. hi + 0.5; edges are
    ``arange(bins + 1) * step + lo`` with the last edge set to hi (NumPy's linspace);
    index = searchsorted(edges, v, 'right') - 1 with v == hi in the last bin. The index is
    settled by one comparison with the interior edge nearest to v, recomputed with NumPy's
    arithmetic (no table, no gather). Values outside [lo, hi] (dims the caller masks out)
    get some index in range and must be ignored.

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
    tiny = step == 0  # NumPy's branch for a step that underflows (denormal ranges)
    edges = torch.where(
        tiny.unsqueeze(1), (k / bins).unsqueeze(0) * delta.unsqueeze(1), k.unsqueeze(0) * step.unsqueeze(1)
    ) + lo.unsqueeze(1)  # (row, bin+1)
    edges[:, -1] = hi
    if bool(tiny.any()):
        idx = torch.searchsorted(edges, v.contiguous(), right=True) - 1
        return idx.clamp_(0, bins - 1)
    if bins == 1:
        return torch.zeros(v.shape, dtype=torch.int64, device=v.device)
    # The interior edge nearest to v is e_j = j * step + lo (NumPy's arithmetic: a product, then
    # a sum, never fused), 1 <= j <= bins - 1; rounding can only misplace v relative to e_j
    # itself, so the bin is j - 1 + (v >= e_j). Values outside [lo, hi] get some bin in range.
    lo1, step1 = lo.unsqueeze(1), step.unsqueeze(1)
    j = torch.sub(v, lo1).div_(step1).round_().clamp_(1, bins - 1)  # (row, feature) float
    e = torch.mul(j, step1).add_(lo1)  # e_j exactly as np.linspace computes it
    above = torch.ge(v, e, out=e)  # 1.0 where v >= e_j (a float out: adding a bool tensor is slow)
    return j.sub_(1).add_(above).long()


def _masked_min_max(v: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """(row,) min and max of v over the kept entries of each row."""
    inf = torch.tensor(float("inf"), dtype=v.dtype, device=v.device)
    return torch.where(keep, v, inf).amin(1), torch.where(keep, v, -inf).amax(1)


def _at(mat: Tensor, flat: Tensor) -> Tensor:
    """``mat.reshape(-1)[flat]``: entries of a (sample, sample) matrix at flat indices i·n + j."""
    return mat.reshape(-1).index_select(0, flat)


def _first_shared(
    ranked: Tensor, vec: Tensor, partner: Tensor, keep: Tensor, own_keep: Tensor, top: int = 8,
    largest: bool = False,
) -> Tensor:
    """(query,) the first dim, in order of ``ranked[vec]``, that vec and partner both keep.

    The first ``top`` ranks of every vector come from one topk and are tested for all queries
    at once; the rare queries whose partner drops all of them continue over a full argsort,
    one rank per round (a loop over ranks, never over pairs).

    Args:
        ranked: (row, feature) values to rank, +inf (-inf if largest) where the vector
            itself drops the dim: one row per vector that has queries.
        vec: (query,) int64 rows of ``ranked``; partner: (query,) int64 vector indices;
            every pair must share a kept dim.
        keep: (sample, feature) bool; own_keep: (row, feature) bool, keep of ranked's rows.
    """
    d = ranked.shape[1]
    k = min(top, d)
    order = torch.topk(ranked, k, dim=1, largest=largest, sorted=True).indices  # (row, k)
    own = own_keep.gather(1, order)  # (row, k) the vector keeps its rank-r dim
    dims = order.index_select(0, vec)  # (query, k)
    ok = own.index_select(0, vec) & keep.reshape(-1)[dims + (partner * d).unsqueeze(1)]
    first = ok.to(torch.uint8).argmax(1)  # first True (argmax returns the first maximum)
    out = dims.gather(1, first.unsqueeze(1)).squeeze(1)  # (query,)
    pending = torch.nonzero(~ok.any(1)).flatten()
    if pending.numel():
        order = torch.argsort(ranked, dim=1, descending=largest, stable=True)
        for r in range(k, d):
            if pending.numel() == 0:
                break
            v, p = vec[pending], partner[pending]
            dd = order[v, r]
            hit = own_keep[v, dd] & keep[p, dd]
            out[pending[hit]] = dd[hit]
            pending = pending[~hit]
    return out


def _range_variants(
    xf: Tensor, keep: Tensor, lo: Tensor, hi: Tensor, ii: Tensor, jj: Tensor, shared: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Histogram ranges of every pair's two vectors, as rows of a small table.

    Row r < sample of the table is vector r with its own kept range; further rows are
    (vector, min, max) variants, met when a partner's removals drop all of a vector's
    min-attaining (or max-attaining) dims. Those sides are found exactly from the 0/1
    product ``[at_min; at_max] @ keepᵀ`` (how many of i's minima / maxima j keeps), and
    their new min / max is the value at the first of the vector's ranked dims that the
    partner also keeps (:func:`_first_shared`).

    Args:
        xf: (sample, feature) float64; keep: (sample, feature) bool; lo, hi: (sample,).
        ii, jj: (pair,) pair indices; shared: (pair,) bool, the pair keeps >= 1 common dim.

    Returns:
        table_vec (row,), table_lo (row,), table_hi (row,), and ri, rj (pair,): the table
        row holding the range of x (vector ii) and of y (vector jj) in each pair.
    """
    n, d = xf.shape
    at_ext = torch.cat([keep & (xf == lo.unsqueeze(1)), keep & (xf == hi.unsqueeze(1))])
    # hits[i, j] (2·sample, sample): how many of i's minima (rows n + i: maxima) j keeps, i.e.
    # the 0/1 product at_ext @ keepᵀ, summed over the few dims where a vector attains an extreme
    r, c = torch.nonzero(at_ext, as_tuple=True)
    hits = torch.zeros(2 * n, n, dtype=torch.float32, device=xf.device)
    hits.index_add_(0, r, keep[:, c].T.to(torch.float32))  # rows: keep of every vector at dim c
    vec = torch.cat([ii, jj])  # (side,): x side of every pair, then y side
    partner = torch.cat([jj, ii])
    both = torch.cat([shared, shared])
    flat = vec * n + partner  # (side,) index into a flattened (sample, sample) matrix
    gone_lo = (hits[:n].reshape(-1).index_select(0, flat) == 0) & both  # partner drops all vec's minima
    gone_hi = (hits[n:].reshape(-1).index_select(0, flat) == 0) & both
    rows = vec.clone()
    table_vec, table_lo, table_hi = torch.arange(n, device=xf.device), lo, hi
    moved = torch.nonzero(gone_lo | gone_hi).flatten()
    if moved.numel() == 0:
        p = ii.shape[0]
        return table_vec, table_lo, table_hi, rows[:p], rows[p:]
    inf = torch.tensor(float("inf"), dtype=xf.dtype, device=xf.device)
    v, pt = vec[moved], partner[moved]
    d_lo = torch.full_like(v, d)  # d = "the vector's own min"
    d_hi = torch.full_like(v, d)
    for gone, sign, out in ((gone_lo, 1.0, d_lo), (gone_hi, -1.0, d_hi)):
        q = torch.nonzero(gone[moved]).flatten()
        if q.numel():  # rank only the vectors that have queries (a few)
            uv, row = torch.unique(v[q], return_inverse=True)
            kv = keep.index_select(0, uv)
            ranked = torch.where(kv, xf.index_select(0, uv), sign * inf)
            out[q] = _first_shared(ranked, row, pt[q], keep, kv, largest=sign < 0)
    key = (v * (d + 1) + d_lo) * (d + 1) + d_hi  # (vector, min dim, max dim)
    uniq, inv = torch.unique(key, return_inverse=True)  # a few distinct ranges per vector
    u_vec, u_lo, u_hi = uniq // ((d + 1) ** 2), (uniq // (d + 1)) % (d + 1), uniq % (d + 1)
    xpad = torch.cat([xf, torch.zeros(n, 1, dtype=xf.dtype, device=xf.device)], 1)  # column d: unused
    new_lo = torch.where(u_lo == d, lo[u_vec], xpad[u_vec, u_lo])
    new_hi = torch.where(u_hi == d, hi[u_vec], xpad[u_vec, u_hi])
    rows[moved] = n + inv
    p = ii.shape[0]
    return (
        torch.cat([table_vec, u_vec]),
        torch.cat([lo, new_lo]),
        torch.cat([hi, new_hi]),
        rows[:p],
        rows[p:],
    )


# --------------------------------------------------------------------------- histograms


def _entropy_table(kept: Tensor, n_max: int) -> tuple[Tensor, Tensor]:
    """Per-total lookup table for the entropies, and each pair's row offset in it.

    For a pair whose histogram holds T counts (T = dims both vectors keep, known before
    counting) the table row for T is ``f(c) = c log2 c + T·1e-12/ln 2·[c > 0]``, so that
    summing f over the marginal cells minus the joint cells gives the whole MI numerator
    (see :func:`_mi_from_counts`) in one gather per cell.

    Args:
        kept: (pair,) int64 T of every pair.
        n_max: the largest possible count (features).

    Returns:
        table (distinct T · (n_max + 1),) float64 and base (pair,) int64 row offsets.
    """
    totals, row = torch.unique(kept, return_inverse=True)  # a few distinct totals
    c = torch.arange(n_max + 1, dtype=torch.float64, device=kept.device)
    xlog2x = c * torch.log2(c.clamp_min(1.0))  # 0 for c = 0
    table = xlog2x + totals.to(torch.float64).unsqueeze(1) * (_EPS * _LOG2_E) * (c > 0)
    return table.reshape(-1), row * (n_max + 1)


def _mi_from_counts(joint: Tensor, total: Tensor, table: Tensor, base: Tensor) -> Tensor:
    """(pair,) MI in bits from (pair, w, w) integer joint counts; cells outside the real bins hold 0.

    With c the counts, T their total, S = sum c log2 c and k the number of non-empty cells,
    H = -sum p log2(p + 1e-12) = log2 T - S / T - k·1e-12/ln 2 (p = c/T >= 1/T, so the
    first-order expansion of log2(p + 1e-12) is exact to ~1e-20). Marginals are sums of the
    joint counts, so MI = Hx + Hy - Hxy = log2 T - [(Sx + Sy - Sxy) + T·1e-12/ln 2·(kx + ky - kxy)] / T,
    and the bracket is a sum of ``table[base + c]`` over marginal cells minus joint cells.
    Zero cells add nothing, so a zeroed sentinel needs no slicing.

    Args:
        joint: (pair, w, w) int64 counts, contiguous; overwritten. total: (pair,) float64 T;
            table, base: from :func:`_entropy_table` (base sliced to these pairs).
    """
    c, w = joint.shape[0], joint.shape[1]
    base = base.unsqueeze(1)  # (pair, 1)
    marg = torch.empty(c, 2 * w, dtype=joint.dtype, device=joint.device)  # x then y marginals
    torch.sum(joint, 2, out=marg[:, :w])
    torch.sum(joint, 1, out=marg[:, w:])
    s = table.index_select(0, marg.add_(base).view(-1)).view(c, 2 * w).sum(1)
    cells = joint.view(c, w * w).add_(base)  # in place: the joint counts are not needed after this
    s -= table.index_select(0, cells.view(-1)).view(c, w * w).sum(1)
    return torch.log2(total) - s / total


def _mi_codes(
    b: Tensor, keep: Tensor, ri: Tensor, rj: Tensor, bins: int, chunk_pairs: int, primitive: str,
    total: Tensor, table: Tensor, base: Tensor,
) -> Tensor:
    """(pair,) MI of pairs (table row ri, table row rj), chunk_pairs at a time.

    Each dim of a pair becomes the cell ``bin_x * w | bin_y`` of a w × w grid, w the power of
    two above ``bins`` (16 for the default 15 bins). A dim that a vector drops has the all-ones
    code w² - 1 on its side, so the OR puts it in the last cell, whose count is then zeroed;
    the pair offset ``pair * w²`` is OR-ed in too. Bits instead of a clamp: one pass less.

    Args:
        b: (row, feature) int64 bins; keep: (row, feature) bool; ri, rj: (pair,) table rows.
        primitive: ``"bincount"`` (one bincount per chunk of the offset int32 codes: the
            fastest on a CPU) or ``"scatter"`` (scatter-add along the feature axis; no host
            synchronisation, so it suits CUDA).
        total, base: (pair,) and table: see :func:`_mi_from_counts`.
    """
    w = 1 << bins.bit_length()  # power of two > bins
    sentinel = w * w - 1
    row_code = torch.where(keep, b * w, sentinel).to(torch.int32)  # (row, feature)
    col_code = torch.where(keep, b, sentinel).to(torch.int32)
    chunk = max(1, min(chunk_pairs, 2**31 // (w * w)))  # offset codes fit in int32
    off = torch.arange(chunk, dtype=torch.int32, device=b.device).mul_(w * w).unsqueeze(1)  # (pair, 1)
    mi = torch.empty(ri.shape[0], dtype=torch.float64, device=b.device)
    for s in range(0, ri.shape[0], chunk):
        code = row_code.index_select(0, ri[s : s + chunk])  # (pair, feature)
        code.bitwise_or_(col_code.index_select(0, rj[s : s + chunk]))
        c = code.shape[0]
        if primitive == "scatter":
            counts = torch.zeros(c, w * w, dtype=torch.int64, device=b.device)
            idx = code.long()
            counts.scatter_add_(1, idx, torch.ones_like(idx))
        else:
            counts = torch.bincount(code.bitwise_or_(off[:c]).view(-1), minlength=c * w * w).view(c, w * w)
        counts[:, sentinel] = 0
        mi[s : s + c] = _mi_from_counts(counts.view(c, w, w), total[s : s + c], table, base[s : s + c])
    return mi


class _RowBuffers:
    """One worker's buffer for :func:`_mi_rows`: the int32 codes of a group of pairs."""

    def __init__(self, size: int, device: torch.device):
        self.codes = torch.empty(size, dtype=torch.int32, device=device)


def _row_groups(n: int, target: int) -> list[tuple[int, int]]:
    """Consecutive rows [i0, i1) of the pairs i < j, each group about ``target`` pairs (at least one row)."""
    groups, i0, count = [], 0, 0
    for i in range(n - 1):
        count += n - 1 - i
        if count >= target or i == n - 2:
            groups.append((i0, i + 1))
            i0, count = i + 1, 0
    return groups


def _mi_rows(
    b: Tensor, keep: Tensor, n: int, table_vec: Tensor, ri: Tensor, rj: Tensor, bins: int, group_pairs: int,
    total: Tensor, table: Tensor, base: Tensor, extra: Callable[[], None] | None = None,
) -> Tensor:
    """(pair,) MI of all pairs i < j (x = row i, y = row j), from the table of bins, in rows of pairs.

    The pairs of row i are (i, i+1..n-1), contiguous in ``triu`` order, so their codes are
    one broadcast add: ``(bin_i * w + shift_i) + (bin_j + j * w²)``, with w the power of two
    above ``bins`` and the bin ``bins`` standing for "this vector drops the dim" (that row and
    column of each w × w table are zeroed). One ``bincount`` per group of rows gives the joint
    tables of all its pairs. The pairs that use a range variant (table row >= n, see
    :func:`_range_variants`) are recounted per variant: one more row (the variant against
    every later vector) or column (every earlier vector against the variant), again one add
    and one bincount; pairs where both sides are variants (rare) go through
    :func:`_mi_codes`. All of it runs as tasks on single-threaded CPU workers, each writing
    its own slices; the recounted pairs are written last, in a fixed order.

    Args:
        b: (row, feature) int64 bins of the table rows (the n vectors, then the variants);
            keep: (row, feature) bool.
        table_vec: (row,) the vector of each table row; ri, rj: (pair,) table rows of x and y.
        total, base: (pair,) and table: see :func:`_mi_from_counts`.
        extra: other independent work to run as the first task (the covariances).
    """
    d = b.shape[1]
    w = 1 << bins.bit_length()  # power of two > bins (the layout of _mi_codes' tables)
    dev = b.device
    own = torch.where(keep, b, bins).to(torch.int32)  # (row, feature)
    offsets = (torch.arange(own.shape[0], dtype=torch.int32, device=dev) * (w * w)).unsqueeze(1)
    col = own + offsets  # y side, offset by the row: + j·w²
    row = own * w  # x side
    row_off = row + offsets  # x side offset by the row: + i·w²
    start = [i * (2 * n - i - 1) // 2 for i in range(n)] + [n * (n - 1) // 2]  # pair index of (i, i + 1)
    mi = torch.empty(start[-1], dtype=torch.float64, device=dev)
    groups = _row_groups(n, group_pairs)
    largest = max(max(start[i1] - start[i0] for i0, i1 in groups), n)
    variant_x = ri >= n
    variant_y = rj >= n
    both = torch.nonzero(variant_x & variant_y).flatten()
    recounted: dict[tuple, tuple[Tensor, Tensor]] = {}  # item -> (pair indices, MI)

    def count(codes: Tensor, pairs: slice | Tensor) -> Tensor:
        k = codes.shape[0]
        joint = torch.bincount(codes.view(-1), minlength=k * w * w).view(k, w, w)
        joint[:, bins:, :] = 0  # dims one of the two drops
        joint[:, :, bins:] = 0
        return _mi_from_counts(joint, total[pairs], table, base[pairs])

    def task(buf: _RowBuffers, item: tuple[str, int, int]) -> None:
        kind, lo, hi = item
        if kind == "extra":
            extra()
        elif kind == "rows":  # pairs of rows lo..hi-1, own ranges
            p0, p1 = start[lo], start[hi]
            codes = buf.codes[: (p1 - p0) * d].view(p1 - p0, d)
            for i in range(lo, hi):
                q = start[i] - p0  # pair (i, j) sits at q + j - i - 1 within the group
                torch.add(col[i + 1 : n], row[i] + (q - i - 1) * (w * w), out=codes[q : q + n - i - 1])
            mi[p0:p1] = count(codes, slice(p0, p1))
        elif kind == "x":  # table row lo (a variant of vector v) as x against every later vector
            v = int(table_vec[lo])
            p0, p1 = start[v], start[v + 1]
            codes = torch.add(col[v + 1 : n], row[lo] - (v + 1) * (w * w), out=buf.codes[: (p1 - p0) * d].view(-1, d))
            use = torch.nonzero((ri[p0:p1] == lo) & ~variant_y[p0:p1]).flatten()
            recounted[item] = (use + p0, count(codes, slice(p0, p1))[use])
        elif kind == "y":  # every earlier vector as x against table row lo (a variant of vector v) as y
            v = int(table_vec[lo])
            pairs = torch.tensor(start[:v], dtype=torch.int64, device=dev) + v - torch.arange(v, device=dev) - 1
            codes = torch.add(row_off[:v], own[lo], out=buf.codes[: v * d].view(v, d))
            use = torch.nonzero((rj[pairs] == lo) & ~variant_x[pairs]).flatten()
            recounted[item] = (pairs[use], count(codes, pairs)[use])
        else:  # both sides variants
            q = both[lo:hi]
            recounted[item] = (q, _mi_codes(b, keep, ri[q], rj[q], bins, hi - lo, "bincount", total[q], table, base[q]))

    items = ([("extra", 0, 0)] if extra is not None else []) + [("rows", i0, i1) for i0, i1 in groups]
    for r in range(n, b.shape[0]):
        v = int(table_vec[r])
        items += [("x", r, 0)] if v < n - 1 else []
        items += [("y", r, 0)] if v > 0 else []
    items += [("both", s0, min(s0 + group_pairs, both.shape[0])) for s0 in range(0, both.shape[0], max(1, group_pairs))]
    run_tasks(task, items, [_RowBuffers(largest * d, dev) for _ in range(cpu_workers(dev))])
    for item in items:  # in a fixed order, whichever worker finished first
        if item in recounted:
            idx, val = recounted[item]
            mi[idx] = val
    return mi


def _mi_onehot(
    b: Tensor, keep: Tensor, bins: int, chunk_pairs: int, total: Tensor, table: Tensor, base: Tensor
) -> Tensor:
    """(pair,) MI of all pairs i < j of the rows of b from one-hot products, in blocks of rows.

    ``O[i, a, d] = keep[i, d] & (b[i, d] == a)`` makes ``(O_i O_jᵀ)[a, c]`` the joint count of
    bins (a, c) over the dims both vectors keep. float32 holds 0/1 exactly (also as TF32)
    and accumulates integers exactly below 2**24.

    Args:
        b: (sample, feature) int64 per-vector bins; keep: (sample, feature) bool.
        total, base: (pair,) and table: see :func:`_mi_from_counts`.
    """
    n, d = b.shape
    k = torch.arange(bins, device=b.device)
    onehot = (b.unsqueeze(1) == k.view(1, -1, 1)) & keep.unsqueeze(1)  # (sample, bin, feature)
    flat = onehot.to(torch.float32).reshape(n * bins, d)
    rows = max(1, chunk_pairs // n)  # rows per block: about chunk_pairs pairs at a time
    out, p0 = [], 0
    for r0 in range(0, n - 1, rows):
        r1 = min(n - 1, r0 + rows)
        g = flat[r0 * bins : r1 * bins] @ flat[r0 * bins :].T  # (row·bin, sample'·bin)
        g = g.view(r1 - r0, bins, n - r0, bins).permute(0, 2, 1, 3)  # (row, sample', bin, bin)
        li, lj = torch.triu_indices(r1 - r0, n - r0, 1, device=b.device)  # pairs i < j, triu order
        joint = g[li, lj].round_().to(torch.int64)  # (pair, bin, bin)
        p1 = p0 + joint.shape[0]
        out.append(_mi_from_counts(joint, total[p0:p1], table, base[p0:p1]))
        p0 = p1
    return torch.cat(out)


_BF16_EXACT = 256  # every integer 0..256 is a bfloat16 (8 significant bits)
_GEMM_ROWS, _GEMM_COLS = 16, 128  # vectors x partners per task of :func:`_mi_gemm`: its cells stay in a core's cache
_bf16_verdict: dict[str, bool] = {}


def _bf16_exact() -> bool:
    """Whether this CPU's bfloat16 products of 0/1 matrices return every count <= 256 exactly.

    :func:`_mi_gemm` needs float32 accumulation inside the bfloat16 GEMM (its results are
    counts <= 256, exact in bfloat16 only if nothing was rounded on the way). Checked once per
    process on 0/1 products with counts up to 256 (one exactly 256), against float32.
    """
    if "exact" not in _bf16_verdict:
        g = torch.Generator().manual_seed(0)
        a = torch.rand(48, 1024, generator=g) < 0.2  # rows of ~205 ones
        a[0, :] = False
        a[0, :_BF16_EXACT] = True  # a count of exactly 256 against the all-ones row
        b = a.clone()
        b[1, :] = True
        ref = a.float() @ b.float().T
        _bf16_verdict["exact"] = bool(ref.max() <= _BF16_EXACT) and torch.equal(
            (a.bfloat16() @ b.bfloat16().T).float(), ref)
    return _bf16_verdict["exact"]


def _bf16_fast() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX tiles or AVX-512 BF16): the CPU default then."""
    cpu = getattr(torch, "cpu", None)
    return bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)()
                or getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())


def default_method(device: torch.device | str) -> str:
    """The counting method ``method="auto"`` picks on ``device``.

    >>> default_method("cuda")
    'onehot'
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return "onehot"
    return "gemm" if dev.type == "cpu" and _bf16_fast() and _bf16_exact() else "bincount"


def _mi_gemm(
    b: Tensor, keep: Tensor, bins: int, group_rows: int, total: Tensor, table: Tensor, base: Tensor,
    extra: Callable[[], None] | None = None,
) -> Tensor:
    """(pair,) MI of all pairs i < j of the rows of b, from bfloat16 one-hot products (CPU).

    ``O[(i, a), d] = keep[i, d] & (b[i, d] == a)`` makes ``(O Oᵀ)[(i, a), (j, c)]`` the joint
    count of bins (a, c) over the dims both vectors keep. bfloat16 holds 0/1 exactly and the
    GEMM accumulates in float32, so a count is exact when it is at most 256: on the x side
    every (vector, bin) row with more than 256 ones keeps its first 256 and hands the rest to
    extra rows (``O_x``), whose products are added back as integers. Per group of
    ``group_rows`` vectors (a task on a single-threaded worker): one product against the
    later vectors, the counts as int32, plus each pair's row offset in the entropy table,
    one gather of the table and one sum give ``sum f_T(c)`` over every joint cell. The
    marginal counts are the (vector, bin) sizes minus the dims the partner drops (an
    index_add over the few dropped dims), so they need no pass over the cells.

    Args:
        b: (sample, feature) int64 bins (each vector's own range); keep: (sample, feature) bool.
        group_rows: vectors per task.
        total, base: (pair,) and table: see :func:`_mi_from_counts`.
        extra: other independent work to run as the first task (the covariances).
    """
    n, d = b.shape
    dev = b.device
    nb = n * bins
    row = torch.arange(n, device=dev).unsqueeze(1) * bins + b  # (sample, feature): the (vector, bin) row of each dim
    sizes = torch.bincount(row[keep], minlength=nb)  # (sample·bin,) kept dims in each bin
    o_y = torch.zeros(nb * d, dtype=torch.bfloat16, device=dev)  # the one-hot rows (vector·bin, feature)
    o_y.index_fill_(0, (row * d + torch.arange(d, device=dev))[keep], 1.0)
    o_y = o_y.view(nb, d)
    heavy = torch.nonzero(sizes > _BF16_EXACT).flatten()  # (vector, bin) rows with too many ones
    first_rows, extra_rows, owners = None, None, None
    if heavy.numel():
        h = o_y.index_select(0, heavy) > 0  # (heavy, feature) bool
        part = torch.where(h, (h.cumsum(1) - 1) // _BF16_EXACT, -1)  # (heavy, feature): which 256-block
        first_rows = (part == 0).to(torch.bfloat16)  # what a heavy row keeps on the x side
        rows, own = [], []
        for p in range(1, int(part.max()) + 1):
            has = torch.nonzero((part == p).any(1)).flatten()
            rows.append((part.index_select(0, has) == p).to(torch.bfloat16))
            own.append(heavy[has])
        extra_rows, owners = torch.cat(rows), torch.cat(own)  # (extra, feature), (extra,) the row each adds to
    # marginal counts m[(v, a), u]: dims in bin a of v that u keeps = size - those u drops
    ii, jj = pair_indices(n, device=dev)
    base_sym = torch.zeros(n, n, dtype=torch.int32, device=dev)
    base_sym[ii, jj] = base.to(torch.int32)
    base_sym[jj, ii] = base.to(torch.int32)
    cells = (sizes.to(torch.int32).view(n, bins, 1) + base_sym.unsqueeze(1)).view(nb, n)  # (sample·bin, sample)
    r, c = torch.nonzero(~keep, as_tuple=True)  # the (few) dropped (vector u, dim): every v keeping it loses one
    if r.numel():
        at = (row[:, c] * n + r).view(-1)  # (sample · drops,) flat index of [(v, bin of v at the dim), u]
        cells.view(-1).index_add_(0, at, -keep[:, c].reshape(-1).to(torch.int32))
    s_marg = table.index_select(0, cells.view(-1)).view(n, bins, n).sum(1)  # [v, u]: sum_a f(m[(v, a), u])
    start = [i * (2 * n - i - 1) // 2 for i in range(n)] + [n * (n - 1) // 2]
    s_joint = torch.empty(start[-1], dtype=torch.float64, device=dev)

    def task(buf: Tensor, item: tuple[int, int, int, int]) -> None:
        r0, r1, c0, c1 = item  # vectors r0..r1-1 against c0..c1-1 (c0 > r0)
        if r0 < 0:
            extra()
            return
        k, w = r1 - r0, c1 - c0
        left = o_y[r0 * bins : r1 * bins]  # (k·bin, feature)
        y_side = o_y[c0 * bins : c1 * bins]  # (w·bin, feature)
        if first_rows is not None:
            mine = torch.nonzero((heavy >= r0 * bins) & (heavy < r1 * bins)).flatten()
            if mine.numel():  # crowded bins keep their first 256 dims on the x side
                left = left.clone()
                left[heavy[mine] - r0 * bins] = first_rows.index_select(0, mine)
        counts = torch.mm(left, y_side.T).view(k, bins, w, bins)  # bfloat16, exact
        joint = buf[: k * w * bins * bins].view(k, w, bins, bins)  # int32, the pair's cells contiguous
        joint.copy_(counts.permute(0, 2, 1, 3))
        if extra_rows is not None:
            mine = torch.nonzero((owners >= r0 * bins) & (owners < r1 * bins)).flatten()
            if mine.numel():  # the rest of the crowded bins, added as integers
                more = torch.mm(extra_rows.index_select(0, mine), y_side.T).view(-1, w, bins).to(torch.int32)
                for q, row in enumerate((owners[mine] - r0 * bins).tolist()):  # a few rows
                    joint[row // bins, :, row % bins, :] += more[q]
        joint.view(k, w, bins * bins).add_(base_sym[r0:r1, c0:c1].unsqueeze(2))  # each pair's table row
        s = table.index_select(0, joint.view(-1)).view(k, w, bins * bins).sum(2)  # (k, w): sum of f over the cells
        for i in range(r0, min(r1, c1 - 1)):  # pairs (i, j), max(i + 1, c0) <= j < c1, at their triu index
            j0 = max(i + 1, c0)
            p0 = start[i] + j0 - i - 1
            s_joint[p0 : p0 + c1 - j0] = s[i - r0, j0 - c0 :]

    items = [(-1, -1, -1, -1)] if extra is not None else []
    for r0 in range(0, n - 1, group_rows):
        r1 = min(n - 1, r0 + group_rows)
        items += [(r0, r1, c0, min(n, c0 + _GEMM_COLS)) for c0 in range(r0 + 1, n, _GEMM_COLS)]
    size = group_rows * bins * _GEMM_COLS * bins
    run_tasks(task, items, [torch.empty(size, dtype=torch.int32, device=dev) for _ in range(cpu_workers(dev))])
    return torch.log2(total) - (s_marg[ii, jj] + s_marg[jj, ii] - s_joint) / total


# --------------------------------------------------------------------------- main kernel


def all_pairs_mi_cov_corr(
    x: Tensor,
    *,
    bins: int = 15,
    z_max: float = 5.0,
    chunk_pairs: int = 512,
    method: Literal["auto", "gemm", "bincount", "scatter", "onehot"] = "auto",
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
        chunk_pairs: pairs whose histograms are built at once (512 suits a CPU's caches).
            The chunk work space is about ``chunk_pairs * (8 * feature + 30 * w**2)`` bytes,
            w the power of two above ``bins`` (5 MB at the defaults and feature = 1024;
            ``"scatter"`` needs 3x that). Besides it the kernel holds about ``64 * sample**2``
            bytes of (sample, sample) sums and a few (pair,) vectors: 250 x 1024 runs in
            under 50 MB.
        method: how the joint histograms are counted; all give identical counts.
            ``"gemm"``: bfloat16 products of masked one-hot encodings in blocks of vectors on
            single-threaded CPU workers (the CPU default where bfloat16 products are fast,
            AMX or AVX-512 BF16, and exact; see :func:`_mi_gemm`), the pairs whose ranges move
            recounted by bincount. ``"bincount"``: one bincount per group of whole rows of
            pairs (about ``chunk_pairs`` pairs) on single-threaded CPU workers (the CPU default
            elsewhere). ``"scatter"``: a scatter-add of the codes (no host synchronisation).
            ``"onehot"``: a float32 product of masked one-hot encodings per block of rows
            (the CUDA default; 0/1 values with fp32 accumulation, also under TF32, keep counts
            exact below 2**24 features; fp16/bf16 would return rounded counts above 2048/256),
            with the pairs whose ranges move redone by scatter. ``"auto"`` picks by device.

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
        method = default_method(x.device)
    if method not in ("gemm", "bincount", "scatter", "onehot"):
        raise InputError(
            "all_pairs_mi_cov_corr: method must be 'auto', 'gemm', 'bincount', 'scatter' or 'onehot'; "
            f"got {method!r}"
        )
    if method == "gemm" and (x.device.type != "cpu" or not _bf16_exact()):
        raise InputError(
            "all_pairs_mi_cov_corr: method 'gemm' needs a CPU whose bfloat16 products accumulate in float32 "
            f"(x is on {x.device}{'' if x.device.type != 'cpu' else '; this one rounds'}); use method='bincount'"
        )
    finite = torch.isfinite(x).all(1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten()[:5].tolist()
        raise InputError(
            f"all_pairs_mi_cov_corr: x {tuple(x.shape)} (sample, feature) has non-finite "
            f"values in rows {bad}"
        )

    xf = x.detach().to(torch.float64)  # (sample, feature)
    keep = _keep_mask(xf, z_max)  # (sample, feature)
    lo, hi = _masked_min_max(xf, keep)  # (sample,)
    ii, jj = pair_indices(n, device=x.device)  # (pair,)

    # ---- dims both vectors of a pair keep: each vector's kept count minus the partner's
    # drops that it keeps (an index_add over the few dropped (vector, dim)); exact integers
    kd = keep.T.to(torch.float64)  # (feature, sample): the covariance block works on transposed layouts
    r, c = torch.nonzero(~keep, as_tuple=True)  # the (few) dropped (vector, dim)
    drop_cnt = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    drop_cnt.index_add_(0, r, kd.index_select(0, c))  # [j, i]: dims j drops that i keeps
    pij, pji = ii * n + jj, jj * n + ii  # (pair,) flat indices of [i, j] and [j, i]
    m = _at(kd.sum(0).unsqueeze(1) - drop_cnt.T, pij).round()  # (pair,)
    out: dict[str, Tensor] = {}

    def cov_corr() -> None:
        """Covariance and correlation: sums over each pair's joint mask. With xc centred and 0
        where the vector drops a dim, sum_{both keep} f(x_i) = sum_{i keeps} f(x_i) - sum_{j drops} f(x_i):
        the correction is an index_add over the (few) dropped dims, the cross products one GEMM."""
        xt = xf.T
        own_mean = (xt * kd).sum(0) / kd.sum(0)  # (sample,)
        xc = (xt - own_mean) * kd  # (feature, sample), centred, 0 where the vector drops the dim
        stats = torch.cat([xc, xc.square(), kd], 1)  # (feature, 3·sample), as before (same sums, same bits)
        drop_sums = torch.zeros(n, 3 * n, dtype=torch.float64, device=x.device)
        drop_sums.index_add_(0, r, stats.index_select(0, c))  # [j, .]: sums over j's drops
        sums = stats.sum(0).unsqueeze(1) - drop_sums.T  # [i, j]: sums of x_i, x_i^2 where both keep
        s1, s2 = sums[:n], sums[n : 2 * n]
        sx, sy = _at(s1, pij), _at(s1, pji)
        out["cov"] = (_at(xc.T @ xc, pij) - sx * sy / m) / (m - 1)
        vx = (_at(s2, pij) - sx.square() / m) / (m - 1)
        vy = (_at(s2, pji) - sy.square() / m) / (m - 1)
        out["corr"] = (out["cov"] / torch.sqrt(vx * vy)).clamp(-1.0, 1.0)

    # ---- histogram range of each side of each pair: its own, or an exact variant
    shared = m > 0
    table_vec, table_lo, table_hi, ri, rj = _range_variants(xf, keep, lo, hi, ii, jj, shared)
    b = _bin_index(xf.index_select(0, table_vec), table_lo, table_hi, bins)  # (row, feature)
    keep_t = keep.index_select(0, table_vec)
    table, base = _entropy_table(m.long(), d)
    if method == "bincount":  # the covariances run next to the MI tasks
        mi = _mi_rows(b, keep_t, n, table_vec, ri, rj, bins, chunk_pairs, m, table, base, extra=cov_corr)
    elif method == "gemm":
        mi = _mi_gemm(b[:n], keep, bins, _GEMM_ROWS, m, table, base, extra=cov_corr)
        redo = torch.nonzero((ri >= n) | (rj >= n)).flatten()  # pairs whose ranges move: recounted
        if redo.numel():
            mi[redo] = _mi_codes(
                b, keep_t, ri[redo], rj[redo], bins, chunk_pairs, "bincount", m[redo], table, base[redo]
            )
    else:
        cov_corr()
        if method == "onehot":
            mi = _mi_onehot(b[:n], keep, bins, chunk_pairs, m, table, base)
            redo = torch.nonzero((ri >= n) | (rj >= n)).flatten()
            if redo.numel():
                mi[redo] = _mi_codes(
                    b, keep_t, ri[redo], rj[redo], bins, chunk_pairs, "scatter", m[redo], table, base[redo]
                )
        else:
            mi = _mi_codes(b, keep_t, ri, rj, bins, chunk_pairs, method, m, table, base)
    cov, corr = out["cov"], out["corr"]

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
