"""Every hook point of a model: its shape per token position and whether the capture fast path serves it.

``lamina hooks MODEL`` and :func:`lamina.hooks` print / return this table. Shapes come from one tiny
forward (:func:`lamina.engine.model_probe.hook_shapes`; on the meta device nothing is computed), the
fast-path column from the same resolution :func:`lamina.engine.fastpath.fast_route` does per capture.

>>> table = hook_catalog(lamina.load_model("gpt2", weights="random", device="meta"))      # doctest: +SKIP
>>> table["blocks.0.attn.hook_q"]                                                         # doctest: +SKIP
HookInfo(name='blocks.0.attn.hook_q', shape=(12, 64), per_position=True, fast=True)
"""

from __future__ import annotations

import dataclasses

from .capture import _probe_length
from .fastpath import _bridge_is_plain, enabled, hook_points, twin
from .model_probe import hook_shapes


@dataclasses.dataclass(frozen=True)
class HookInfo:
    """One hook point. ``shape``: per token position (e.g. ``(768,)``, ``(12, 64)`` for [head, d_head]) when
    ``per_position``, else the whole tensor for a 1-text probe (attention patterns: [1, head, pos, pos]).
    ``fast``: served by the bridge-free fast path (else a capture of it runs on the TransformerLens bridge)."""

    name: str
    shape: tuple[int, ...]
    per_position: bool
    fast: bool

    @property
    def capturable(self) -> bool:
        """lamina captures hooks with one value per token position."""
        return self.per_position


def hook_catalog(model) -> dict[str, HookInfo]:
    """{hook name: HookInfo} of every hook point that fires in a forward pass, in the bridge's order."""
    n = _probe_length(model)
    shapes = hook_shapes(model, n_tokens=n)
    points = hook_points(model.bridge)
    tw = twin(model) if enabled() else None
    plain = tw is not None and _bridge_is_plain(model.bridge, tw.bridge_modules)
    out = {}
    for name, shape in shapes.items():
        per_pos = _per_position(shape, n)
        fast = plain and per_pos and name in points and tw.tap(name, points[name]) is not None
        out[name] = HookInfo(name, per_pos if per_pos is not None else shape, per_pos is not None, bool(fast))
    return out


def _per_position(shape: tuple[int, ...], n: int) -> tuple[int, ...] | None:
    """The shape of one position's value, for [1, n, ...] or flattened [(1 n), ...] (OPT's MLP); else None."""
    if len(shape) >= 2 and shape[0] == 1 and shape[1] == n:
        return tuple(shape[2:]) or (1,)
    if len(shape) >= 2 and shape[0] == n:
        return tuple(shape[1:])
    return None


def format_catalog(table: dict[str, HookInfo]) -> str:
    """The table ``lamina hooks`` prints: name, shape per position, path (fast / bridge / not capturable)."""
    width = max([len(n) for n in table] + [4])
    lines = [f"{'hook':<{width}}  {'shape per position':<20} path"]
    for info in table.values():
        shape = "[" + ", ".join(map(str, info.shape)) + "]"
        if not info.per_position:
            path, shape = "not capturable (no value per position)", f"whole {shape}"
        else:
            path = "fast" if info.fast else "bridge"
        lines.append(f"{info.name:<{width}}  {shape:<20} {path}")
    n_fast = sum(i.fast for i in table.values())
    n_pos = sum(i.per_position for i in table.values())
    lines.append(f"{len(table)} hook points: {n_pos} capturable ({n_fast} on the fast path), "
                 f"{len(table) - n_pos} not capturable")
    return "\n".join(lines)


def hooks(model, *, config: str | None = None, revision: str | None = None) -> dict[str, HookInfo]:
    """Every hook point of ``model`` with its shape per token position and whether the fast path serves it.

    ``model``: a model from :func:`lamina.load_model`, or a name/path (then built on the meta device from its
    config, with random weights: shapes and paths do not depend on the weights, and nothing is read or allocated).

    >>> table = lamina.hooks("gpt2")                               # doctest: +SKIP
    >>> table["blocks.0.mlp.hook_pre"].shape, table["blocks.0.mlp.hook_pre"].fast   # doctest: +SKIP
    ((3072,), True)
    """
    from .models import LoadedModel, load_model

    if not isinstance(model, LoadedModel):
        model = load_model(str(model), weights="random", device="meta", config=config, revision=revision)
    return hook_catalog(model)
