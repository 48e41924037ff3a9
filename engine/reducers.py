"""Streaming reducers: corpus-scale statistics from captured units, without storing activations.

A reducer turns each work unit's captured device tensors into a small *state* (a dict
of tensors of fixed shapes), and merges two states as if their tokens had been seen in
one pass. The pipeline stores every unit's state in the run (``_partials/NAME/KEY``,
``[unit, ...]``) before marking the unit done, and the runner folds all of them in
unit order at the end, so an interrupted-and-resumed run, or one split over several
ranks, gives the same numbers as one process (bitwise on the CPU).

>>> r = MeanVar("acts/resid")
>>> u = Unit(0, range(0, 2), {"acts/resid": torch.ones(3, 2, 4, 5)}, torch.tensor([4, 2]))
>>> s = r.reduce(u)
>>> s["count"].tolist(), tuple(s["mean"].shape)
(6, (3, 5))
>>> mean, var = r.finish(r.merge(s, r.reduce(u)))
>>> float(mean.max()), float(var.max())
(1.0, 0.0)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

State = dict[str, Tensor]


@dataclasses.dataclass(frozen=True)
class StateSpec:
    """Shape and dtype of one state entry (per unit; the store adds the unit axis)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    dims: tuple[str, ...] = ()


@dataclasses.dataclass
class Unit:
    """One work unit as a reducer sees it.

    index: the unit number; rows: its samples; tensors: {capture name: [layer, batch, (pos,) feature]}
    on the device, pad positions zero; lengths: [batch] real tokens per sample (on the device).
    """

    index: int
    rows: range
    tensors: Mapping[str, Tensor]
    lengths: Tensor

    def real(self, max_len: int) -> Tensor:
        """[batch, pos] bool: the real (non-pad) positions."""
        pos = torch.arange(max_len, device=self.lengths.device)
        return pos[None, :] < self.lengths[:, None]


@runtime_checkable
class Reducer(Protocol):
    """What the pipeline needs from a streaming statistic.

    ``name`` names the state in the run; ``state_specs(widths)`` gives the state's shapes from
    the captures' layer and feature counts ({capture: (n_layers, n_features)}) before the first unit;
    ``reduce`` computes one unit's state on the device; ``merge(a, b)`` returns the state of a's
    tokens followed by b's (associative, deterministic; the fold is always in unit order).
    """

    name: str

    def state_specs(self, widths: Mapping[str, tuple[int, int]]) -> dict[str, StateSpec]: ...

    def reduce(self, unit: Unit) -> State: ...

    def merge(self, a: State, b: State) -> State: ...


@dataclasses.dataclass(frozen=True)
class MeanVar:
    """Per layer and feature: token count, mean and centred sum of squares (Chan et al. merges, float64).

    Works on per-position captures ([layer, batch, pos, feature], real positions only) and on
    one-position captures ([layer, batch, feature]). ``finish`` gives (mean, variance) [layer, feature].
    """

    capture: str
    ddof: int = 0
    name: str = "meanvar"

    def state_specs(self, widths: Mapping[str, tuple[int, int]]) -> dict[str, StateSpec]:
        n_layers, n_features = widths[self.capture]
        return {"count": StateSpec((), torch.int64),
                "mean": StateSpec((n_layers, n_features), torch.float64, ("layer", "feature")),
                "m2": StateSpec((n_layers, n_features), torch.float64, ("layer", "feature"))}

    def reduce(self, unit: Unit) -> State:
        x = unit.tensors[self.capture]
        if x.ndim == 4:  # [layer, batch, pos, feature] -> real tokens only: [layer, token, feature]
            x = x[:, unit.real(x.shape[2])]
        x = x.to(torch.float64)
        mean = x.mean(1)  # [layer, feature]
        m2 = (x - mean[:, None]).square().sum(1)
        return {"count": torch.tensor(x.shape[1], dtype=torch.int64), "mean": mean, "m2": m2}

    def merge(self, a: State, b: State) -> State:
        na, nb = a["count"].to(torch.float64), b["count"].to(torch.float64)
        if int(a["count"]) == 0:
            return b
        if int(b["count"]) == 0:
            return a
        n = na + nb
        d = b["mean"] - a["mean"]
        return {"count": a["count"] + b["count"], "mean": a["mean"] + d * (nb / n),
                "m2": a["m2"] + b["m2"] + d.square() * (na * nb / n)}

    def finish(self, state: State) -> tuple[Tensor, Tensor]:
        """(mean, variance with ``ddof``), each [layer, feature] float64."""
        n = int(state["count"])
        return state["mean"], state["m2"] / max(n - self.ddof, 1)


