"""Linear CKA between every layer of one model and every layer of another, biased and debiased.

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> x = torch.randn(3, 200, 16, generator=g, dtype=torch.float64)  # (layer, sample, feature)
>>> m = cka_matrix(x)                                               # every layer with every layer
>>> m.shape, torch.allclose(m.diagonal(), torch.ones(3, dtype=torch.float64))
(torch.Size([3, 3]), True)

Definitions (docs/analyses.md, "Similarity and inference (kernels)"). For one layer ``X``
[n, p] of model A and one layer ``Y`` [n, q] of model B on the same n samples, ``X̃``, ``Ỹ``
are centred over the samples, ``K = X̃X̃ᵀ``, ``L = ỸỸᵀ``, ``a_i = K_ii``, ``b_i = L_ii``:

* biased (Kornblith et al. 2019): ``HSIC_b(K, L) = ‖X̃ᵀỸ‖²_F / (n-1)²`` and
  ``CKA = HSIC_b(K, L) / sqrt(HSIC_b(K, K) HSIC_b(L, L))``;
* debiased: the unbiased estimator of Song et al. (2012) on the Grams with zeroed diagonals
  ``K̃, L̃``: ``HSIC_u = [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n-1)(n-2)) - 2/(n-2)·1ᵀK̃L̃1] / (n(n-3))``, and
  the same ratio. HSIC_u does not change when a constant is added to every sample, so it is
  computed on centred features, where it is
  ``[‖X̃ᵀỸ‖² - n/(n-2)·aᵀb + (Σa)(Σb)/((n-1)(n-2))] / (n(n-3))``.

Every kernel reduces a set of samples to :class:`HSICTerms` (a handful of sums per layer pair)
and finishes from those; what differs is how the sums are made:

* :func:`cka_terms` / :func:`cka_matrix`: one set of samples in memory, all layer pairs at once.
  Gram form (blocks of samples, upper block triangle: ``Σ_ij K_ij L_ij`` for all pairs is one
  matrix product of the flattened Gram blocks) or feature form (``‖X̃ᵀỸ‖²_F`` from tiles of
  ``[n, g·p]ᵀ @ [n, g·q]``, never an n × n matrix), whichever needs fewer multiply-adds;
  temporaries are bounded (``_BUDGET`` elements), whatever n.
* :mod:`~lamina.engine.kernels.cka_streaming`: the same terms streamed unit by unit, exactly
  (merged centred moments) or as Nguyen et al.'s minibatch estimator;
* :mod:`~lamina.engine.kernels.cka_inference`: the terms under permutations of B's samples (a
  null) and for B bootstrap resamples of whole units at once.

Numerics: products run in float32 (float64 for float64 input); every sum over products and the
final formulas are float64, and every result is float64. A layer that is constant over the
samples, or a debiased denominator ``HSIC_u(K, K)·HSIC_u(L, L) <= 0`` (possible for few
samples), gives NaN.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
from torch import Tensor

from lamina.engine.errors import InputError

__all__ = [
    "Cross",
    "HSICTerms",
    "cka_terms",
    "cka_matrix",
    "linear_cka",
    "best_match",
]

Form = Literal["auto", "gram", "feature"]

# Elements of one temporary (a tile of Gram blocks, of XᵀY, of gathered permuted Grams):
# 2**24 float32 are 64 MiB.
_BUDGET = 1 << 24

# --------------------------------------------------------------------------- checks


def _check_acts(x: Tensor, name: str, *, lead: int = 0) -> None:
    """Raise InputError unless x is a real Tensor[{lead dims}, layer, sample, feature]."""
    want = 3 + lead
    if not isinstance(x, Tensor) or x.ndim != want:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"{name} must be a tensor [layer, sample, feature], got {shape}")
    if x.is_complex() or not (x.is_floating_point()):
        raise InputError(f"{name} must be a real floating tensor, got dtype {x.dtype}")
    if 0 in x.shape:
        raise InputError(f"{name} is empty: shape {tuple(x.shape)}")


def _check_pair(xa: Tensor, xb: Tensor | None, min_samples: int) -> None:
    _check_acts(xa, "xa")
    if xb is not None:
        _check_acts(xb, "xb")
        if xb.shape[1] != xa.shape[1]:
            raise InputError(f"xa and xb must hold the same samples: xa has {xa.shape[1]} "
                             f"(shape {tuple(xa.shape)}), xb has {xb.shape[1]} (shape {tuple(xb.shape)})")
        if xb.device != xa.device:
            raise InputError(f"xa is on {xa.device} but xb is on {xb.device}")
    if xa.shape[1] < min_samples:
        raise InputError(f"CKA needs at least {min_samples} samples (the debiased estimator divides by "
                         f"n(n-3)), got {xa.shape[1]} in shape {tuple(xa.shape)}")


def _work_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _centre(x: Tensor) -> Tensor:
    """Tensor[..., sample, feature] -> a new tensor, work dtype, every feature's mean removed."""
    work = _work_dtype(x)
    return torch.sub(x, x.mean(dim=-2, keepdim=True, dtype=work)).to(work)


