"""Pure compute of ``lamina run cka``: the streamed CKA state (a Reducer) and the labelled results.

>>> import torch
>>> x = torch.randn(3, 64, 8, dtype=torch.float64)                   # (layer, token, feature)
>>> s = minibatch_sums(x, batch_size=16)
>>> int(s["batches"]), tuple(finish(s, "minibatch")[1].shape)
(4, (3, 3))

Two states (docs/analyses.md, "cka"), chosen by :func:`estimator` from the size of the exact one:

* ``moments``: :func:`~lamina.engine.kernels.cka_streaming.moment_state` of every unit, merged in
  unit order: the biased AND debiased CKA of all tokens, equal to the full-batch value to float64
  rounding however the tokens are cut into units or ranks. ``8·L²·d²`` bytes per unit.
* ``minibatch``: per unit, the sums over its minibatches of ``batch_size`` consecutive tokens of the
  biased and of Song's unbiased HSIC of every layer pair (Nguyen et al. 2021); ``2·L² + 2·L`` numbers
  per unit. The debiased matrix is Nguyen's minibatch CKA; the biased one is the same ratio of biased
  HSICs (it depends on the batch size: read the debiased one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from lamina.engine.kernels.cka import best_match, cka_terms
from lamina.engine.kernels.cka_streaming import merge_moment_states, moment_state, moment_terms
from lamina.engine.labelled import Coord, Labelled
from lamina.engine.reducers import State, StateSpec, Unit

from .schema import BEST_LAYER, BEST_VALUE, CKA, CKA_DEBIASED, DEPTH_A, DEPTH_B, DIMS, REDUCER

MOMENT_BYTES = 64 << 20  # the exact state is used while one unit's moments stay under 64 MiB


def estimator(n_layers: int, width: int, choice: str = "auto", limit: int = MOMENT_BYTES) -> str:
    """"moments" or "minibatch": ``choice``, or for "auto" the exact moments while ``8·L²·d²`` bytes fit ``limit``.

    >>> estimator(3, 64), estimator(30, 576)
    ('moments', 'minibatch')
    """
    if choice != "auto":
        return choice
    return "moments" if 8 * (n_layers * width) ** 2 <= limit else "minibatch"


def minibatch_sums(xa: Tensor, xb: Tensor | None = None, *, batch_size: int) -> State:
    """Sums over the minibatches of ``batch_size`` consecutive samples of ``xa`` [La, n, p] (and ``xb`` [Lb, n, q];
    None: A with itself) of the biased (``b_*``) and unbiased (``u_*``) HSIC of every layer pair (``*_ab`` [La, Lb])
    and of every layer with itself (``*_a`` [La], ``*_b`` [Lb]); ``batches`` and ``unused`` (the last n % batch_size
    samples) as int64. Float64 sums, in minibatch order."""
    la, n, _ = xa.shape
    lb = la if xb is None else xb.shape[0]
    k = n // batch_size
    f64 = dict(dtype=torch.float64, device=xa.device)
    out = {"batches": torch.tensor(k, dtype=torch.int64, device=xa.device),
           "unused": torch.tensor(n - k * batch_size, dtype=torch.int64, device=xa.device)}
    for kind in ("b", "u"):
        out.update({f"{kind}_ab": torch.zeros(la, lb, **f64), f"{kind}_a": torch.zeros(la, **f64),
                    f"{kind}_b": torch.zeros(lb, **f64)})
    for i in range(k):
        part = slice(i * batch_size, (i + 1) * batch_size)
        terms = cka_terms(xa[:, part], None if xb is None else xb[:, part])
        for kind in ("b", "u"):
            ab, aa, bb = terms.hsic(debiased=kind == "u")
            out[f"{kind}_ab"] += ab
            out[f"{kind}_a"] += aa
            out[f"{kind}_b"] += bb
    return out


def add_states(first: State, second: State) -> State:
    """Two minibatch states summed (in this order: a fold in unit order is bitwise reproducible)."""
    return {k: first[k] + second[k].to(first[k].device) for k in first}


def _ratio(ab: Tensor, aa: Tensor, bb: Tensor) -> Tensor:
    den = aa[:, None] * bb[None, :]
    ok = den > 0
    return torch.where(ok, ab / torch.sqrt(torch.where(ok, den, torch.ones_like(den))), torch.nan)


def finish(state: State, kind: str) -> tuple[Tensor, Tensor]:
    """(CKA, debiased CKA), each [La, Lb] float64, from a merged state of either kind."""
    if kind == "moments":
        terms = moment_terms(state)
        return terms.cka(), terms.cka_debiased()
    if int(state["batches"]) < 1:
        from lamina.engine.errors import InputError

        raise InputError(f"no complete minibatch ({int(state['unused'])} tokens unused): give more tokens per unit "
                         "or a smaller --batch-size")
    return (_ratio(state["b_ab"], state["b_a"], state["b_b"]), _ratio(state["u_ab"], state["u_a"], state["u_b"]))


def moment_specs(n_layers: int, width: int) -> dict[str, StateSpec]:
    """Shapes of :func:`~lamina.engine.kernels.cka_streaming.moment_state` of one model's layers with themselves."""
    f, L, p = torch.float64, n_layers, width
    return {"count": StateSpec((), torch.int64), "mean_a": StateSpec((L, p), f), "sum_a": StateSpec((L,), f),
            "pair_cross": StateSpec((L, p, L, p), f), "pair_diag": StateSpec((L, L), f),
            "pair_u": StateSpec((L, L, p), f), "pair_v": StateSpec((L, L, p), f)}


