"""The run store: one Zarr v3 group per run, written chunk by chunk, resumable, read back by name.

Layout (see README "Store schema"):
  zarr.json           group attrs: provenance, ``status`` ("running" -> "complete" after the last write)
  inputs/...          token ids and lengths of the stimuli
  acts/...            captured activations, [layer, sample, (pos,) feature]
  results/...         computed statistics
  _progress/{phase}   one bool per work unit, set only after that unit's chunks are written

Every array has ``dimension_names``, so ``xarray.open_zarr(path, group="results")``
works, as does plain ``zarr.open_group(path)``.

>>> run = open_run("runs/qkv")                     # doctest: +SKIP
>>> run.status, run["results/cosine_hist"].shape   # doctest: +SKIP
('complete', (2, 12, 6, 100))
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import shutil
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .errors import RunNotFoundError, StoreExistsError, StoreLockedError, StoreMismatchError, StoreNotWritableError

MiB = 1 << 20
_LOCK_NAME = ".lamina.lock"


def is_local(url: str | os.PathLike) -> bool:
    s = str(url)
    return "://" not in s or s.startswith("file://")


def _local_path(url: str | os.PathLike) -> Path:
    return Path(str(url).removeprefix("file://")).expanduser()


def check_writable(url: str | os.PathLike) -> None:
    """Cheap pre-flight check (before any model work) that the destination can be written.

    Probes by creating a temporary file in the nearest existing folder (``os.access`` is
    not enough: it says yes to root on read-only mounts)."""
    if not is_local(url):
        return
    import tempfile

    path = _local_path(url)
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
    """Writer side of one run. Use :meth:`open` (create, or resume an incomplete run)."""

    def __init__(self, url: str, group: zarr.Group, *, resumed: bool, lock=None, rank: int = 0):
        self.url = url
        self.group = group
        self.resumed = resumed
        self._lock = lock
        self.rank = rank

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        url: str | os.PathLike,
        *,
        experiment: str,
        key: Mapping[str, Any],
        provenance: Mapping[str, Any],
        overwrite: bool = False,
        rank: int = 0,
    ) -> RunStore:
        """Create the run at ``url`` or resume it.

        - nothing there: create, status "running";
        - a complete run: refused (StoreExistsError) unless ``overwrite``;
        - an incomplete run made by the same command (same ``key``): resumed;
        - an incomplete run of another command: refused (StoreMismatchError) unless ``overwrite``;
        - a run locked by a live writer: refused (StoreLockedError), whatever ``overwrite`` says.
        Only rank 0 creates, locks and decides; other ranks open what rank 0 made.
        """
        url = str(url)
        key_json = json.dumps(dict(key), sort_keys=True, default=str)
        if rank != 0:
            return cls(url, zarr.open_group(url, mode="r+"), resumed=True, rank=rank)
        check_writable(url)
        lock = _acquire_lock(url)
        try:
            existing = _read_attrs(url)
            resumed = False
            if existing is not None:
                same = existing.get("key") == key_json
                if existing.get("status") == "complete" and not overwrite:
                    raise StoreExistsError(
                        f"{url!r} already holds a complete {existing.get('experiment', '')} run "
                        f"(created {existing.get('created', '?')}); pass --overwrite to replace it or choose another --out"
                    )
                if existing.get("status") != "complete" and not same and not overwrite:
                    raise StoreMismatchError(
                        f"{url!r} holds an incomplete run of a different command "
                        f"({existing.get('experiment', '?')}, model {existing.get('model', {}).get('model', '?')}); "
                        "it cannot be resumed with these options. Pass --overwrite to start afresh or choose another --out"
                    )
                resumed = existing.get("status") != "complete" and same and not overwrite
                if not resumed:
                    _clear(url)
            if resumed:
                group = zarr.open_group(url, mode="r+")
                group.attrs.update({"status": "running", "resumed": _now()})
            else:
                group = zarr.open_group(url, mode="a", zarr_format=3)
                group.attrs.update(
                    {
                        "experiment": experiment,
                        "status": "running",
                        "created": _now(),
                        "key": key_json,
                        **provenance,
                    }
                )
            group.attrs["writer"] = {"host": socket.gethostname(), "pid": os.getpid()}
            return cls(url, group, resumed=resumed, lock=lock)
        except BaseException:
            _release(lock)
            raise

    # ---- arrays --------------------------------------------------------------------------
    def array(
        self,
        name: str,
        *,
        shape: Sequence[int],
        dims: Sequence[str],
        chunks: Sequence[int] | None = None,
        dtype: str | np.dtype = "float32",
        attrs: Mapping[str, Any] | None = None,
        fill_value: Any = 0,
    ) -> zarr.Array:
        """Create ``name`` (or reopen it on resume / on other ranks when the shape matches)."""
        if len(dims) != len(shape):
            raise ValueError(f"array {name!r}: {len(dims)} dimension names {tuple(dims)} for shape {tuple(shape)}")
        if name in self.group and (self.resumed or self.rank != 0):
            arr = self.group[name]
            if tuple(arr.shape) == tuple(shape):
                return arr
        if self.rank != 0:
            return self.group[name]
        arr = self.group.create_array(
            name,
            shape=tuple(int(s) for s in shape),
            chunks=tuple(int(c) for c in (chunks or shape)),
            dtype=dtype,
            dimension_names=tuple(dims),
            fill_value=fill_value,
            compressors=None,  # dense float activations barely compress; raw writes keep up with the GPU
            overwrite=True,
        )
        if attrs:
            arr.attrs.update(dict(attrs))
        return arr

    def put(self, name: str, data: np.ndarray, *, dims: Sequence[str], attrs: Mapping[str, Any] | None = None) -> None:
        """Write a whole (small) array in one go: results, labels, edges (rank 0 only)."""
        if self.rank != 0:
            return
        data = np.asarray(data)
        arr = self.array(name, shape=data.shape, dims=dims, chunks=auto_chunks(data.shape, data.dtype.itemsize),
                         dtype=data.dtype, attrs=attrs, fill_value=_fill(data.dtype))
        self.write(arr, (), data)

    def write(self, arr: zarr.Array, region: tuple, data: np.ndarray) -> None:
        try:
            arr[region if region else ...] = data
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
                raise StoreNotWritableError(
                    f"writing {arr.path!r} to {self.url!r} failed: {os.strerror(e.errno)}. The run is left "
                    "incomplete and consistent; free space / fix permissions and run the same command again to resume"
                ) from e
            raise

    # ---- progress ------------------------------------------------------------------------
    def progress_array(self, phase: str, n_units: int, plan: Mapping[str, int] | None = None) -> zarr.Array:
        """The done flags of ``phase``. A resumed run whose unit plan differs (e.g. another
        --micro-batch moved the unit boundaries) starts the phase afresh: old flags would lie."""
        name = f"_progress/{phase}"
        plan = dict(plan or {"n_units": n_units})
        if name in self.group and dict(self.group[name].attrs).get("plan") != plan and self.rank == 0:
            del self.group[name]
        arr = self.array(name, shape=(n_units,), dims=("unit",), chunks=(1,), dtype="bool", fill_value=False)
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
        """Record ``attrs`` and set status "complete" (only after every write)."""
        if self.rank != 0:
            return
        self.group.attrs.update({**attrs, "status": "complete", "completed": _now()})
        self.close()

    def close(self) -> None:
        _release(self._lock)
        self._lock = None


# ---- reader ------------------------------------------------------------------------------


class Run:
    """Read side: named arrays and provenance of a run (complete or not).

    >>> run = open_run("runs/rsa")          # doctest: +SKIP
    >>> run.numpy("results/selectivity")    # (component, layer)  # doctest: +SKIP
    """

    def __init__(self, url: str):
        self.url = str(url)
        if _read_attrs(self.url) is None:
            raise RunNotFoundError(f"{self.url!r} is not a lamina run (no Zarr group there); give the --out of a run")
        self.group = zarr.open_group(self.url, mode="r")

    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs)

    @property
    def status(self) -> str:
        return str(self.attrs.get("status", "unknown"))

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def arrays(self) -> list[str]:
        """All array paths, e.g. ['acts/target', 'results/cosine_hist', ...] (progress hidden)."""
        import warnings

        out = []
        with warnings.catch_warnings():  # our lock file is not a Zarr node; zarr says so
            warnings.simplefilter("ignore")
            members = list(self.group.members(max_depth=None))
        for path, node in members:
            if isinstance(node, zarr.Array) and not path.startswith("_"):
                out.append(path)
        return sorted(out)

    def __getitem__(self, name: str) -> zarr.Array:
        return self.group[name]

    def __contains__(self, name: str) -> bool:
        return name in self.group

    def numpy(self, name: str) -> np.ndarray:
        return np.asarray(self.group[name][...])

    def dims(self, name: str) -> tuple[str, ...]:
        return tuple(self.group[name].metadata.dimension_names or ())

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
        """The arrays of one subgroup as a lazy, dask-backed ``xarray.Dataset`` (needs the xarray extra)."""
        try:
            import xarray as xr
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("Run.dataset needs xarray and dask: pip install 'lamina[xarray]'") from e
        return xr.open_zarr(self.url, group=group, consolidated=False, zarr_format=3)


def open_run(url: str | os.PathLike) -> Run:
    return Run(str(url))


# ---- helpers -----------------------------------------------------------------------------


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


def _read_attrs(url: str) -> dict | None:
    if is_local(url):
        meta = _local_path(url) / "zarr.json"
        if not meta.exists():
            return None
        return json.loads(meta.read_text()).get("attributes", {})
    try:
        return dict(zarr.open_group(url, mode="r").attrs)
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):  # type: ignore[attr-defined]
        return None


def _clear(url: str) -> None:
    """Delete an old run's contents (keeping our lock file) before writing a new one."""
    if is_local(url):
        path = _local_path(url)
        for child in path.iterdir():
            if child.name == _LOCK_NAME:
                continue
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    else:
        zarr.open_group(url, mode="w", zarr_format=3)


def _acquire_lock(url: str):
    if not is_local(url):
        return None  # object stores have no flock; one writer per URL is the user's contract
    from filelock import FileLock, Timeout

    path = _local_path(url)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreNotWritableError(f"cannot create the run folder {str(path)!r}: {e.strerror}") from e
    lock = FileLock(str(path / _LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        attrs = _read_attrs(url) or {}
        who = attrs.get("writer", {})
        raise StoreLockedError(
            f"{str(path)!r} is being written by another live process (host {who.get('host', '?')}, pid "
            f"{who.get('pid', '?')}); wait for it to finish or stop it, then run again to resume"
        ) from None
    except OSError as e:
        raise StoreNotWritableError(f"cannot lock {str(path)!r}: {e.strerror}") from e
    return lock


def _release(lock) -> None:
    if lock is not None and lock.is_locked:
        lock.release()
