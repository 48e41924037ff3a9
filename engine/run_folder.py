"""The run's folder beyond its Zarr data: can it be written, its lock, and the files published into it.

Figures go into ``RUN/figures`` (listed in ``figures/.lamina-figures.json``: what lamina may later replace or
delete) and the report into ``RUN/report.html``; on an object store through fsspec. A full disk or a
read-only destination is one StoreNotWritableError line.

>>> check_writable("runs/new-run")     # doctest: +SKIP
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from . import destination as dst
from .errors import StoreLockedError, StoreNotWritableError

_NOT_WRITABLE = (errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOSPC, errno.EDQUOT)


def check_writable(url: str | os.PathLike) -> None:
    """Cheap pre-flight check (before any model work) that the destination can be written.

    Probes by creating a temporary file in the nearest existing folder (``os.access`` is
    not enough: it says yes to root on read-only mounts)."""
    if not dst.is_local(url):
        return
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


def publish_figures(url: str, draw: Callable[[Path], Sequence[str | Path]]) -> list[str]:
    """``draw(folder)`` into the run's ``figures/`` (listed in its figures manifest, what lamina may later replace
    or delete); for an object store through a local folder, then uploaded. Returns where the files are."""
    if dst.is_local(url):
        folder = dst.local_path(url) / dst.FIGURES
        try:
            folder.mkdir(parents=True, exist_ok=True)
            paths = [str(p) for p in draw(folder)]
            dst.record_figures(folder, [Path(p).name for p in paths])
            return paths
        except OSError as e:
            if e.errno not in _NOT_WRITABLE:
                raise
            raise StoreNotWritableError(f"cannot write the figures of {url!r} into {str(folder)!r}: "
                                        f"{os.strerror(e.errno)}; free space, or copy the run somewhere writable "
                                        "and plot it there") from None
    import fsspec

    with tempfile.TemporaryDirectory(prefix="lamina-figures-") as tmp:
        paths = draw(Path(tmp))  # type: ignore[assignment]
        fs, root = fsspec.core.url_to_fs(url)
        out = []
        for p in paths:
            target = f"{root.rstrip('/')}/{dst.FIGURES}/{Path(p).name}"
            fs.put_file(str(p), target)
            out.append(target)
        return out


def publish_file(url: str, name: str, data: bytes) -> str:
    """Write the file ``name`` at the top of the run (``report.html``); returns its path or URL."""
    if dst.is_local(url):
        path = dst.local_path(url) / name
        try:
            path.write_bytes(data)
        except OSError as e:
            raise StoreNotWritableError(f"cannot write {str(path)!r}: {e.strerror or e}; free space, or copy the run "
                                        "somewhere writable and run `lamina report` there") from None
        return str(path)
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    fs.pipe_file(f"{root.rstrip('/')}/{name}", data)
    return f"{url.rstrip('/')}/{name}"


def acquire_lock(url: str):
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


def release(lock) -> None:
    if lock is not None and lock.is_locked:
        lock.release()
