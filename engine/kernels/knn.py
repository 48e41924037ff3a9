"""Mutual k-nearest-neighbour alignment between every layer of one model and every layer of another.

>>> import torch
>>> x = torch.randn(3, 100, 8, generator=torch.Generator().manual_seed(0))   # (layer, sample, feature)
>>> m = mutual_knn(x, k=5)
>>> m.shape, m.diagonal().tolist()
(torch.Size([3, 3]), [1.0, 1.0, 1.0])

Definition (Huh et al. 2024, "The Platonic Representation Hypothesis"; docs/analyses.md,
"Similarity and inference (kernels)"): every sample's vector is scaled to unit L2 norm; the k
nearest neighbours ``N(i)`` of sample i are the k other samples with the largest inner product
(cosine similarity) with it, i itself excluded; the alignment of representations A and B is
``mean_i |N_A(i) ∩ N_B(i)| / k``, from 0 (no shared neighbours) to 1 (the same neighbours).

Ties: among equal similarities the lower sample index is the nearer neighbour (so identical
vectors, e.g. the first token of every sequence, give the same answer on every device). An
all-zero vector has similarity 0 with every sample.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lamina.engine.errors import InputError
from lamina.engine.kernels.cka import _check_acts, _check_pair

__all__ = ["knn_indices", "mutual_knn"]

# Elements of one temporary block of similarities ([layer, row, sample]) or of membership masks.
_BUDGET = 1 << 24


def _check_finite(x: Tensor, name: str) -> None:
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{name} holds NaN or infinite values: neighbours are undefined")


def _unit_rows(x: Tensor) -> Tensor:
    x = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return x / torch.where(norm > 0, norm, torch.ones_like(norm))


def _top(sim: Tensor, k: int) -> Tensor:
    """Indices of the k largest values of each row (last dim), in decreasing order, ties by lower
    index: ``torch.topk``, and a stable sort of the rows where the k-th value is tied outside."""
    vals, idx = torch.topk(sim, k, dim=-1)
    # order the picks by (value desc, index asc)
    idx, order = idx.sort(dim=-1)
    vals = vals.gather(-1, order)
    order = torch.sort(vals, dim=-1, descending=True, stable=True).indices
    idx = idx.gather(-1, order)
    kth = vals.gather(-1, order[..., -1:])  # the k-th largest value
    tied = (sim >= kth).sum(-1) > k  # a value equal to the k-th lies outside the picks
    if bool(tied.any()):
        rows = torch.nonzero(tied, as_tuple=True)
        idx[rows] = torch.sort(sim[rows], dim=-1, descending=True, stable=True).indices[..., :k]
    return idx


def knn_indices(x: Tensor, k: int) -> Tensor:
    """The k nearest neighbours (cosine) of every sample in every layer: Tensor[L, n, k] int64.

    >>> import torch
    >>> x = torch.tensor([[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]])
    >>> knn_indices(x, 1).flatten().tolist()
    [1, 0, 3, 2]

    Nearest first; ties by lower index. Similarities in blocks of rows of at most ``_BUDGET``
    elements (float32; float64 for float64 input).

    Args:
        x: Tensor[L, n, d].
        k: 1 <= k < n.
    """
    _check_acts(x, "x")
    _check_finite(x, "x")
    layers, n, _ = x.shape
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n:
        raise InputError(f"k must be an int with 1 <= k < {n} (the number of other samples), got {k!r}")
    xn = _unit_rows(x)
    out = torch.empty(layers, n, k, dtype=torch.int64, device=x.device)
    rows = max(1, _BUDGET // (layers * n))
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        sim = xn[:, r0:r1] @ xn.mT  # [L, r, n]
        sim[:, torch.arange(r1 - r0, device=x.device), torch.arange(r0, r1, device=x.device)] = -torch.inf
        out[:, r0:r1] = _top(sim, k)
    return out


def mutual_knn(xa: Tensor, xb: Tensor | None = None, *, k: int = 10) -> Tensor:
    """Mutual k-NN alignment of every layer of A with every layer of B (or of A): Tensor[La, Lb] float64.

    >>> import torch
    >>> x = torch.randn(2, 50, 6)
    >>> float(mutual_knn(x, 3.0 * x, k=4)[1, 1])      # scale does not change neighbours
    1.0

    Neighbour lists by :func:`knn_indices`; then for a group of A's layers a membership mask
    ``M[l, i, j] = j ∈ N_A^l(i)`` ([g, n, n] bool) is read at every B layer's neighbour lists
    (one gather for all B layers), so the cost of the overlaps is ``La·n² + La·Lb·n·k``.

    Args:
        xa: Tensor[La, n, p]; xb: Tensor[Lb, n, q] on the same samples, or None.
        k: neighbours (10, as Huh et al.).
    """
    _check_pair(xa, xb, 2)
    la, n, _ = xa.shape
    ia = knn_indices(xa, k)
    ib = ia if xb is None else knn_indices(xb, k)
    lb = ib.shape[0]
    flat_b = ib.permute(1, 0, 2).reshape(n, lb * k)  # [n, Lb·k]
    out = torch.empty(la, lb, dtype=torch.float64, device=xa.device)
    group = max(1, _BUDGET // (n * max(n, lb * k)))
    for g0 in range(0, la, group):
        g1 = min(g0 + group, la)
        mask = torch.zeros(g1 - g0, n, n, dtype=torch.bool, device=xa.device)
        mask.scatter_(2, ia[g0:g1], True)
        hits = mask.gather(2, flat_b.expand(g1 - g0, n, lb * k))  # [g, n, Lb·k]
        out[g0:g1] = hits.view(g1 - g0, n, lb, k).sum((1, 3)).double() / (n * k)
    return out
