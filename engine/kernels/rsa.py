"""Representational similarity: RSMs, category selectivity, RSA (docs/analyses.md "rsa").

>>> import torch
>>> x = torch.tensor([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.1, 3.0]])  # (item, feature)
>>> rsm = row_cosine_rsm(x)
>>> round(float(selectivity_index(rsm, torch.tensor([1, 1, 2, 2]))), 2)
24.01

Selectivity follows the lecture's label-product mask: with labels ``g`` and
``G = triu(g gᵀ, 1)``, the cells ``G == a·a`` are the within-category pairs of
category ``a`` and ``G == a·b`` (``a < b``) the between-category pairs of ``a`` and
``b``. For the three categories 1, 2, 3 of the experiment the codes are
``{1, 4, 9}`` and ``{2, 3, 6}``. Products collide from four categories on
(``1·4 == 2·2``), so here a cell is keyed by the unordered PAIR of labels of its
two items instead of their product: for labels 1, 2, 3 that selects exactly the
same cells as the product codes, and it stays right for any number of
categories and any distinct label values.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lamina.engine.errors import InputError

__all__ = ["row_cosine_rsm", "selectivity_index", "selectivity_permutation_pvalue", "rsa_pearson"]

# Elements of the (..., perm, category, item) intermediate per permutation chunk.
_PERM_CHUNK_ELEMENTS = 1 << 24


def _work_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_square(rsm: Tensor, name: str = "rsm") -> int:
    if not isinstance(rsm, Tensor) or rsm.ndim < 2 or rsm.shape[-1] != rsm.shape[-2]:
        shape = tuple(rsm.shape) if isinstance(rsm, Tensor) else type(rsm).__name__
        raise InputError(f"{name} must have shape [..., item, item], got {shape}")
    if rsm.is_complex():
        raise InputError(f"{name} must be real, got dtype {rsm.dtype}")
    return rsm.shape[-1]


def row_cosine_rsm(x: Tensor) -> Tensor:
    """Cosine similarity between every pair of items (rows).

    >>> import torch
    >>> row_cosine_rsm(torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0]]))
    tensor([[1.0000, 0.6000, 0.0000],
            [0.6000, 1.0000, 0.0000],
            [0.0000, 0.0000, 0.0000]])

    Each item's vector is scaled to unit L2 norm, then ``Xn Xnᵀ``. An all-zero
    item gives a zero row and column (diagonal included), not NaN.

    Args:
        x: Tensor[..., item, feature], any real dtype.

    Returns:
        Tensor[..., item, item], float32 (float64 for float64 input).
    """
    if not isinstance(x, Tensor) or x.ndim < 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"expected item vectors of shape [..., item, feature], got {shape}")
    if x.is_complex():
        raise InputError(f"expected a real tensor, got dtype {x.dtype}")
    x = x.to(_work_dtype(x))
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)  # (..., item, 1)
    xn = x / torch.where(norm > 0, norm, torch.ones_like(norm))
    return xn @ xn.mT


def _categories(labels: Tensor | Sequence[int], n_items: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(category index of each item: Tensor[item] int64 in 0..k-1, items per category: Tensor[k])."""
    labels = torch.as_tensor(labels, device=device)
    if labels.ndim != 1 or labels.shape[0] != n_items:
        raise InputError(f"labels must have shape [item] = [{n_items}], got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise InputError(f"labels must be integers (category numbers 1..k), got dtype {labels.dtype}")
    values, index, sizes = torch.unique(labels, sorted=True, return_inverse=True, return_counts=True)
    if values.numel() < 2:
        raise InputError(f"selectivity needs at least 2 categories, got labels {values.tolist()}")
    if bool((sizes < 2).any()):
        lonely = values[sizes < 2].tolist()
        raise InputError(
            f"categories {lonely} have a single item, so they have no within-category pair; "
            "every category needs at least 2 items"
        )
    return index, sizes


def _selectivity(upper: Tensor, onehot: Tensor, sizes: Tensor) -> Tensor:
    """SI for a batch of labelings.

    Args:
        upper: Tensor[..., item, item], the RSM with everything but the strict upper
            triangle set to 0.
        onehot: Tensor[perm, item, category], one labeling per perm, upper's dtype.
        sizes: Tensor[category], items per category (the same for every labeling).

    Returns:
        Tensor[..., perm].
    """
    perm, n_items, k = onehot.shape
    # pair_sum[..., p, a, b] = sum over cells i < j with label_i = a, label_j = b under labeling p.
    # One plain product for all labelings (no broadcasting of upper over perm).
    by_column = upper @ onehot.permute(1, 0, 2).reshape(n_items, perm * k)  # (..., item, perm*category)
    by_column = by_column.unflatten(-1, (perm, k))  # (..., item, perm, category)
    pair_sum = torch.einsum("pia,...ipb->...pab", onehot, by_column)  # (..., perm, category, category)
    n = sizes.to(upper.dtype)
    within = pair_sum.diagonal(dim1=-2, dim2=-1) / (n * (n - 1) / 2)  # (..., perm, category)
    a, b = torch.triu_indices(n.numel(), n.numel(), offset=1, device=upper.device)
    between = (pair_sum[..., a, b] + pair_sum[..., b, a]) / (n[a] * n[b])  # (..., perm, pair)
    return within.mean(-1) / between.mean(-1)


def selectivity_index(rsm: Tensor, labels: Tensor | Sequence[int]) -> Tensor:
    """Category selectivity: mean within-category over mean between-category similarity.

    >>> import torch
    >>> rsm = torch.tensor([[1.0, 0.8, 0.2], [0.8, 1.0, 0.4], [0.2, 0.4, 1.0]])
    >>> selectivity_index(rsm.expand(2, 3, 3).clone(), torch.tensor([1, 1, 2])).shape  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lamina.engine.errors.InputError: categories [2] have a single item, so they have no within-category pair; ...

    docs/analyses.md "rsa": ``SI = mean_a(mean RSM[G == a·a]) / mean_{a<b}(mean RSM[G == a·b])``
    over the strict upper triangle, each category (and each pair of categories)
    weighted equally whatever its size. Cells are keyed by label pairs, not
    products (see the module docstring), which is the same for labels 1, 2, 3.
    It is a ratio: meaningful when the between-category mean is clearly positive
    (as for transformer activations, which share a common direction); it changes
    sign and blows up as that mean crosses 0.

    Args:
        rsm: Tensor[..., item, item]; only its strict upper triangle is read.
        labels: Tensor[item] (or a sequence) of integer category labels, e.g.
            1..k; at least 2 categories, each with at least 2 items.

    Returns:
        Tensor[...], float32 (float64 for float64 input).
    """
    n_items = _check_square(rsm)
    index, sizes = _categories(labels, n_items, rsm.device)
    upper = torch.triu(rsm.to(_work_dtype(rsm)), diagonal=1)
    onehot = torch.nn.functional.one_hot(index, sizes.numel()).to(upper.dtype)[None]  # (1, item, category)
    return _selectivity(upper, onehot, sizes)[..., 0]


def check_permutations(n_permutations: int, n_items: int, *, available: int | None = None) -> None:
    """InputError unless the permutation test's draws (``n_permutations`` x ``n_items``: float64 keys, their
    int64 argsort and the shuffled labels, 24 bytes each) fit in half the memory available now.

    >>> check_permutations(1000, 34, available=16 * 10**9)
    >>> try:
    ...     check_permutations(10**13, 34, available=16 * 10**9)
    ... except InputError as e:
    ...     print(str(e)[:75])
    --permutations 10000000000000 needs 8160000.0 GB for 34 items (24 bytes per
    """
    if available is None:
        import psutil

        available = psutil.virtual_memory().available
    need = 24 * int(n_permutations) * int(n_items)
    if need > available // 2:
        most = max(1, available // 2 // (24 * max(int(n_items), 1)))
        raise InputError(f"--permutations {n_permutations} needs {need / 1e9:.1f} GB for {n_items} items (24 bytes "
                         f"per permutation and item) but {available / 1e9:.1f} GB are available; give at most {most}")


def selectivity_permutation_pvalue(
    rsm: Tensor,
    labels: Tensor | Sequence[int],
    *,
    n_permutations: int,
    generator: torch.Generator,
) -> Tensor:
    """Permutation p-value of the selectivity index (labels shuffled).

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.eye(3).repeat_interleave(4, dim=0) + 0.3 * torch.rand(12, 3, generator=g)
    >>> labels = torch.arange(1, 4).repeat_interleave(4)
    >>> p = selectivity_permutation_pvalue(row_cosine_rsm(x), labels, n_permutations=999, generator=g)
    >>> round(float(p), 6)  # no shuffle beats the true labels: 1 / (1 + 999)
    0.001

    ``p = (1 + #{SI_perm >= SI_obs}) / (1 + n_permutations)``, where each SI_perm is
    the selectivity with the labels randomly permuted over the items (category
    sizes kept). The same permutations serve every leading index (every layer
    and component), and all of them are evaluated at once.

    Args:
        rsm: Tensor[..., item, item].
        labels: Tensor[item] integer category labels (as for :func:`selectivity_index`).
        n_permutations: number of random permutations, >= 1.
        generator: a torch.Generator on rsm's device.

    Returns:
        Tensor[...] in (0, 1], float32 (float64 for float64 input).
    """
    n_items = _check_square(rsm)
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, int) or n_permutations < 1:
        raise InputError(f"n_permutations must be a positive int, got {n_permutations!r}")
    if generator.device.type != rsm.device.type:
        raise InputError(f"the generator is on {generator.device} but rsm is on {rsm.device}")
    index, sizes = _categories(labels, n_items, rsm.device)
    k = sizes.numel()
    upper = torch.triu(rsm.to(_work_dtype(rsm)), diagonal=1)
    # Random permutations: argsort of i.i.d. uniforms (float64: ties have probability ~0).
    keys = torch.rand(n_permutations, n_items, generator=generator, device=rsm.device, dtype=torch.float64)
    shuffled = index[keys.argsort(dim=-1)]  # (perm, item)
    observed = _selectivity(upper, torch.nn.functional.one_hot(index, k).to(upper.dtype)[None], sizes)  # (..., 1)
    batch = max(1, upper[..., 0, 0].numel())
    step = max(1, _PERM_CHUNK_ELEMENTS // (batch * k * n_items))
    at_least = torch.zeros(observed.shape[:-1], dtype=torch.int64, device=rsm.device)
    for a in range(0, n_permutations, step):
        onehot = torch.nn.functional.one_hot(shuffled[a : a + step], k).to(upper.dtype)  # (perm, item, category)
        at_least += (_selectivity(upper, onehot, sizes) >= observed).sum(-1)
    return (1 + at_least).to(upper.dtype) / (1 + n_permutations)


def rsa_pearson(rsm_a: Tensor, rsm_b: Tensor) -> Tensor:
    """Pearson correlation between the strict upper triangles of two RSMs.

    >>> import torch
    >>> a = torch.tensor([[1.0, 0.2, 0.4], [0.2, 1.0, 0.9], [0.4, 0.9, 1.0]])
    >>> rsa_pearson(a, 2 * a + 1)
    tensor(1.)

    Args:
        rsm_a, rsm_b: Tensor[..., item, item] each (leading axes broadcast), at
            least 3 items; only the strict upper triangles are read.

    Returns:
        Tensor[...] (broadcast leading shape), float32 (float64 if either input is
        float64); NaN where a triangle is constant (correlation undefined).
    """
    n = _check_square(rsm_a, "rsm_a")
    m = _check_square(rsm_b, "rsm_b")
    if n != m:
        raise InputError(
            f"rsm_a and rsm_b must have the same items, got shapes {tuple(rsm_a.shape)} and {tuple(rsm_b.shape)}"
        )
    if n < 3:
        raise InputError(f"RSA needs at least 3 items (2 pairs), got shape {tuple(rsm_a.shape)}")
    try:
        torch.broadcast_shapes(rsm_a.shape[:-2], rsm_b.shape[:-2])
    except RuntimeError:
        raise InputError(
            f"leading axes of rsm_a {tuple(rsm_a.shape)} and rsm_b {tuple(rsm_b.shape)} do not broadcast"
        ) from None
    work = torch.float64 if torch.float64 in (rsm_a.dtype, rsm_b.dtype) else torch.float32
    i, j = torch.triu_indices(n, n, offset=1, device=rsm_a.device)
    a = rsm_a.to(work)[..., i, j]  # (..., pair)
    b = rsm_b.to(work)[..., i, j]
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / torch.sqrt((a * a).sum(-1) * (b * b).sum(-1))
