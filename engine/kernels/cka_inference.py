"""Linear CKA under resampling: a permutation null and the bootstrap over units, for every layer pair.

>>> import torch
>>> from lamina.engine.kernels.bootstrap import interval, resample_counts
>>> x = torch.randn(2, 80, 6, dtype=torch.float64)                   # (layer, sample, feature)
>>> t = cka_bootstrap_terms(x, x + 0.5 * torch.randn_like(x), unit_sizes=[10] * 8,
...                         weights=resample_counts(8, 200, generator=torch.Generator().manual_seed(0)))
>>> interval(t.cka()[0], t.cka()).shape                                # (bound, layer_a, layer_b)
torch.Size([3, 2, 2])

Definitions in docs/analyses.md, "Similarity and inference (kernels)". Both kernels return
:class:`~lamina.engine.kernels.cka.HSICTerms` with a leading axis (permutation or resample), so
``.cka()`` and ``.cka_debiased()`` give Tensor[P or B, La, Lb]; the resamples, permutations,
intervals and p-value corrections are in :mod:`~lamina.engine.kernels.bootstrap`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lamina.engine.errors import InputError
from lamina.engine.kernels import cka as core
from lamina.engine.kernels.bootstrap import maxstat_pvalues, permutation_pvalues
from lamina.engine.kernels.cka import Cross, HSICTerms, _centre, _centred_terms, _check_pair, _gram_block, _sq_norm

__all__ = ["cka_permutation_terms", "cka_permutation_test", "cka_bootstrap_terms"]


# --------------------------------------------------------------------------- permutation null


def cka_permutation_terms(xa: Tensor, xb: Tensor | None = None, *, permutations: Tensor) -> HSICTerms:
    """HSIC terms of A against B with B's samples reordered by each permutation (a null in which
    the sample correspondence is broken); ``.cka()`` is Tensor[P, La, Lb].

    >>> import torch
    >>> from lamina.engine.kernels.cka import cka_matrix
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
    step = max(1, core._BUDGET // (lb * n * n))
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
        xa, xb: as :func:`~lamina.engine.kernels.cka.cka_terms`.
        permutations: Tensor[P, n] (:func:`~lamina.engine.kernels.bootstrap.permutations`).
        debiased: test the debiased CKA instead.
    """
    if not isinstance(permutations, Tensor) or permutations.ndim != 2:
        got = getattr(permutations, "shape", None)
        raise InputError(f"permutations must be a tensor [permutation, sample], got {got}")
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
    >>> from lamina.engine.kernels.cka import cka_matrix
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

    Cost about one Gram-form :func:`~lamina.engine.kernels.cka.cka_terms` plus ``B·U²·La·Lb + B·n·(La·Lb + (La+Lb)·U)``;
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
    step = max(1, core._BUDGET // (2 * (la + (0 if xb is None else lb)) * units * s))
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
