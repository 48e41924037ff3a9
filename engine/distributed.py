"""Multi-process capture on torch.distributed (``torchrun``): rank, world size, barriers.

Under ``torchrun --nproc-per-node N`` each rank takes a disjoint, round-robin
share of the work units and writes only its own chunks; rank 0 creates the
store and finalises it. gloo on CPU, NCCL on GPUs. Without torchrun everything
here is a no-op single process.

>>> world().size
1
"""

from __future__ import annotations

import dataclasses
import os

import torch


@dataclasses.dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, unit: int) -> bool:
        return unit % self.size == self.rank


def world() -> World:
    """The process group, initialised on first use when launched by torchrun."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return World()
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def device_for(w: World, device: str) -> str:
    """With several ranks on one GPU machine, rank r uses cuda:local_rank."""
    if w.size > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{w.local_rank}"
    return device


def barrier(w: World) -> None:
    if w.size > 1:
        import torch.distributed as dist

        dist.barrier()


def broadcast_object(w: World, obj):
    """rank 0's ``obj`` on every rank (an exception object is re-raised everywhere)."""
    if w.size == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
