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
* :func:`moment_state` / :func:`merge_moment_states` / :func:`moment_terms`: streamed and exact.
  A unit's state is its count, means and centred cross moments (``Σ(x-x̄)(y-ȳ)ᵀ`` per layer
  pair, plus ``Σ a_i b_i`` and two first-order corrections for the debiased form); states merge
  with the pairwise update of Chan et al. (1979) extended to these moments. The finished CKA,
  biased AND debiased, equals the full-batch value to float64 rounding however the samples are
  cut into units. Memory does not grow with n but is ``8·La·Lb·p·q`` bytes.
* :func:`minibatch_state` / :func:`merge_minibatch_states` / :func:`minibatch_cka`: the
  minibatch CKA of Nguyen et al. (2021): every unit is cut into minibatches of ``batch_size``
  consecutive samples, HSIC_u of every minibatch, summed; CKA from the sums. The state is
  ``La·Lb + La + Lb`` numbers.
* :func:`cka_permutation_terms`: the terms with model B's samples permuted (a null).
* :func:`cka_bootstrap_terms`: the terms of B resamples of whole units at once.

Numerics: products run in float32 (float64 for float64 input); every sum over products and the
final formulas are float64, and every result is float64. A layer that is constant over the
samples, or a debiased denominator ``HSIC_u(K, K)·HSIC_u(L, L) <= 0`` (possible for few
samples), gives NaN.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from lamina.engine.errors import InputError
from lamina.engine.kernels.bootstrap import maxstat_pvalues, permutation_pvalues

__all__ = [
    "Cross",
    "HSICTerms",
    "cka_terms",
    "cka_matrix",
    "linear_cka",
    "best_match",
    "moment_state",
    "merge_moment_states",
    "moment_terms",
    "minibatch_state",
    "merge_minibatch_states",
    "minibatch_cka",
    "cka_permutation_terms",
    "cka_permutation_test",
    "cka_bootstrap_terms",
]

Form = Literal["auto", "gram", "feature"]

# Elements of one temporary (a tile of Gram blocks, of XᵀY, of gathered permuted Grams):
# 2**24 float32 are 64 MiB.
_BUDGET = 1 << 24

State = dict[str, Tensor]


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


# --------------------------------------------------------------------------- streamed: exact moments


def _moment_family(ea: Tensor, eb: Tensor, diagonal: bool) -> State:
    """One unit's centred moments of layer pairs: all pairs (a: [La, n, p], b: [Lb, n, q]) or
    the pairs (l, l) of one model (``diagonal``: b is a). float64, centred at the unit's means."""
    aa, bb = ea.square().sum(-1), eb.square().sum(-1)  # [L, n]
    if diagonal:
        return {"cross": ea.mT @ ea,  # [L, p, p]
                "diag": aa.square().sum(-1),  # [L]
                "u": (aa[:, :, None] * ea).sum(1)}  # [L, p]: Σ a_i ξ_i
    la, n, p = ea.shape
    lb, _, q = eb.shape
    za, zb = ea.transpose(0, 1).reshape(n, la * p), eb.transpose(0, 1).reshape(n, lb * q)
    return {"cross": (za.mT @ zb).view(la, p, lb, q),
            "diag": aa @ bb.mT,  # [La, Lb]
            "u": torch.einsum("ln,mnq->lmq", aa, eb),  # Σ a_i η_i  [La, Lb, q]
            "v": torch.einsum("mn,lnp->lmp", bb, ea)}  # Σ b_i ξ_i  [La, Lb, p]


