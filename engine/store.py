"""The writer side of a run: one Zarr v3 group, written chunk by chunk, resumable, replaced atomically.

Layout (see README "Store schema"):
  zarr.json           group attrs: provenance, ``status`` ("running" -> "complete" after the last write)
  inputs/...          what the model was fed
  acts/...            captured activations, [layer, sample, (pos,) feature]
  results/...         computed statistics, with coordinate variables per labelled dimension
  _progress/{phase}   one bool per work unit, set only after that unit's chunks are written
  _partials/...       per-unit states of streaming reducers

Every chunk carries a crc32c checksum (zarr's own codec), and every chunk is written
even when it equals the fill value, so a missing or damaged chunk is always detectable
(:mod:`lamina.engine.verify`). With ``overwrite`` the new run is built beside the old
one and swapped in by :meth:`RunStore.publish` only when complete
(:mod:`lamina.engine.destination`).

>>> store = RunStore.open(check_destination("runs/x"), experiment="capture", key="{}", provenance={})  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import socket
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from . import destination as dst
from .destination import Destination
from .errors import StoreLockedError, StoreNotWritableError
from .labelled import Coord, Labelled

MiB = 1 << 20
_WRITE_EMPTY = {"write_empty_chunks": True}  # a chunk equal to the fill value is still a chunk: never "missing"
CHECKSUM = True  # crc32c on every chunk; the checksum benchmark turns it off to measure its cost


def check_writable(url: str | os.PathLike) -> None:
    """Cheap pre-flight check (before any model work) that the destination can be written.

    Probes by creating a temporary file in the nearest existing folder (``os.access`` is
    not enough: it says yes to root on read-only mounts)."""
    if not dst.is_local(url):
        return
    import tempfile

    path = dst.local_path(url)
    probe = path if path.is_dir() else next((p for p in path.parents if p.exists()), Path("."))
    try:
        if not probe.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory")
        with tempfile.TemporaryFile(dir=probe, prefix=".lamina-probe-"):
            pass
    except OSError as e:
        raise StoreNotWritableError(
            f"cannot write the run to {str(path)!r}: {str(probe)!r} is not writable ({e.strerror}); "
            "choose another --out"
        ) from None


class RunStore:
    """Writer side of one run. Use :meth:`open` (rank 0) or :meth:`attach` (other ranks)."""

    def __init__(self, url: str, write_url: str, group: zarr.Group, *, resumed: bool, locks=(), rank: int = 0):
        self.url = url  # where the run will be
        self.write_url = write_url  # where it is being written: url, or the hidden sibling for --overwrite
        self.group = group
        self.resumed = resumed
        self._locks = list(locks)
        self.rank = rank

    @property
    def staged(self) -> bool:
        return self.write_url != self.url

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        dest: Destination | str | os.PathLike,
        *,
        experiment: str,
        key: str | Mapping[str, Any],
        provenance: Mapping[str, Any],
        overwrite: bool = False,
    ) -> RunStore:
        """Create the run, resume it, or start its replacement beside it (rank 0 only).

        ``dest`` comes from :func:`check_destination` (already refused: files, foreign folders and
        groups, a complete run without ``overwrite``). Here, under the lock:
        - nothing there: create at the URL;
        - an incomplete run with the same ``key``: resume it in place;
        - a complete run, or (with ``overwrite``) an incomplete one of another command: build the
          new run in ``.NAME.lamina-new`` beside it (resuming that when it holds the same command)
          and swap it in at :meth:`publish`; until then the old run is untouched.
        - a run locked by a live writer: StoreLockedError, whatever ``overwrite`` says.
        ``dest`` may be a URL (checked here); ``key`` a mapping (as JSON) or its JSON.
        """
        if not isinstance(dest, Destination):
            dest = dst.check_destination(dest, overwrite=overwrite, allow_memory=True)
        if not isinstance(key, str):
            key = json.dumps(dict(key), sort_keys=True, default=str)
        provenance = {"lamina_version": _lamina_version(), **provenance}
        url = dest.url
        check_writable(url)
        locks = [_acquire_lock(url)]
        try:
            dest = dst.check_destination(url, overwrite=overwrite, allow_memory=True)  # again, under the lock
            dst.check_resumable(dest, key, overwrite=overwrite)
            attrs = dest.attrs or {}
            same = dest.state == "run" and attrs.get("key") == key
            if dest.state == "run" and not (same and not dest.complete):
                write_url = dst.sibling(url, "new")
                locks.append(_acquire_lock(write_url))
                staged = dst.read_attrs(write_url)
                resumed = dst.is_run(staged) and staged.get("key") == key
                if not resumed:  # an abandoned replacement of another command: ours to clear
                    dst.remove_run(write_url, keep_lock=True)
            else:
                write_url, resumed = url, same
            group = _open_group(write_url, resumed, experiment, key, provenance)
            return cls(url, write_url, group, resumed=resumed, locks=locks)
        except BaseException:
            for lock in locks:
                _release(lock)
            raise

    @classmethod
    def attach(cls, url: str, write_url: str, rank: int) -> RunStore:
        """What rank > 0 writes through: the group rank 0 opened (no lock, no metadata writes)."""
        return cls(url, write_url, zarr.open_group(write_url, mode="r+"), resumed=True, rank=rank)

    # ---- arrays --------------------------------------------------------------------------
    def array(
        self,
        name: str,
        *,
        shape: Sequence[int],
        dims: Sequence[str],
        chunks: Sequence[int] | None = None,
        dtype: str | np.dtype | type = "float32",
        attrs: Mapping[str, Any] | None = None,
        fill_value: Any = 0,
    ) -> zarr.Array:
        """Create ``name``, or reopen it when it exists with this shape, dtype and chunks (resume,
        a later phase of the same run, other ranks). Only rank 0 creates."""
        if len(dims) != len(shape):
            raise ValueError(f"array {name!r}: {len(dims)} dimension names {tuple(dims)} for shape {tuple(shape)}")
        shape = tuple(int(s) for s in shape)
        chunks = tuple(int(c) for c in (chunks or shape))
        if name in self.group:
            arr = self.group[name]
            if isinstance(arr, zarr.Array) and arr.shape == shape and tuple(arr.chunks) == chunks and (
                    dtype is str or arr.dtype == np.dtype(dtype)):
                return arr
        if self.rank != 0:
            return self.group[name]
        arr = self.group.create_array(
            name, shape=shape, chunks=chunks, dtype=dtype, dimension_names=tuple(dims), fill_value=fill_value,
            compressors=[Crc32cCodec()] if CHECKSUM else None,  # dense floats barely compress; crc32c catches damage
            overwrite=True, config=_WRITE_EMPTY,
        )
        if attrs:
            arr.attrs.update(_jsonable(dict(attrs)))
        return arr

    def put(self, name: str, data: np.ndarray, *, dims: Sequence[str], attrs: Mapping[str, Any] | None = None) -> None:
        """Write a whole (small) array in one go: inputs, results (rank 0 only)."""
        if self.rank != 0:
            return
        data = np.asarray(data)
        if data.dtype.kind in "UO":  # labels: variable-length UTF-8 strings
            arr = self.array(name, shape=data.shape, dims=dims, dtype=str, attrs=attrs, fill_value="")
            self.write(arr, (), data.astype(str))
            return
        arr = self.array(name, shape=data.shape, dims=dims, chunks=auto_chunks(data.shape, data.dtype.itemsize),
                         dtype=data.dtype, attrs=attrs, fill_value=_fill(data.dtype))
        self.write(arr, (), data)

    def put_labelled(self, name: str, value: Labelled) -> None:
        """``name`` with its dims and attributes, and a coordinate variable per labelled dim beside it.

        A coordinate that already exists in the group must hold the same labels: two arrays of one
        group that disagree on a dimension would make the group unreadable as one xarray Dataset.
        """
        if self.rank != 0:
            return
        group = name.rsplit("/", 1)[0] + "/" if "/" in name else ""
        for dim, coord in value.coord_items():
            self.put_coord(f"{group}{dim}", dim, coord)
        attrs = dict(value.attrs)
        self.put(name, value.numpy(), dims=value.dims, attrs=attrs)

    def put_coord(self, path: str, dim: str, coord: Coord) -> None:
        """The coordinate variable ``path`` of ``dim`` (and ``{path}_bounds`` for bins), once per group."""
        if self.rank != 0:
            return
        values = np.asarray(coord.values)
        if path in self.group:
            have = np.asarray(self.group[path][...])
            same = have.shape == values.shape and (
                [str(v) for v in have.tolist()] == [str(v) for v in values.tolist()] if values.dtype.kind in "UO"
                else np.array_equal(have, values, equal_nan=True))
            if not same:
                raise ValueError(f"coordinate {path!r} is already written with other labels ({have[:4]} vs "
                                 f"{values[:4]}): use another dimension name")
            return
        attrs = dict(coord.attrs)
        if coord.bounds is not None:
            attrs["bounds"] = f"{dim}_bounds"
        self.put(path, values, dims=(dim,), attrs=attrs)
        if coord.bounds is not None:
            self.put(f"{path}_bounds", np.asarray(coord.bounds), dims=(dim, "nv"))

    def write(self, arr: zarr.Array, region: tuple, data: np.ndarray) -> None:
        """``arr[region] = data``, every chunk stored even when it equals the fill value (write_empty_chunks
        is a per-handle setting in zarr 3, so it is set on every write, not only at creation)."""
        arr = arr.with_config(_WRITE_EMPTY)
        try:
            arr[region if region else ...] = data
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
                raise StoreNotWritableError(
                    f"writing {arr.path!r} to {self.write_url!r} failed: {os.strerror(e.errno)}. The run is left "
                    "incomplete and consistent; free space / fix permissions and run the same command again to resume"
                ) from None
            raise

    # ---- progress ------------------------------------------------------------------------
    def progress_array(self, phase: str, n_units: int, plan: Mapping[str, int] | None = None) -> zarr.Array:
        """The done flags of ``phase``. A resumed run whose unit plan differs (e.g. another
        --micro-batch moved the unit boundaries) starts the phase afresh: old flags would lie."""
        name = f"_progress/{phase}"
        plan = dict(plan or {"n_units": n_units})
        if name in self.group and dict(self.group[name].attrs).get("plan") != plan and self.rank == 0:
            del self.group[name]
        arr = self.array(name, shape=(n_units,), dims=(f"{phase}_unit",), chunks=(1,), dtype="bool", fill_value=False)
        if self.rank == 0:
            arr.attrs["plan"] = plan
        return arr

    def mark_done(self, phase: str, units: Sequence[int]) -> None:
        arr = self.group[f"_progress/{phase}"]
        for u in units:
            self.write(arr, (slice(u, u + 1),), np.ones(1, dtype=bool))

    def done_units(self, phase: str) -> np.ndarray:
        name = f"_progress/{phase}"
        return np.asarray(self.group[name][...]) if name in self.group else np.zeros(0, dtype=bool)

    # ---- finishing -----------------------------------------------------------------------
    def finalise(self, **attrs: Any) -> None:
        """Record ``attrs``, set status "complete" (only after every write) and consolidate the
        metadata (xarray opens the run whole without listing it)."""
        if self.rank != 0:
            return
        self.group.attrs.update(_jsonable({**attrs, "status": "complete", "completed": _now()}))
        consolidate(self.write_url)

    def publish(self) -> str:
        """Move a staged run into place (the old run is deleted only now). Returns the run's URL."""
        if self.rank == 0 and self.staged:
            dst.swap_in(self.url, self.write_url)
            self.write_url = self.url
        return self.url

    def close(self) -> None:
        for lock in self._locks:
            _release(lock)
        self._locks = []


