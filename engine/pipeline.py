"""Capture streamed into the store: work units, resume, background writes, several ranks.

The samples are cut into *work units* of whole store chunks. A unit is run in
micro-batches (one forward each), its chunks are written by a background
thread while the next unit computes, and only then is the unit marked done in
``_progress/{phase}``. A run killed at any moment restarts from the first unit
not marked done; a half-written chunk is rewritten. Under torchrun, unit ``u``
belongs to rank ``u % world_size``: no two ranks ever write the same chunk.

>>> arrays = capture_to_store(model, batch, captures, store)   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
from tqdm.auto import tqdm

from .capture import CaptureLayout, auto_micro_batch, capture_batches, is_oom, plan
from .distributed import World, barrier
from .hooks import Capture
from .inputs import TokenBatch
from .models import LoadedModel
from .store import MiB, RunStore

# consumer(unit, rows, {capture name: [layer, batch, (pos,) feature] device tensor})
Consumer = Callable[[int, range, dict[str, torch.Tensor]], None]


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
    store: RunStore,
    *,
    phase: str = "capture",
    micro_batch: int | None = None,
    samples_per_chunk: int | None = None,
    world: World = World(),
    keep: bool = True,
    consumer: Consumer | None = None,
    progress: bool = True,
) -> UnitPlan:
    """Capture ``captures`` for every sample of ``batch`` into ``store`` (resuming if it can).

    With ``keep=False`` nothing is stored (a ``consumer`` reduces each unit on the device,
    e.g. streaming correlations). Returns the unit plan (for consumers' bookkeeping).
    """
    layouts = plan(model, captures)
    n = len(batch)
    mb = micro_batch or auto_micro_batch(model, batch.max_len, n)
    spc = samples_per_chunk or chunk_samples(layouts, batch.max_len, n)
    units = UnitPlan(n, spc, mb)
    if world.is_main:  # rank 0 creates every array; the others open them after the barrier
        if keep:
            for lay in layouts:
                c = lay.capture
                if c.prefix:  # the caller made the enclosing array (e.g. acts/hidden with a class axis)
                    continue
                shape = (lay.n_entries, n, *lay.sample_shape(batch.max_len))
                chunks = (1, spc, *lay.sample_shape(batch.max_len))
                store.array(c.name, shape=shape, chunks=chunks, dims=lay.dims,
                            attrs={"hooks": [list(g) for g in c.hooks], "select": c.select.kind})
        store.progress_array(phase, units.n_units, {"n_samples": n, "samples_per_chunk": spc,
                                                     "unit_samples": units.unit_samples})
    barrier(world)
    arrays = {lay.capture.name: store.group[lay.capture.name] for lay in layouts} if keep else {}
    done = store.done_units(phase)
    todo = [u for u in range(units.n_units) if world.owns(u) and not (u < len(done) and done[u])]
    bar = tqdm(total=sum(len(units.rows(u)) for u in todo), desc=f"{phase} ({model.n_layers} layers)",
               unit="sample", disable=not (progress and world.is_main), leave=False)
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lamina-writer") as writer:
        for u in todo:
            rows = units.rows(u)
            tensors = _run_unit(model, batch, layouts, rows, units)
            if consumer is not None:
                consumer(u, rows, tensors)
            while len(pending) >= 2:  # bound memory: at most two units in flight
                pending.popleft().result()
            # the device-to-host copy happens in the writer thread too, overlapping the next unit's forward
            pending.append(writer.submit(_write_unit, store, arrays, layouts, tensors if keep else {}, rows, phase, u))
            bar.update(len(rows))
        for f in pending:
            f.result()
    bar.close()
    barrier(world)  # every rank's chunks are written before anyone reads or finalises
    return units


def _run_unit(model, batch, layouts, rows: range, units: UnitPlan) -> dict[str, torch.Tensor]:
    """All micro-batches of one unit, concatenated along the sample axis; CUDA OOM halves the batch."""
    mb = units.micro_batch
    while True:
        try:
            parts: dict[str, list[torch.Tensor]] = {lay.capture.name: [] for lay in layouts}
            for _, out in capture_batches(model, batch, layouts, rows=rows, micro_batch=mb):
                for k, v in out.items():
                    parts[k].append(v)
            return {k: v[0] if len(v) == 1 else torch.cat(v, dim=1) for k, v in parts.items()}
        except RuntimeError as e:
            if not (is_oom(e) and model.device.type == "cuda" and mb > 1):
                raise
            parts = {}
            torch.cuda.empty_cache()
            mb = max(1, mb // 2)
            tqdm.write(f"lamina: CUDA out of memory, micro-batch reduced to {mb}")


def _write_unit(store: RunStore, arrays, layouts, tensors: dict[str, torch.Tensor], rows: range, phase: str, u: int):
    host = {k: v.cpu().numpy() for k, v in tensors.items()}
    for lay in layouts:
        name = lay.capture.name
        if name not in host:
            continue
        region = (*lay.capture.prefix, slice(None), slice(rows.start, rows.stop))
        store.write(arrays[name], region, host[name])
    store.mark_done(phase, [u])
