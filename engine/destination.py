"""Where a run may be written, checked before any model work, and the atomic replacement of a run.

lamina writes only into a new path, an empty folder, or one of its own runs; it never
deletes what it did not write. A run is recognised by its root ``zarr.json`` carrying
the ``lamina_version`` attribute. ``--overwrite`` never touches the old run until the
new one is complete: the new run is built in a hidden sibling folder
(``.NAME.lamina-new``) and swapped in by two renames at the end; a crash between the
renames is repaired the next time the path is opened (:func:`recover`).

>>> d = check_destination("runs/new-run", overwrite=False)      # doctest: +SKIP
>>> d.state                                                     # doctest: +SKIP
'new'
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Literal

from .errors import InputError, NotARunError, StoreExistsError, StoreMismatchError, StoreURLError

MARKER = "lamina_version"  # a root attribute every lamina run carries
LOCK_NAME = ".lamina.lock"
FIGURES = "figures"
REPORT = "report.html"
_FSSPEC_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
                    "abfss": "adlfs", "adl": "adlfs", "hf": "huggingface_hub", "ssh": "sshfs", "sftp": "sshfs"}
_READ_ONLY_SCHEMES = {"http", "https", "zip", "github"}

State = Literal["new", "empty", "run"]


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
    """The URL as a string, or StoreURLError naming what is wrong and the fix (no I/O beyond imports).

    ``memory://`` keeps nothing once the process ends, so the command line refuses it; Python
    callers that hold the returned run may use it (``allow_memory``).
    """
    s = str(url)
    if not s.strip():
        raise InputError("--out is empty; give a folder or URL for the run, or leave --out out for the default")
    sch = scheme(s)
    if not sch:
        return s
    if sch == "memory":
        if allow_memory:
            return s
        raise StoreURLError(f"--out {s!r}: a memory:// store is gone when lamina exits, so the run would be lost; "
                            "give a folder or a persistent URL (s3://, gs://, ...)")
    if write and sch in _READ_ONLY_SCHEMES:
        raise StoreURLError(f"--out {s!r}: {sch}:// is read-only; give a folder or a writable URL (s3://, gs://, ...)")
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


def read_attrs(url: str) -> dict | None:
    """The root attributes of the Zarr group at ``url``, or None when there is none."""
    if is_local(url):
        meta = local_path(url) / "zarr.json"
        if not meta.is_file():
            return None
        try:
            return json.loads(meta.read_text()).get("attributes", {}) or {}
        except (OSError, ValueError):
            return {}  # unreadable metadata: a group, but not one we can vouch for
    import zarr

    try:
        return dict(zarr.open_group(url, mode="r").attrs)
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):  # type: ignore[attr-defined]
        return None


def is_run(attrs: dict | None) -> bool:
    return attrs is not None and MARKER in attrs


def sibling(url: str, kind: Literal["new", "old"]) -> str:
    """The hidden folder beside a local run: ``.NAME.lamina-new`` (being built) or ``-old`` (being replaced)."""
    p = local_path(url).resolve()
    return str(p.parent / f".{p.name}.lamina-{kind}")


FIGURES_MANIFEST = ".lamina-figures.json"  # in a figures folder: the files lamina wrote there


def lamina_figures(folder: Path) -> set[str] | None:
    """Names of the files lamina wrote into the figures ``folder`` (its manifest); None without a manifest
    (a run drawn before manifests: its PNG and PDF files count as lamina's)."""
    try:
        return set(json.loads((Path(folder) / FIGURES_MANIFEST).read_text(encoding="utf-8"))["files"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return set()  # a damaged manifest vouches for nothing


def record_figures(folder: Path, names) -> None:
    """Add ``names`` (files just written into the figures ``folder``) to its manifest."""
    folder = Path(folder)
    known = {n for n in (lamina_figures(folder) or set()) if (folder / n).is_file()}
    (folder / FIGURES_MANIFEST).write_text(json.dumps({"files": sorted(known | set(names))}), encoding="utf-8")


RUN_FILES = ("zarr.json", LOCK_NAME, REPORT)  # the files lamina writes at the top of a run


def foreign_entries(folder: Path, own: tuple[str, ...] = RUN_FILES, nodes: bool = True) -> list[str]:
    """Paths (relative, sorted) inside a folder lamina writes that lamina did not write: anything but the
    files ``own`` at its top, Zarr nodes holding only zarr.json, chunk files and nodes (``nodes``), and the
    figures in the figures folder's manifest. Checked at every depth. For a run by default; ``lamina
    compare`` passes its own files and no nodes."""
    out = []
    for child in Path(folder).iterdir():
        if child.name in own and child.is_file():
            continue
        if nodes and child.is_dir() and (child / "zarr.json").is_file():
            out += [f"{child.name}/{p}" for p in _foreign_in_node(child)]
        elif child.name == FIGURES and child.is_dir():
            out += [f"{child.name}/{p}" for p in foreign_figures(child)]
        else:
            out.append(child.name)
    return sorted(out)


def foreign_figures(folder: Path) -> list[str]:
    """Files of a figures folder that lamina did not write."""
    known = lamina_figures(folder)
    out = []
    for child in folder.iterdir():
        if child.name == FIGURES_MANIFEST and child.is_file():
            continue
        ours = child.is_file() and (child.suffix in (".png", ".pdf") if known is None else child.name in known)
        if not ours:
            out.append(child.name)
    return out


def _foreign_in_node(node: Path) -> list[str]:
    out = []
    for child in node.iterdir():
        if child.name in ("zarr.json", "c") and child.is_file():  # metadata; the chunk of a 0-d array
            continue
        if child.is_dir() and (child / "zarr.json").is_file():
            out += [f"{child.name}/{p}" for p in _foreign_in_node(child)]
        elif child.name == "c" and child.is_dir():
            out += [f"c/{p}" for p in _not_chunks(child)]
        else:
            out.append(child.name)
    return out


def _not_chunks(folder: Path) -> list[str]:
    """Under a node's ``c/``: what is not a chunk key path (digits at every level)."""
    out = []
    for child in folder.iterdir():
        if not child.name.isdigit():
            out.append(child.name)
        elif child.is_dir():
            out += [f"{child.name}/{p}" for p in _not_chunks(child)]
    return out


@dataclasses.dataclass(frozen=True)
class Destination:
    """What is at ``url`` now: nothing (``new``), an empty folder, or a lamina run (``attrs``)."""

    url: str
    state: State
    attrs: dict | None = None

    @property
    def complete(self) -> bool:
        return self.state == "run" and (self.attrs or {}).get("status") == "complete"

    def describe(self) -> str:
        a = self.attrs or {}
        model = a.get("model", {})
        model = model.get("model", "?") if isinstance(model, dict) else model
        return f"a {'complete' if self.complete else 'incomplete'} {a.get('experiment', '?')} run of {model}"


def check_destination(url: str | os.PathLike, *, overwrite: bool = False, allow_memory: bool = False) -> Destination:
    """Everything about ``--out`` that can be known before the model loads.

    Refused: an empty or unusable URL; a path that is a file; a folder with entries lamina did not
    write (with or without ``overwrite``); a Zarr group lamina did not write; a complete run without
    ``overwrite``; ``overwrite`` of a run whose folder holds files lamina did not write; ``overwrite``
    on an object store (no atomic rename there).
    """
    url = check_url(url, allow_memory=allow_memory)
    if is_local(url):
        recover(url)
        path = local_path(url)
        if path.exists() and not path.is_dir():
            raise NotARunError(f"--out {str(path)!r} is a file, not a folder; give a new or empty folder")
        if not path.exists():
            return Destination(url, "new")
        attrs = read_attrs(url)
        if attrs is None:
            entries = [c.name for c in path.iterdir() if c.name != LOCK_NAME]
            if not entries:
                return Destination(url, "empty")
            shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
            raise NotARunError(f"--out {str(path)!r} is a folder with {len(entries)} entries lamina did not write "
                               f"({shown}); lamina writes only into a new or empty folder or one of its own runs: "
                               "choose another --out")
    else:
        attrs = read_attrs(url)
        if attrs is None:
            return Destination(url, "new")
    if not is_run(attrs):
        raise NotARunError(f"--out {url!r} holds a Zarr group that lamina did not write; choose another --out "
                           "(lamina never writes into or deletes someone else's data)")
    dest = Destination(url, "run", attrs)
    if dest.complete and not overwrite:
        raise StoreExistsError(f"--out {url!r} already holds {dest.describe()} (created {attrs.get('created', '?')}); "
                               "pass --overwrite to replace it once the new run is complete, or choose another --out")
    if overwrite and not is_local(url):
        raise StoreURLError(f"--overwrite of the run at {url!r} is not supported on object stores (no atomic "
                            "rename); choose a new --out, or delete the old run with your storage tools first")
    if overwrite and is_local(url):
        foreign = foreign_entries(local_path(url))
        if foreign:
            raise NotARunError(f"--out {url!r} holds {dest.describe()} plus entries lamina did not write "
                               f"({', '.join(foreign[:5])}); move them out before --overwrite (lamina deletes only "
                               "what it wrote)")
    return dest


def check_resumable(dest: Destination, key_json: str, *, overwrite: bool) -> None:
    """An incomplete run made by another command is not resumed (nor replaced, without overwrite)."""
    if dest.state == "run" and not dest.complete and dest.attrs.get("key") != key_json and not overwrite:
        raise StoreMismatchError(
            f"--out {dest.url!r} holds {dest.describe()} made by a different command; it cannot be resumed with "
            "these options. Run that command again to finish it, pass --overwrite to replace it once the new run "
            "is complete, or choose another --out")


# ---- replacing a run ---------------------------------------------------------------------


def remove_run(folder: str | os.PathLike, *, keep_lock: bool = False) -> None:
    """Delete a lamina run folder: only the entries lamina writes; the folder itself if then empty
    (``keep_lock``: keep the folder and our lock file, for a folder we are about to write again)."""
    path = Path(folder)
    if not path.exists():
        return
    if not is_run(read_attrs(str(path))) and (path / "zarr.json").exists():
        raise NotARunError(f"refusing to delete {str(path)!r}: it is not a lamina run")
    _remove_ours(path, "", set(foreign_entries(path)), keep=LOCK_NAME if keep_lock else None)
    if keep_lock:
        return
    try:
        path.rmdir()
    except OSError:
        pass  # something else is in there: it stays


def _remove_ours(folder: Path, rel: str, foreign: set[str], keep: str | None = None) -> None:
    """Delete what lamina wrote under ``folder``; foreign paths (relative to the run) and their folders stay."""
    for child in folder.iterdir():
        r = f"{rel}{child.name}"
        if r in foreign or (not rel and child.name == keep):
            continue
        if child.is_dir() and not child.is_symlink():
            if any(f.startswith(r + "/") for f in foreign):
                _remove_ours(child, r + "/", foreign)
                continue
            shutil.rmtree(child)
        else:
            child.unlink()


def swap_in(url: str, new: str) -> None:
    """Put the complete run at ``new`` in place of the run at ``url`` (local folders), then drop the old one."""
    old = sibling(url, "old")
    path = local_path(url)
    if path.exists():
        os.replace(path, old)
    os.replace(new, path)
    remove_run(old)


def recover(url: str) -> None:
    """Finish or undo a swap that a crash interrupted between its two renames."""
    if not is_local(url):
        return
    path, old, new = local_path(url), Path(sibling(url, "old")), Path(sibling(url, "new"))
    if not old.exists():
        return
    if path.exists():  # the swap finished; only the old run's removal was cut short
        remove_run(old)
        return
    new_attrs = read_attrs(str(new)) if new.exists() else None
    if is_run(new_attrs) and new_attrs.get("status") == "complete":
        os.replace(new, path)
        remove_run(old)
    else:
        os.replace(old, path)
