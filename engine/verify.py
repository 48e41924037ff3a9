"""Is a run exactly what lamina wrote? Metadata, every chunk present, intact, and the chunk the manifest says.

A run's manifest (:mod:`lamina.engine.manifest`) lists every node lamina made and the checksum of
every chunk it wrote: those of the arrays written whole in ``_manifest``, those of each work unit in
that unit's done-flag. :func:`verify` checks, and names each problem:

- the root ``zarr.json`` (missing or damaged: not valid JSON, truncated, not Zarr metadata);
- every node of the manifest: its own ``zarr.json`` there, readable, of its kind, and (in a run whose
  data is final) present in the run's consolidated metadata and equal to it;
- every chunk the manifest lists: present ("missing"), its content hashing to its crc32c trailer
  ("checksum mismatch": flipped or truncated), and that trailer the one recorded ("not the chunk this
  run wrote": moved, swapped, or copied in from another run);
- in a run whose data is final, every other chunk of every array: present and intact.

In an interrupted run, chunks of units not done yet are not damage: they are counted as not written
yet, and the same command writes them. ``lamina verify RUN`` prints the report; ``lamina plot`` /
``compare`` / ``report`` refuse a run that fails it; the same command that made a run repairs it.

>>> report = verify("runs/qkv-gpt2")        # doctest: +SKIP
>>> report.ok, report.n_chunks               # doctest: +SKIP
(True, 1734)
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings

import numpy as np
import zarr
from zarr.core.metadata.v3 import ArrayV3Metadata
from zarr.core.sync import sync

from . import destination as dst
from .chunk_store import base_store, check_chunks
from .errors import RunCorruptError, RunNotFoundError
from .manifest import consolidated_nodes, parse_unit_entry, read_manifest, read_metadata
from .reader import Run

ROOT = "zarr.json (the run's root)"
MISSING = "its zarr.json is missing"


@dataclasses.dataclass
class VerifyReport:
    url: str
    n_arrays: int = 0
    n_chunks: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)  # "acts/target chunk (3, 0, 0): missing"
    unchecked: list[str] = dataclasses.field(default_factory=list)  # arrays written without checksums
    incomplete: bool = False  # an interrupted run: chunks of units not done yet are not damage
    unwritten: int = 0  # chunks not written yet (incomplete runs only)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = f"{self.url}: {self.n_chunks} chunks in {self.n_arrays} arrays"
        if self.incomplete:
            head += (f" (an interrupted run: {self.unwritten} chunks not written yet; the same command resumes "
                     "it)")
        if self.ok:
            extra = f" ({len(self.unchecked)} arrays without checksums: {', '.join(self.unchecked[:3])})" \
                if self.unchecked else ""
            return f"{head}: all {'written chunks ' if self.incomplete else ''}present and intact{extra}"
        shown = self.problems[:20] + ([f"... {len(self.problems) - 20} more"] if len(self.problems) > 20 else [])
        return f"{head}: {len(self.problems)} bad\n  " + "\n  ".join(shown)

    def raise_if_bad(self, what: str = "this run") -> None:
        if not self.ok:
            first = self.problems[0]
            more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            raise RunCorruptError(f"{self.url!r} is damaged: {first}{more}; {what} would read wrong data. "
                                  f"`lamina verify {self.url}` lists every problem; run the same command again to "
                                  "repair it (or --overwrite to rewrite it)")


def verify(run: Run | str, *, arrays: list[str] | None = None) -> VerifyReport:
    """Check the run's metadata and every chunk (or the chunks of ``arrays``) against its manifest.

    >>> report = lamina.verify("runs/qkv-gpt2-random")      # doctest: +SKIP
    >>> report.ok, report.problems                          # doctest: +SKIP
    (False, ['acts/target chunk (3, 0, 0): checksum mismatch'])
    """
    url = run.url if isinstance(run, Run) else dst.check_url(run, allow_memory=True, write=False)
    root, manifest = read_metadata(url), read_manifest(url)
    if root.state == "absent" and manifest is None:
        raise RunNotFoundError(f"{url!r} is not a lamina run (no Zarr group there); give the --out of a run")
    if root.state == "ok" and not dst.is_run(root.attrs) and manifest is None:
        raise RunNotFoundError(f"{url!r} is a Zarr group that lamina did not write")
    status = root.attrs.get("status") if root.state == "ok" else None
    final = status in ("complete", "drawing")  # every chunk is written
    report = VerifyReport(url, incomplete=status != "complete")
    if root.state != "ok":
        report.problems.append(f"{ROOT}: {'missing' if root.state == 'absent' else root.error}")
    store = base_store(url, read_only=True)
    cons = consolidated_nodes(root) if root.state == "ok" else {}
    nodes = manifest.nodes if manifest is not None else _legacy_nodes(url, cons)
    found = {path: _node_problem(url, path, kind, cons if final and root.state == "ok" else None)
             for path, kind in sorted(nodes.items()) if path}
    metas: dict[str, ArrayV3Metadata] = {p: meta for p, (_, meta) in found.items() if meta is not None}
    expected = _manifest_chunks(store, manifest, metas, report)
    for path, (problem, _) in found.items():
        # a node entered in the manifest but not made yet (an interrupted run) is not damage
        unmade = problem == MISSING and not final and not any(a == path or a.startswith(path + "/") for a in expected)
        if problem and not unmade:
            report.problems.append(f"{path}: {problem}")
    chosen = sorted(metas) if arrays is None else [a for a in arrays if a in metas]
    checks: dict[str, tuple[str | None, bool]] = {}
    names: dict[str, tuple[str, tuple]] = {}
    for name in chosen:
        meta = metas[name]
        report.n_arrays += 1
        grid = [range(math.ceil(s / c)) for s, c in zip(meta.shape, meta.chunk_grid.chunk_shape)]
        crc = any(type(c).__name__ == "Crc32cCodec" for c in meta.codecs)
        if not crc:
            report.unchecked.append(name)
        sums = expected.get(name, {})
        coords_all = list(itertools.product(*grid))
        report.n_chunks += len(coords_all)
        wanted = coords_all if final else list(sums)
        if not final:  # chunks of units not done yet: not damage (counted when absent)
            stored = _stored_keys(store, name)
            report.unwritten += sum(1 for c in coords_all if c not in sums
                                    and f"{name}/{meta.encode_chunk_key(c)}" not in stored)
        for c in wanted:
            key = f"{name}/{meta.encode_chunk_key(c)}"
            checks[key], names[key] = (sums.get(c), crc), (name, c)
    for key, problem in sorted(check_chunks(store, checks).items(), key=lambda kv: names[kv[0]]):
        name, coords = names[key]
        report.problems.append(f"{name} chunk {coords}: {problem}")
    return report


def _node_problem(url: str, path: str, kind: str, cons: dict | None) -> tuple[str | None, ArrayV3Metadata | None]:
    """(what is wrong with node ``path``'s metadata or None, its array metadata when usable)."""
    own = read_metadata(url, path)
    meta = None
    if own.state == "ok" and own.doc.get("node_type") == "array":
        try:
            meta = ArrayV3Metadata.from_dict(dict(own.doc))  # type: ignore[arg-type]
        except Exception as e:  # noqa: BLE001 - any field zarr cannot use (a changed data_type) is damage
            return f"its zarr.json is damaged ({_first_line(e)})", _from_consolidated(cons, path)
    if own.state == "absent":
        return MISSING, _from_consolidated(cons, path)
    if own.state == "damaged":
        return f"its zarr.json is damaged ({own.error})", _from_consolidated(cons, path)
    if own.doc.get("node_type") != kind:
        return f"is a Zarr {own.doc.get('node_type')}, but lamina wrote a {kind} there", None
    if cons is not None:
        if path not in cons:
            return "absent from the run's consolidated metadata (readers of the run do not see it)", meta
        if kind == "array":
            theirs = _from_consolidated(cons, path)
            if theirs is None:
                return "its entry in the run's consolidated metadata is damaged", meta
            if theirs.to_dict() != meta.to_dict():  # the chunks are checked on the grid the run is read with
                return "its zarr.json disagrees with the run's consolidated metadata", theirs
    return None, meta


def _from_consolidated(cons: dict | None, path: str) -> ArrayV3Metadata | None:
    doc = (cons or {}).get(path)
    if not isinstance(doc, dict) or doc.get("node_type") != "array":
        return None
    try:
        return ArrayV3Metadata.from_dict(dict(doc))
    except Exception:  # noqa: BLE001
        return None


def _manifest_chunks(store, manifest, metas: dict, report: VerifyReport) -> dict[str, dict[tuple, str]]:
    """{array: {coords: checksum}}: the chunks written whole and those of every done unit."""
    out: dict[str, dict[tuple, str]] = {a: dict(cs) for a, cs in (manifest.chunks.items() if manifest else ())}
    for path in sorted(p for p in metas if p.startswith("_progress/")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                flags = np.asarray(zarr.open_array(store=store, path=path, mode="r", zarr_format=3)[...])
        except Exception as e:  # noqa: BLE001 - named, then the chunk checks say which chunk
            report.problems.append(f"{path}: its unit manifests cannot be read ({_first_line(e)})")
            continue
        if flags.dtype == bool:
            continue  # a run made before manifests: chunks are checked for presence and checksum only
        for entry in flags.tolist():
            for array, sums in (parse_unit_entry(entry) if entry else {}).items():
                out.setdefault(array, {}).update(sums)
    return out


def _legacy_nodes(url: str, cons: dict) -> dict[str, str]:
    """A run made before manifests: its arrays as zarr lists them (through the consolidated metadata)."""
    if cons:
        return {p: str(m.get("node_type")) for p, m in cons.items() if isinstance(m, dict)}
    try:
        run = Run(url)
    except (RunNotFoundError, RunCorruptError):
        return {}
    return {name: "array" for name in run.arrays(hidden=True)}


def _stored_keys(store, name: str) -> set[str]:
    async def keys() -> set[str]:
        return {k async for k in store.list_prefix(f"{name}/")}

    return sync(keys())


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:160]}" if text else type(e).__name__