def moment_state(xa: Tensor, xb: Tensor | None = None) -> State:
    """One unit's mergeable state for the exact streamed CKA (biased and debiased).

    >>> import torch
    >>> x = torch.randn(2, 300, 4, dtype=torch.float64)
    >>> s = merge_moment_states(moment_state(x[:, :100]), moment_state(x[:, 100:]))
    >>> bool(torch.allclose(moment_terms(s).cka(), cka_matrix(x), atol=1e-12))
    True

    Float64 moments of the unit's samples, centred at the unit's means: ``count``; ``mean_a``
    [La, p]; ``sum_a`` [La] (``Σ a_i``, ``a_i = ‖x_i - x̄‖²``); for the layer pairs ``pair_cross``
    [La, p, Lb, q] (``Σ ξ_i η_iᵀ``, ξ, η the centred samples), ``pair_diag`` [La, Lb]
    (``Σ a_i b_i``), ``pair_u`` [La, Lb, q] (``Σ a_i η_i``) and ``pair_v`` [La, Lb, p]
    (``Σ b_i ξ_i``). With ``xb`` given, also ``mean_b``, ``sum_b`` and each model's own
    layers: ``a_cross`` [La, p, p], ``a_diag`` [La], ``a_u`` [La, p] (likewise ``b_*``). With
    ``xb`` None the pairs are A's layers with themselves.

    Memory: ``8·La·Lb·p·q`` bytes for ``pair_cross`` (2.4 GB for 30 layers of width 576 with
    themselves), independent of the number of samples.

    Args:
        xa: Tensor[La, n, p]; xb: Tensor[Lb, n, q] or None.

    Returns:
        dict of float64 tensors (``count`` int64).
    """
    _check_pair(xa, xb, 1)
    ea = xa.to(torch.float64, copy=True)
    mean_a = ea.mean(1)
    ea -= mean_a[:, None]
    state = {"count": torch.tensor(xa.shape[1], dtype=torch.int64, device=xa.device), "mean_a": mean_a,
             "sum_a": ea.square().sum((1, 2))}
    if xb is None:
        state.update({f"pair_{k}": v for k, v in _moment_family(ea, ea, False).items()})
        return state
    eb = xb.to(torch.float64, copy=True)
    mean_b = eb.mean(1)
    eb -= mean_b[:, None]
    state.update({"mean_b": mean_b, "sum_b": eb.square().sum((1, 2))})
    state.update({f"pair_{k}": v for k, v in _moment_family(ea, eb, False).items()})
    state.update({f"a_{k}": v for k, v in _moment_family(ea, ea, True).items()})
    state.update({f"b_{k}": v for k, v in _moment_family(eb, eb, True).items()})
    return state


def _recentre(s: State, fam: str, count: Tensor, alpha: Tensor, beta: Tensor,
              sum_a: Tensor, sum_b: Tensor, diagonal: bool) -> State:
    """A family's moments moved from its part's means to the merged means: ``x̄_part - x̄ = alpha``
    [La, p], ``ȳ_part - ȳ = beta`` [Lb, q]; ``sum_a``, ``sum_b`` the part's own (pre-move) Σ a_i."""
    c, d, u = s[f"{fam}_cross"], s[f"{fam}_diag"], s[f"{fam}_u"]
    na2, nb2 = alpha.square().sum(-1), beta.square().sum(-1)  # |α|² [La], |β|² [Lb]
    if diagonal:  # pairs (l, l): beta is alpha, v is u
        ca = torch.einsum("lpq,lp->lq", c, alpha)  # Cᵀα (= Cα: C symmetric)
        acb = (ca * alpha).sum(-1)
        d = (d + 4.0 * (u * alpha).sum(-1) + 2.0 * na2 * sum_a + 4.0 * acb + count * na2 * na2)
        u = u + sum_a[:, None] * alpha + 2.0 * ca + count * na2[:, None] * alpha
        c = c + count * alpha[:, :, None] * alpha[:, None, :]
        return {f"{fam}_cross": c, f"{fam}_diag": d, f"{fam}_u": u}
    v = s[f"{fam}_v"]
    ct_a = torch.einsum("lpmq,lp->lmq", c, alpha)  # Cᵀα [La, Lb, q]
    c_b = torch.einsum("lpmq,mq->lmp", c, beta)  # Cβ [La, Lb, p]
    acb = (ct_a * beta[None]).sum(-1)  # αᵀCβ [La, Lb]
    d = (d + 2.0 * (u * beta[None]).sum(-1) + nb2[None, :] * sum_a[:, None]
         + 2.0 * (v * alpha[:, None]).sum(-1) + 4.0 * acb + na2[:, None] * sum_b[None, :]
         + count * na2[:, None] * nb2[None, :])
    u = u + sum_a[:, None, None] * beta[None] + 2.0 * ct_a + count * na2[:, None, None] * beta[None]
    v = v + sum_b[None, :, None] * alpha[:, None] + 2.0 * c_b + count * nb2[None, :, None] * alpha[:, None]
    c = c + count * (alpha.reshape(-1)[:, None] * beta.reshape(-1)[None, :]).view(c.shape)
    return {f"{fam}_cross": c, f"{fam}_diag": d, f"{fam}_u": u, f"{fam}_v": v}