def _centre_sample_major(x: Tensor) -> Tensor:
    """Tensor[L, n, p] -> a new contiguous Tensor[n, L, p], work dtype, centred over the samples."""
    work = _work_dtype(x)
    z = torch.empty(x.shape[1], x.shape[0], x.shape[2], dtype=work, device=x.device)
    return torch.sub(x.transpose(0, 1), x.mean(dim=1, dtype=work)[None], out=z)


def _sq_norm(x: Tensor) -> Tensor:
    """Squared L2 norm over the last dim, in one pass (no squared temporary)."""
    return torch.linalg.vector_norm(x, dim=-1).square()


# --------------------------------------------------------------------------- the terms


@dataclasses.dataclass(frozen=True)
class Cross:
    """Sums over the (resampled) samples of two Grams K and L, one value per layer pair.

    ``off = Σ_{i≠j} K_ij L_ij``, ``diag = Σ_i K_ii L_ii``, ``row = Σ_i (K1)_i (L1)_i`` and
    ``row_off = Σ_i ((K1)_i - K_ii)((L1)_i - L_ii)``. All float64.
    """

    off: Tensor
    diag: Tensor
    row: Tensor
    row_off: Tensor

    def map(self, fn) -> Cross:
        return Cross(*(fn(t) for t in (self.off, self.diag, self.row, self.row_off)))


