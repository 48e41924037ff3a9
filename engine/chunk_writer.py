"""What every rank writes through: chunks of arrays the run's owner created, and units marked done with the
manifest of the chunks they wrote.

A unit is written inside :meth:`ChunkWriter.unit`; when its block ends without an error, the unit's
done-flag (``_progress/{phase}``, one string per unit) is set to the JSON of every chunk it wrote and
that chunk's checksum (:mod:`lamina.engine.manifest`). The flag is written last, so a flag never
vouches for a chunk that is not there; resume and ``lamina verify`` check the chunks against it.

>>> with writer.unit("capture", 3) as w:                                  # doctest: +SKIP
...     w.write("acts/capture", (slice(None), slice(12, 16)), block)     # [layer, sample, feature]
"""

from __future__ import annotations

import contextlib
import itertools
import math
import warnings
from collections.abc import Iterator

import numpy as np
import zarr

from .chunk_store import RecordingStore, StrictStore, base_store, checksum, not_writable, read_chunks
from .manifest import Chunks, parse_unit_entry, unit_entry

WRITE_EMPTY = {"write_empty_chunks": True}  # a chunk equal to the fill value is still a chunk: never "missing"


def open_group(url: str, *, mode: str = "r+", **kw) -> zarr.Group:
    """The run's root group through a recording store, its own metadata (never a stale consolidated copy)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return zarr.open_group(store=RecordingStore(base_store(url, read_only=False), url), mode=mode,
                               use_consolidated=False, **kw)


class ChunkWriter:
    """Every rank's side of a run being written: :meth:`write`, :meth:`unit`, :meth:`done_units`, :meth:`read`."""

    def __init__(self, url: str, write_url: str, group: zarr.Group):
        self.url = url  # where the run will be
        self.write_url = write_url  # where it is being written: url, or the hidden sibling for --overwrite
        self._group = group
        self._recorder: RecordingStore = group.store_path.store
        self._handles: dict[str, zarr.Array] = {}
        self._reader: zarr.Group | None = None

    @classmethod
    def attach(cls, url: str, write_url: str) -> ChunkWriter:
        """What a rank other than the owner writes through (the owner created the run and its arrays)."""
        return cls(url, write_url, open_group(write_url, mode="r+"))

    # ---- writing -------------------------------------------------------------------------
    def _array(self, name: str) -> zarr.Array:
        if name not in self._handles:
            self._handles[name] = self._group[name].with_config(WRITE_EMPTY)
        return self._handles[name]

    def write(self, name: str | zarr.Array, region: tuple, data: np.ndarray) -> Chunks:
        """``name[region] = data``; returns {name: {chunk coords: checksum}} of the chunks written (every chunk is
        stored even when it equals the fill value)."""
        arr = self._array(name) if isinstance(name, str) else name.with_config(WRITE_EMPTY)
        try:
            arr[region if region else ...] = data
        except OSError as e:
            raise not_writable(e, self.write_url, arr.path) from None
        coords = list(chunk_coords(arr, region))
        keys = {c: f"{arr.path}/{arr.metadata.encode_chunk_key(c)}" for c in coords}
        seen = self._recorder.take(keys.values())
        missing = [k for k, v in seen.items() if v is None]
        if missing:  # not seen being written (another handle?): take the checksum from the stored chunk
            seen.update({k: None if raw is None else checksum(raw) for k, raw in read_chunks(self._recorder, missing)})
        return {arr.path: {c: seen[k] for c, k in keys.items()}}  # type: ignore[misc]

    @contextlib.contextmanager
    def unit(self, phase: str, unit: int) -> Iterator[UnitWrites]:
        """Write one unit's chunks inside the block; the unit is marked done, with their manifest, after it."""
        writes = UnitWrites(self)
        yield writes
        self.mark_done(phase, unit, writes.chunks)

    def mark_done(self, phase: str, unit: int, chunks: Chunks) -> None:
        self.write(f"_progress/{phase}", (slice(unit, unit + 1),), np.array([unit_entry(chunks)], dtype=object))

    # ---- reading -------------------------------------------------------------------------
    def done_units(self, phase: str) -> np.ndarray:
        """[unit] bool: which units of ``phase`` are marked done."""
        name = f"_progress/{phase}"
        if name not in self._group:
            return np.zeros(0, dtype=bool)
        flags = np.asarray(self._group[name][...])
        return flags if flags.dtype == bool else np.array([bool(f) for f in flags.tolist()], dtype=bool)

    def unit_manifests(self, phase: str) -> list[Chunks | None]:
        """Per unit of ``phase``: the chunks it wrote (None: not done, or done before manifests existed)."""
        name = f"_progress/{phase}"
        if name not in self._group:
            return []
        flags = np.asarray(self._group[name][...])
        if flags.dtype == bool:
            return [None] * len(flags)
        return [parse_unit_entry(f) if f else None for f in flags.tolist()]

    def read(self, name: str, region: tuple = ()) -> np.ndarray:
        """``name[region]`` as NumPy; a chunk that is not there is an error, never fill values."""
        if self._reader is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._reader = zarr.open_group(store=StrictStore(base_store(self.write_url, read_only=True),
                                                                 self.write_url), mode="r", use_consolidated=False)
        return np.asarray(self._reader[name][region if region else ...])

    def members(self, prefix: str) -> list[str]:
        """The arrays directly in group ``prefix`` (e.g. a reducer's state arrays)."""
        return sorted(n for n, _ in self._group[prefix].arrays())

    def __contains__(self, name: str) -> bool:
        return name in self._group

    def close(self) -> None:
        """Nothing to release (the owner holds the run's lock)."""


class UnitWrites:
    """The writes of one unit (see :meth:`ChunkWriter.unit`): ``write`` as the writer's, collecting the manifest."""

    def __init__(self, writer: ChunkWriter):
        self._writer = writer
        self.chunks: Chunks = {}

    def write(self, name: str, region: tuple, data: np.ndarray) -> None:
        for array, cs in self._writer.write(name, region, data).items():
            self.chunks.setdefault(array, {}).update(cs)


def chunk_coords(arr: zarr.Array, region: tuple) -> Iterator[tuple[int, ...]]:
    """The chunk coordinates a region (ints and unit-step slices, missing trailing axes = all) touches."""
    region = () if region is Ellipsis else tuple(region)
    ranges = []
    for axis, (size, chunk) in enumerate(zip(arr.shape, arr.chunks)):
        r = region[axis] if axis < len(region) else slice(None)
        if isinstance(r, slice):
            start, stop, _ = r.indices(size)
            ranges.append(range(start // chunk, max(start // chunk, math.ceil(stop / chunk))))
        else:
            i = int(r) % size if size else 0
            ranges.append(range(i // chunk, i // chunk + 1))
    return itertools.product(*ranges)