def merge_moment_states(first: State, second: State) -> State:
    """The state of ``first``'s samples followed by ``second``'s (from :func:`moment_state`).

    Means merge as in Chan et al.; each part's moments are moved to the merged means exactly
    (with ``x_i - x̄ = ξ_i + α``: ``Σ(ξ+α)(η+β)ᵀ = C + n·αβᵀ``, and the same expansion for
    ``Σ a_i b_i``, ``Σ a_i η_i``, ``Σ b_i ξ_i``, which is why those are kept), then added. An
    empty state (count 0) is the identity. Every merge order of the same units gives the
    full-batch moments up to float64 rounding; a fold in unit order is deterministic.
    """
    if int(first["count"]) == 0:
        return second
    if int(second["count"]) == 0:
        return first
    if first.keys() != second.keys():
        raise InputError(f"cannot merge moment states with different keys: {sorted(first)} and {sorted(second)}")
    n1, n2 = first["count"].to(torch.float64), second["count"].to(torch.float64)
    n = n1 + n2
    two = "mean_b" in first
    out: State = {"count": first["count"] + second["count"]}
    means = {}
    for side in ("a", "b") if two else ("a",):
        m1, m2 = first[f"mean_{side}"], second[f"mean_{side}"]
        means[side] = m1 + (m2 - m1) * (n2 / n)
        out[f"mean_{side}"] = means[side]
    parts = []
    for s, cnt in ((first, n1), (second, n2)):
        alpha = s["mean_a"] - means["a"]
        beta = s["mean_b"] - means["b"] if two else alpha
        sa = s["sum_a"]
        sb = s["sum_b"] if two else sa
        moved = {"sum_a": sa + cnt * alpha.square().sum(-1)}
        if two:
            moved["sum_b"] = sb + cnt * beta.square().sum(-1)
        moved.update(_recentre(s, "pair", cnt, alpha, beta, sa, sb, False))
        if two:
            moved.update(_recentre(s, "a", cnt, alpha, alpha, sa, sa, True))
            moved.update(_recentre(s, "b", cnt, beta, beta, sb, sb, True))
        parts.append(moved)
    for key in parts[0]:
        out[key] = parts[0][key] + parts[1][key]
    return out


def moment_terms(state: State) -> HSICTerms:
    """The HSIC terms of all samples merged into ``state``: ``.cka()`` and ``.cka_debiased()``
    equal :func:`cka_matrix` of the concatenated samples up to float64 rounding.

    ``‖X̃ᵀỸ‖²_F`` is the squared Frobenius norm of each layer pair's block of ``pair_cross``;
    ``Σ a_i b_i`` is ``pair_diag``; ``Σ a_i`` is ``sum_a``.
    """
    n = int(state["count"])
    if n < 1:
        raise InputError("the moment state holds no samples")
    cross = state["pair_cross"].square().sum((1, 3))  # [La, Lb]
    diag = state["pair_diag"]
    if "mean_b" not in state:
        self_a = cross.diagonal().clone()
        diag_a = diag.diagonal().clone()
        return _centred_terms(n, (), cross - diag, diag, self_a - diag_a, diag_a, state["sum_a"],
                              self_a - diag_a, diag_a, state["sum_a"])
    self_a, self_b = state["a_cross"].square().sum((1, 2)), state["b_cross"].square().sum((1, 2))
    da, db = state["a_diag"], state["b_diag"]
    return _centred_terms(n, (), cross - diag, diag, self_a - da, da, state["sum_a"], self_b - db, db, state["sum_b"])


# --------------------------------------------------------------------------- streamed: minibatches


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 4:
        raise InputError(f"batch_size must be an int >= 4 (the unbiased HSIC needs 4 samples), got {batch_size!r}")


