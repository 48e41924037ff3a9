"""Where a run may be written, checked before any model work, and the atomic replacement of a run.

lamina writes only into a new path, an empty folder, or one of its own runs, and deletes only what
its run's manifest says it wrote (:mod:`lamina.engine.manifest`): the nodes listed there, the run's
top-level files and the figures it drew. A user's own files, Zarr arrays and groups inside a run are
never lamina's. ``--out`` is resolved once (a symlink to its real folder) and lamina works on the
real folder. ``--overwrite`` never touches the old run until the new one is complete: the new run is
built in a hidden sibling folder (``.NAME.lamina-new``) and swapped in by two renames at the end; a
crash between the renames is undone the next time the path is opened (:func:`recover`), and the same
command then finishes the swap.

>>> d = check_destination("runs/new-run", overwrite=False)      # doctest: +SKIP
>>> d.state                                                     # doctest: +SKIP
'new'
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path
from typing import Literal

from .errors import InputError, NotARunError, RunCorruptError, StoreExistsError, StoreMismatchError, StoreURLError
from .manifest import NODE as MANIFEST_NODE
from .manifest import Manifest, consolidated_nodes, read_manifest, read_metadata
from .urls import check_url, is_local, local_path, scheme

__all__ = ["check_url", "is_local", "local_path", "scheme", "check_destination", "check_resumable", "Destination",
           "foreign_entries", "remove_run", "swap_in", "recover", "read_attrs", "is_run", "sibling"]

MARKER = "lamina_version"  # a root attribute every lamina run carries
LOCK_NAME = ".lamina.lock"
FIGURES = "figures"
REPORT = "report.html"
STAGING = (".lamina-new", ".lamina-old")
_ZARR_TEMP = re.compile(r"^(?:zarr|c|\d+)\.[0-9a-f]{32}\.partial$")  # zarr's atomic-write temporaries

State = Literal["new", "empty", "run", "damaged"]


def read_attrs(url: str) -> dict | None:
    """The root attributes of the Zarr group at ``url``; None when there is none, {} when its zarr.json is
    damaged (a group, but not one we can vouch for)."""
    meta = read_metadata(url)
    return None if meta.state == "absent" else meta.attrs


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


def lamina_nodes(folder: str | os.PathLike) -> dict[str, str]:
    """{path: "array" | "group"} of the Zarr nodes lamina wrote in the run at ``folder``: its manifest; for a
    run made before manifests, the nodes of its consolidated metadata; else none."""
    manifest = read_manifest(str(folder))
    if manifest is not None:
        return dict(manifest.nodes)
    nodes = {p: str(m.get("node_type")) for p, m in consolidated_nodes(read_metadata(str(folder))).items()
             if isinstance(m, dict)}
    return {"": "group", **nodes} if nodes else {}


def foreign_entries(folder: Path, own: tuple[str, ...] = RUN_FILES, nodes: bool = True) -> list[str]:
    """Paths (relative, sorted) inside a folder lamina writes that lamina did not write, at every depth.

    For a run (``nodes``): lamina's are the files ``own`` at its top, the nodes in its manifest (each
    node's zarr.json; an array's chunk files under ``c/``), zarr's own write temporaries, and the figures
    in the figures folder's manifest. Anything else is foreign, including Zarr arrays and groups that are
    not in the manifest and any symlink. ``lamina compare`` passes its own files and no nodes."""
    folder = Path(folder)
    return sorted(_foreign_walk(folder, "", lamina_nodes(folder) if nodes else {}, own))


def _foreign_walk(folder: Path, rel: str, nodes: dict[str, str], own: tuple[str, ...]) -> list[str]:
    out = []
    node = rel.rstrip("/")
    for child in folder.iterdir():
        r = f"{rel}{child.name}"
        if child.is_symlink():
            out.append(r)
        elif not child.is_dir():
            ours = (not rel and child.name in own) or (child.name == "zarr.json" and node in nodes) or (
                node in nodes and _ZARR_TEMP.match(child.name))
            if not ours:
                out.append(r)
        elif not rel and child.name == FIGURES:
            out += [f"{FIGURES}/{p}" for p in foreign_figures(child)]
        elif nodes.get(r) == "array":
            out += [f"{r}/{p}" for p in _foreign_in_array(child)]
        elif nodes.get(r) == "group" or any(n.startswith(r + "/") for n in nodes):
            out += _foreign_walk(child, r + "/", nodes, own)
        else:
            out.append(r)
    return out


def foreign_figures(folder: Path) -> list[str]:
    """Files of a figures folder that lamina did not write."""
    known = lamina_figures(folder)
    out = []
    for child in folder.iterdir():
        if child.name == FIGURES_MANIFEST and child.is_file():
            continue
        ours = child.is_file() and not child.is_symlink() and (
            child.suffix in (".png", ".pdf") if known is None else child.name in known)
        if not ours:
            out.append(child.name)
    return out


def _foreign_in_array(node: Path) -> list[str]:
    out = []
    for child in node.iterdir():
        if child.is_symlink():
            out.append(child.name)
        elif child.is_file() and (child.name in ("zarr.json", "c") or _ZARR_TEMP.match(child.name)):
            continue  # metadata, the chunk of a 0-d array, zarr's temporaries
        elif child.name == "c" and child.is_dir():
            out += [f"c/{p}" for p in _not_chunks(child)]
        else:
            out.append(child.name)
    return out


def _not_chunks(folder: Path) -> list[str]:
    """Under an array's ``c/``: what is not a chunk key path (digits at every level) or zarr's temporary."""
    out = []
    for child in folder.iterdir():
        if child.is_symlink() or not (child.name.isdigit() or (child.is_file() and _ZARR_TEMP.match(child.name))):
            out.append(child.name)
        elif child.is_dir():
            out += [f"{child.name}/{p}" for p in _not_chunks(child)]
    return out


@dataclasses.dataclass(frozen=True)
class Destination:
    """What is at ``url`` now: nothing (``new``), an empty folder, a lamina run (``attrs``), or a lamina run
    whose root zarr.json is damaged (``damaged``: known by its manifest). ``url`` is the real folder for
    local paths (symlinks resolved once); ``given`` is what the caller wrote."""

    url: str
    state: State
    attrs: dict | None = None
    manifest: Manifest | None = None
    given: str = ""
    damage: str = ""

    @property
    def complete(self) -> bool:
        return self.state == "run" and (self.attrs or {}).get("status") == "complete"

    @property
    def key(self) -> str | None:
        if self.state == "damaged":
            return self.manifest.key if self.manifest else None
        return (self.attrs or {}).get("key")

    def describe(self) -> str:
        if self.state == "damaged":
            return f"a damaged {(self.manifest and self.manifest.experiment) or '?'} run (root zarr.json {self.damage})"
        a = self.attrs or {}
        model = a.get("model", {})
        model = model.get("model", "?") if isinstance(model, dict) else model
        return f"a {'complete' if self.complete else 'incomplete'} {a.get('experiment', '?')} run of {model}"


def check_destination(url: str | os.PathLike, *, overwrite: bool = False, allow_memory: bool = False,
                      complete_ok: bool = False) -> Destination:
    """Everything about ``--out`` that can be known before the model loads (no writes, no deletions beyond
    undoing an interrupted swap).

    Refused: an empty or unusable URL; a path that is a file; a name too long for its staging sibling; a
    path inside another run (any Zarr group); a folder with entries lamina did not write (with or without
    ``overwrite``); a Zarr group lamina did not write; a complete run without ``overwrite`` (unless
    ``complete_ok``: the caller decides once it knows the command); ``overwrite`` of the current directory,
    of a run holding entries lamina did not write, or on an object store (no atomic rename there).
    """
    given = str(url)
    url = check_url(url, allow_memory=allow_memory)
    if is_local(url):
        path = _real_path(url, given)
        url = str(path)
        recover(url)
        if path.exists() and not path.is_dir():
            raise NotARunError("{out} is a file, not a folder; give a new or empty folder", params={"out": given})
        if not path.exists():
            return Destination(url, "new", given=given)
    root = read_metadata(url)
    manifest = read_manifest(url) if root.state != "absent" or is_local(url) else None
    if root.state == "absent" and manifest is None:
        if not is_local(url):
            return Destination(url, "new", given=given)
        entries = [c.name for c in local_path(url).iterdir() if c.name != LOCK_NAME]
        if not entries:
            return Destination(url, "empty", given=given)
        shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
        raise NotARunError(f"{{out}} is a folder with {len(entries)} entries lamina did not write "
                           f"({shown}); lamina writes only into a new or empty folder or one of its own runs: "
                           "choose another {out:name}", params={"out": given})
    if root.state != "ok":
        if manifest is None:
            raise NotARunError(f"{{out}} holds a Zarr group whose root zarr.json is {root.error} and no "
                               "lamina manifest: lamina cannot tell whose it is and neither writes into nor deletes "
                               "it; choose another {out:name}", params={"out": given})
        dest = Destination(url, "damaged", manifest=manifest, given=given,
                           damage="missing" if root.state == "absent" else root.error)
    else:
        if not is_run(root.attrs):
            raise NotARunError("{out} holds a Zarr group that lamina did not write; choose another {out:name} "
                               "(lamina never writes into or deletes someone else's data)", params={"out": given})
        dest = Destination(url, "run", root.attrs, manifest=manifest, given=given)
        if dest.complete and not overwrite and not complete_ok:
            raise exists_error(dest)
    if overwrite:
        _check_replaceable(dest)
    return dest


def exists_error(dest: Destination) -> StoreExistsError:
    return StoreExistsError(f"{{out}} already holds {dest.describe()} (created "
                            f"{(dest.attrs or {}).get('created', '?')}); pass {{overwrite}} to replace it once the "
                            "new run is complete, or choose another {out:name}",
                            params={"out": dest.given or dest.url, "overwrite": True})


def _real_path(url: str, given: str) -> Path:
    """The real folder of a local ``--out`` (symlinks resolved once), refused when its staging name cannot
    exist or it lies inside another run."""
    real = local_path(url).resolve()
    if not real.name:
        raise InputError("{out} is the filesystem root; give a folder for the run", params={"out": given})
    try:
        limit = os.pathconf(next((p for p in (real.parent, *real.parent.parents) if p.exists()), Path("/")),
                            "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    staged = len(f".{real.name}.lamina-new".encode())
    if staged > limit:
        raise InputError(f"{{out}}: the folder name is {len(real.name.encode())} bytes; lamina needs "
                         f"{staged} for the staging folder .NAME.lamina-new beside it, at most {limit}: choose a "
                         "shorter name", params={"out": given})
    above = enclosing_group(real)
    if above is not None:
        what = "the lamina run" if is_run(read_attrs(str(above))) else "the Zarr group"
        raise NotARunError(f"{{out}} is inside {what} {str(above)!r}; give a folder outside any run",
                           params={"out": given})
    return real


def enclosing_group(path: Path) -> Path | None:
    """The folder above ``path`` that is a lamina run, else the nearest that is a Zarr group (holds a
    zarr.json), if any."""
    groups = [p for p in Path(path).resolve().parents if (p / "zarr.json").is_file()]
    return next((p for p in groups if is_run(read_attrs(str(p)))), groups[0] if groups else None)


def _check_replaceable(dest: Destination) -> None:
    """``--overwrite`` of ``dest``: possible (local, not the working directory) and deleting only lamina's."""
    if dest.state not in ("run", "damaged"):
        return
    if not is_local(dest.url):
        raise StoreURLError(f"{{overwrite}} of the run at {dest.url!r} is not supported on object stores (no atomic "
                            "rename); choose a new {out:name}, or delete the old run with your storage tools first",
                            params={"overwrite": True, "out": dest.url})
    path = Path(dest.url)
    cwd = Path.cwd().resolve()
    if cwd == path or path in cwd.parents:
        raise InputError("{out} is the current directory (or holds it): {overwrite} moves "
                         "the old run aside, which cannot be done to the folder you are in; run the command from "
                         "outside it (cd ..)", params={"out": dest.given or dest.url, "overwrite": True})
    for kind in ("new", "old"):
        s = Path(sibling(dest.url, kind))
        if s.is_symlink() or (s.exists() and not _ours(s)):
            raise NotARunError(f"{str(s)!r} is lamina's staging name for replacing {dest.url!r}, but lamina did not "
                               "make what is there; move it away, then run again")
    foreign = foreign_entries(path)
    if foreign:
        raise NotARunError(f"{{out}} holds {dest.describe()} plus entries lamina did not "
                           f"write ({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); move them out "
                           "before {overwrite} (lamina deletes only what it wrote)",
                           params={"out": dest.given or dest.url, "overwrite": True})


