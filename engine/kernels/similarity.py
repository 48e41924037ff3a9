"""Cosine similarity between features across samples, and its Q/K/V blocks (docs/analyses.md "qkv").

>>> import torch
>>> x = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 2.0]])  # (sample, feature)
>>> feature_cosine(x)
tensor([[1.0000, 0.0000, 0.7071],
        [0.0000, 1.0000, 0.7071],
        [0.7071, 0.7071, 1.0000]])

Features are columns: each column is normalised to unit L2 norm over the samples
and ``C = Xnᵀ Xn``. For Q|K|V activations (``3·d_model`` features, Q first, then
K, then V) only six ``d_model × d_model`` blocks of ``C`` are used: the strict upper
triangles of QQ, KK and VV and the full QK, QV and KV blocks. With grouped-query
attention the widths differ (``d_q = n_heads·d_head``, ``d_k = d_v =
n_kv_heads·d_head``): pass ``widths=(d_q, d_k, d_v)``; the diagonal blocks are then
``d_c × d_c`` and QK is ``d_q × d_k`` (rows from the first component), and so on.

Numerics: inputs of any float dtype are computed in float32 (float64 stays
float64). Cosines are not clipped, so a pair of (nearly) identical features can
give ``1 + 1e-7``, which a histogram on ``[-1, 1]`` drops exactly as NumPy would.
A column that is all zeros (after centring, for correlation: a constant column)
has no direction; it gives cosine 0 with every feature, itself included, rather
than NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from lamina.engine.errors import InputError
from lamina.engine.kernels.bucketing import _check_range
from lamina.engine.kernels.histogram import PieceCounter, uniform_histogram
from lamina.engine.kernels.workers import cpu_workers, run_tasks

__all__ = [
    "QKV_BLOCKS",
    "feature_cosine",
    "feature_correlation",
    "qkv_block_values",
    "qkv_block_histograms",
    "random_baseline_values",
    "random_baseline_histograms",
]

QKV_BLOCKS: tuple[str, ...] = ("QQ", "KK", "VV", "QK", "QV", "KV")
# (row component, column component, strict upper triangle?) per block; 0=Q, 1=K, 2=V
_BLOCK_SPEC = ((0, 0, True), (1, 1, True), (2, 2, True), (0, 1, False), (0, 2, False), (1, 2, False))

# Output elements of one piece of a block on the CPU (2**18: 163 rows of a 1600-wide
# block, 1 MB): each piece is counted right after its product is made, while it is in
# cache, and the diagonal blocks skip their lower part. Smaller pieces fit L2 better
# but mean more, shorter torch calls, and with two workers the Python interpreter lock
# taken around every call then costs more than the cache misses (measured: 2**16 2.6x
# the GEMM floor, 2**18 1.8x, on this project's 2-core machine). Accelerators do whole blocks.
_CPU_PIECE = 1 << 18

Widths = tuple[int, int, int]


def _work_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _unit_columns(x: Tensor, *, center: bool) -> Tensor:
    """Tensor[..., sample, feature] -> same shape, work dtype, columns of unit norm (or zero)."""
    if x.ndim < 2:
        raise InputError(f"expected a tensor [..., sample, feature], got shape {tuple(x.shape)}")
    if x.is_complex():
        raise InputError(f"expected a real tensor, got dtype {x.dtype}")
    x = x.to(_work_dtype(x))
    if center:
        x = x - x.mean(dim=-2, keepdim=True)
    norm = torch.linalg.vector_norm(x, dim=-2, keepdim=True)  # (..., 1, feature)
    return x / torch.where(norm > 0, norm, torch.ones_like(norm))


def feature_cosine(x: Tensor) -> Tensor:
    """Cosine similarity between every pair of features (columns) across samples.

    >>> import torch
    >>> feature_cosine(torch.tensor([[3.0, 1.0, 0.0], [4.0, 0.0, 0.0]]))
    tensor([[1.0000, 0.6000, 0.0000],
            [0.6000, 1.0000, 0.0000],
            [0.0000, 0.0000, 0.0000]])

    Each column is scaled to unit L2 norm over the samples, then ``Xnᵀ Xn``. An
    all-zero column gives a zero row and column (diagonal included), not NaN.

    Args:
        x: Tensor[..., sample, feature], any real dtype.

    Returns:
        Tensor[..., feature, feature], float32 (float64 for float64 input).
    """
    xn = _unit_columns(x, center=False)
    return xn.mT @ xn


def feature_correlation(x: Tensor) -> Tensor:
    """Pearson correlation between every pair of features across samples.

    >>> import torch
    >>> feature_correlation(torch.tensor([[1.0, 2.0, 5.0], [2.0, 4.0, 5.0], [3.0, 0.0, 5.0]]))
    tensor([[ 1.0000, -0.5000,  0.0000],
            [-0.5000,  1.0000,  0.0000],
            [ 0.0000,  0.0000,  0.0000]])

    Each column's mean over the samples is subtracted, then as
    :func:`feature_cosine`. A constant column gives a zero row and column, not NaN.

    Args:
        x: Tensor[..., sample, feature], any real dtype.

    Returns:
        Tensor[..., feature, feature], float32 (float64 for float64 input).
    """
    xn = _unit_columns(x, center=True)
    return xn.mT @ xn


def _check_qkv(x: Tensor, leading: str, widths: Widths | None = None) -> Widths:
    """(d_q, d_k, d_v) of a Tensor[{leading}sample, d_q + d_k + d_v]; raise InputError otherwise.

    ``leading`` is "" (exactly 2-D), "layer, " (exactly 3-D) or "..., " (2-D or more).
    ``widths`` None means three equal thirds."""
    want = 3 if leading == "layer, " else 2
    if not isinstance(x, Tensor) or (x.ndim < want if leading == "..., " else x.ndim != want):
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        what = "3*d_model" if widths is None else "d_q + d_k + d_v"
        raise InputError(f"expected Q|K|V activations of shape [{leading}sample, {what}], got {shape}")
    features = x.shape[-1]
    if widths is None:
        if features == 0 or features % 3:
            raise InputError(
                f"the feature axis must hold Q, K and V of equal length (3*d_model), got {features} "
                f"in shape {tuple(x.shape)}; pass widths=(d_q, d_k, d_v) for unequal widths"
            )
        widths = (features // 3,) * 3
    else:
        ok = isinstance(widths, (tuple, list)) and len(widths) == 3
        ok = ok and all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths)
        if not ok:
            raise InputError(f"widths must be three positive ints (d_q, d_k, d_v), got {widths!r}")
        widths = (int(widths[0]), int(widths[1]), int(widths[2]))
        if sum(widths) != features:
            raise InputError(
                f"widths {widths} add up to {sum(widths)} but the feature axis of shape "
                f"{tuple(x.shape)} has {features}"
            )
    if x.shape[-2] == 0:
        raise InputError(f"no samples: shape {tuple(x.shape)}")
    return widths


@dataclass(frozen=True)
class _Piece:
    """Rows ``a:b`` of one block: component ``r``'s features a:b against component ``c``'s
    features ``a:`` (a triangle block: only what lies right of the piece's first column)
    or all of them (a full block)."""

    block: int
    r: int
    c: int
    a: int
    b: int
    triangle: bool

    def shape(self, widths: Widths) -> tuple[int, int]:
        """(rows, columns) of the piece's product."""
        return self.b - self.a, widths[self.c] - (self.a if self.triangle else 0)

    def values(self, widths: Widths) -> tuple[int, int]:
        """(offset, count) of the piece's values in its block's row-major value list."""
        d = widths[self.c]
        if self.triangle:  # row i holds d - 1 - i values
            def before(i: int) -> int:
                return i * (d - 1) - i * (i - 1) // 2
            return before(self.a), before(self.b) - before(self.a)
        return self.a * d, (self.b - self.a) * d


def _pieces(widths: Widths, piece: int | None) -> list[_Piece]:
    """The pieces of the six blocks in block and row order; ``piece`` output elements per
    piece (None: whole blocks)."""
    out = []
    for block, (r, c, triangle) in enumerate(_BLOCK_SPEC):
        a = 0
        while a < widths[r]:
            cols = widths[c] - (a if triangle else 0)
            rows = widths[r] - a if piece is None else max(1, min(widths[r] - a, piece // max(cols, 1)))
            out.append(_Piece(block, r, c, a, a + rows, triangle))
            a += rows
    return out


def _product(xn: Tensor, widths: Widths, p: _Piece, out: Tensor) -> Tensor:
    """The piece's products ``xn[:, rows]ᵀ xn[:, cols]`` into out (Tensor[rows, cols]).

    Args:
        xn: Tensor[sample, d_q + d_k + d_v], unit columns.
    """
    start = (0, widths[0], widths[0] + widths[1])
    rows = xn[:, start[p.r] + p.a : start[p.r] + p.b]  # (sample, k)
    cols = xn[:, start[p.c] + (p.a if p.triangle else 0) : start[p.c] + widths[p.c]]  # (sample, w)
    return torch.mm(rows.mT, cols, out=out)


def _piece_elements(device: torch.device) -> int | None:
    return _CPU_PIECE if device.type == "cpu" else None


class _Scratch:
    """One worker's product buffer and masks (for :func:`qkv_block_values`)."""

    def __init__(self, dtype: torch.dtype, device: torch.device):
        self.buffer = torch.empty(0, dtype=dtype, device=device)

    def piece(self, rows: int, cols: int) -> Tensor:
        if self.buffer.numel() < rows * cols:
            self.buffer = torch.empty(rows * cols, dtype=self.buffer.dtype, device=self.buffer.device)
        return self.buffer[: rows * cols].view(rows, cols)


def qkv_block_values(x: Tensor, *, center: bool = False, widths: Widths | None = None) -> dict[str, Tensor]:
    """The cosine values of the six Q/K/V blocks, with the masks of docs/analyses.md "qkv".

    >>> import torch
    >>> v = qkv_block_values(torch.randn(54, 3 * 4))
    >>> {k: tuple(t.shape) for k, t in v.items()}
    {'QQ': (6,), 'KK': (6,), 'VV': (6,), 'QK': (16,), 'QV': (16,), 'KV': (16,)}
    >>> v = qkv_block_values(torch.randn(54, 4 + 2 + 2), widths=(4, 2, 2))  # grouped-query attention
    >>> {k: tuple(t.shape) for k, t in v.items()}
    {'QQ': (6,), 'KK': (1,), 'VV': (1,), 'QK': (8,), 'QV': (8,), 'KV': (4,)}

    QQ, KK, VV: the strict upper triangle of the diagonal block, ``d_c(d_c-1)/2`` values
    in row-major order (the order of ``np.triu_indices(d_c, 1)``). QK, QV, KV: the
    full off-diagonal block, ``d_r · d_c`` values, row-major with rows from the first
    component (QK[i*d_k + j] = cos(Q_i, K_j)). Only the six block products are
    computed, never the full ``F × F`` matrix.

    Args:
        x: Tensor[sample, d_q + d_k + d_v], Q|K|V concatenated along features.
        center: subtract each feature's mean first (correlation instead of cosine).
        widths: (d_q, d_k, d_v) for unequal widths (grouped-query attention: d_k = d_v =
            n_kv_heads·d_head); None = three equal thirds.

    Returns:
        dict block name -> Tensor[n], float32 (float64 for float64 input), keys in
        QKV_BLOCKS order. Bit-identical to the values that
        :func:`qkv_block_histograms` counts on the same device (the same piece
        products, each single-threaded on a CPU).
    """
    widths = _check_qkv(x, "", widths)
    xn = _unit_columns(x, center=center)
    pieces = _pieces(widths, _piece_elements(x.device))
    out = {}
    for name, (r, c, triangle) in zip(QKV_BLOCKS, _BLOCK_SPEC):
        n = widths[c] * (widths[c] - 1) // 2 if triangle else widths[r] * widths[c]
        out[name] = torch.empty(n, dtype=xn.dtype, device=x.device)

    def task(scratch: _Scratch, p: _Piece) -> None:
        prod = _product(xn, widths, p, scratch.piece(*p.shape(widths)))
        offset, count = p.values(widths)
        if p.triangle:  # row i of the piece keeps the columns right of its diagonal
            k, w = prod.shape
            keep = torch.ones(k, w, dtype=torch.bool, device=prod.device).triu_(1)
            prod = prod[keep]
        out[QKV_BLOCKS[p.block]][offset : offset + count] = prod.reshape(-1)

    run_tasks(task, pieces, [_Scratch(xn.dtype, x.device) for _ in range(cpu_workers(x.device))])
    return out


class _HistWorker:
    """One worker of :func:`qkv_block_histograms`: its counter and its partial counts."""

    def __init__(self, xn: Tensor, widths: Widths, bins: int, lo: float, hi: float, chunk: int):
        dev = xn.device
        # |cosine| <= 1 up to the rounding of the norms and of the product's sum over samples
        bound = 1.0 + 4.0 * (xn.shape[-2] + 2) * torch.finfo(xn.dtype).eps
        self.counter = PieceCounter(xn.dtype, bins=bins, lo=lo, hi=hi, device=dev, chunk=chunk, bound=bound,
                                    defer_hi=dev.type == "cpu")
        self.counts = torch.zeros(xn.shape[0], len(QKV_BLOCKS), bins, dtype=torch.int64, device=dev)
        self.xn, self.widths = xn, widths
        self.key: tuple[int, int] | None = None  # (layer, block) the counter holds
        self.done: list[_Piece] = []  # this worker's pieces of that (layer, block)
        self.masks: dict[int, Tensor] = {}  # k -> (k, k) lower triangle and diagonal

    def run(self, layer: int, p: _Piece) -> None:
        self.switch((layer, p.block))
        prod = _product(self.xn[layer], self.widths, p, self.counter.piece(*p.shape(self.widths)))
        self.counter.count(prod, drop=self.drop(p, prod))
        self.done.append(p)

    def drop(self, p: _Piece, prod: Tensor) -> Tensor | None:
        if not p.triangle:
            return None
        k = prod.shape[0]
        if k not in self.masks:
            self.masks[k] = torch.ones(k, k, dtype=torch.bool, device=prod.device).tril_()
        return self.masks[k]

    def switch(self, key: tuple[int, int] | None) -> None:
        """Move the counter's counts to ``counts`` when the (layer, block) changes."""
        if key == self.key:
            return
        if self.key is not None:
            counts, above = self.counter.flush()
            if self.counter.defers_hi and bool(above > 0):  # some may equal hi: recount those pieces
                layer = self.key[0]
                for p in self.done:
                    prod = _product(self.xn[layer], self.widths, p, self.counter.piece(*p.shape(self.widths)))
                    counts[-1] += self.counter.count_hi(prod, drop=self.drop(p, prod))
            self.counts[self.key] += counts
        self.key, self.done = key, []


def qkv_block_histograms(
    x: Tensor,
    *,
    center: bool = False,
    bins: int = 100,
    lo: float = -1.0,
    hi: float = 1.0,
    widths: Widths | None = None,
) -> Tensor:
    """Per layer, the histogram of each of the six Q/K/V block value sets.

    >>> import torch
    >>> h = qkv_block_histograms(torch.randn(2, 54, 3 * 8))
    >>> tuple(h.shape), h.sum(-1)[0].tolist()
    ((2, 6, 100), [28, 28, 28, 64, 64, 64])
    >>> qkv_block_histograms(torch.randn(1, 54, 8 + 4 + 4), widths=(8, 4, 4)).sum(-1).tolist()
    [[28, 6, 6, 32, 32, 16]]

    Equal to ``uniform_histogram(qkv_block_values(x[l], center=center, widths=widths)[name],
    bins=bins, lo=lo, hi=hi)`` for every layer ``l`` and block, exactly (NumPy's
    ``np.histogram`` edge rule), without materialising the blocks.

    On the CPU, ``torch.get_num_threads()`` workers (:mod:`~lamina.engine.kernels.workers`)
    take pieces of rows of the blocks from one queue; each makes its piece's product
    single-threaded and counts it while it is in cache (:class:`~lamina.engine.kernels.
    histogram.PieceCounter`: exact buckets by arithmetic, two values per bincount slot),
    keeping its own partial counts, summed at the end. The diagonal blocks compute only
    what lies right of each piece's first column (about half of the block), so the
    products cost about 3/4 of six full block products; the piece's lower triangle and
    diagonal are masked, no symmetry of the float product is assumed.

    Args:
        x: Tensor[layer, sample, d_q + d_k + d_v].
        center: correlation instead of cosine.
        bins, lo, hi: uniform bins on ``[lo, hi]``.
        widths: (d_q, d_k, d_v), or None for three equal thirds.

    Returns:
        Tensor[layer, block=6, bin] int64 counts, blocks in QKV_BLOCKS order.
    """
    widths = _check_qkv(x, "layer, ", widths)
    _check_range(bins, lo, hi)
    xn = _unit_columns(x, center=center)  # (layer, sample, feature), work dtype
    if not bool(torch.isfinite(xn.sum())):  # NaN / inf input (|xn| <= 1 otherwise): the general counter
        return torch.stack([
            torch.stack([uniform_histogram(v, bins=bins, lo=lo, hi=hi)
                         for v in qkv_block_values(x[layer], center=center, widths=widths).values()])
            for layer in range(x.shape[0])
        ])
    piece = _piece_elements(x.device)
    pieces = _pieces(widths, piece)
    chunk = max(math.prod(p.shape(widths)) for p in pieces)
    workers = [_HistWorker(xn, widths, bins, lo, hi, chunk) for _ in range(cpu_workers(x.device))]
    run_tasks(lambda w, item: w.run(*item), ((layer, p) for layer in range(x.shape[0]) for p in pieces), workers)
    for w in workers:
        w.switch(None)
    return _sum(w.counts for w in workers)


def _sum(tensors: Iterable[Tensor]) -> Tensor:
    it = iter(tensors)
    total = next(it).clone()
    for t in it:
        total += t
    return total


def random_baseline_values(x: Tensor, generator: torch.Generator, *, center: bool = False) -> Tensor:
    """Cosines of ``x`` with all its elements shuffled: the chance-level baseline.

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> random_baseline_values(torch.randn(54, 10), g).shape
    torch.Size([45])

    All elements of ``x`` are permuted at random (``torch.randperm`` with
    ``generator``, on ``x``'s device), reshaped back to ``x``'s shape, then the
    feature cosine (correlation if ``center``) matrix's strict upper triangle is
    returned in row-major order.

    Args:
        x: Tensor[sample, feature].
        generator: a torch.Generator on x's device.
        center: correlation instead of cosine.

    Returns:
        Tensor[pair], pair = feature·(feature−1)/2, float32 (float64 for float64 input).
    """
    if not isinstance(x, Tensor) or x.ndim != 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"expected a tensor [sample, feature], got {shape}")
    if generator.device.type != x.device.type:
        raise InputError(f"the generator is on {generator.device} but x is on {x.device}")
    perm = torch.randperm(x.numel(), generator=generator, device=x.device)
    shuffled = x.reshape(-1)[perm].reshape(x.shape)
    return _upper(feature_correlation(shuffled) if center else feature_cosine(shuffled))


def random_baseline_histograms(
    x: Tensor, generator: torch.Generator, *, bins: int = 100, lo: float = -1.0, hi: float = 1.0
) -> dict[str, Tensor]:
    """Histograms of the random baseline of every layer, cosine and correlation, without the F × F matrix.

    >>> import torch
    >>> h = random_baseline_histograms(torch.randn(2, 54, 12), torch.Generator().manual_seed(0))
    >>> {k: tuple(v.shape) for k, v in h.items()}, h["cosine"].sum(-1).tolist()
    ({'cosine': (2, 100), 'correlation': (2, 100)}, [66, 66])

    Per layer, in layer order, one ``torch.randperm`` of all elements of ``x[layer]`` drawn from
    ``generator`` (the permutation of :func:`random_baseline_values`), shared by both variants.
    The strict upper triangle of the whole feature matrix is exactly the union of the six Q/K/V
    blocks of any split of the features into three parts, so it is counted by
    :func:`qkv_block_histograms` (pieces counted in cache, on every worker) and summed over the
    blocks: equal to ``uniform_histogram(random_baseline_values(x[layer], ...))`` up to the
    rounding of the products' sums (a value within float rounding of a bin edge may land in the
    neighbouring bin).

    Args:
        x: Tensor[layer, sample, feature].
        generator: on x's device.
        bins, lo, hi: uniform bins on ``[lo, hi]``.

    Returns:
        {"cosine": Tensor[layer, bin], "correlation": Tensor[layer, bin]} int64 counts.
    """
    if not isinstance(x, Tensor) or x.ndim != 3:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"expected a tensor [layer, sample, feature], got {shape}")
    if generator.device.type != x.device.type:
        raise InputError(f"the generator is on {generator.device} but x is on {x.device}")
    n_layers, _, features = x.shape
    shuffled = torch.stack([x[layer].reshape(-1)[torch.randperm(x[layer].numel(), generator=generator,
                                                                 device=x.device)].reshape(x.shape[1:])
                            for layer in range(n_layers)])  # (layer, sample, feature)
    out = {}
    for name, center in (("cosine", False), ("correlation", True)):
        if features >= 3:
            third = features // 3
            widths = (third, third, features - 2 * third)
            out[name] = qkv_block_histograms(shuffled, center=center, bins=bins, lo=lo, hi=hi,
                                             widths=widths).sum(dim=1)
        else:  # fewer than three features: no three-way split; the pairs directly
            out[name] = torch.stack([
                uniform_histogram(_upper(feature_correlation(s) if center else feature_cosine(s)),
                                  bins=bins, lo=lo, hi=hi) for s in shuffled])
    return out


def _upper(c: Tensor) -> Tensor:
    i, j = torch.triu_indices(c.shape[0], c.shape[1], offset=1, device=c.device)
    return c[i, j]