def minibatch_state(xa: Tensor, xb: Tensor | None = None, *, batch_size: int) -> State:
    """One unit's state for the minibatch CKA of Nguyen et al. (2021).

    >>> import torch
    >>> x = torch.randn(3, 512, 8)
    >>> s = merge_minibatch_states(minibatch_state(x[:, :256], batch_size=128),
    ...                            minibatch_state(x[:, 256:], batch_size=128))
    >>> int(s["batches"]), minibatch_cka(s).shape
    (4, torch.Size([3, 3]))

    The unit's samples are cut into ``k = n // batch_size`` minibatches of ``batch_size``
    consecutive samples; the last ``n % batch_size`` samples are not used (counted in
    ``unused``). For every minibatch, Song's unbiased HSIC of every layer pair and of every
    layer with itself (Gram form, all minibatches in one batched product), summed over the
    minibatches: ``hsic_ab`` [La, Lb], ``hsic_a`` [La], ``hsic_b`` [Lb] (float64), with
    ``batches`` = k. With ``xb`` None, B is A.

    Args:
        xa: Tensor[La, n, p]; xb: Tensor[Lb, n, q] or None.
        batch_size: samples per minibatch, >= 4.
    """
    _check_pair(xa, xb, 1)
    _check_batch_size(batch_size)
    la, n, _ = xa.shape
    lb = la if xb is None else xb.shape[0]
    k = n // batch_size
    dev = xa.device
    state = {"batches": torch.tensor(k, dtype=torch.int64, device=dev),
             "unused": torch.tensor(n - k * batch_size, dtype=torch.int64, device=dev),
             "hsic_ab": torch.zeros(la, lb, dtype=torch.float64, device=dev),
             "hsic_a": torch.zeros(la, dtype=torch.float64, device=dev),
             "hsic_b": torch.zeros(lb, dtype=torch.float64, device=dev)}
    if k == 0:
        return state
    width = (la + (0 if xb is None else lb)) * batch_size * batch_size
    per = max(1, _BUDGET // width)  # minibatches per batched product

    def batched(x: Tensor, b0: int, b1: int) -> Tensor:  # [L, (b1-b0)·m, p] -> [b1-b0, L, m, p] centred
        m = x[:, b0 * batch_size:b1 * batch_size].unflatten(1, (b1 - b0, batch_size)).transpose(0, 1)
        return _centre(m)

    for b0 in range(0, k, per):
        b1 = min(b0 + per, k)
        ca = batched(xa, b0, b1)
        cb = None if xb is None else batched(xb, b0, b1)
        off, off_a, off_b, a, b = _gram_sums(ca, cb)  # a: [k, La, m]
        terms = _centred_terms(batch_size, (b1 - b0,), off, a @ b.mT, off_a, a.square().sum(-1), a.sum(-1),
                               off_b, b.square().sum(-1), b.sum(-1))
        ab, aa, bb = terms.hsic(debiased=True)
        state["hsic_ab"] += ab.sum(0)
        state["hsic_a"] += aa.sum(0)
        state["hsic_b"] += bb.sum(0)
    return state


def merge_minibatch_states(first: State, second: State) -> State:
    """Two minibatch states summed (every minibatch counts once; the sums are float64, so
    folding the same units in the same order is bitwise reproducible)."""
    if first.keys() != second.keys():
        raise InputError(f"cannot merge minibatch states with different keys: {sorted(first)} and {sorted(second)}")
    return {k: first[k] + second[k] for k in first}


def minibatch_cka(state: State) -> Tensor:
    """Nguyen et al.'s minibatch CKA from a (merged) :func:`minibatch_state`:
    ``mean_k HSIC_u(K_k, L_k) / sqrt(mean_k HSIC_u(K_k, K_k) · mean_k HSIC_u(L_k, L_k))`` over
    the minibatches k; Tensor[La, Lb] float64 (NaN where the denominator is not positive)."""
    if int(state["batches"]) < 1:
        raise InputError(f"the minibatch state holds no complete minibatch ({int(state['unused'])} samples "
                         f"unused): give units of at least batch_size samples")
    return _ratio(state["hsic_ab"], state["hsic_a"], state["hsic_b"])


# --------------------------------------------------------------------------- permutation null


def cka_permutation_terms(xa: Tensor, xb: Tensor | None = None, *, permutations: Tensor) -> HSICTerms:
    """HSIC terms of A against B with B's samples reordered by each permutation (a null in which
    the sample correspondence is broken); ``.cka()`` is Tensor[P, La, Lb].

    >>> import torch
    >>> x = torch.randn(2, 40, 5)
    >>> perms = torch.stack([torch.arange(40), torch.randperm(40)])
    >>> t = cka_permutation_terms(x, permutations=perms)
    >>> bool(torch.allclose(t.cka()[0], cka_matrix(x)))       # the identity gives the observed
    True

    For permutation π, ``Y`` becomes ``Y[π]``: ``off = Σ_{i≠j} K_ij L_π(i)π(j)`` (the Gram of B
    gathered, diagonal zeroed: centring commutes with the permutation) and ``diag = Σ_i a_i b_π(i)``;
    every other term does not change. Whole Grams are kept ([La, n, n] and [Lb, n, n] in the work
    dtype), so n should stay in the low thousands (subsample tokens for larger sets); the
    permutations go in chunks of ``_BUDGET`` gathered elements. Cost ``P·La·Lb·n²``.

    Args:
        xa: Tensor[La, n, p]; xb: Tensor[Lb, n, q] or None (A against a permuted copy of itself).
        permutations: Tensor[P, n] int64, each row a permutation of 0..n-1 (see
            :func:`lamina.engine.kernels.bootstrap.permutations`).
    """
    _check_pair(xa, xb, 2)
    la, n, _ = xa.shape
    if not isinstance(permutations, Tensor) or permutations.ndim != 2 or permutations.shape[1] != n:
        shape = tuple(permutations.shape) if isinstance(permutations, Tensor) else type(permutations).__name__
        raise InputError(f"permutations must be a tensor [permutation, {n}], got {shape}")
    perms = permutations.to(device=xa.device, dtype=torch.int64)
    if not bool((perms.sort(dim=1).values == torch.arange(n, device=xa.device)).all()):
        raise InputError("every row of permutations must be a permutation of 0..n-1")
    ca = _centre(xa)
    cb = ca if xb is None else _centre(xb)
    lb = cb.shape[0]
    a = torch.empty(la, n, dtype=torch.float64, device=xa.device)
    ka = _gram_block(ca, 0, n, 0, n, a)  # [La, n, n], diagonal zeroed (kept in a)
    b = a if xb is None else torch.empty(lb, n, dtype=torch.float64, device=xa.device)
    kb = ka if xb is None else _gram_block(cb, 0, n, 0, n, b)
    fa = ka.flatten(1)
    total = perms.shape[0]
    off = torch.empty(total, la, lb, dtype=torch.float64, device=xa.device)
    step = max(1, _BUDGET // (lb * n * n))
    for c0 in range(0, total, step):
        pi = perms[c0:c0 + step]  # [c, n]
        gathered = kb[:, pi[:, :, None], pi[:, None, :]]  # [Lb, c, n, n]
        prod = fa @ gathered.reshape(lb * pi.shape[0], n * n).mT  # [La, Lb·c]
        off[c0:c0 + pi.shape[0]] = prod.view(la, lb, -1).permute(2, 0, 1).double()
    diag = torch.einsum("ln,mcn->clm", a, b[:, perms])
    off_a = ka.square().sum((1, 2)).double()
    off_b = off_a if xb is None else kb.square().sum((1, 2)).double()

    def rep(t: Tensor) -> Tensor:
        return t.expand(total, *t.shape)

    return _centred_terms(n, (total,), off, diag, rep(off_a), rep(a.square().sum(-1)), rep(a.sum(-1)),
                          rep(off_b), rep(b.square().sum(-1)), rep(b.sum(-1)))


def cka_permutation_test(xa: Tensor, xb: Tensor | None = None, *, permutations: Tensor,
                         debiased: bool = False) -> dict[str, Tensor]:
    """Permutation test of every layer pair's CKA, with family-wise control across the pairs.

    >>> import torch
    >>> from lamina.engine.kernels.bootstrap import permutations as perms
    >>> x = torch.randn(2, 30, 4, generator=torch.Generator().manual_seed(0))
    >>> r = cka_permutation_test(x, x + 0.1, permutations=perms(30, 99, generator=torch.Generator().manual_seed(1)))
    >>> r["p"].diagonal().tolist(), r["p_fwer"].shape                 # nothing beats the true pairing
    ([0.01, 0.01], torch.Size([2, 2]))

    ``observed`` [La, Lb] is the CKA with the identity pairing (computed with the permuted ones,
    :func:`cka_permutation_terms`); ``null`` [P, La, Lb]; ``p`` [La, Lb] = ``(1 + #{null >=
    observed}) / (1 + P)``; ``p_fwer`` [La, Lb] the step-down max-statistic p-values over all
    La·Lb pairs (:func:`~lamina.engine.kernels.bootstrap.maxstat_pvalues`). All float64.

    Args:
        xa, xb: as :func:`cka_terms`.
        permutations: Tensor[P, n] (:func:`~lamina.engine.kernels.bootstrap.permutations`).
        debiased: test the debiased CKA instead.
    """
    if not isinstance(permutations, Tensor) or permutations.ndim != 2:
        raise InputError(f"permutations must be a tensor [permutation, sample], got {getattr(permutations, 'shape', None)}")
    identity = torch.arange(permutations.shape[1], device=permutations.device)[None]
    values = cka_permutation_terms(xa, xb, permutations=torch.cat([identity, permutations.long()])).cka(
        debiased=debiased)
    observed, null = values[0], values[1:]
    return {"observed": observed, "null": null, "p": permutation_pvalues(observed, null),
            "p_fwer": maxstat_pvalues(observed, null)}


# --------------------------------------------------------------------------- bootstrap over units


def _unit_layout(unit_sizes: Sequence[int] | Tensor, n: int, device: torch.device) -> tuple[list[int], Tensor]:
    """(sizes, padded position of every sample) for contiguous units of the given sizes."""
    sizes = [int(s) for s in (unit_sizes.tolist() if isinstance(unit_sizes, Tensor) else unit_sizes)]
    if not sizes or min(sizes) < 1 or sum(sizes) != n:
        raise InputError(f"unit_sizes must be positive and add up to the {n} samples, got {len(sizes)} "
                         f"units adding up to {sum(sizes)}")
    s = max(sizes)
    size_t = torch.tensor(sizes, device=device)
    unit = torch.repeat_interleave(torch.arange(len(sizes), device=device), size_t)
    start = torch.cumsum(size_t, 0) - size_t
    pos = unit * s + (torch.arange(n, device=device) - start[unit])
    return sizes, pos


def _padded(x: Tensor, pos: Tensor, units: int, s: int) -> Tensor:
    """Tensor[L, n, p] -> Tensor[L, units, s, p]: each unit's samples first, zeros after (a view
    when every unit has s samples)."""
    if units * s == x.shape[1]:
        return x.view(x.shape[0], units, s, x.shape[2])
    out = x.new_zeros(x.shape[0], units * s, x.shape[2])
    out[:, pos] = x
    return out.view(x.shape[0], units, s, x.shape[2])


def _unit_dots(p: Tensor, sums: Tensor) -> Tensor:
    """``R[v, l, i] = x_li · S_lv`` (sample i against unit v's feature sum): Tensor[U, L·U·s] float64.
    p: Tensor[L, U, s, d]; sums: Tensor[L, U, d]."""
    r = p.flatten(1, 2) @ sums.mT  # [L, U·s, U]
    return r.permute(2, 0, 1).reshape(sums.shape[1], -1).double()


def _row_vectors(r: Tensor, wc: Tensor, diag: Tensor, root: Tensor) -> tuple[Tensor, Tensor]:
    """(√w·Kw, √w·(Kw - a)), each Tensor[c, L, U·s], for a chunk of resamples wc [c, U]:
    ``(Kw)_i = Σ_v w_v R[v, :, i]``; diag: Tensor[L, U·s] the Gram diagonal; root: √w per sample."""
    kw = (wc @ r).view(wc.shape[0], diag.shape[0], diag.shape[1])
    ks = kw * root
    return ks, kw.sub_(diag).mul_(root)


def _row_grams(p: Tensor, u: int) -> Tensor:
    """Gram blocks of unit u against units u, u+1, ...: Tensor[U-u, L, s·s], the (u, u) block's
    diagonal zeroed. p: Tensor[L, U, s, d]."""
    layers, units, s, d = p.shape
    k = p[:, u] @ p[:, u:].reshape(layers, (units - u) * s, d).mT  # [L, s, (U-u)·s]
    k = k.view(layers, s, units - u, s)
    k[:, :, 0, :].diagonal(dim1=-2, dim2=-1).zero_()
    return k.permute(2, 0, 1, 3).reshape(units - u, layers, s * s)


def cka_bootstrap_terms(xa: Tensor, xb: Tensor | None = None, *, weights: Tensor,
                        unit_sizes: Sequence[int] | Tensor) -> HSICTerms:
    """HSIC terms of B bootstrap resamples of whole units at once; ``.cka()`` is Tensor[B, La, Lb].

    >>> import torch
    >>> x = torch.randn(2, 60, 5, dtype=torch.float64)
    >>> w = torch.ones(1, 6, dtype=torch.int64)               # every unit once: the sample itself
    >>> t = cka_bootstrap_terms(x, weights=w, unit_sizes=[10] * 6)
    >>> bool(torch.allclose(t.cka()[0], cka_matrix(x)))
    True

    The samples are ``U`` contiguous units (sentences, blocks of tokens) of ``unit_sizes``;
    resample b takes unit u ``weights[b, u]`` times (multinomial counts, or Poisson weights: see
    :mod:`~lamina.engine.kernels.bootstrap`). Each resample's terms are those of the resampled
    data set itself, copies included (so that a copy of sample i next to another copy of i is
    a pair ``i ≠ j`` of the resample), with ``n* = Σ_u w_u·size_u``:

    * ``off = Σ_{i≠j} w_i w_j K_ij L_ij + Σ_i (w_i² - w_i) a_i b_i``, from the unit-pair table
      ``G[u, v] = Σ_{i∈u, j∈v, i≠j} K_ij L_ij`` of every layer pair, built one row of units at a
      time (one batched product per row) and contracted with the weights at once;
    * ``diag = Σ w_i a_i b_i``; ``1ᵀK*1 = Σ_uv w_u w_v S_u·S_v`` (S_u: unit feature sums);
    * ``row = Σ_i w_i (Kw)_i (Lw)_i`` and ``row_off`` likewise with ``(Kw)_i - a_i``, where
      ``(Kw)_i = Σ_v w_v x_i·S_v``.

    Cost about one Gram-form :func:`cka_terms` plus ``B·U²·La·Lb + B·n·(La·Lb + (La+Lb)·U)``;
    units must be contiguous. Features are centred once by the full sample's mean (every
    estimator here is invariant to that shift).

    Args:
        xa: Tensor[La, n, p]; xb: Tensor[Lb, n, q] or None (A with itself).
        weights: Tensor[B, U] of non-negative integers (any dtype).
        unit_sizes: U positive ints adding up to n.
    """
    _check_pair(xa, xb, 2)
    la, n, _ = xa.shape
    dev = xa.device
    sizes, pos = _unit_layout(unit_sizes, n, dev)
    units, s = len(sizes), max(sizes)
    if not isinstance(weights, Tensor) or weights.ndim != 2 or weights.shape[1] != units:
        shape = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise InputError(f"weights must be a tensor [resample, {units} units], got {shape}")
    w = weights.to(device=dev, dtype=torch.float64)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or bool((w != w.round()).any()):
        raise InputError("weights must be non-negative integers (copies of each unit)")
    nb = w.shape[0]
    pa = _padded(_centre(xa), pos, units, s)  # [La, U, s, p]
    pb = pa if xb is None else _padded(_centre(xb), pos, units, s)
    lb = pb.shape[0]
    a = _sq_norm(pa).double()  # [La, U, s]
    b = a if xb is None else _sq_norm(pb).double()
    size_t = torch.tensor(sizes, dtype=torch.float64, device=dev)
    n_star = w @ size_t  # [B]
    w2 = w * w

    # per-unit sums of K_ii L_ii: [U, La, Lb], [U, La], [U, Lb]
    d_ab = torch.einsum("lus,mus->ulm", a, b)
    d_a, d_b = a.square().sum(-1).mT, b.square().sum(-1).mT
    trace_a, trace_b = w @ a.sum(-1).mT, w @ b.sum(-1).mT  # [B, L]
    sa, sb = pa.sum(2), pb.sum(2)  # [L, U, d] unit feature sums
    total_a = torch.einsum("bu,luv,bv->bl", w, (sa @ sa.mT).double(), w)
    total_b = total_a if xb is None else torch.einsum("bu,luv,bv->bl", w, (sb @ sb.mT).double(), w)

    # Σ_{i≠j} w_i w_j K_ij L_ij, one row of units at a time
    off = torch.zeros(nb, la * lb, dtype=torch.float64, device=dev)
    off_a = torch.zeros(nb, la, dtype=torch.float64, device=dev)
    off_b = torch.zeros(nb, lb, dtype=torch.float64, device=dev)
    for u in range(units):
        ga = _row_grams(pa, u)  # [U-u, La, s·s]
        gb = ga if xb is None else _row_grams(pb, u)
        coef = w[:, u:u + 1] * w[:, u:]
        coef[:, 1:] *= 2.0
        ga = ga.double()
        gb = ga if xb is None else gb.double()
        off += coef @ (ga @ gb.mT).flatten(1)
        if xb is not None:
            off_a += coef @ _sq_norm(ga)
            off_b += coef @ _sq_norm(gb)
    off = off.view(nb, la, lb) + ((w2 - w) @ d_ab.flatten(1)).view(nb, la, lb)
    if xb is None:
        off_a = off.diagonal(dim1=-2, dim2=-1).clone()
    else:
        off_a = off_a + (w2 - w) @ d_a
        off_b = off_b + (w2 - w) @ d_b
    if xb is None:
        off_b = off_a

    # row terms: (Kw)_i = Σ_v w_v x_i·S_v, by chunks of resamples; with √w folded into both
    # sides, row = (√w·Kw)(√w·Lw)ᵀ and row_off likewise: two batched products
    ra = _unit_dots(pa, sa)  # [U, La·U·s]
    rb = ra if xb is None else _unit_dots(pb, sb)
    af, bf = a.flatten(1), b.flatten(1)  # [L, U·s]
    unit_of = torch.arange(units, device=dev).repeat_interleave(s)
    f64 = dict(dtype=torch.float64, device=dev)
    row, row_off = torch.empty(nb, la, lb, **f64), torch.empty(nb, la, lb, **f64)
    row_a, row_off_a = torch.empty(nb, la, **f64), torch.empty(nb, la, **f64)
    row_b, row_off_b = torch.empty(nb, lb, **f64), torch.empty(nb, lb, **f64)
    step = max(1, _BUDGET // (2 * (la + (0 if xb is None else lb)) * units * s))
    for c0 in range(0, nb, step):
        wc = w[c0:c0 + step]  # [c, U]
        sl = slice(c0, c0 + wc.shape[0])
        root = wc.sqrt()[:, unit_of][:, None, :]  # [c, 1, U·s]
        ks, ko = _row_vectors(ra, wc, af, root)  # [c, La, U·s]
        if xb is None:
            row[sl], row_off[sl] = ks @ ks.mT, ko @ ko.mT
            row_a[sl], row_off_a[sl] = row[sl].diagonal(dim1=-2, dim2=-1), row_off[sl].diagonal(dim1=-2, dim2=-1)
            continue
        ls, lo = _row_vectors(rb, wc, bf, root)
        row[sl], row_off[sl] = ks @ ls.mT, ko @ lo.mT
        row_a[sl], row_off_a[sl] = _sq_norm(ks), _sq_norm(ko)
        row_b[sl], row_off_b[sl] = _sq_norm(ls), _sq_norm(lo)
    if xb is None:
        row_b, row_off_b = row_a, row_off_a

    diag = (w @ d_ab.flatten(1)).view(nb, la, lb)
    return HSICTerms(n_star, Cross(off, diag, row, row_off),
                     Cross(off_a, w @ d_a, row_a, row_off_a), Cross(off_b, w @ d_b, row_b, row_off_b),
                     total_a, trace_a, total_b, trace_b)
