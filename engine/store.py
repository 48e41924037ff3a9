"""The owner's side of a run: one Zarr v3 group, created, resumed or repaired, finalised, replaced atomically.

Layout (see README "Store schema"):
  zarr.json           group attrs: provenance, ``status`` ("running" -> "drawing" -> "complete")
  _manifest/          what lamina wrote: its nodes, and the checksum of every chunk of the arrays written whole
  inputs/...          what the model was fed
  acts/...            captured activations, [layer, sample, (pos,) feature]
  results/...         computed statistics, with coordinate variables per labelled dimension
  _progress/{phase}   per work unit: "" until done, then the manifest of the chunks it wrote
  _partials/...       per-unit states of streaming reducers

Two writers, by role. The process that owns the run (rank 0) opens a :class:`RunWriter`: it creates
the run and its arrays, writes whole arrays (:meth:`RunWriter.put`), records attributes, finalises,
publishes figures and report, and swaps a staged run into place. Every rank writes its work units'
chunks through a :class:`~lamina.engine.chunk_writer.ChunkWriter` (a RunWriter is one too). Every
chunk carries a crc32c checksum (zarr's own codec) and is written even when it equals the fill value,
and the manifest records every chunk's checksum, so a missing, damaged, moved or foreign chunk is
always detectable (:mod:`lamina.engine.verify`). With ``overwrite`` the new run is built beside the
old one and swapped in by :meth:`RunWriter.publish` only when complete (:mod:`lamina.engine.destination`).

>>> store = RunWriter.open("runs/x", experiment="capture", key="{}", provenance={})  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from . import destination as dst
from .chunk_store import check_chunks, delete_keys, not_writable
from .chunk_writer import WRITE_EMPTY, ChunkWriter, open_group
from .destination import Destination
from .labelled import Coord, Labelled
from .manifest import NODE as MANIFEST_NODE
from .manifest import Manifest, read_manifest, read_metadata
from .run_folder import acquire_lock, check_writable, publish_figures, publish_file, release

MiB = 1 << 20
CHECKSUM = True  # crc32c on every chunk; the checksum benchmark turns it off to measure its cost


class RunWriter(ChunkWriter):
    """The owner's side of one run. Use :meth:`open`; other ranks use :meth:`ChunkWriter.attach`."""

    def __init__(self, url: str, write_url: str, group: zarr.Group, *, resumed: bool, manifest: Manifest,
                 locks=(), created: bool = False, keep_folder: bool = False):
        super().__init__(url, write_url, group)
        self.resumed = resumed
        self.created = created  # made here by this command (nothing of it existed before)
        self._keep_folder = keep_folder  # the (empty) folder was there before: discard() leaves it
        self._manifest = manifest
        self._locks = list(locks)
        self._fresh: set[str] = set()  # coordinates written by this process (later ones must agree)

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
        repair: bool = False,
    ) -> RunWriter:
        """Create the run, resume it, repair it, or start its replacement beside it (the owner only).

        ``dest`` comes from :func:`~lamina.engine.destination.check_destination`. Here, under the lock,
        :func:`~lamina.engine.destination.check_resumable` decides:
        - nothing there: create at the URL;
        - an incomplete run of the same ``key``: resume it in place;
        - a complete run of the same ``key``: refused (StoreExistsError) unless ``repair`` (the caller
          found it damaged): then it is reopened in place and its bad units are recomputed;
        - a run of the same ``key`` whose root zarr.json is damaged: repaired in place;
        - with ``overwrite``, any other run: build the new run in ``.NAME.lamina-new`` beside it (resuming
          that when it holds the same command) and swap it in at :meth:`publish`; until then the old run is
          untouched.
        - a run locked by a live writer: StoreLockedError, whatever ``overwrite`` says.
        ``dest`` may be a URL (checked here); ``key`` a mapping (as JSON) or its JSON.
        """
        url = dest.url if isinstance(dest, Destination) else dst.check_destination(
            dest, overwrite=overwrite, allow_memory=True, complete_ok=True).url
        if not isinstance(key, str):
            key = json.dumps(dict(key), sort_keys=True, default=str)
        provenance = {"lamina_version": _lamina_version(), **provenance}
        check_writable(url)
        locks = [acquire_lock(url)]
        try:
            dest = dst.check_destination(url, overwrite=overwrite, allow_memory=True, complete_ok=True)
            mode = dst.check_resumable(dest, key, overwrite=overwrite)
            if mode == "complete" and not repair:
                raise dst.exists_error(dest)
            if mode == "stage":
                write_url = dst.sibling(url, "new")
                locks.append(acquire_lock(write_url))
                staged = dst.read_attrs(write_url)
                resumed = dst.is_run(staged) and staged.get("key") == key
                if not resumed:  # an abandoned replacement of another command: ours to clear
                    dst.remove_run(write_url, keep_lock=True)
            else:
                write_url, resumed = url, mode != "create"
                if resumed:
                    dst.clear_replaced(url, key)
            group, manifest = _start(write_url, resumed=resumed, repair=mode in ("complete", "repair"),
                                     experiment=experiment, key=key, provenance=provenance)
            return cls(url, write_url, group, resumed=resumed, manifest=manifest, locks=locks,
                       created=mode == "create" or (mode == "stage" and not resumed),
                       keep_folder=mode == "create" and dest.state == "empty")
        except BaseException:
            for lock in locks:
                release(lock)
            raise

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
        """Create ``name``, or reopen it when it exists with this shape, dtype and chunks (resume, a later phase
        of the same run). It is entered in the manifest before it is made."""
        if len(dims) != len(shape):
            raise ValueError(f"array {name!r}: {len(dims)} dimension names {tuple(dims)} for shape {tuple(shape)}")
        shape = tuple(int(s) for s in shape)
        chunks = tuple(int(c) for c in (chunks or shape))
        self._record_node(name, "array")
        arr = self._existing(name)
        if arr is not None and arr.shape == shape and tuple(arr.chunks) == chunks and _same_dtype(arr, dtype):
            self._ensure_parents(name)
            self._handles[name] = arr.with_config(WRITE_EMPTY)
            return arr
        if self.resumed or arr is not None:  # another shape, or damaged metadata: its chunks go with it
            self._clear_node(name)
        arr = self._group.create_array(
            name, shape=shape, chunks=chunks, dtype=dtype, dimension_names=tuple(dims), fill_value=fill_value,
            compressors=[Crc32cCodec()] if CHECKSUM else None,  # dense floats barely compress; crc32c catches damage
            config=WRITE_EMPTY,
        )
        if attrs:
            arr.attrs.update(_jsonable(dict(attrs)))
        self._ensure_parents(name)
        self._handles[name] = arr.with_config(WRITE_EMPTY)
        return arr

    def put(self, name: str, data: np.ndarray, *, dims: Sequence[str], attrs: Mapping[str, Any] | None = None) -> None:
        """Write a whole (small) array in one go (inputs, coordinates, results); its chunks' checksums go into
        the manifest."""
        data = np.asarray(data)
        if self._manifest.chunks.pop(name, None) is not None:
            self._save_manifest()  # a rewrite in progress vouches for nothing until it is done
        if data.dtype.kind in "UO":  # labels: variable-length UTF-8 strings
            arr = self.array(name, shape=data.shape, dims=dims, dtype=str, attrs=attrs, fill_value="")
            written = self.write(arr, (), data.astype(str))
        else:
            arr = self.array(name, shape=data.shape, dims=dims, chunks=auto_chunks(data.shape, data.dtype.itemsize),
                             dtype=data.dtype, attrs=attrs, fill_value=_fill(data.dtype))
            written = self.write(arr, (), data)
        self._manifest.chunks[name] = written[arr.path]
        self._save_manifest()

    def put_labelled(self, name: str, value: Labelled) -> None:
        """``name`` with its dims and attributes, and a coordinate variable per labelled dim beside it.

        A coordinate that this process already wrote must hold the same labels: two arrays of one group
        that disagree on a dimension would make the group unreadable as one xarray Dataset.
        """
        group = name.rsplit("/", 1)[0] + "/" if "/" in name else ""
        for dim, coord in value.coord_items():
            self.put_coord(f"{group}{dim}", dim, coord)
        self.put(name, value.numpy(), dims=value.dims, attrs=dict(value.attrs))

    def put_coord(self, path: str, dim: str, coord: Coord) -> None:
        """The coordinate variable ``path`` of ``dim`` (and ``{path}_bounds`` for bins), once per group."""
        values = np.asarray(coord.values)
        if path in self._fresh:
            have = self.read(path)
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
        self._fresh.add(path)

    # ---- progress ------------------------------------------------------------------------
    def progress(self, phase: str, n_units: int, plan: Mapping[str, int] | None = None) -> None:
        """The done-flags of ``phase``. A resumed run whose unit plan differs (e.g. another --micro-batch moved
        the unit boundaries) starts the phase afresh: old flags would lie."""
        name = f"_progress/{phase}"
        plan = dict(plan or {"n_units": n_units})
        old = self._existing(name)
        if old is not None and (dict(old.attrs).get("plan") != plan or not _same_dtype(old, str)):
            self._clear_node(name)
        arr = self.array(name, shape=(n_units,), dims=(f"{phase}_unit",), chunks=(1,), dtype=str, fill_value="")
        arr.attrs["plan"] = plan

    progress_array = progress

    def repair_units(self, phase: str) -> list[str]:
        """Check every chunk of the units of ``phase`` marked done against their manifests; a unit with a missing
        or bad chunk is marked not done (it is computed again). Returns the problems found, one line each."""
        expected, owner = {}, {}
        for unit, chunks in enumerate(self.unit_manifests(phase)):
            for array, sums in (chunks or {}).items():
                arr = self._existing(array)
                if arr is None:
                    expected[f"{array}/zarr.json"] = (None, False)
                    owner[f"{array}/zarr.json"] = (unit, array, "its metadata is missing")
                    continue
                crc = _has_crc(arr)
                for coords, s in sums.items():
                    key = f"{arr.path}/{arr.metadata.encode_chunk_key(coords)}"
                    expected[key], owner[key] = (s, crc), (unit, array, coords)  # type: ignore[assignment]
        problems = check_chunks(self._recorder, {k: v for k, v in expected.items() if not k.endswith("zarr.json")})
        problems.update({k: owner[k][2] for k in expected if k.endswith("zarr.json")})
        bad = sorted({owner[k][0] for k in problems})
        flags = self._array(f"_progress/{phase}")
        delete_keys(self._recorder, [f"{flags.path}/{flags.metadata.encode_chunk_key((u,))}" for u in bad])
        return [f"{owner[k][1]} chunk {owner[k][2]}: {p}" if not k.endswith("zarr.json") else f"{owner[k][1]}: {p}"
                for k, p in sorted(problems.items())]

    # ---- attributes, finishing -----------------------------------------------------------
    @property
    def attrs(self) -> dict:
        return dict(self._group.attrs)

    @property
    def status(self) -> str:
        return str(self._group.attrs.get("status", "unknown"))

    def set_attrs(self, **attrs: Any) -> None:
        """Record root attributes (re-consolidating a run whose data is final, so readers see them)."""
        self._group.attrs.update(_jsonable(attrs))
        if self.status in ("drawing", "complete"):
            consolidate(self.write_url)

    def finalise(self, *, drawing: bool = False, **attrs: Any) -> None:
        """Record ``attrs`` after every write, consolidate the metadata (xarray opens the run whole without
        listing it), and set the status: "complete", or "drawing" when figures and a report are still to come
        (:meth:`complete` then; until then the same command finishes them)."""
        self.set_attrs(**attrs, status="drawing" if drawing else "complete", completed=_now())

    def complete(self) -> None:
        """The figures and report are written: the run is complete."""
        self.set_attrs(status="complete")

    def publish_figures(self, draw: Callable[[Path], Sequence[str | Path]]) -> list[str]:
        return publish_figures(self.write_url, draw)

    def publish_report(self, html: str) -> str:
        return publish_file(self.write_url, dst.REPORT, html.encode("utf-8"))

    def publish(self) -> str:
        """Move a staged run into place (the old run is deleted only now). Returns the run's URL."""
        if self.staged:
            dst.swap_in(self.url, self.write_url)
            self.write_url = self.url
        return self.url

    def discard(self) -> None:
        """Remove a run this command created and that holds nothing done (a refused command leaves nothing)."""
        if not (self.created and dst.is_local(self.write_url)):
            return
        self.close()
        dst.remove_run(self.write_url, keep_lock=self._keep_folder)
        if self._keep_folder:
            (Path(self.write_url) / dst.LOCK_NAME).unlink(missing_ok=True)

    def close(self) -> None:
        for lock in self._locks:
            release(lock)
        self._locks = []

    # ---- the manifest ----------------------------------------------------------------------
    def _record_node(self, path: str, kind: str) -> None:
        if self._manifest.add_node(path, kind):
            self._save_manifest()

    def _save_manifest(self) -> None:
        self._group[MANIFEST_NODE].attrs.update(self._manifest.to_attrs())

    def _existing(self, name: str) -> zarr.Array | None:
        """The array ``name`` as its own metadata says, or None (absent, damaged or not an array)."""
        if read_metadata(self.write_url, name).state != "ok":
            return None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                node = self._group[name]
        except Exception:  # noqa: BLE001 - metadata zarr cannot use (a changed data_type...) is rewritten
            return None
        return node if isinstance(node, zarr.Array) else None

    def _clear_node(self, name: str) -> None:
        """Delete array ``name``'s metadata and chunk files (only those: anything else there is not lamina's)."""
        self._handles.pop(name, None)

        async def keys() -> list[str]:
            return [k async for k in self._recorder.list_prefix(f"{name}/c")
                    if k == f"{name}/c" or k[len(name) + 3:].replace("/", "").isdigit()]

        delete_keys(self._recorder, [*sync(keys()), f"{name}/zarr.json"])

    def _ensure_parents(self, name: str) -> None:
        """A parent group whose zarr.json went missing gets it back (lamina recorded the group)."""
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            path = "/".join(parts[:i])
            if read_metadata(self.write_url, path).state != "ok":
                _write_group_json(self._recorder, path, {})


