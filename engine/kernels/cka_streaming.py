"""Linear CKA of every layer pair streamed unit by unit: exact merged moments, or minibatches.

>>> import torch
>>> from lamina.engine.kernels.cka import cka_matrix
>>> x = torch.randn(2, 300, 4, dtype=torch.float64)                  # (layer, sample, feature)
>>> s = merge_moment_states(moment_state(x[:, :100]), moment_state(x[:, 100:]))
>>> bool(torch.allclose(moment_terms(s).cka_debiased(), cka_matrix(x, debiased=True), atol=1e-12))
True

Definitions in docs/analyses.md, "Similarity and inference (kernels)"; the terms and the finished
CKA are :class:`~lamina.engine.kernels.cka.HSICTerms`. States are dicts of tensors (the
pipeline's per-unit reducer states), folded in unit order.

* :func:`moment_state` / :func:`merge_moment_states` / :func:`moment_terms`: exact. A unit's
  state is its count, means and centred cross moments (``Σ(x-x̄)(y-ȳ)ᵀ`` per layer pair, plus
  ``Σ a_i b_i`` and two first-order corrections for the debiased form); states merge with the
  pairwise update of Chan et al. (1979) extended to these moments. The finished CKA, biased AND
  debiased, equals the full-batch value to float64 rounding however the samples are cut into
  units or ranks. Memory does not grow with n but is ``8·La·Lb·p·q`` bytes.
* :func:`minibatch_state` / :func:`merge_minibatch_states` / :func:`minibatch_cka`: the
  minibatch CKA of Nguyen et al. (2021): every unit is cut into minibatches of ``batch_size``
  consecutive samples, HSIC_u of every minibatch, summed; CKA from the sums. The state is
  ``La·Lb + La + Lb`` numbers per unit; per-unit states folded in unit order are bitwise the
  same whoever computed each unit, and when.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lamina.engine.errors import InputError
from lamina.engine.kernels import cka as core
from lamina.engine.kernels.cka import HSICTerms, _centre, _centred_terms, _check_pair, _gram_sums, _ratio

__all__ = [
    "moment_state",
    "merge_moment_states",
    "moment_terms",
    "minibatch_state",
    "merge_minibatch_states",
    "minibatch_cka",
]

State = dict[str, Tensor]


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
    >>> from lamina.engine.kernels.cka import cka_matrix
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
    equal :func:`~lamina.engine.kernels.cka.cka_matrix` of the concatenated samples up to
    float64 rounding.

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
    per = max(1, core._BUDGET // width)  # minibatches per batched product

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
