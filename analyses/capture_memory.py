"""In-memory captures for :func:`lamina.capture`: hooks keyed exactly as asked, positions, and the three return types.

- an exact name (``"blocks.2.attn.hook_q"``) -> key ``"blocks.2.attn.hook_q"``, ``[sample, (pos,) feature]``;
- a template (``"blocks.{layer}.hook_resid_post"``) -> the template as key, ``[layer, sample, (pos,) feature]``
  with the block numbers as the ``layer`` coordinate;
- ``return_type="xarray"``: one ``xarray.Dataset`` variable per key; the feature dim is ``feature``, or
  ``feature_<width>`` when the hooks differ in width;
- a predicate -> what it picks, grouped as templates (``blocks.{layer}.attn.hook_v`` over the blocks it picked;
  names outside the blocks as themselves).

``pos`` is there for ``positions="all"`` (every position, pads zero) and for several positions per text
(``[[0, 1], [2]]``: ``k`` = the most any text asks, missing ones NaN); features are the hook's value per position
flattened (``hook_q``'s [head, d_head] -> head * d_head).
"""

from __future__ import annotations

import numpy as np
import torch

from lamina.engine.errors import InputError
from lamina.engine.hooks import Capture, HookGroups, HookSpec, normalize_hooks
from lamina.engine.inputs import Selector, TokenBatch
from lamina.engine.positions import per_text

RETURN_TYPES = ("torch", "numpy", "xarray")


def requested(hooks: HookSpec, available, n_layers: int, layers) -> dict[str, HookGroups]:
    """{key as asked: hooks per layer entry}; a template expands over ``layers`` (default every block)."""
    if callable(hooks):  # a filter (as TransformerLens' names_filter): what it picks, grouped by template
        return normalize_hooks(hooks, available, n_layers, layers)  # HookError when it picks nothing
    names = [hooks] if isinstance(hooks, str) else list(hooks)
    if not names:
        raise InputError("lamina.capture(hooks=...): no hooks given; pass a hook name, a '{layer}' template, a "
                         "list of those, or a predicate")
    out: dict[str, HookGroups] = {}
    for name in names:
        if not isinstance(name, str):
            raise InputError(f"lamina.capture(hooks=...): hook names must be strings, got {name!r}")
        out[name] = normalize_hooks(name, available, n_layers, layers)[name] if "{layer}" in name else ((name,),)
    return out


def plan_positions(positions: str, batch: TokenBatch, nested: bool = False) -> tuple[Selector, torch.Tensor | None]:
    """The selector to capture with, and for several positions per text (or ``nested``: a list of lists was given,
    even of one index each) the [sample, k] indices (-1 = none)."""
    chosen = per_text(positions, batch.lengths.tolist())
    if isinstance(chosen, str):
        return (Selector.last() if chosen == "last" else Selector.every()), None
    if not nested and all(len(idx) == 1 for idx in chosen):
        return Selector.at([idx[0] for idx in chosen]), None
    k = max(len(idx) for idx in chosen)
    table = torch.full((len(chosen), k), -1, dtype=torch.long)
    for i, idx in enumerate(chosen):
        table[i, :len(idx)] = torch.tensor(idx)
    return Selector.every(), table


def gather(t: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """[layer, sample, pos, feature] -> [layer, sample, k, feature] at ``table`` [sample, k] (-1 -> NaN)."""
    table = table.to(t.device)
    rows = torch.arange(table.shape[0], device=t.device)[:, None]
    out = t[:, rows, table.clamp(min=0)]
    return out.masked_fill((table < 0)[None, :, :, None], float("nan"))


def finish(arrays: dict[str, torch.Tensor], groups: dict[str, HookGroups], batch: TokenBatch, positions: str,
           table: torch.Tensor | None, return_type: str):
    """Exact names lose their one-entry layer axis; the tensors become the return type asked for."""
    out = {}
    for key, t in arrays.items():
        if table is not None:
            t = gather(t, table)
        out[key] = t if "{layer}" in key else t[0]
    if return_type == "torch":
        return out
    if return_type == "numpy":
        return {k: v.cpu().numpy() for k, v in out.items()}
    return to_dataset(out, groups, batch, positions, table)


def to_dataset(arrays: dict[str, torch.Tensor], groups: dict[str, HookGroups], batch: TokenBatch, positions: str,
               table: torch.Tensor | None):
    """An ``xarray.Dataset``: one variable per key, dims (layer,) sample, (pos,) feature, with coordinates."""
    try:
        import xarray as xr
    except ImportError:
        raise InputError("return_type='xarray' needs xarray: pip install 'lamina[xarray]'") from None
    n = len(batch)
    lengths = batch.lengths.cpu().numpy()
    coords: dict = {"sample": np.arange(n), "length": ("sample", lengths)}
    kept = None
    if positions == "last":
        kept = lengths - 1
    elif table is None and positions != "all":
        kept = np.asarray([idx[0] for idx in per_text(positions, lengths.tolist())])
    if kept is not None:
        coords["position"] = ("sample", kept)
    elif table is not None:
        coords["position"] = (("sample", "pos"), table.numpy())
    data = {}
    widths = {t.shape[-1] for t in arrays.values()}
    layer_sets = {tuple(_blocks(groups[k])) for k in arrays if "{layer}" in k}
    if len(layer_sets) > 1:
        raise InputError("lamina.capture(return_type='xarray'): the templates picked different blocks "
                         f"{sorted(layer_sets)}; one Dataset has one layer axis: capture them separately")
    for key, t in arrays.items():
        has_pos = t.ndim == (4 if "{layer}" in key else 3)
        feature = "feature" if len(widths) == 1 else f"feature_{t.shape[-1]}"  # one Dataset, several widths
        dims = (("layer",) if "{layer}" in key else ()) + ("sample",) + (("pos",) if has_pos else ()) + (feature,)
        var_coords = {}
        if "{layer}" in key:
            var_coords["layer"] = _blocks(groups[key])
        da = xr.DataArray(t.cpu().numpy(), dims=dims, coords=var_coords, name=key,
                          attrs={"hook": key, "hooks": [g[0] for g in groups[key]]})
        data[key] = da
    ds = xr.Dataset(data, coords=coords)
    if positions == "all":
        ds = ds.assign_coords(pos=np.arange(batch.max_len))
    ds.attrs["positions"] = positions
    return ds


def _blocks(groups: HookGroups) -> list[int]:
    return [int(g[0].split(".")[1]) for g in groups]