# ---- helpers -----------------------------------------------------------------------------

RunStore = RunWriter  # the name benchmarks and older code use


def consolidate(url: str) -> None:
    with warnings.catch_warnings():  # zarr notes that consolidated metadata is not in the v3 spec yet
        warnings.simplefilter("ignore")
        try:
            zarr.consolidate_metadata(url, zarr_format=3)
        except OSError as e:
            raise not_writable(e, url, "zarr.json") from None


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


def _start(url: str, *, resumed: bool, repair: bool, experiment: str, key: str,
           provenance: Mapping[str, Any]) -> tuple[zarr.Group, Manifest]:
    """Open (or create) the root group and its manifest. A new run's manifest is written before its root, so a
    run cut short at birth is still known as lamina's."""
    fresh_attrs = _jsonable({"experiment": experiment, "status": "running", "created": _now(), "key": key,
                             **provenance})
    manifest = read_manifest(url) if resumed else None
    if manifest is None:
        manifest = Manifest(experiment=experiment, key=key)
    manifest.add_node(MANIFEST_NODE, "group")
    root = read_metadata(url)
    if not resumed or root.state != "ok":
        group = open_group(url, mode="a", zarr_format=3) if root.state == "ok" else None
        store = group.store_path.store if group is not None else _raw_store(url)
        _write_group_json(store, MANIFEST_NODE, manifest.to_attrs())
        _write_group_json(store, "", {**fresh_attrs, **({"repaired": _now()} if resumed else {})})
        group = open_group(url, mode="r+")
    else:
        group = open_group(url, mode="r+")
        status = group.attrs.get("status")
        if repair:
            group.attrs.update({"status": "running", "repaired": _now()})
        elif status not in ("complete", "drawing"):  # a staged run that only lacks figures, or the swap, keeps it
            group.attrs.update({"status": "running", "resumed": _now()})
        if read_metadata(url, MANIFEST_NODE).state != "ok":
            _write_group_json(group.store_path.store, MANIFEST_NODE, manifest.to_attrs())
        else:
            group[MANIFEST_NODE].attrs.update(manifest.to_attrs())
    group.attrs["writer"] = {"host": socket.gethostname(), "pid": os.getpid()}
    if group.attrs.get("status") in ("complete", "drawing"):
        consolidate(url)
    return group, manifest


def _raw_store(url: str):
    from .chunk_store import RecordingStore, base_store

    return RecordingStore(base_store(url, read_only=False), url)


def _write_group_json(store, path: str, attrs: Mapping[str, Any]) -> None:
    """Write a group's zarr.json directly (to make a run's first nodes in a crash-safe order, or to restore one)."""
    doc = {"zarr_format": 3, "node_type": "group", "attributes": dict(attrs)}
    buf = default_buffer_prototype().buffer.from_bytes(json.dumps(doc).encode("utf-8"))
    sync(store.set(f"{path}/zarr.json" if path else "zarr.json", buf))


def _same_dtype(arr: zarr.Array, dtype) -> bool:
    if dtype is str:
        return isinstance(arr.dtype, np.dtypes.StringDType) or arr.dtype == np.dtype("O")
    try:
        return arr.dtype == np.dtype(dtype)
    except TypeError:
        return False


def _has_crc(arr: zarr.Array) -> bool:
    return any(type(c).__name__ == "Crc32cCodec" for c in arr.metadata.codecs)


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
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


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
