"""Is every chunk of a run there, and does it match its checksum?

Every array lamina writes carries zarr's ``crc32c`` codec and writes every chunk (even
one equal to the fill value), so a complete run has exactly ``nchunks`` stored chunks
per array, each decoding cleanly. :func:`verify` reads them all and names each bad
one; ``lamina verify STORE`` prints the report, and ``lamina plot`` / ``compare`` /
``report`` refuse a run that fails it.

>>> report = verify("runs/qkv-gpt2")        # doctest: +SKIP
>>> report.ok, report.n_chunks               # doctest: +SKIP
(True, 1734)
"""

from __future__ import annotations

import dataclasses
import itertools
import warnings

import numpy as np
import zarr
from zarr.core.sync import sync

from .errors import RunCorruptError
from .reader import Run, open_run


@dataclasses.dataclass
class VerifyReport:
    url: str
    n_arrays: int = 0
    n_chunks: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)  # "acts/target chunk (3, 0, 0): missing"
    unchecked: list[str] = dataclasses.field(default_factory=list)  # arrays written before checksums existed
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
                                  f"`lamina verify {self.url}` lists every bad chunk; run the analysis again "
                                  "(--overwrite) to rewrite it")


def verify(run: Run | str, *, arrays: list[str] | None = None) -> VerifyReport:
    """Check every chunk of every array (or of ``arrays``): present, and its checksum matches.

    >>> report = lamina.verify("runs/qkv-gpt2-random")      # doctest: +SKIP
    >>> report.ok, report.problems                          # doctest: +SKIP
    (False, ['acts/target chunk (3, 0, 0): checksum mismatch'])
    """
    run = run if isinstance(run, Run) else open_run(run)
    report = VerifyReport(run.url, incomplete=not run.complete)
    for name in arrays if arrays is not None else run.arrays(hidden=True):
        arr = run.group[name]
        report.n_arrays += 1
        report.n_chunks += arr.nchunks
        if not any(type(c).__name__ == "Crc32cCodec" for c in arr.metadata.codecs):
            report.unchecked.append(name)
        own = _own_metadata_problem(arr)
        if own:
            report.problems.append(f"{name}: {own}")
            continue
        missing = _missing_chunks(arr)
        if report.incomplete:  # not written yet, or lost: resuming rewrites every chunk of a unit not done
            report.unwritten += len(missing)
        else:
            report.problems += [f"{name} chunk {coords}: missing" for coords in sorted(missing)]
        for coords in itertools.product(*(range(n) for n in arr.cdata_shape)):
            if coords in missing:
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    block = arr.get_block_selection(coords)
                np.asarray(block)
            except Exception as e:  # noqa: BLE001 - any decode failure is damage, named below
                reason = "checksum mismatch" if "checksum" in str(e).lower() else f"unreadable ({type(e).__name__})"
                report.problems.append(f"{name} chunk {coords}: {reason}")
    return report


def _own_metadata_problem(arr: zarr.Array) -> str | None:
    """The array's own zarr.json against the consolidated copy a run is read through (plain zarr readers
    that do not consolidate read the former)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            own = zarr.open_array(store=arr.store_path.store, path=arr.store_path.path, mode="r",
                                  zarr_format=3)
    except Exception as e:  # noqa: BLE001 - any failure to read it is damage
        return f"its zarr.json is unreadable ({type(e).__name__})"
    if own.metadata.to_dict() != arr.metadata.to_dict():
        return "its zarr.json disagrees with the run's consolidated metadata"
    return None


def _missing_chunks(arr: zarr.Array) -> set[tuple[int, ...]]:
    """Chunk coordinates with no stored object (zarr would silently read them as the fill value)."""
    store = arr.store_path.store
    prefix = arr.store_path.path

    async def stored() -> set[str]:
        return {k async for k in store.list_prefix(f"{prefix}/")}

    keys = sync(stored())
    out = set()
    for coords in itertools.product(*(range(n) for n in arr.cdata_shape)):
        key = f"{prefix}/{arr.metadata.encode_chunk_key(coords)}"
        if key not in keys:
            out.add(coords)
    return out