def minibatch_specs(la: int, lb: int) -> dict[str, StateSpec]:
    f = torch.float64
    out = {"batches": StateSpec((), torch.int64), "unused": StateSpec((), torch.int64)}
    for kind in ("b", "u"):
        out.update({f"{kind}_ab": StateSpec((la, lb), f), f"{kind}_a": StateSpec((la,), f),
                    f"{kind}_b": StateSpec((lb,), f)})
    return out


@dataclasses.dataclass(frozen=True)
class CKAState:
    """The reducer of ``lamina run cka``: one unit's CKA state of every layer pair of ``capture``.

    ``include``: [sample, pos] bool, the tokens that are samples (pads never are); ``kind``: "moments" or
    "minibatch" (:func:`estimator`); ``batch_size``: tokens per minibatch.
    """

    capture: str
    include: Tensor
    kind: str
    batch_size: int = 256
    name: str = REDUCER

    def state_specs(self, widths: Mapping[str, tuple[int, int]]) -> dict[str, StateSpec]:
        n_layers, width = widths[self.capture]
        return moment_specs(n_layers, width) if self.kind == "moments" else minibatch_specs(n_layers, n_layers)

    def tokens(self, unit: Unit) -> Tensor:
        """The unit's sample tokens: [layer, token, feature], in (sample, pos) order."""
        acts = unit.tensors[self.capture]  # [layer, batch, pos, feature]
        keep = unit.real(acts.shape[2]) & self.include[unit.rows.start:unit.rows.stop].to(acts.device)
        return acts[:, keep]

    def reduce(self, unit: Unit) -> State:
        x = self.tokens(unit)
        if self.kind == "moments":
            return moment_state(x)
        return minibatch_sums(x, batch_size=self.batch_size)

    def merge(self, a: State, b: State) -> State:
        return merge_moment_states(a, b) if self.kind == "moments" else add_states(a, b)


def depth(n: int) -> np.ndarray:
    """Relative depth of n layers: layer / (n - 1) (0 for a single layer)."""
    return np.arange(n, dtype=np.float64) / max(n - 1, 1)


def matrix_results(cka: Tensor, cka_u: Tensor, layers_a, layers_b, attrs: Mapping, *,
                   exclude_self: bool, n_blocks: int | None = None) -> dict[str, Labelled]:
    """The labelled matrices, relative-depth coordinates and best matches (of the debiased CKA; ``exclude_self``:
    within one model, a layer's best match is another layer; ``n_blocks``: one model's block count, when the
    layers are a subset of its blocks (``--layers``): depth = block / (n_blocks - 1))."""
    la, lb = len(layers_a), len(layers_b)
    depth_a, depth_b = depth(la), depth(lb)
    if n_blocks is not None:
        depth_a = np.asarray(layers_a, dtype=np.float64) / max(n_blocks - 1, 1)
        depth_b = np.asarray(layers_b, dtype=np.float64) / max(n_blocks - 1, 1)
    coords = {"layer_a": Coord.of(np.asarray(layers_a, dtype=np.int64), long_name="layer of A"),
              "layer_b": Coord.of(np.asarray(layers_b, dtype=np.int64), long_name="layer of B")}
    common = {**attrs, "coordinates": "depth_a depth_b"}
    scored = cka_u.clone()
    if exclude_self:
        scored.fill_diagonal_(float("nan"))
    idx, val = best_match(scored)
    layer_b = np.asarray(layers_b, dtype=np.int64)
    best = np.where(idx.cpu().numpy() >= 0, layer_b[idx.cpu().numpy().clip(0)], -1)
    a_only = {"layer_a": coords["layer_a"]}
    return {
        DEPTH_A: Labelled(depth_a, ("layer_a",), a_only, {"long_name": "relative depth of A's layer"}),
        DEPTH_B: Labelled(depth_b, ("layer_b",), {"layer_b": coords["layer_b"]},
                                 {"long_name": "relative depth of B's layer"}),
        CKA: Labelled(cka.cpu().numpy(), DIMS, coords, {**common, "long_name": "linear CKA"}),
        CKA_DEBIASED: Labelled(cka_u.cpu().numpy(), DIMS, coords,
                                      {**common, "long_name": "linear CKA, unbiased HSIC"}),
        BEST_LAYER: Labelled(best, ("layer_a",), a_only,
                                    {"long_name": "layer of B with the highest debiased CKA"
                                     + (" (itself excluded)" if exclude_self else "")}),
        BEST_VALUE: Labelled(val.cpu().numpy(), ("layer_a",), a_only,
                                    {"long_name": "its debiased CKA"}),
    }
