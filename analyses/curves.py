"""Per-layer curves: what ``lamina compare`` overlays, and the helpers the analyses' curve modules share.

An analysis' ``curves`` (``Analysis.curves``, e.g. :func:`lamina.analyses.qkv.curves.curves`) maps a
complete run ALONE to ``{name: Labelled}``: each curve has one depth dimension (``layer``, or
``state`` for hidden states) as its LAST dimension, and any number of label dimensions before it
(role, block, component, class ...). Attributes say how to show it:

- ``long_name`` (required): what the value is, e.g. "share of |cosine| >= 0.9";
- ``finding``: what the lecture found for this curve (goes into the comparison report's captions);
- ``plot``: ``"line"`` (default; one panel per label combination, one line per run) or ``"heatmap"``
  (the curve is [depth, bin]: side-by-side heatmaps, one per run, on one colour scale; the bin
  coordinate is ``coords[bin dim]`` with ``attrs["bounds"]`` the [bin, 2] edges);
- ``reference``: a y value drawn dashed (e.g. SI = 1); ``scale``: ``"log"`` to force a log y axis.

>>> c = curve(np.zeros((2, 4)), ("role", "layer"), {"role": ["target", "nontarget"]}, long_name="share")
>>> depth_dim(c), relative_depth(4).tolist()
('layer', [0.0, 0.3333333333333333, 0.6666666666666666, 1.0])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lamina.engine.labelled import Coord, Labelled, index_coord

DEPTH_DIMS = ("layer", "state")


def curve(data: np.ndarray, dims: Sequence[str], coords: Mapping[str, Any], *, long_name: str,
          finding: str = "", **attrs: Any) -> Labelled:
    """A curve: ``data`` with ``dims`` (depth last), label coordinates, and its display attributes.

    The depth coordinate (0..n-1) is added when ``coords`` lacks it."""
    dims = tuple(dims)
    if dims[-1] not in DEPTH_DIMS:
        raise ValueError(f"a curve's last dimension must be one of {DEPTH_DIMS}, got {dims}")
    coords = dict(coords)
    coords.setdefault(dims[-1], index_coord(np.shape(data)[-1], long_name="block" if dims[-1] == "layer"
                                            else "hidden state"))
    return Labelled(np.asarray(data, dtype=np.float64), dims, coords,
                    {"long_name": long_name, "finding": finding, **attrs})


def depth_dim(c: Labelled) -> str:
    """The curve's depth dimension (``layer`` or ``state``): the last one, or the first of a heatmap."""
    found = [d for d in c.dims if d in DEPTH_DIMS]
    if len(found) != 1:
        raise ValueError(f"a curve has exactly one depth dimension of {DEPTH_DIMS}; got dims {c.dims}")
    return found[0]


def is_heatmap(c: Labelled) -> bool:
    return c.attrs.get("plot") == "heatmap"


def relative_depth(n: int) -> np.ndarray:
    """0..1 in ``n`` equal steps: block / (n_blocks - 1) (a single block sits at 0).

    >>> relative_depth(1).tolist(), relative_depth(3).tolist()
    ([0.0], [0.0, 0.5, 1.0])
    """
    return np.arange(n, dtype=np.float64) / max(n - 1, 1)


def on_model_depth(run: Any, curves: Mapping[str, Labelled]) -> dict[str, Labelled]:
    """``curves`` of ``run`` with their depth coordinate set to the model's numbers of what the run analysed
    (``--layers``: the run's ``layers``; punct's states: 0 and 1 + each block) and ``depth_of``: the model's
    count (``model.n_layers`` blocks, one more state), so :func:`depth_x` places a subset at its true depth."""
    attrs = run.attrs
    model = attrs.get("model") if isinstance(attrs.get("model"), Mapping) else {}
    n_blocks = model.get("n_layers")
    out = {}
    for name, c in curves.items():
        d = depth_dim(c)
        n = c.shape[c.dims.index(d)]
        blocks = list(attrs.get("layers") or range(n_blocks or n))
        numbers, total = (blocks, n_blocks) if d == "layer" else ([0, *(b + 1 for b in blocks)], (n_blocks or n) + 1)
        if not n_blocks or len(numbers) != n:  # a run without these facts: its own positions
            numbers, total = list(range(n)), n
        coord = Coord(np.asarray(numbers, dtype=np.int64), {"long_name": "block" if d == "layer" else "hidden state"})
        out[name] = Labelled(c.data, c.dims, {**c.coords, d: coord}, {**c.attrs, "depth_of": int(total)})
    return out


def depth_x(c: Labelled, n: int) -> np.ndarray:
    """Relative depth of the ``n`` points of ``c``'s depth series: number / (the model's count - 1) when
    :func:`on_model_depth` set ``depth_of``, else :func:`relative_depth` (n)."""
    total = c.attrs.get("depth_of")
    d = depth_dim(c)
    if total is None or d not in c.coords:
        return relative_depth(n)
    return Coord.of(c.coords[d]).values.astype(np.float64) / max(int(total) - 1, 1)


def nan_mean_rows(a: np.ndarray) -> np.ndarray:
    """Mean of each row's finite values over the last axis (NaN for a row with none), without warnings."""
    finite = np.isfinite(a)
    count = finite.sum(-1)
    total = np.where(finite, a, 0.0).sum(-1)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


def nan_sd_rows(a: np.ndarray) -> np.ndarray:
    """Standard deviation (ddof 0) of each row's finite values over the last axis (NaN for none)."""
    finite = np.isfinite(a)
    mean = nan_mean_rows(a)
    dev = np.where(finite, a - mean[..., None], 0.0)
    count = finite.sum(-1)
    var = np.divide((dev ** 2).sum(-1), count, out=np.full(count.shape, np.nan), where=count > 0)
    return np.sqrt(var)


def heatmap(data: np.ndarray, depth: str, bin_dim: str, centres: np.ndarray, bounds: np.ndarray, *,
            long_name: str, xlabel: str, finding: str = "", **attrs: Any) -> Labelled:
    """A [depth, bin] curve drawn as side-by-side heatmaps by ``lamina compare``."""
    coords = {depth: index_coord(np.shape(data)[0]), bin_dim: np.asarray(centres, dtype=np.float64)}
    return Labelled(np.asarray(data, dtype=np.float64), (depth, bin_dim), coords,
                    {"long_name": long_name, "finding": finding, "plot": "heatmap", "xlabel": xlabel,
                     "bounds": np.asarray(bounds, dtype=np.float64).tolist(), **attrs})
