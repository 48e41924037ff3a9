"""A run's own record of what it wrote, which ``lamina verify``, resume and deletion trust.

- ``_manifest`` (a group; its attributes): the command (``experiment``, ``key``), every node lamina
  created (``nodes``: path -> "array" | "group", recorded *before* the node is made) and the checksum of
  every chunk of the arrays written whole (``chunks``: array -> {"i,j,k": crc32c}; inputs, coordinates,
  results).
- ``_progress/{phase}`` (one string per work unit): empty until the unit is done, then the JSON of the
  chunks that unit wrote, ``{array: {"i,j,k": crc32c}}`` (captured activations, reducer states).

A chunk's checksum is its stored crc32c trailer (:mod:`lamina.engine.chunk_store`). Deleting a run
(``--overwrite``, :func:`~lamina.engine.destination.remove_run`) deletes only the nodes listed here, the
run's top-level files and the figures in ``figures/.lamina-figures.json``.

>>> m = Manifest(experiment="qkv", key="{}")
>>> m.add_node("acts/target", "array"), sorted(m.nodes.items())
(True, [('', 'group'), ('_manifest', 'group'), ('acts', 'group'), ('acts/target', 'array')])
>>> unit_entry({"acts/target": {(0, 3, 0): "1a2b3c4d"}})
'{"acts/target": {"0,3,0": "1a2b3c4d"}}'
>>> parse_unit_entry('{"acts/target": {"0,3,0": "1a2b3c4d"}}')
{'acts/target': {(0, 3, 0): '1a2b3c4d'}}
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

from .urls import read_file

NODE = "_manifest"
FORMAT = 1
Chunks = dict[str, dict[tuple[int, ...], str]]  # array path -> {chunk coords: checksum}


def coords_key(coords: tuple[int, ...]) -> str:
    return ",".join(str(int(c)) for c in coords)


def parse_coords(text: str) -> tuple[int, ...]:
    return tuple(int(c) for c in text.split(",")) if text else ()


def unit_entry(chunks: Mapping[str, Mapping[tuple[int, ...], str]]) -> str:
    """The done-flag of a unit: the chunks it wrote, as JSON."""
    return json.dumps({a: {coords_key(c): s for c, s in sorted(cs.items())} for a, cs in sorted(chunks.items())})


def parse_unit_entry(text: str) -> Chunks:
    return {a: {parse_coords(c): s for c, s in cs.items()} for a, cs in json.loads(text).items()}


@dataclasses.dataclass
class Manifest:
    experiment: str | None = None
    key: str | None = None
    nodes: dict[str, str] = dataclasses.field(default_factory=dict)
    chunks: Chunks = dataclasses.field(default_factory=dict)

    def add_node(self, path: str, kind: str) -> bool:
        """Record ``path`` (and its parents as groups); True when something was new."""
        path = path.strip("/")
        new = {"": "group", NODE: "group"} if not self.nodes else {}
        parts = path.split("/") if path else []
        for i in range(1, len(parts)):
            new["/".join(parts[:i])] = "group"
        new[path] = kind
        changed = {p: k for p, k in new.items() if self.nodes.get(p) != k}
        self.nodes.update(changed)
        return bool(changed)

    @property
    def arrays(self) -> list[str]:
        return sorted(p for p, k in self.nodes.items() if k == "array")

    def to_attrs(self) -> dict:
        return {"lamina_manifest": FORMAT, "experiment": self.experiment, "key": self.key, "nodes": self.nodes,
                "chunks": {a: {coords_key(c): s for c, s in cs.items()} for a, cs in self.chunks.items()}}

    @classmethod
    def from_attrs(cls, attrs: Mapping) -> Manifest | None:
        if not isinstance(attrs, Mapping) or attrs.get("lamina_manifest") != FORMAT:
            return None
        chunks = {a: {parse_coords(c): s for c, s in cs.items()} for a, cs in (attrs.get("chunks") or {}).items()}
        return cls(attrs.get("experiment"), attrs.get("key"), dict(attrs.get("nodes") or {}), chunks)


@dataclasses.dataclass(frozen=True)
class Metadata:
    """A node's zarr.json as found: ``state`` "absent", "ok" or "damaged" (``error`` says how)."""

    state: str
    doc: dict | None = None
    error: str = ""

    @property
    def attrs(self) -> dict:
        return dict((self.doc or {}).get("attributes") or {})


def read_metadata(url: str, node: str = "") -> Metadata:
    """The zarr.json of ``node`` ("" = the run's root), parsed, without zarr."""
    key = f"{node}/zarr.json" if node else "zarr.json"
    try:
        raw = read_file(url, key)
    except OSError as e:
        return Metadata("damaged", error=f"unreadable ({e.strerror or e})")
    if raw is None:
        return Metadata("absent")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        what = "empty" if not raw.strip() else f"not valid JSON ({len(raw)} bytes; truncated?)"
        return Metadata("damaged", error=what)
    if not isinstance(doc, dict) or doc.get("zarr_format") != 3 or doc.get("node_type") not in ("group", "array"):
        return Metadata("damaged", error="not Zarr v3 group or array metadata")
    if not isinstance(doc.get("attributes", {}), dict):
        return Metadata("damaged", error="its attributes are not a JSON object")
    return Metadata("ok", doc)


def read_manifest(url: str) -> Manifest | None:
    """The run's manifest (None: none there or unreadable, e.g. a run made before manifests)."""
    meta = read_metadata(url, NODE)
    return Manifest.from_attrs(meta.attrs) if meta.state == "ok" else None


def consolidated_nodes(root: Metadata) -> dict[str, dict]:
    """{path: metadata dict} of the consolidated metadata in the root's zarr.json ({} when none)."""
    cm = (root.doc or {}).get("consolidated_metadata") or {}
    meta = cm.get("metadata") if isinstance(cm, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}
