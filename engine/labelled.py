"""Labelled arrays: data with dimension names, coordinates and attributes, as a run stores them.

What an analysis' ``compute`` returns and what the store writes: every dimension a
reader selects by (role, block, component, class, layer, bins ...) gets a coordinate
variable beside the array, so ``xarray.open_datatree(run, engine="zarr")`` can do
``.sel(role="target", block="QQ")``. Attributes follow the CF conventions'
``long_name`` / ``units``; bins carry their centres as the coordinate and the edges
as a ``{dim}_bounds`` variable ``[dim, nv=2]``.

>>> h = Labelled(np.zeros((2, 3)), ("role", "bin"), coords={"role": ["target", "nontarget"]},
...              attrs={"long_name": "counts"})
>>> h.dims, h.shape
(('role', 'bin'), (2, 3))
>>> c = bins_coord(np.linspace(-1, 1, 5), long_name="cosine")
>>> c.values.tolist(), c.bounds.shape
([-0.75, -0.25, 0.25, 0.75], (4, 2))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Coord:
    """One coordinate variable: labels (strings) or numbers along a dimension, with CF attributes.

    ``bounds`` ([dim, 2]) are the cell edges of binned coordinates (written as ``{dim}_bounds``).
    """

    values: np.ndarray
    attrs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    bounds: np.ndarray | None = None

    @classmethod
    def of(cls, values: Any, **attrs: Any) -> Coord:
        if isinstance(values, Coord):
            return values
        arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values)
        if arr.dtype.kind in "UO":
            arr = arr.astype(str).astype(object)
        return cls(arr, attrs)


def bins_coord(edges: np.ndarray, **attrs: Any) -> Coord:
    """Bin centres as the coordinate, edges as bounds ([bin, 2]), from ``edges`` [bin + 1]."""
    edges = np.asarray(edges, dtype=np.float64)
    bounds = np.stack([edges[:-1], edges[1:]], axis=1)
    return Coord((edges[:-1] + edges[1:]) / 2, attrs, bounds)


@dataclasses.dataclass(frozen=True)
class Labelled:
    """``data`` (NumPy array or torch tensor) with ``dims``, coordinates per dim, and attributes."""

    data: Any
    dims: tuple[str, ...]
    coords: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    attrs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        shape = tuple(self.data.shape)
        if len(shape) != len(self.dims):
            raise ValueError(f"{len(self.dims)} dimension names {self.dims} for data of shape {shape}")
        for dim in self.coords:
            if dim not in self.dims:
                raise ValueError(f"coordinate {dim!r} is not one of the dimensions {self.dims}")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def numpy(self) -> np.ndarray:
        d = self.data
        if hasattr(d, "detach"):
            d = d.detach().cpu().numpy()
        return np.asarray(d)

    def coord_items(self) -> list[tuple[str, Coord]]:
        """(dim, Coord) for every labelled dim, checked against the data's shape."""
        out = []
        for dim, values in self.coords.items():
            c = Coord.of(values)
            n = self.shape[self.dims.index(dim)]
            if len(c.values) != n:
                raise ValueError(f"coordinate {dim!r} has {len(c.values)} labels for a dimension of size {n}")
            out.append((dim, c))
        return out


def index_coord(n: int, **attrs: Any) -> Coord:
    """0..n-1 as an int64 coordinate (layers, states)."""
    return Coord(np.arange(n, dtype=np.int64), attrs)


def labels(values: Sequence[str], **attrs: Any) -> Coord:
    return Coord.of(list(values), **attrs)