Mode = Literal["create", "resume", "complete", "repair", "stage"]


def check_resumable(dest: Destination, key_json: str, *, overwrite: bool) -> Mode:
    """What the command with resume key ``key_json`` does at ``dest``:

    ``create`` (nothing there), ``resume`` (an incomplete run of this command), ``complete`` (a complete
    run of this command: the caller verifies it, repairs it when damaged, else says it exists), ``repair``
    (a run of this command whose root zarr.json is damaged), ``stage`` (with ``overwrite``: build the new
    run beside the old one). An incomplete or damaged run of another command is refused without
    ``overwrite``, and so is a complete one."""
    if dest.state in ("new", "empty"):
        return "create"
    same = dest.key == key_json
    if dest.state == "damaged":
        if same and not overwrite:
            return "repair"
        if overwrite:
            return "stage"
        raise RunCorruptError(f"{{out}} holds {dest.describe()}, made by a different "
                              "command; pass {overwrite} to replace it once the new run is complete, or choose "
                              "another {out:name}", params={"out": dest.given or dest.url, "overwrite": True})
    if same and not dest.complete:
        return "resume"
    if same and not overwrite:
        return "complete"
    if overwrite:
        return "stage"
    if dest.complete:
        raise exists_error(dest)
    raise StoreMismatchError(
        f"{{out}} holds {dest.describe()} made by a different command; it cannot be "
        "resumed with these options. Run that command again to finish it, pass {overwrite} to replace it once "
        "the new run is complete, or choose another {out:name}",
        params={"out": dest.given or dest.url, "overwrite": True})