@dataclasses.dataclass(frozen=True)
class HSICTerms:
    """Everything the biased and debiased CKA of every layer pair need, for one set of samples
    or for a batch of sets (resamples, permutations, minibatches: the leading dims ``*``).

    ``ab``: Cross over [*, La, Lb] (layer of A with layer of B); ``aa`` [*, La] and ``bb`` [*, Lb]:
    each layer with itself. ``total_a = 1ᵀK1``, ``trace_a = Σ_i K_ii`` [*, La] (likewise for B),
    ``n`` [*] the number of samples (float64).
    """

    n: Tensor
    ab: Cross
    aa: Cross
    bb: Cross
    total_a: Tensor
    trace_a: Tensor
    total_b: Tensor
    trace_b: Tensor

    def _hsic_b(self, c: Cross, ta: Tensor, tb: Tensor, n: Tensor) -> Tensor:
        value = (c.off + c.diag - 2.0 * c.row / n + ta * tb / (n * n)) / ((n - 1.0) * (n - 1.0))
        return torch.where(n >= 2, value, torch.nan)

    def _hsic_u(self, c: Cross, ta: Tensor, ka: Tensor, tb: Tensor, kb: Tensor, n: Tensor) -> Tensor:
        value = (c.off + (ta - ka) * (tb - kb) / ((n - 1.0) * (n - 2.0)) - 2.0 * c.row_off / (n - 2.0)) / (
            n * (n - 3.0))
        return torch.where(n >= 4, value, torch.nan)  # the estimator needs 4 samples

    def hsic(self, *, debiased: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """(HSIC[*, La, Lb], HSIC[*, La] of each A layer with itself, HSIC[*, Lb]): biased
        ``tr(KHLH)/(n-1)²`` or Song's unbiased estimator; NaN for fewer than 2 (biased) or 4
        (unbiased) samples, e.g. a resample of too few units."""
        n = self.n
        n2, n1 = n[..., None, None], n[..., None]
        ta, ka, tb, kb = self.total_a, self.trace_a, self.total_b, self.trace_b
        if debiased:
            return (self._hsic_u(self.ab, ta[..., :, None], ka[..., :, None], tb[..., None, :], kb[..., None, :], n2),
                    self._hsic_u(self.aa, ta, ka, ta, ka, n1), self._hsic_u(self.bb, tb, kb, tb, kb, n1))
        return (self._hsic_b(self.ab, ta[..., :, None], tb[..., None, :], n2),
                self._hsic_b(self.aa, ta, ta, n1), self._hsic_b(self.bb, tb, tb, n1))

    def cka(self, *, debiased: bool = False) -> Tensor:
        """Tensor[*, La, Lb] float64: ``HSIC(K, L) / sqrt(HSIC(K, K)·HSIC(L, L))``; NaN where that
        product is not positive."""
        ab, aa, bb = self.hsic(debiased=debiased)
        return _ratio(ab, aa, bb)

    def cka_debiased(self) -> Tensor:
        """:meth:`cka` with Song's unbiased HSIC."""
        return self.cka(debiased=True)


def _ratio(ab: Tensor, aa: Tensor, bb: Tensor) -> Tensor:
    den = aa[..., :, None] * bb[..., None, :]
    ok = den > 0
    return torch.where(ok, ab / torch.sqrt(torch.where(ok, den, torch.ones_like(den))), torch.nan)


def _centred_terms(n: int | Tensor, lead: tuple[int, ...], off: Tensor, diag: Tensor,
                   off_a: Tensor, diag_a: Tensor, sum_a: Tensor,
                   off_b: Tensor, diag_b: Tensor, sum_b: Tensor) -> HSICTerms:
    """Terms of exactly centred Grams: ``K1 = 0``, so ``row = 0``, ``row_off = diag`` and
    ``1ᵀK1 = 0``."""
    dev = off.device

    def cross(o: Tensor, d: Tensor) -> Cross:
        return Cross(o, d, torch.zeros_like(d), d)

    n_t = n if isinstance(n, Tensor) else torch.full(lead, float(n), dtype=torch.float64, device=dev)
    return HSICTerms(n_t, cross(off, diag), cross(off_a, diag_a), cross(off_b, diag_b),
                     torch.zeros_like(sum_a), sum_a, torch.zeros_like(sum_b), sum_b)


# --------------------------------------------------------------------------- full batch


def _block_size(n: int, rows: int) -> int:
    """Samples per Gram block so that ``rows`` blocks of block² elements fit the budget."""
    return max(1, min(n, math.isqrt(max(1, _BUDGET // max(rows, 1)))))


def _gram_block(x: Tensor, r0: int, r1: int, t0: int, t1: int, diag: Tensor | None = None) -> Tensor:
    """Tensor[..., layer, r1-r0, t1-t0]: the Gram block of samples r0:r1 against t0:t1, with its
    diagonal zeroed when the two ranges are the same (and first copied to ``diag[..., r0:r1]``)."""
    k = x[..., r0:r1, :] @ x[..., t0:t1, :].mT
    if r0 == t0:
        d = k.diagonal(dim1=-2, dim2=-1)
        if diag is not None:
            diag[..., r0:r1] = d
        d.zero_()
    return k


def _gram_sums(xa: Tensor, xb: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``Σ_{i≠j} K_ij L_ij`` for every layer pair [*, La, Lb] and for every layer with itself
    ([*, La], [*, Lb]), from Gram blocks of the upper block triangle (each off-diagonal block
    counted twice: the Grams are symmetric); and the Grams' diagonals ``a_i = ‖x̃_i‖²``
    ([*, La, n], [*, Lb, n], float64). The Gram blocks are made in the work dtype; the sums over
    a block's block² products of every layer pair are float64 (a float32 sum of that many
    products of either sign loses about 1e-5 of the CKA; float64 costs a few percent).

    Args:
        xa: Tensor[*, La, n, p] centred; xb: Tensor[*, Lb, n, q] centred, or None (B is A).
    """
    *lead, la, n, _ = xa.shape
    lb = la if xb is None else xb.shape[-3]
    batch = math.prod(lead)
    s = _block_size(n, 3 * batch * (la + (0 if xb is None else lb)))  # the block, and its float64 copy
    f64 = dict(dtype=torch.float64, device=xa.device)
    off = torch.zeros(*lead, la, lb, **f64)
    off_a = torch.zeros(*lead, la, **f64)
    off_b = torch.zeros(*lead, lb, **f64)
    a = torch.empty(*lead, la, n, **f64)
    b = a if xb is None else torch.empty(*lead, lb, n, **f64)
    for r0 in range(0, n, s):
        r1 = min(r0 + s, n)
        for t0 in range(r0, n, s):
            t1 = min(t0 + s, n)
            w = 1.0 if t0 == r0 else 2.0
            fa = _gram_block(xa, r0, r1, t0, t1, a).flatten(-2).double()  # [*, La, block·block]
            if xb is None:
                off += w * (fa @ fa.mT)
                continue
            fb = _gram_block(xb, r0, r1, t0, t1, b).flatten(-2).double()
            off += w * (fa @ fb.mT)
            off_a += w * _sq_norm(fa)
            off_b += w * _sq_norm(fb)
    if xb is None:
        off_a = off_b = off.diagonal(dim1=-2, dim2=-1).clone()
    return off, off_a, off_b, a, b


def _feature_sums(za: Tensor, zb: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """``‖X̃ᵀỸ‖²_F`` for every layer pair [La, Lb] and ``‖X̃ᵀX̃‖²_F`` per layer ([La], [Lb]),
    from tiles ``Z_a[:, layers]ᵀ Z_b[:, layers]`` of at most ``_BUDGET`` elements.

    Args:
        za: Tensor[n, La, p] centred (sample-major: a group of layers is one [n, g·p] matrix);
        zb: Tensor[n, Lb, q] centred, or None (B is A).
    """
    n, la, p = za.shape
    same = zb is None
    zb = za if zb is None else zb
    lb, q = zb.shape[1], zb.shape[2]
    g = max(1, math.isqrt(max(1, _BUDGET // (p * q))))
    ga, gb = min(g, la), min(g, lb)
    cross = torch.zeros(la, lb, dtype=torch.float64, device=za.device)
    for i0 in range(0, la, ga):
        i1 = min(i0 + ga, la)
        left = za[:, i0:i1].reshape(n, -1)
        for j0 in range(i0 if same else 0, lb, gb):
            j1 = min(j0 + gb, lb)
            prod = left.mT @ zb[:, j0:j1].reshape(n, -1)  # [(i1-i0)·p, (j1-j0)·q]
            tile = prod.view(i1 - i0, p, j1 - j0, q).square().sum((1, 3)).double()
            cross[i0:i1, j0:j1] = tile
            if same:
                cross[j0:j1, i0:i1] = tile.mT
    if same:
        self_a = cross.diagonal().clone()
        return cross, self_a, self_a
    self_a = torch.stack([(za[:, l].mT @ za[:, l]).square().sum().double() for l in range(la)])
    self_b = torch.stack([(zb[:, l].mT @ zb[:, l]).square().sum().double() for l in range(lb)])
    return cross, self_a, self_b


def _costs(la: int, p: int, lb: int, q: int, n: int, same: bool) -> tuple[float, float]:
    """(Gram form, feature form) multiply-adds of :func:`cka_terms`."""
    if same:
        return la * p * n * n / 2 + la * la * n * n / 2, la * (la + 1) / 2 * n * p * p
    return (la * p + lb * q) * n * n / 2 + la * lb * n * n / 2, la * lb * n * p * q + (la * p * p + lb * q * q) * n


def cka_terms(xa: Tensor, xb: Tensor | None = None, *, form: Form = "auto") -> HSICTerms:
    """The sums behind the biased and debiased CKA of every layer of A with every layer of B.

    >>> import torch
    >>> x, y = torch.randn(4, 100, 8), torch.randn(2, 100, 5)
    >>> t = cka_terms(x, y)
    >>> t.cka().shape, t.cka_debiased().shape
    (torch.Size([4, 2]), torch.Size([4, 2]))

    Features are centred over the samples (work dtype), then either

    * ``form="gram"``: blocks ``K[r, t] = X̃_r X̃_tᵀ`` of every layer (diagonal zeroed), for block
      pairs ``t >= r`` only; all layer pairs' ``Σ K_ij L_ij`` of a block pair are ONE product
      ``[La, block²] @ [block², Lb]``. ``(La·p + Lb·q)·n²/2 + La·Lb·n²/2`` multiply-adds;
    * ``form="feature"``: ``‖X̃ᵀỸ‖²_F`` from tiles ``[n, g·p]ᵀ @ [n, g·q]`` over groups of g
      layers, never an n × n matrix. ``La·Lb·n·p·q + (La·p² + Lb·q²)·n`` multiply-adds;
    * ``form="auto"`` (default): the one with fewer multiply-adds (Gram while n is below about
      ``La·d/2``: n < 38,000 for 48 layers of width 1600).

    ``a_i = ‖x̃_i‖²`` give ``Σ a_i b_i`` and ``Σ a_i`` directly. Temporaries stay under
    ``_BUDGET`` elements whatever n (beyond one centred copy of the inputs). With ``xb`` None,
    B is A and only the layer pairs ``m >= l`` are computed.

    Args:
        xa: Tensor[La, n, p], any real float dtype (layer, sample, feature).
        xb: Tensor[Lb, n, q] on the same samples, or None for A with itself.
        form: "auto", "gram" or "feature".

    Returns:
        HSICTerms without leading dims (``.cka()``, ``.cka_debiased()``: Tensor[La, Lb] float64).
    """
    _check_pair(xa, xb, 2)
    if form not in ("auto", "gram", "feature"):
        raise InputError(f"form must be 'auto', 'gram' or 'feature', got {form!r}")
    la, n, p = xa.shape
    lb, q = (la, p) if xb is None else (xb.shape[0], xb.shape[2])
    if form == "auto":
        gram_cost, feature_cost = _costs(la, p, lb, q, n, xb is None)
        form = "gram" if gram_cost <= feature_cost else "feature"
    if form == "gram":
        ca = _centre(xa)
        cb = None if xb is None else _centre(xb)
        off, off_a, off_b, a, b = _gram_sums(ca, cb)  # a: [La, n]
        diag = a @ b.mT
        return _centred_terms(n, (), off, diag, off_a, a.square().sum(-1), a.sum(-1),
                              off_b, b.square().sum(-1), b.sum(-1))
    za = _centre_sample_major(xa)  # [n, La, p]
    zb = None if xb is None else _centre_sample_major(xb)
    cross, self_a, self_b = _feature_sums(za, zb)
    a = za.square().sum(-1).double().mT  # [La, n]
    b = a if zb is None else zb.square().sum(-1).double().mT
    diag = a @ b.mT
    diag_a, diag_b = a.square().sum(-1), b.square().sum(-1)
    return _centred_terms(n, (), cross - diag, diag, self_a - diag_a, diag_a, a.sum(-1),
                          self_b - diag_b, diag_b, b.sum(-1))


def cka_matrix(xa: Tensor, xb: Tensor | None = None, *, debiased: bool = False, form: Form = "auto") -> Tensor:
    """Linear CKA of every layer of A with every layer of B (or of A).

    >>> import torch
    >>> x = torch.randn(3, 64, 10, dtype=torch.float64)
    >>> m = cka_matrix(x, 2.0 * x + 1.0)          # invariant to isotropic scaling and shifts
    >>> bool(torch.allclose(m.diagonal(), torch.ones(3, dtype=torch.float64)))
    True

    Args:
        xa: Tensor[La, n, p]; xb: Tensor[Lb, n, q] or None (A with itself).
        debiased: Song's unbiased HSIC (needs n >= 4) instead of the biased one.
        form: see :func:`cka_terms`.

    Returns:
        Tensor[La, Lb] float64.
    """
    if debiased:
        _check_pair(xa, xb, 4)
    return cka_terms(xa, xb, form=form).cka(debiased=debiased)


def linear_cka(x: Tensor, y: Tensor, *, debiased: bool = False) -> Tensor:
    """Linear CKA of one representation x [n, p] with another y [n, q]; a 0-d float64 tensor.

    >>> import torch
    >>> x = torch.randn(50, 6, dtype=torch.float64)
    >>> q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    >>> round(float(linear_cka(x, x @ q)), 12)     # invariant to orthogonal transforms
    1.0
    """
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor) or t.ndim != 2:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise InputError(f"{name} must be a tensor [sample, feature], got {shape}")
    return cka_matrix(x[None], y[None], debiased=debiased)[0, 0]


def best_match(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """For each layer of A (row), the layer of B (column) with the highest similarity.

    >>> import torch
    >>> best_match(torch.tensor([[0.1, 0.9, 0.3], [0.8, float("nan"), 0.2]]))
    (tensor([1, 0]), tensor([0.9000, 0.8000]))

    NaN entries never win; a row that is all NaN gives index -1 and value NaN. Ties go to the
    lowest index.

    Args:
        matrix: Tensor[La, Lb].

    Returns:
        (index Tensor[La] int64, value Tensor[La]).
    """
    if not isinstance(matrix, Tensor) or matrix.ndim != 2 or 0 in matrix.shape:
        shape = tuple(matrix.shape) if isinstance(matrix, Tensor) else type(matrix).__name__
        raise InputError(f"matrix must be a non-empty tensor [layer_a, layer_b], got {shape}")
    nan = torch.isnan(matrix)
    filled = torch.where(nan, torch.full_like(matrix, -torch.inf), matrix)
    best = filled.max(dim=1)
    top = filled == best.values[:, None]
    index = torch.where(top & ~nan, torch.arange(matrix.shape[1], device=matrix.device), matrix.shape[1]).amin(1)
    none = nan.all(dim=1)
    index = torch.where(none, -1, index)
    value = torch.where(none, torch.nan, best.values)
    return index, value
