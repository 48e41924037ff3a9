"""Capture streamed into the store: work units, resume, background writes, several ranks.

The samples are cut into *work units* of whole store chunks. A unit is run in
micro-batches (one forward each), its chunks are written by a background
thread while the next unit computes, and only then is the unit marked done in
``_progress/{phase}``, with the manifest of the chunks it wrote. A run killed at
any moment restarts from the first unit not marked done; a half-written chunk is
rewritten; a done unit whose chunks are missing or damaged is found (every chunk
checked against its manifest when a run is resumed) and computed again. Under
torchrun, unit ``u`` belongs to rank ``u % world_size``: no two ranks ever write
the same chunk. The owner (rank 0, a :class:`~lamina.engine.store.RunWriter`)
creates the arrays; every rank writes through its
:class:`~lamina.engine.chunk_writer.ChunkWriter`.

>>> arrays = capture_to_store(model, batch, captures, store)   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from . import partials
from .capture import CaptureLayout, auto_micro_batch, capture_batches, is_oom, plan
from .chunk_writer import ChunkWriter, UnitWrites
from .distributed import World, barrier, broadcast_object
from .hooks import Capture
from .inputs import TokenBatch
from .models import LoadedModel
from .reducers import Reducer, Unit
from .store import MiB, RunWriter


@dataclasses.dataclass(frozen=True)
class UnitPlan:
    n_samples: int
    samples_per_chunk: int
    micro_batch: int

    @property
    def unit_samples(self) -> int:
        return self.samples_per_chunk * math.ceil(self.micro_batch / self.samples_per_chunk)

    @property
    def n_units(self) -> int:
        return math.ceil(self.n_samples / self.unit_samples)

    def rows(self, unit: int) -> range:
        start = unit * self.unit_samples
        return range(start, min(start + self.unit_samples, self.n_samples))


class Captured(NamedTuple):
    """What :func:`capture_to_store` did: its work units, and each capture's layout."""

    units: UnitPlan
    layouts: list[CaptureLayout]


