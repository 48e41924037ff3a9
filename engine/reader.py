"""Reading a run back: provenance, arrays by name, labels, progress, and xarray views.

>>> run = open_run("runs/rsa-gpt2-large")          # doctest: +SKIP
>>> run.status, run.dims("results/selectivity")     # doctest: +SKIP
('complete', ('component', 'layer'))
>>> run.labels("results/selectivity", "component")  # doctest: +SKIP
['Q', 'K', 'V']
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import zarr

from . import destination as dst
from .errors import InputError, RunNotFoundError


class Run:
    """Read side of a run (complete or not): named arrays, their dims and labels, provenance."""

    def __init__(self, url: str | os.PathLike):
        self.url = str(url)
        dst.check_url(self.url, allow_memory=True, write=False)
        attrs = dst.read_attrs(self.url)
        if attrs is None:
            hint = ""
            if dst.is_local(self.url) and os.path.exists(dst.sibling(self.url, "old")):
                hint = "; an interrupted --overwrite left the previous run beside it: run the same command again"
            raise RunNotFoundError(f"{self.url!r} is not a lamina run (no Zarr group there){hint}; give the --out "
                                   "of a run")
        if not dst.is_run(attrs):
            raise RunNotFoundError(f"{self.url!r} is a Zarr group that lamina did not write")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # consolidated metadata is not in the v3 spec yet; zarr says so
            self.group = zarr.open_group(self.url, mode="r")

    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs)

    @property
    def experiment(self) -> str:
        return str(self.attrs.get("experiment", "?"))

    @property
    def status(self) -> str:
        return str(self.attrs.get("status", "unknown"))

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def folder(self) -> str:
        """Where figures and the report of this run go (a local path or a URL)."""
        return str(dst.local_path(self.url)) if dst.is_local(self.url) else self.url

    def arrays(self, *, hidden: bool = False) -> list[str]:
        """All array paths, e.g. ['acts/target', 'results/cosine_hist', ...] (``_progress`` etc. hidden)."""
        with warnings.catch_warnings():  # our lock file is not a Zarr node; zarr says so
            warnings.simplefilter("ignore")
            members = list(self.group.members(max_depth=None))
        return sorted(p for p, node in members if isinstance(node, zarr.Array) and (hidden or not p.startswith("_")))

    def __getitem__(self, name: str) -> zarr.Array:
        return self.group[name]

    def __contains__(self, name: str) -> bool:
        return name in self.group

    def numpy(self, name: str) -> np.ndarray:
        return np.asarray(self.group[name][...])

    def dims(self, name: str) -> tuple[str, ...]:
        return tuple(self.group[name].metadata.dimension_names or ())

    def labels(self, name: str, dim: str) -> list:
        """The coordinate of ``dim`` beside array ``name`` (e.g. roles, blocks, layers), as a list."""
        group = name.rsplit("/", 1)[0] + "/" if "/" in name else ""
        if f"{group}{dim}" in self.group:
            return self.numpy(f"{group}{dim}").tolist()
        legacy = self.group[name].attrs.get(dim)  # runs written before coordinates existed
        if legacy is not None:
            return list(legacy)
        return list(range(self.group[name].shape[self.dims(name).index(dim)]))

    def progress(self) -> dict[str, tuple[int, int]]:
        """{phase: (units done, units total)}, e.g. to see how far an interrupted run got."""
        if "_progress" not in self.group:
            return {}
        out = {}
        for name, arr in self.group["_progress"].arrays():
            done = np.asarray(arr[...])
            out[name] = (int(done.sum()), int(done.size))
        return out

    def dataset(self, group: str = "results"):
        """The arrays of one subgroup as a lazy, dask-backed ``xarray.Dataset`` with coordinates."""
        xr = _xarray()
        groups = sorted(n for n, node in self.group.groups() if not n.startswith("_"))
        if group not in groups:
            raise InputError(f"run {self.url!r} has no group {group!r}; its groups: {', '.join(groups)}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return xr.open_zarr(self.url, group=group, consolidated=None, zarr_format=3)

    def datatree(self):
        """The whole run as an ``xarray.DataTree`` (``xarray.open_datatree(url, engine="zarr")``)."""
        return _xarray().open_datatree(self.url, engine="zarr")


def _xarray():
    try:
        import xarray as xr
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading runs with xarray needs xarray and dask: pip install 'lamina[xarray]'") from e
    return xr


def open_run(url: str | os.PathLike) -> Run:
    """The run at ``url`` (a folder or an fsspec URL), for reading.

    >>> run = open_run("runs/qkv-gpt2")                       # doctest: +SKIP
    >>> run.numpy("results/cosine_hist").shape                 # doctest: +SKIP
    (2, 12, 6, 100)
    """
    return Run(url)
