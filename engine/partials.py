"""Per-unit reducer states in the run: ``_partials/{reducer}/{key}`` with a leading ``unit`` axis.

One chunk per unit and key, written by the rank that ran the unit, before the unit is
marked done; :func:`fold` reads them back in unit order and merges them.

>>> fold(store, reducer, n_units=12)      # doctest: +SKIP
{'count': tensor(8192), 'mean': ..., 'm2': ...}
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from .chunk_writer import ChunkWriter, UnitWrites
from .reducers import Reducer, State, StateSpec
from .store import RunWriter

_NP = {torch.float64: np.float64, torch.float32: np.float32, torch.int64: np.int64, torch.int32: np.int32,
       torch.bool: np.bool_}


def create(store: RunWriter, reducer: Reducer, specs: Mapping[str, StateSpec], n_units: int) -> None:
    """Make the state arrays of ``reducer`` (rank 0, before any unit runs)."""
    for key, spec in specs.items():
        dims = spec.dims or tuple(f"{key}_{i}" for i in range(len(spec.shape)))
        store.array(f"_partials/{reducer.name}/{key}", shape=(n_units, *spec.shape), dims=("unit", *dims),
                    chunks=(1, *spec.shape), dtype=_NP[spec.dtype], fill_value=0)


def write(unit_writes: UnitWrites, reducer: Reducer, unit: int, state: State) -> None:
    """One unit's state, inside its unit's writes (device tensors are copied to the host here)."""
    for key, value in state.items():
        unit_writes.write(f"_partials/{reducer.name}/{key}", (slice(unit, unit + 1),),
                          value.detach().cpu().numpy()[None])


def fold(store: ChunkWriter, reducer: Reducer, n_units: int, device: torch.device | str = "cpu") -> State:
    """Every unit's state merged in unit order (the same order whoever wrote them, whenever)."""
    prefix = f"_partials/{reducer.name}"
    keys = store.members(prefix)
    total: State | None = None
    for u in range(n_units):
        state = {k: torch.from_numpy(np.array(store.read(f"{prefix}/{k}", (u,)))).to(device) for k in keys}
        total = state if total is None else reducer.merge(total, state)
    if total is None:
        raise ValueError(f"reducer {reducer.name!r}: no units to fold")
    return total