# ---- helpers -----------------------------------------------------------------------------


def consolidate(url: str) -> None:
    with warnings.catch_warnings():  # zarr notes that consolidated metadata is not in the v3 spec yet
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(url, zarr_format=3)


def auto_chunks(shape: Sequence[int], itemsize: int, *, target: int = 4 * MiB) -> tuple[int, ...]:
    """Chunk ~``target`` bytes: whole trailing axes, split along the leading ones."""
    shape = tuple(int(s) for s in shape)
    chunks = list(shape)
    for axis in range(len(shape)):
        size = itemsize * int(np.prod(chunks))
        if size <= target:
            break
        rest = size // max(chunks[axis], 1)
        chunks[axis] = max(1, target // max(rest, 1))
    return tuple(max(1, c) for c in chunks)


def _open_group(url: str, resumed: bool, experiment: str, key: str, provenance: Mapping[str, Any]) -> zarr.Group:
    if resumed:
        group = zarr.open_group(url, mode="r+")
        if group.attrs.get("status") != "complete":  # a complete staged run only lacks figures and the swap
            group.attrs.update({"status": "running", "resumed": _now()})
    else:
        group = zarr.open_group(url, mode="a", zarr_format=3)
        group.attrs.update(_jsonable({"experiment": experiment, "status": "running", "created": _now(), "key": key,
                                      **provenance}))
    group.attrs["writer"] = {"host": socket.gethostname(), "pid": os.getpid()}
    return group


def _lamina_version() -> str:
    from .provenance import versions

    return str(versions().get("lamina"))


def _fill(dtype: np.dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return float("nan")
    if dtype.kind == "b":
        return False
    if dtype.kind in "iu":
        return 0
    return None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _jsonable(obj):
    """Attributes as JSON can hold them: NumPy scalars and tensors to Python, non-finite floats to None."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if hasattr(obj, "tolist") and hasattr(obj, "detach"):  # a torch tensor
        return _jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _acquire_lock(url: str):
    if not dst.is_local(url):
        return None  # object stores have no flock; one writer per URL is the user's contract
    from filelock import FileLock, Timeout

    path = dst.local_path(url)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreNotWritableError(f"cannot create the run folder {str(path)!r}: {e.strerror}") from None
    lock = FileLock(str(path / dst.LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        attrs = dst.read_attrs(url) or {}
        who = attrs.get("writer", {})
        raise StoreLockedError(
            f"{str(path)!r} is being written by another live process (host {who.get('host', '?')}, pid "
            f"{who.get('pid', '?')}); wait for it to finish or stop it, then run again to resume"
        ) from None
    except OSError as e:
        raise StoreNotWritableError(f"cannot lock {str(path)!r}: {e.strerror}") from None
    return lock


def _release(lock) -> None:
    if lock is not None and lock.is_locked:
        lock.release()
