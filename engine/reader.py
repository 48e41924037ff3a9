"""Reading a run back: provenance, arrays by name, labels, progress, and lazy xarray views.

Everything is read through a store on which a missing chunk is an error
(:class:`~lamina.engine.chunk_store.StrictStore`), never zarr's fill values; the xarray
views are dask-backed on the run's own chunks, so reductions over arrays larger than
memory read chunk by chunk.

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
from .chunk_store import StrictStore, base_store
from .errors import InputError, RunCorruptError, RunNotFoundError
from .manifest import read_manifest, read_metadata


class Run:
    """Read side of a run (complete or not): named arrays, their dims and labels, provenance."""

    def __init__(self, url: str | os.PathLike):
        self.url = dst.check_url(url, allow_memory=True, write=False)
        root = read_metadata(self.url)
        if root.state == "absent":
            hint = ""
            if dst.is_local(self.url) and os.path.exists(dst.sibling(self.url, "old")):
                hint = "; an interrupted --overwrite left the previous run beside it: run the same command again"
            if read_manifest(self.url) is not None:
                raise RunCorruptError(f"{self.url!r} is a damaged lamina run: its root zarr.json is missing; run the "
                                      "same command again to repair it (`lamina verify` lists what else is wrong)")
            raise RunNotFoundError(f"{self.url!r} is not a lamina run (no Zarr group there){hint}; give the --out "
                                   "of a run")
        if root.state == "damaged":
            if read_manifest(self.url) is not None:
                raise RunCorruptError(f"{self.url!r} is a damaged lamina run: its root zarr.json is {root.error}; run "
                                      "the same command again to repair it (`lamina verify` lists what else is wrong)")
            raise RunNotFoundError(f"{self.url!r} holds a Zarr group whose root zarr.json is {root.error}; it is not "
                                   "a run lamina can read")
        if not dst.is_run(root.attrs):
            raise RunNotFoundError(f"{self.url!r} is a Zarr group that lamina did not write")
        self.store = StrictStore(base_store(self.url, read_only=True), self.url)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # consolidated metadata is not in the v3 spec yet; zarr says so
                self.group = zarr.open_group(store=self.store, mode="r")
        except Exception as e:  # noqa: BLE001 - metadata zarr cannot parse is damage, said in one line
            raise RunCorruptError(f"{self.url!r} is damaged: its metadata cannot be read ({type(e).__name__}: "
                                  f"{str(e)[:200]}); `lamina verify {self.url}` lists every problem") from None

    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs)

    def __repr__(self) -> str:
        from .run_view import one_line

        return one_line(self)

    def _repr_html_(self) -> str:
        """Notebooks: provenance, status, a table of the arrays, and the figures inline."""
        from .run_view import page

        return page(self)

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
        try:
            return self.group[name]
        except KeyError:
            arrays = ", ".join(self.arrays())
            raise InputError(f"run {self.url!r} has no array {name!r}; its arrays: {arrays}") from None

    def __contains__(self, name: str) -> bool:
        return name in self.group

    def numpy(self, name: str) -> np.ndarray:
        """The whole array ``name``; a missing chunk is a RunCorruptError, a damaged one zarr's checksum error."""
        return np.asarray(self[name][...])

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
            flags = np.asarray(arr[...])  # "" or a unit's manifest (bools in runs made before manifests)
            done = flags if flags.dtype == bool else np.array([bool(f) for f in flags.tolist()], dtype=bool)
            out[name] = (int(done.sum()), int(done.size))
        return out

    def dataset(self, group: str = "results"):
        """The arrays of one subgroup as a lazy, dask-backed ``xarray.Dataset`` with coordinates (one dask chunk
        per stored chunk)."""
        xr = _xarray()
        groups = sorted(n for n, node in self.group.groups() if not n.startswith("_"))
        if group not in groups:
            raise InputError(f"run {self.url!r} has no group {group!r}; its groups: {', '.join(groups)}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return xr.open_zarr(self.store, group=group, consolidated=None, zarr_format=3, chunks={})

    def datatree(self):
        """The whole run as a lazy, dask-backed ``xarray.DataTree`` (as ``xarray.open_datatree(url,
        engine="zarr", chunks={})``, but a missing chunk raises instead of reading as fill values)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _xarray().open_datatree(self.store, engine="zarr", chunks={})


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