# ---- replacing a run ---------------------------------------------------------------------


def _ours(path: Path) -> bool:
    """A real folder (not a symlink) holding a lamina run, or what is left of one (its manifest, or only
    lamina's lock file)."""
    if path.is_symlink() or not path.is_dir():
        return False
    if is_run(read_attrs(str(path))) or read_manifest(str(path)) is not None:
        return True
    return all(c.name == LOCK_NAME for c in path.iterdir())


def remove_run(folder: str | os.PathLike, *, keep_lock: bool = False) -> None:
    """Delete what lamina wrote in a run folder (by its manifest; see :func:`foreign_entries`), and the folder
    itself if then empty (``keep_lock``: keep the folder and our lock file, for a folder we are about to
    write again). A symlink, or a folder that is not a lamina run, is refused."""
    path = Path(folder)
    if path.is_symlink():
        raise NotARunError(f"refusing to delete {str(path)!r}: it is a symlink, not a folder lamina made")
    if not path.exists():
        return
    if not _ours(path) and (path / "zarr.json").exists():
        raise NotARunError(f"refusing to delete {str(path)!r}: it is not a lamina run")
    foreign = set(foreign_entries(path))
    last = ("zarr.json", MANIFEST_NODE)  # deleted last: a deletion cut short still reads as lamina's run
    for child in list(path.iterdir()):
        if child.name not in last and not (keep_lock and child.name == LOCK_NAME):
            _remove_entry(child, child.name, foreign)
    for name in last:
        if (path / name).exists():
            _remove_entry(path / name, name, foreign)
    if keep_lock:
        return
    try:
        path.rmdir()
    except OSError:
        pass  # something else is in there: it stays


