"""Pure compute of ``lamina similarity``: CKA of every layer of A with every layer of B, streamed over token blocks.

>>> import torch
>>> acc = Accumulator("moments", batch_size=32, permutations=19, seed=0)
>>> x = torch.randn(2, 128, 6, dtype=torch.float64)
>>> acc.add(x, 2 * x[[1, 0]])
>>> out = acc.finish(resamples=50)
>>> round(float(out["cka"][0, 1]), 6), float(out["p_fwer"][0, 1]), tuple(out["interval"].shape)
(1.0, 0.05, (2, 2, 2))

Blocks of tokens come in order (A [La, t, p] and B [Lb, t, q], the same tokens). Two things are accumulated:

* the main state: exact moments (:func:`~lamina.engine.kernels.cka_streaming.moment_state`, merged in order:
  the full-batch biased and debiased CKA) or, for wide models, minibatch sums (:mod:`lamina.analyses.cka.compute`);
* per minibatch of ``batch_size`` consecutive tokens (cut across blocks, so independent of them), Song's
  unbiased HSIC of every layer pair and of every layer with itself, and the same cross HSIC with B's tokens
  permuted (``permutations`` permutations per minibatch, seeded by (seed, minibatch)). Their sums give Nguyen et
  al.'s minibatch CKA, its permutation null (max-statistic corrected over all pairs) and, with Poisson(1)
  weights per minibatch (:func:`~lamina.engine.kernels.bootstrap.poisson_weights`), its bootstrap replicates.

Per minibatch also the mutual 10-NN alignment of every layer pair (:func:`~lamina.engine.kernels.knn.mutual_knn`,
neighbours among the minibatch's tokens), averaged over the minibatches.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lamina.engine.kernels.bootstrap import maxstat_pvalues, percentile_interval, permutation_pvalues, poisson_weights
from lamina.engine.kernels.bootstrap import permutations as draw_permutations
from lamina.engine.kernels.cka_inference import cka_permutation_terms
from lamina.engine.kernels.cka_streaming import merge_moment_states, moment_state
from lamina.engine.kernels.knn import mutual_knn

from ..cka.compute import _ratio, add_states, finish, minibatch_sums


def estimator(la: int, p: int, lb: int, q: int, choice: str = "auto", limit: int = 64 << 20) -> str:
    """"moments" while the exact state's ``8·La·p·Lb·q`` bytes fit ``limit`` (or as chosen), else "minibatch".

    >>> estimator(3, 64, 3, 64), estimator(30, 576, 30, 576)
    ('moments', 'minibatch')
    """
    if choice != "auto":
        return choice
    return "moments" if 8 * la * p * lb * q <= limit else "minibatch"


class Accumulator:
    """The streamed state of one comparison (see the module docstring); :meth:`add` blocks, then :meth:`finish`."""

    def __init__(self, kind: str, *, batch_size: int, permutations: int, seed: int):
        self.kind, self.batch_size, self.n_perm, self.seed = kind, batch_size, permutations, seed
        self.main = None
        self.pending: tuple[Tensor, Tensor] | None = None  # tokens not yet in a minibatch
        self.per_batch: list[tuple[Tensor, Tensor, Tensor]] = []  # (u_ab, u_a, u_b) of every minibatch
        self.null_ab: Tensor | None = None  # [P, La, Lb] Σ over minibatches of the permuted cross HSIC
        self.tokens = 0
        self.knn: Tensor | None = None  # [La, Lb] Σ over minibatches of the mutual k-NN alignment
        self.k = 10

    def add(self, xa: Tensor, xb: Tensor) -> None:
        if xa.shape[1] == 0:
            return
        self.tokens += xa.shape[1]
        if self.kind == "moments":
            s = moment_state(xa, xb)
            self.main = s if self.main is None else merge_moment_states(self.main, s)
        if self.pending is not None:
            xa, xb = torch.cat([self.pending[0], xa], 1), torch.cat([self.pending[1], xb], 1)
        m = self.batch_size
        k = xa.shape[1] // m
        for i in range(k):
            self._minibatch(xa[:, i * m:(i + 1) * m], xb[:, i * m:(i + 1) * m])
        self.pending = (xa[:, k * m:], xb[:, k * m:]) if xa.shape[1] > k * m else None

    def _minibatch(self, xa: Tensor, xb: Tensor) -> None:
        s = minibatch_sums(xa, xb, batch_size=xa.shape[1])
        if self.kind == "minibatch":
            self.main = s if self.main is None else add_states(self.main, s)
        self.per_batch.append((s["u_ab"], s["u_a"], s["u_b"]))
        if xa.shape[1] > self.k:
            knn = mutual_knn(xa, xb, k=self.k)
            self.knn = knn if self.knn is None else self.knn + knn
        if self.n_perm:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + len(self.per_batch))
            perms = draw_permutations(xa.shape[1], self.n_perm, generator=g).to(xa.device)
            ab = cka_permutation_terms(xa, xb, permutations=perms).hsic(debiased=True)[0]
            self.null_ab = ab if self.null_ab is None else self.null_ab + ab

    def finish(self, *, resamples: int, level: float = 0.95) -> dict[str, Tensor]:
        """``cka``, ``cka_debiased`` (main), ``minibatch`` [La, Lb], ``interval`` [2, La, Lb] (NaN with fewer than 2
        minibatches), ``p``, ``p_fwer`` [La, Lb] (NaN without permutations); all float64. A layer without variance
        (every token the same vector) has NaN in every row / column: its CKA is undefined (0 / 0)."""
        from lamina.engine.errors import InputError

        if not self.per_batch:
            raise InputError(f"only {self.tokens} sample tokens: fewer than one minibatch of {self.batch_size}; give "
                             "a smaller --batch-size")
        cka, cka_u = finish(self.main, self.kind)
        u_ab, u_a, u_b = (torch.stack(t) for t in zip(*self.per_batch))  # [M, ...]
        mini = _ratio(u_ab.sum(0), u_a.sum(0), u_b.sum(0))
        nan = torch.full_like(mini, float("nan"))
        out = {"cka": cka, "cka_debiased": cka_u, "minibatch": mini, "interval": torch.stack([nan, nan]),
               "p": nan, "p_fwer": nan, "mutual_knn": nan if self.knn is None else self.knn / len(self.per_batch)}
        if self.knn is not None:  # a constant layer (CKA undefined: NaN) has no neighbours (every distance ties)
            flat = torch.isnan(cka).all(1)[:, None] | torch.isnan(cka).all(0)[None, :]
            out["mutual_knn"] = torch.where(flat, torch.nan, out["mutual_knn"])
        m = u_ab.shape[0]
        if m >= 2 and resamples:
            w = poisson_weights(self.seed, range(m), resamples).to(device=u_ab.device, dtype=torch.float64)
            rab = (w @ u_ab.flatten(1)).view(resamples, *mini.shape)
            ra, rb = w @ u_a, w @ u_b
            den = ra[:, :, None] * rb[:, None, :]
            reps = torch.where(den > 0, rab / den.clamp_min(1e-300).sqrt(), torch.nan)
            out["interval"] = percentile_interval(reps, level)
        if self.null_ab is not None:
            null = self.null_ab / torch.sqrt((u_a.sum(0)[:, None] * u_b.sum(0)[None, :]).clamp_min(1e-300))
            null = torch.where(torch.isnan(mini)[None], torch.nan, null)
            out["p"], out["p_fwer"] = permutation_pvalues(mini, null), maxstat_pvalues(mini, null)
        return out


def labelled(out: dict[str, Tensor], layers_a, layers_b, attrs: dict, level: float) -> dict:
    """{path: Labelled} of everything :meth:`Accumulator.finish` gave, with layer and relative-depth coordinates."""
    from lamina.engine.labelled import Coord, Labelled

    from ..cka.compute import matrix_results
    from .schema import CKA, DIMS, INTERVAL, INTERVAL_DIMS, MINIBATCH, MUTUAL_KNN, P_FWER, P_VALUE

    res = matrix_results(out["cka"], out["cka_debiased"], layers_a, layers_b, attrs, exclude_self=False)
    coords = dict(res[CKA].coords)
    common = {"coordinates": "depth_a depth_b", "estimator": "minibatch", "batch_size": attrs.get("minibatch_size")}
    grid = dict(dims=DIMS, coords=coords)
    bound = Coord.of(["lo", "hi"], long_name=f"{level:g} percentile interval bound")
    res.update({
        MINIBATCH: Labelled(out["minibatch"].cpu().numpy(), **grid,
                                   attrs={**common, "long_name": "minibatch CKA, unbiased HSIC (Nguyen et al. 2021)"}),
        INTERVAL: Labelled(out["interval"].cpu().numpy(), INTERVAL_DIMS, {**coords, "bound": bound},
                                  {**common, "level": level, "resampled": "minibatches (Poisson(1) weights)",
                                   "long_name": "bootstrap percentile interval of the minibatch CKA"}),
        P_VALUE: Labelled(out["p"].cpu().numpy(), **grid,
                                 attrs={**common, "long_name": "permutation p-value of the minibatch CKA (per pair)"}),
        P_FWER: Labelled(out["p_fwer"].cpu().numpy(), **grid,
                                attrs={**common, "long_name": "permutation p-value, step-down max-statistic corrected "
                                                              "over all layer pairs"}),
        MUTUAL_KNN: Labelled(out["mutual_knn"].cpu().numpy(), **grid,
                             attrs={**common, "k": 10, "long_name": "mutual 10-NN alignment (Huh et al. 2024), mean "
                                                                    "over minibatches (neighbours within each)"}),
    })
    return res
