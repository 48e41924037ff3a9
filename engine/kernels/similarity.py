"""Cosine similarity between features across samples, and its Q/K/V blocks (EXPERIMENTS.md A).

>>> import torch
>>> x = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 2.0]])  # (sample, feature)
>>> feature_cosine(x)
tensor([[1.0000, 0.0000, 0.7071],
        [0.0000, 1.0000, 0.7071],
        [0.7071, 0.7071, 1.0000]])

Features are columns: each column is normalised to unit L2 norm over the samples
and ``C = Xnᵀ Xn``. For Q|K|V activations (``3·d_model`` features, Q first, then
K, then V) only six ``d_model × d_model`` blocks of ``C`` are used: the strict upper
triangles of QQ, KK and VV and the full QK, QV and KV blocks.

Numerics: inputs of any float dtype are computed in float32 (float64 stays
float64). Cosines are not clipped, so a pair of (nearly) identical features can
give ``1 + 1e-7``, which a histogram on ``[-1, 1]`` drops exactly as NumPy would.
A column that is all zeros (after centring, for correlation: a constant column)
has no direction; it gives cosine 0 with every feature, itself included, rather
than NaN.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from lamina.engine.errors import InputError
from lamina.engine.kernels.histogram import _Counter

__all__ = [
    "QKV_BLOCKS",
    "feature_cosine",
    "feature_correlation",
    "qkv_block_values",
    "qkv_block_histograms",
    "random_baseline_values",
]

QKV_BLOCKS: tuple[str, ...] = ("QQ", "KK", "VV", "QK", "QV", "KV")
# (row component, column component, strict upper triangle?) per block; 0=Q, 1=K, 2=V
_BLOCK_SPEC = ((0, 0, True), (1, 1, True), (2, 2, True), (0, 1, False), (0, 2, False), (1, 2, False))

# Rows of a block computed per matrix product on the CPU, as a number of output
# elements (2**19: 327 rows of a 1600-wide block, 2 MB): each piece is counted
# right after it is made instead of a 10 MB block going through memory several
# times, and diagonal blocks skip their lower part. Accelerators do whole blocks.
_CPU_PIECE = 1 << 19


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


def _check_qkv(x: Tensor, leading: str) -> int:
    """d_model of a Tensor[{leading}sample, 3*d_model]; raise InputError otherwise.

    ``leading`` is "" (exactly 2-D), "layer, " (exactly 3-D) or "..., " (2-D or more)."""
    want = 3 if leading == "layer, " else 2
    if not isinstance(x, Tensor) or (x.ndim < want if leading == "..., " else x.ndim != want):
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"expected Q|K|V activations of shape [{leading}sample, 3*d_model], got {shape}")
    features = x.shape[-1]
    if features == 0 or features % 3:
        raise InputError(
            f"the feature axis must hold Q, K and V of equal length (3*d_model), got {features} "
            f"in shape {tuple(x.shape)}"
        )
    if x.shape[-2] == 0:
        raise InputError(f"no samples: shape {tuple(x.shape)}")
    return features // 3


def _block_pieces(xn: Tensor, d: int, piece_rows: int) -> Iterator[tuple[int, Tensor, Tensor | None]]:
    """Pieces of the six blocks of ``xnᵀ xn`` in row order, without the full product.

    Yields ``(block, rect, square)`` for rows ``a:b`` of a block (``k = b - a``).
    For a full block, ``rect`` is Tensor[k, d] (those rows) and ``square`` is None.
    For a triangle block, ``square`` is Tensor[k, k] (columns ``a:b``, whose strict
    upper triangle are values) and ``rect`` is Tensor[k, d - b] (columns ``b:``,
    all values); the columns before ``a`` (the lower triangle) are never computed.

    Args:
        xn: Tensor[sample, 3*d_model], unit columns.
    """
    parts = (xn[:, :d], xn[:, d : 2 * d], xn[:, 2 * d :])  # (sample, d) each
    for block, (r, c, triangle) in enumerate(_BLOCK_SPEC):
        for a in range(0, d, piece_rows):
            b = min(a + piece_rows, d)
            rows = parts[r][:, a:b].mT  # (k, sample)
            if triangle:
                yield block, rows @ parts[c][:, b:], rows @ parts[c][:, a:b]
            else:
                yield block, rows @ parts[c], None


def _piece_rows(x: Tensor, d: int) -> int:
    if x.device.type != "cpu":
        return d
    return max(1, min(d, _CPU_PIECE // d))


def qkv_block_values(x: Tensor, *, center: bool = False) -> dict[str, Tensor]:
    """The cosine values of the six Q/K/V blocks, with the masks of EXPERIMENTS.md A.

    >>> import torch
    >>> v = qkv_block_values(torch.randn(54, 3 * 4))
    >>> {k: tuple(t.shape) for k, t in v.items()}
    {'QQ': (6,), 'KK': (6,), 'VV': (6,), 'QK': (16,), 'QV': (16,), 'KV': (16,)}

    QQ, KK, VV: the strict upper triangle of the diagonal block, ``d(d-1)/2`` values
    in row-major order (the order of ``np.triu_indices(d, 1)``). QK, QV, KV: the
    full off-diagonal block, ``d²`` values, row-major with rows from the first
    component (QK[i*d + j] = cos(Q_i, K_j)). Only the six block products are
    computed, never the full ``3d × 3d`` matrix.

    Args:
        x: Tensor[sample, 3*d_model], Q|K|V concatenated along features.
        center: subtract each feature's mean first (correlation instead of cosine).

    Returns:
        dict block name -> Tensor[n], float32 (float64 for float64 input), keys in
        QKV_BLOCKS order. Bit-identical to the values that
        :func:`qkv_block_histograms` counts on the same device.
    """
    d = _check_qkv(x, "")
    xn = _unit_columns(x, center=center)
    pieces: list[list[Tensor]] = [[] for _ in QKV_BLOCKS]
    for block, rect, square in _block_pieces(xn, d, _piece_rows(x, d)):
        if square is None:
            pieces[block].append(rect.reshape(-1))
        else:  # row-major: each row's part of the square, then its part of the rect
            k = square.shape[0]
            piece = torch.cat([square, rect], dim=1)  # (k, d - a)
            i, j = torch.triu_indices(k, piece.shape[1], offset=1, device=piece.device)
            pieces[block].append(piece[i, j])
    return {name: torch.cat(p) for name, p in zip(QKV_BLOCKS, pieces)}


def qkv_block_histograms(
    x: Tensor,
    *,
    center: bool = False,
    bins: int = 100,
    lo: float = -1.0,
    hi: float = 1.0,
) -> Tensor:
    """Per layer, the histogram of each of the six Q/K/V block value sets.

    >>> import torch
    >>> h = qkv_block_histograms(torch.randn(2, 54, 3 * 8))
    >>> tuple(h.shape), h.sum(-1)[0].tolist()
    ((2, 6, 100), [28, 28, 28, 64, 64, 64])

    Equal to ``uniform_histogram(qkv_block_values(x[l], center=center)[name],
    bins=bins, lo=lo, hi=hi)`` for every layer ``l`` and block, exactly (NumPy's
    ``np.histogram`` edge rule), without materialising the blocks. On the CPU each
    block is computed in pieces of rows that are counted while still in cache,
    and the diagonal blocks compute only what lies right of each piece's first
    column (about half of the block), so the products cost about 3/4 of six full
    block products. The strict triangle of each piece's diagonal square is
    gathered with ``triu_indices``; no symmetry of the float product is assumed.

    Args:
        x: Tensor[layer, sample, 3*d_model].
        center: correlation instead of cosine.
        bins, lo, hi: uniform bins on ``[lo, hi]``.

    Returns:
        Tensor[layer, block=6, bin] int64 counts, blocks in QKV_BLOCKS order.
    """
    d = _check_qkv(x, "layer, ")
    counter = _Counter(_work_dtype(x), bins=bins, lo=lo, hi=hi, device=x.device)  # buffers shared by all
    rows = _piece_rows(x, d)
    out = torch.zeros(x.shape[0], len(QKV_BLOCKS), bins, dtype=torch.int64, device=x.device)
    triangles: dict[int, tuple[Tensor, Tensor]] = {}  # piece height -> strict upper (i, j)
    for layer in range(x.shape[0]):
        xn = _unit_columns(x[layer], center=center)
        totals = [counter.new_total() for _ in QKV_BLOCKS]
        for block, rect, square in _block_pieces(xn, d, rows):
            counter.add(rect, totals[block])
            if square is not None:
                k = square.shape[0]
                if k not in triangles:
                    triangles[k] = tuple(torch.triu_indices(k, k, offset=1, device=x.device))
                i, j = triangles[k]
                counter.add(square[i, j], totals[block])
        for block, total in enumerate(totals):
            out[layer, block] = counter.counts(total)
    return out


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
    c = feature_correlation(shuffled) if center else feature_cosine(shuffled)
    i, j = torch.triu_indices(x.shape[1], x.shape[1], offset=1, device=x.device)
    return c[i, j]
