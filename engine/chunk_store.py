"""The Zarr stores a run is written and read through, and what a stored chunk's checksum is.

Every chunk lamina writes ends with zarr's crc32c codec: 4 bytes, the crc32c of the bytes before
them. That trailer is the chunk's *checksum*: the manifest of what a run wrote (README "Scale and
reliability") records it for every chunk, and a chunk is intact when its content still hashes to
its trailer and its trailer is the one the manifest recorded (a chunk moved, swapped or copied in
from another run has another trailer).

- :class:`RecordingStore` notes each chunk's trailer as it is written (no read back);
- :class:`StrictStore` makes a missing chunk an error instead of zarr's fill value (readers);
- :func:`read_chunks` fetches many raw chunks at once (verify, resume checks).

>>> raw = b"abc" + crc32c(b"abc").to_bytes(4, "little")
>>> intact(raw), checksum(raw) == f"{crc32c(b'abc'):08x}", intact(b"abd" + raw[3:])
(True, True, False)
>>> is_chunk_key("acts/capture/c/0/3/0"), is_chunk_key("acts/capture/zarr.json")
(True, False)
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import threading
from collections.abc import Iterable, Iterator, Sequence

import google_crc32c
import numpy as np
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore, WrapperStore

from . import destination as dst
from .errors import RunCorruptError, StoreNotWritableError

_CHUNK = re.compile(r"(?:^|/)c(?:/\d+)*$")  # the default chunk key encoding: NODE/c/i/j/k (NODE/c for 0-d)
BOOKKEEPING = "_progress/"  # flags of units not done yet are legitimately absent


def is_chunk_key(key: str) -> bool:
    return bool(_CHUNK.search(key))


def _u8(data) -> np.ndarray:
    return data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)


def crc32c(data) -> int:
    """crc32c of bytes or a uint8 array (no copy)."""
    return google_crc32c.value(_u8(data))


def checksum(raw) -> str:
    """A stored chunk's checksum: its crc32c trailer, as 8 hex digits."""
    return f"{int.from_bytes(bytes(_u8(raw)[-4:]), 'little'):08x}"


def intact(raw) -> bool:
    """Does the chunk's content still hash to its trailer?"""
    raw = _u8(raw)
    return raw.size >= 4 and crc32c(raw[:-4]) == int.from_bytes(bytes(raw[-4:]), "little")


def base_store(url: str, *, read_only: bool):
    """zarr's store for a folder (LocalStore) or an fsspec URL (FsspecStore)."""
    if dst.is_local(url):
        return LocalStore(str(dst.local_path(url)), read_only=read_only)
    return FsspecStore.from_url(url, read_only=read_only)


class RecordingStore(WrapperStore):
    """Notes the checksum of every chunk written through it; :meth:`take` hands them out once. A write that finds
    the disk full or read-only is a StoreNotWritableError naming the run (one line, resumable)."""

    def __init__(self, store, url: str = ""):
        super().__init__(store)
        self._url = url
        self._seen: dict[str, str] = {}
        self._lock = threading.Lock()

    def _with_store(self, store):
        other = type(self)(store, self._url)
        other._seen, other._lock = self._seen, self._lock
        return other

    async def set(self, key: str, value) -> None:
        try:
            await self._store.set(key, value)
        except OSError as e:
            raise not_writable(e, self._url, key) from None
        if is_chunk_key(key):
            value_sum = checksum(value.as_numpy_array())
            with self._lock:
                self._seen[key] = value_sum

    def take(self, keys: Iterable[str]) -> dict[str, str | None]:
        with self._lock:
            return {k: self._seen.pop(k, None) for k in keys}


class StrictStore(WrapperStore):
    """A missing chunk is a RunCorruptError naming it (zarr would read it as the fill value)."""

    def __init__(self, store, url: str = ""):
        super().__init__(store)
        self._url = url

    def _with_store(self, store):
        return type(self)(store, self._url)

    async def get(self, key: str, prototype, byte_range=None):
        value = await self._store.get(key, prototype, byte_range)
        if value is None and is_chunk_key(key) and not key.startswith(BOOKKEEPING):
            node, _, chunk = key.rpartition("/c")
            coords = tuple(int(c) for c in chunk.strip("/").split("/") if c) if "/c" in key else ()
            raise RunCorruptError(f"{self._url!r}: chunk {coords} of {node or key!r} is missing; zarr would read it "
                                  f"as fill values. `lamina verify {self._url}` lists every problem; run the same "
                                  "command again to repair the run")
        return value


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def not_writable(e: OSError, url: str, what: str) -> Exception:
    """The error to raise for ``e`` while writing ``what`` of the run at ``url``: a full disk or a read-only
    destination as one StoreNotWritableError line; anything else as it was."""
    if e.errno not in _FULL:
        return e
    return StoreNotWritableError(f"writing {what!r} to {url!r} failed: {os.strerror(e.errno)}. The run is left "
                                 "incomplete and consistent; free space / fix permissions and run the same command "
                                 "again to resume")


def read_chunks(store, keys: Sequence[str], *, batch: int = 64) -> Iterator[tuple[str, np.ndarray | None]]:
    """(key, raw bytes as uint8) for each of ``keys`` (None where absent), fetched concurrently in batches."""
    proto = default_buffer_prototype()

    async def one(key):
        buf = await store.get(key, proto)
        return None if buf is None else buf.as_numpy_array()

    async def all_of(part):
        return await asyncio.gather(*(one(k) for k in part))

    for i in range(0, len(keys), batch):
        part = list(keys[i:i + batch])
        yield from zip(part, sync(all_of(part)))


def delete_keys(store, keys: Iterable[str]) -> None:
    async def run():
        await asyncio.gather(*(store.delete(k) for k in keys))

    sync(run())


def check_chunks(store, expected: dict[str, tuple[str | None, bool]]) -> dict[str, str]:
    """{key: problem} for the chunks ``expected`` ({key: (checksum the manifest recorded, or None to check only
    that the chunk is there and intact; does its array carry the crc32c codec)}): "missing", "checksum
    mismatch" (its content does not hash to its trailer: flipped or truncated), or "not the chunk this run
    wrote" (intact, but another chunk: moved, swapped, or copied in from another run)."""
    problems = {}
    for key, raw in read_chunks(store, list(expected)):
        if raw is None:
            problems[key] = "missing"
        elif expected[key][1] and not intact(raw):
            problems[key] = "checksum mismatch"
        elif expected[key][0] is not None and checksum(raw) != expected[key][0]:
            problems[key] = "not the chunk this run wrote (moved, swapped, or copied in from another run)"
    return problems