def _remove_entry(child: Path, rel: str, foreign: set[str]) -> None:
    """Delete ``child`` (at ``rel`` in the run) unless foreign; inside a folder holding foreign paths, only the
    rest."""
    if rel in foreign:
        return
    if child.is_dir() and not child.is_symlink():
        if any(f.startswith(rel + "/") for f in foreign):
            for grandchild in list(child.iterdir()):
                _remove_entry(grandchild, f"{rel}/{grandchild.name}", foreign)
            return
        shutil.rmtree(child)
    else:
        child.unlink()


def swap_in(url: str, new: str) -> None:
    """Put the complete run at ``new`` in place of the run at ``url`` (local real folders), then delete the old
    one by its manifest."""
    path = Path(url)
    old = Path(sibling(url, "old"))
    if old.exists() or old.is_symlink():
        remove_run(old)  # an earlier replaced run whose removal was cut short (refused if not lamina's)
        if old.exists():
            raise NotARunError(f"{str(old)!r} (lamina's staging name) still holds files lamina did not write; move "
                               "them away and run again")
    if path.is_symlink():
        raise NotARunError(f"refusing to move {str(path)!r}: it is a symlink; lamina works on the real folder")
    if path.exists():
        os.replace(path, old)
    os.replace(new, path)
    remove_run(old)


def recover(url: str) -> None:
    """Undo a swap that a crash interrupted between its two renames: the old run goes back in place (nothing
    is deleted; the same command then finishes the replacement from its staged run). Acts only on lamina's
    own staging folder, never on a symlink."""
    if not is_local(url):
        return
    path, old = local_path(url), Path(sibling(url, "old"))
    if path.exists() or path.is_symlink() or not _ours(old):
        return
    os.replace(old, path)


def clear_replaced(url: str, key_json: str) -> None:
    """Delete the old run that a finished swap left beside the run at ``url`` (its removal cut short), when the
    run now at ``url`` was made by the same command (``key_json``)."""
    old = Path(sibling(url, "old"))
    if is_local(url) and _ours(old) and (read_attrs(url) or {}).get("key") == key_json:
        remove_run(old)
