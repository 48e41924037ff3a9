"""Where a run lives: a local folder or an fsspec URL, checked before any work, and raw reads of its files.

>>> scheme("s3://bucket/run"), scheme("runs/x"), scheme("file:///tmp/x")
('s3', '', '')
>>> check_url("file:///tmp/run")
'/tmp/run'
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError, StoreURLError

_FSSPEC_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
                    "abfss": "adlfs", "adl": "adlfs", "hf": "huggingface_hub", "ssh": "sshfs", "sftp": "sshfs"}
_READ_ONLY_SCHEMES = {"http", "https", "zip", "github"}


def scheme(url: str | os.PathLike) -> str:
    """'' for a local path (or ``file://``), else the URL's scheme: ``scheme("s3://b/r") == "s3"``."""
    s = str(url)
    if "://" not in s or s.startswith("file://"):
        return ""
    return s.split("://", 1)[0].lower()


def is_local(url: str | os.PathLike) -> bool:
    return scheme(url) == ""


def local_path(url: str | os.PathLike) -> Path:
    return Path(str(url).removeprefix("file://")).expanduser()


def check_url(url: str | os.PathLike, *, allow_memory: bool = False, write: bool = True) -> str:
    """The URL as a string (a ``file://`` URL as its path), or StoreURLError naming what is wrong and the fix
    (no I/O beyond imports).

    ``memory://`` keeps nothing once the process ends, so the command line refuses it; Python
    callers that hold the returned run may use it (``allow_memory``).
    """
    s = str(url)
    if not s.strip():
        raise InputError("{out:name} is empty; give a folder or URL for the run, or leave it out for the default",
                         params={"out": ""})
    sch = scheme(s)
    if not sch:
        if s.startswith("file://"):
            rest = s.removeprefix("file://")
            if not rest.startswith("/"):
                raise StoreURLError(f"{s!r}: a file:// URL needs an absolute path (file:///home/me/run); or give "
                                    "the folder itself")
            return rest
        return s
    if sch == "memory":
        if allow_memory:
            return s
        raise StoreURLError("{out}: a memory:// store is gone when lamina exits, so the run would be lost; "
                            "give a folder or a persistent URL (s3://, gs://, ...)", params={"out": s})
    if write and sch in _READ_ONLY_SCHEMES:
        raise StoreURLError(f"{{out}}: {sch}:// is read-only; give a folder or a writable URL (s3://, gs://, ...)",
                            params={"out": s})
    try:
        import fsspec

        fsspec.get_filesystem_class(sch)
    except ImportError:
        pkg = _FSSPEC_PACKAGES.get(sch, f"the fsspec backend for {sch}://")
        raise StoreURLError(f"{s!r}: the {sch}:// filesystem is not installed; pip install {pkg}") from None
    except ValueError:
        raise StoreURLError(f"{s!r}: unknown URL scheme {sch!r}; give a folder or an fsspec URL (s3://, gs://, ...)") \
            from None
    return s


def read_file(url: str, key: str) -> bytes | None:
    """The bytes of ``key`` inside the run at ``url`` (None when there is no such file)."""
    if is_local(url):
        try:
            return (local_path(url) / key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    try:
        return fs.cat_file(f"{root.rstrip('/')}/{key}")
    except (FileNotFoundError, IsADirectoryError):
        return None
