"""Independent CPU tasks on several Python threads, each with ONE torch intra-op thread.

>>> import torch
>>> out = run_tasks(lambda state, item: state.append(item * item), range(5), [[] for _ in range(2)])
>>> sorted(sum(out, []))
[0, 1, 4, 9, 16]

Why: a kernel made of many small torch ops (a matrix product of a few hundred
rows, then a handful of elementwise passes and a ``bincount``) loses much of a
small CPU to OpenMP: every op is a parallel region with its own barrier, some
ops (``bincount``, ``index_select``) run on one thread anyway, and on a shared
machine a barrier waits for a descheduled thread for a whole scheduler slice.
Instead, ``torch.get_num_threads()`` Python threads each take whole tasks from a
shared queue and run every op single-threaded (torch releases the GIL inside
its ops): no barriers, and a slow core only slows its own tasks.

Each worker calls ``torch.set_num_threads(1)`` before its first task (OpenMP's
thread count and MKL's are per calling thread); the caller's thread count is
restored afterwards. The calling thread works as worker 0. Results must not
depend on which worker ran which task (per-worker partial sums of integers, or
writes to disjoint slices); the tasks' own arithmetic is the same single-threaded
arithmetic whichever worker runs it.

With one state (other devices, or one CPU thread) the tasks run in order on the calling
thread, also with one intra-op thread (CPU arithmetic then matches the workers').
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

__all__ = ["cpu_workers", "run_tasks"]

S = TypeVar("S")
T = TypeVar("T")

_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()


def cpu_workers(device: torch.device | str = "cpu") -> int:
    """How many workers :func:`run_tasks` should use on ``device``: torch's CPU thread count, 1 elsewhere."""
    return max(1, torch.get_num_threads()) if torch.device(device).type == "cpu" else 1


def _pool(n: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_SIZE
    with _POOL_LOCK:
        if _POOL is None or _POOL_SIZE < n:
            if _POOL is not None:
                _POOL.shutdown(wait=False)
            _POOL = ThreadPoolExecutor(max_workers=n, thread_name_prefix="lamina-kernel")
            _POOL_SIZE = n
        return _POOL


def run_tasks(fn: Callable[[S, T], None], items: Iterable[T], states: Sequence[S]) -> Sequence[S]:
    """Run ``fn(states[w], item)`` for every item, on ``len(states)`` single-threaded workers.

    Items are taken in order from one shared queue (a worker that is slowed down
    simply takes fewer). Exceptions in any worker are re-raised here after all
    workers stop (the others stop taking new items).

    Args:
        fn: the task; it may only touch its own state and data no other task writes.
        items: the tasks' arguments.
        states: one mutable state per worker (buffers, partial sums).

    Returns:
        ``states``.
    """
    if isinstance(items, Sequence):  # no more workers than tasks
        states_used = states[: max(1, min(len(states), len(items)))]
    else:
        states_used = states
    n = len(states_used)
    previous = torch.get_num_threads()
    if n <= 1:  # in this thread, but single-threaded too: the same arithmetic as on a worker
        try:
            if previous != 1:
                torch.set_num_threads(1)
            for item in items:
                fn(states[0], item)
        finally:
            if previous != 1:
                torch.set_num_threads(previous)
        return states
    queue = iter(items)
    lock = threading.Lock()
    failed = threading.Event()

    def loop(state: S) -> None:
        torch.set_num_threads(1)
        while not failed.is_set():
            with lock:
                item = next(queue, _DONE)
            if item is _DONE:
                return
            try:
                fn(state, item)
            except BaseException:
                failed.set()
                raise

    try:
        futures = [_pool(n - 1).submit(loop, s) for s in states_used[1:]]
        errors: list[BaseException] = []
        try:
            loop(states[0])
        except BaseException as e:  # noqa: BLE001 (re-raised below, after the helpers stop)
            errors.append(e)
        for f in futures:
            e = f.exception()
            if e is not None:
                errors.append(e)
        if errors:
            raise errors[0]
    finally:
        torch.set_num_threads(previous)
    return states


_DONE = object()