@dataclasses.dataclass(frozen=True)
class TokenPearson:
    """Pearson r of every feature with a per-token variable x (and the partial r controlling for z),
    streamed: the state is a :class:`~lamina.engine.kernels.correlation.StreamingPearson` state.

    x, z: [sample, pos] per-token values (z optional). ``include``: [sample, pos] bool, the tokens that count
    (default: every real token; e.g. leave out a BOS). ``budget``: float64 elements per update (bounds
    temporaries: a unit is folded in slices of budget / (layers·features) tokens).
    """

    capture: str
    x: Tensor
    z: Tensor | None = None
    name: str = "pearson"
    budget: int = 1 << 25
    include: Tensor | None = None

    def state_specs(self, widths: Mapping[str, tuple[int, int]]) -> dict[str, StateSpec]:
        n_layers, n_features = widths[self.capture]
        per = StateSpec((n_layers, n_features), torch.float64, ("layer", "feature"))
        scalar = StateSpec((), torch.float64)
        names = ["x"] + (["z"] if self.z is not None else [])
        out = {"count": StateSpec((), torch.int64), "c_ax": per}
        out.update({f"{s}_act": per for s in ("mean", "m2", "min", "max")})
        out.update({f"{s}_{v}": scalar for v in names for s in ("mean", "m2", "min", "max")})
        if self.z is not None:
            out.update({"c_az": per, "c_xz": scalar})
        return out

    def reduce(self, unit: Unit) -> State:
        from .kernels.correlation import StreamingPearson

        acts = unit.tensors[self.capture]  # [layer, batch, pos, feature]
        real = unit.real(acts.shape[2])  # [batch, pos]
        if self.include is not None:
            real = real & self.include[unit.rows.start:unit.rows.stop].to(real.device)
        flat = acts[:, real]  # [layer, token, feature]
        x = self.x[unit.rows.start:unit.rows.stop].to(real.device)[real]  # [token]
        z = None if self.z is None else self.z[unit.rows.start:unit.rows.stop].to(real.device)[real]
        step = max(1, self.budget // max(flat.shape[0] * flat.shape[2], 1))
        sp = StreamingPearson()
        for a in range(0, flat.shape[1], step):
            sp.update(flat[:, a:a + step], x[a:a + step], None if z is None else z[a:a + step])
        return sp.state_dict()

    def merge(self, a: State, b: State) -> State:
        from .kernels.correlation import StreamingPearson

        return StreamingPearson.from_state_dict(a).merge(StreamingPearson.from_state_dict(b)).state_dict()


@dataclasses.dataclass(frozen=True)
class GroupHistogram:
    """Counts of one layer's values (all features pooled) per token group, on uniform bins.

    groups: [sample, pos] int group index of each token (tokens outside every group: -1);
    state ``counts`` [group, bin] int64, NumPy's edge rule (:func:`uniform_histogram`).
    """

    capture: str
    layer: int
    groups: Tensor
    n_groups: int
    bins: int
    lo: float
    hi: float
    name: str = "group_histogram"

    def state_specs(self, widths: Mapping[str, tuple[int, int]]) -> dict[str, StateSpec]:
        return {"counts": StateSpec((self.n_groups, self.bins), torch.int64, ("group", "bin"))}

    def reduce(self, unit: Unit) -> State:
        from .kernels.histogram import uniform_histogram

        acts = unit.tensors[self.capture][self.layer]  # [batch, pos, feature]
        g = self.groups[unit.rows.start:unit.rows.stop].to(acts.device)  # [batch, pos]
        g = torch.where(unit.real(acts.shape[1]), g, -1)  # pad positions belong to no group
        rows = [uniform_histogram(acts[g == k].reshape(-1), bins=self.bins, lo=self.lo, hi=self.hi)
                for k in range(self.n_groups)]
        return {"counts": torch.stack(rows)}

    def merge(self, a: State, b: State) -> State:
        return {"counts": a["counts"] + b["counts"].to(a["counts"].device)}