def chunk_samples(layouts: Sequence[CaptureLayout], max_len: int, n_samples: int, *, target: int = MiB) -> int:
    """Samples per chunk so that every capture's chunk is >= ~1 MiB (when there is that much data)."""
    per_sample = [4 * int(np.prod(lay.sample_shape(max_len))) for lay in layouts]
    need = max(math.ceil(target / max(b, 1)) for b in per_sample)
    cap = max(1, (256 * MiB) // max(per_sample))  # keep one chunk of the largest capture bounded
    return max(1, min(n_samples, need, cap))


def capture_to_store(
    model: LoadedModel,
    batch: TokenBatch,
    captures: Sequence[Capture],
    store: ChunkWriter,
    *,
    phase: str = "capture",
    micro_batch: int | None = None,
    samples_per_chunk: int | None = None,
    world: World = World(),
    keep: bool = True,
    reducers: Sequence[Reducer] = (),
    unit_bytes: int | None = None,
    progress: bool = True,
    on_repair: Callable[[str], None] | None = None,
) -> Captured:
    """Capture ``captures`` for every sample of ``batch`` into ``store`` (resuming if it can).

    With ``keep=False`` no activations are stored; ``reducers`` reduce each unit on the device
    and their per-unit states are stored instead (fold them with :func:`partials.fold`).
    ``unit_bytes`` caps one unit's captured activations when the micro-batch is automatic.
    On rank 0 ``store`` is the run's :class:`RunWriter` (it creates the arrays and, on a resumed run, checks
    the done units' chunks: ``on_repair`` hears one line when some must be computed again, and one line
    "resuming: 12/38 units done" when some units are done and some not); on the other
    ranks a :class:`ChunkWriter`. Returns the unit plan and the captures' layouts (feature widths per hook).
    """
    layouts = plan(model, captures)
    n = len(batch)
    mb = micro_batch or _auto_micro_batch(model, layouts, batch, unit_bytes, world)
    spc = samples_per_chunk or chunk_samples(layouts, batch.max_len, n)
    units = UnitPlan(n, spc, mb)
    widths = {lay.capture.name: (lay.n_entries, lay.n_features) for lay in layouts}
    if world.is_main:  # the owner creates every array; the other ranks write into them after the barrier
        if not isinstance(store, RunWriter):
            raise TypeError("rank 0 captures through the run's RunWriter (it creates the arrays)")
        if keep:
            for lay in layouts:
                shape = lay.shape(n, batch.max_len)
                chunks = (*(1 for _ in lay.capture.outer), 1, spc, *lay.sample_shape(batch.max_len))
                store.array(lay.capture.name, shape=shape, chunks=chunks, dims=lay.dims,
                            attrs={"hooks": [list(g) for g in lay.capture.hooks], "select": lay.capture.select.kind})
        for r in reducers:
            partials.create(store, r, r.state_specs(widths), units.n_units)
        store.progress(phase, units.n_units, {"n_samples": n, "samples_per_chunk": spc,
                                              "unit_samples": units.unit_samples})
        if store.resumed:
            problems = store.repair_units(phase)
            if problems and on_repair is not None:
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                on_repair(f"repairing {store.url}: {problems[0]}{more}; the units concerned are computed again")
    barrier(world)
    done = store.done_units(phase)
    todo = [u for u in range(units.n_units) if world.owns(u) and not (u < len(done) and done[u])]
    n_done = int(sum(bool(d) for d in done[:units.n_units]))
    if world.is_main and on_repair is not None and 0 < n_done < units.n_units:
        on_repair(f"resuming: {n_done}/{units.n_units} units done")
    bar = tqdm(total=sum(len(units.rows(u)) for u in todo), desc=f"{phase} ({model.n_layers} layers)",
               unit="sample", disable=not (progress and world.is_main), leave=False)
    lengths = batch.lengths.to(model.device)
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lamina-writer") as writer:
        for u in todo:
            rows = units.rows(u)
            while len(pending) >= 2:  # bound memory: at most two units in flight
                pending.popleft().result()
            # a unit run in one forward writes each layer's chunks as soon as that layer is final, while the
            # later blocks still run (and on CUDA copies them to the host on a side stream)
            early = EarlyWrites(store, layouts, rows, writer) if keep and len(rows) <= units.micro_batch else None
            tensors = _run_unit(model, batch, layouts, rows, units, early)
            unit = Unit(u, rows, tensors, lengths[rows.start:rows.stop])
            states = [(r, r.reduce(unit)) for r in reducers]
            # what was not written early (and the device-to-host copy) happens in the writer thread too,
            # overlapping the next unit's forward; the done flag comes last, with the manifest of every chunk
            rest = tensors if keep and (early is None or not early.complete) else {}
            pending.append(writer.submit(_write_unit, store, layouts, rest, states, rows, phase, u, early))
            bar.update(len(rows))
        for f in pending:
            f.result()
    bar.close()
    barrier(world)  # every rank's chunks are written before anyone reads or finalises
    return Captured(units, layouts)


def _auto_micro_batch(model: LoadedModel, layouts, batch: TokenBatch, unit_bytes: int | None, world: World) -> int:
    """What fits the device, and with ``unit_bytes`` also that cap per unit, spread into equal units;
    rank 0's choice for every rank (free memory differs between GPUs)."""
    n = len(batch)
    mb = auto_micro_batch(model, batch.max_len, n)
    if unit_bytes is not None:
        per_sample = sum(4 * lay.n_entries * int(np.prod(lay.sample_shape(batch.max_len))) for lay in layouts)
        budget = torch.cuda.mem_get_info(model.device)[0] // 8 if model.device.type == "cuda" else unit_bytes
        mb = max(1, min(mb, budget // max(per_sample, 1)))
        mb = math.ceil(n / math.ceil(n / mb))  # equal units rather than one short straggler
    return int(broadcast_object(world, mb))


def _run_unit(model, batch, layouts, rows: range, units: UnitPlan, early: EarlyWrites | None = None,
              ) -> dict[str, torch.Tensor]:
    """All micro-batches of one unit, concatenated along the sample axis; CUDA OOM halves the batch
    (and gives up writing early: the unit is then written whole after its forwards)."""
    mb = units.micro_batch
    while True:
        try:
            parts: dict[str, list[torch.Tensor]] = {lay.capture.name: [] for lay in layouts}
            on_entry = early.on_entry if early is not None and mb >= len(rows) else None
            for _, out in capture_batches(model, batch, layouts, rows=rows, micro_batch=mb, on_entry=on_entry):
                for k, v in out.items():
                    parts[k].append(v)
            return {k: v[0] if len(v) == 1 else torch.cat(v, dim=1) for k, v in parts.items()}
        except RuntimeError as e:
            if not (is_oom(e) and model.device.type == "cuda" and mb > 1):
                raise
            parts = {}
            if early is not None:
                early.abandon()
            torch.cuda.empty_cache()
            mb = max(1, mb // 2)
            tqdm.write(f"lamina: CUDA out of memory, micro-batch reduced to {mb}")


def _write_unit(store: ChunkWriter, layouts, tensors: dict[str, torch.Tensor], states, rows: range, phase: str,
                u: int, early: EarlyWrites | None = None):
    """A unit's chunks and reducer states, then its done flag with their manifest (in that order: a flag never
    lies). ``early``: the unit's chunks written during its forward (a failed one raises here; when all were
    written their manifest joins the flag's, else the whole unit is in ``tensors``)."""
    if early is not None:
        early.raise_failures()
    host = {k: v.cpu().numpy() for k, v in tensors.items()}
    w = early.writes if early is not None and early.complete else UnitWrites(store)
    for lay in layouts:
        name = lay.capture.name
        if name not in host:
            continue
        w.write(name, (*lay.capture.prefix, slice(None), slice(rows.start, rows.stop)), host[name])
    for reducer, state in states:
        partials.write(w, reducer, u, state)
    store.mark_done(phase, u, w.chunks)


class EarlyWrites:
    """Writes one unit's layer entries as ``capture_batches`` finishes them (its ``on_entry``), in the writer
    thread, collecting their manifest; the unit is marked done only by :func:`_write_unit`, after the forward.

    On CUDA each entry is copied to pinned host memory on a side stream, so the copy overlaps the later blocks'
    kernels; the writer waits for that copy's event before it encodes the chunk. An entry whose forward later
    fails its finite check is written but never marked done: resume computes the unit again.
    """

    def __init__(self, store: ChunkWriter, layouts: Sequence[CaptureLayout], rows: range, writer: ThreadPoolExecutor):
        self.writes = UnitWrites(store)
        self._layouts = {lay.capture.name: lay for lay in layouts}
        self._rows = rows
        self._writer = writer
        self._futures: list[Future] = []
        self._entries = sum(lay.n_entries for lay in layouts)
        self.abandoned = False

    def on_entry(self, name: str, entry: int, samples: range, values: torch.Tensor) -> None:
        if samples != self._rows:  # a forward over part of the unit: its entries are not whole chunks
            self.abandon()
        if self.abandoned:
            return
        lay = self._layouts[name]
        region = (*lay.capture.prefix, slice(entry, entry + 1), slice(self._rows.start, self._rows.stop))
        host, ready = _to_host(values)
        self._futures.append(self._writer.submit(self._write, name, region, host, ready))

    def _write(self, name: str, region: tuple, host: torch.Tensor, ready) -> None:
        if ready is not None:
            ready.synchronize()
        self.writes.write(name, region, host.numpy()[None])

    @property
    def complete(self) -> bool:
        """Every entry of the unit was handed over (all written once the writer reaches the unit's flag)."""
        return not self.abandoned and len(self._futures) == self._entries

    def raise_failures(self) -> None:
        """Raise what an early write raised (they are all done when the writer thread calls this)."""
        for f in self._futures:
            f.result()

    def abandon(self) -> None:
        """Stop writing early (the unit is written whole after its forwards; chunks already written are
        written again, with the same values)."""
        self.abandoned = True


def _to_host(values: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """``values`` on the host: itself on a CPU; on CUDA a pinned copy made on a side stream, with its event."""
    if values.device.type != "cuda":
        return values, None
    stream = _side_stream(values.device)
    host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
    stream.wait_stream(torch.cuda.current_stream(values.device))
    with torch.cuda.stream(stream):
        host.copy_(values, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record(stream)
    values.record_stream(stream)  # the allocator must not reuse the buffer before the copy has read it
    return host, ready


_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    if device not in _STREAMS:
        _STREAMS[device] = torch.cuda.Stream(device)
    return _STREAMS[device]
