"""Timing in the nanoGPT manner, peak memory, and the machine a benchmark ran on.

>>> t = measure(lambda: sum(range(1000)), device="cpu", warmup=1, repeats=3)
>>> t.seconds > 0, len(t.times)
(True, 3)

Every measurement: ``warmup`` untimed calls (caches, allocator, lazy init), then
``repeats`` timed calls, each bracketed by ``torch.cuda.synchronize()`` on CUDA;
the reported time is the median (min and max are kept, and the process CPU time is
recorded too). With ``max_repeats`` the rounds go on until every variant's spread
``(max - min) / median`` is below ``spread`` or ``max_repeats`` rounds were timed: on
a shared machine a skeptic wants to see that the numbers settled, or how far they
did not. Variants compared in one table are interleaved round-robin
(:func:`measure_many`). During each call a thread samples the process' resident
memory (psutil RSS) every few milliseconds, and on CUDA the allocator's peak
(``torch.cuda.max_memory_allocated``) is reset before and read after.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import psutil
import torch

MiB = 1 << 20

# Dense peak FLOP/s (no sparsity) by GPU name fragment and dtype, from the vendors' data sheets.
# "float32" is plain FP32 (no TF32): torch's default for float32 matmuls.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H200": {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12},
    "H100 PCIe": {"bfloat16": 756e12, "float16": 756e12, "float32": 51e12},
    "H100": {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12},  # SXM
    "A100": {"bfloat16": 312e12, "float16": 312e12, "float32": 19.5e12},
}


def sync(device: str | torch.device) -> None:
    """Wait for queued GPU work (no-op on CPU): a timer must not stop before the kernels do."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none): context for every timing."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


@dataclasses.dataclass(frozen=True)
class Timing:
    """Median seconds of the timed repeats, all repeats, and peak memory while they ran."""

    seconds: float
    times: tuple[float, ...]
    peak_rss_mib: float  # max resident set size of this process during the timed calls
    rss_before_mib: float  # resident set size just before them
    peak_cuda_mib: float | None = None  # torch.cuda.max_memory_allocated during them (CUDA only)
    cpu_seconds: float | None = None  # median process CPU time (all threads) per call: steadier under contention

    @property
    def min_s(self) -> float:
        return min(self.times)

    @property
    def max_s(self) -> float:
        return max(self.times)

    @property
    def spread(self) -> float:
        """(max - min) / median of the timed repeats (0 for one repeat)."""
        return (self.max_s - self.min_s) / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        out = {"seconds": self.seconds, "min_s": self.min_s, "median_s": self.seconds, "max_s": self.max_s,
               "spread": round(self.spread, 4), "repeats": len(self.times), "times": list(self.times),
               "peak_rss_mib": round(self.peak_rss_mib, 1), "rss_before_mib": round(self.rss_before_mib, 1)}
        if self.cpu_seconds is not None:
            out["cpu_seconds"] = round(self.cpu_seconds, 4)
        if self.peak_cuda_mib is not None:
            out["peak_cuda_mib"] = round(self.peak_cuda_mib, 1)
        return out


class PeakRSS:
    """Context manager: highest RSS of this process while inside (sampled every ``interval`` s).

    >>> with PeakRSS() as p:
    ...     _ = bytearray(1 << 20)
    >>> p.peak_mib >= p.before_mib
    True
    """

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self.before_mib = self.peak_mib = 0.0

    def _rss(self) -> float:
        return self._proc.memory_info().rss / MiB

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mib = max(self.peak_mib, self._rss())

    def __enter__(self) -> PeakRSS:  # noqa: PYI034 (not subclassed)
        self.before_mib = self.peak_mib = self._rss()
        self._thread = threading.Thread(target=self._sample, daemon=True, name="lamina-bench-rss")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, self._rss())


def measure(fn: Callable[[], Any], *, device: str | torch.device, warmup: int = 1, repeats: int = 3,
            slow_s: float | None = None) -> Timing:
    """Median wall time of ``fn()`` over ``repeats`` synchronised calls after ``warmup`` untimed ones.

    With ``slow_s``, a first warm-up call that takes longer than that is the measurement
    (one repeat; ``times`` has one entry): for slow baselines, where warm-up effects are
    negligible and repeats would cost minutes.
    """
    return measure_many({"fn": fn}, device=device, warmup=warmup, repeats=repeats, slow_s=slow_s)["fn"]


def measure_many(fns: Mapping[str, Callable[[], Any]], *, device: str | torch.device, warmup: int = 1,
                 repeats: int = 3, slow_s: float | None = None, max_repeats: int | None = None,
                 spread: float = 0.10) -> dict[str, Timing]:
    """:func:`measure` for several functions, INTERLEAVED: round r runs every function once.

    On a machine shared with other work the load drifts; round-robin repeats expose every
    variant to the same drift, so the ratios between them are steadier than with one
    block of repeats per variant. Each variant's peak RSS (and CUDA peak) covers its own
    timed calls only.

    ``repeats`` rounds are always timed; with ``max_repeats`` (> repeats) more rounds follow
    while some variant's ``(max - min) / median`` is ``spread`` or more, up to ``max_repeats``.
    Variants measured by one slow call (``slow_s``) do not take part in the extra rounds.
    """
    dev = torch.device(device)
    calls: dict[str, list[tuple[float, float, float, float, float | None]]] = {n: [] for n in fns}
    done: set[str] = set()  # slow variants measured by their first call
    limit = max(1, repeats) if max_repeats is None else max(1, repeats, max_repeats)
    r = 0
    while r < warmup + limit:
        if r >= warmup + max(1, repeats) and _settled(calls, done, spread):
            break
        for name, fn in fns.items():
            if name in done:
                continue
            one = _timed_call(fn, dev)
            if r < warmup:
                if r == 0 and slow_s is not None and one[0] > slow_s:
                    calls[name].append(one)
                    done.add(name)
                continue
            calls[name].append(one)
        r += 1
    out = {}
    for name, rows in calls.items():
        wall = [c[0] for c in rows]
        peaks = [c[4] for c in rows if c[4] is not None]
        out[name] = Timing(statistics.median(wall), tuple(wall), max(c[2] for c in rows), min(c[3] for c in rows),
                           max(peaks) if peaks else None, statistics.median(c[1] for c in rows))
    return out


def _settled(calls: Mapping[str, list], done: set[str], spread: float) -> bool:
    """Every repeated variant's (max - min) / median of wall times is below ``spread``."""
    for name, rows in calls.items():
        if name in done or len(rows) < 2:
            continue
        wall = [c[0] for c in rows]
        med = statistics.median(wall)
        if med > 0 and (max(wall) - min(wall)) / med >= spread:
            return False
    return True


def _timed_call(fn: Callable[[], Any], dev: torch.device) -> tuple[float, float, float, float, float | None]:
    """(wall s, process CPU s, peak RSS MiB, RSS before MiB, CUDA peak MiB | None) of one synchronised call."""
    sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    with PeakRSS() as rss:
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        sync(dev)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    cuda = torch.cuda.max_memory_allocated(dev) / MiB if dev.type == "cuda" else None
    return wall, cpu, rss.peak_mib, rss.before_mib, cuda


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is 0."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def cpu_model() -> str:
    """The CPU's marketing name (from /proc/cpuinfo on Linux), else what platform says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_peak_flops(name: str, dtype: str) -> float | None:
    """Peak dense FLOP/s of a known GPU (see PEAK_FLOPS) in ``dtype``, else None."""
    for key, table in PEAK_FLOPS.items():  # "H100 PCIe" is listed before "H100"
        if key in name:
            return table.get(dtype)
    return None


def machine_info(device: str | torch.device) -> dict[str, Any]:
    """CPU model and cores, memory, GPU (if any), library versions: the context of every number."""
    from lamina.engine.provenance import versions

    v = versions()
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_cores_logical": os.cpu_count(),
        "cpu_cores_physical": psutil.cpu_count(logical=False),
        "cpu_affinity": len(psutil.Process().cpu_affinity()) if hasattr(psutil.Process(), "cpu_affinity") else None,
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": v.get("transformers"),
        "transformer_lens": v.get("transformer_lens"),
        "zarr": v.get("zarr"),
        "numpy": v.get("numpy"),
        "lamina": v.get("lamina"),
        "device": str(device),
        "gpu": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / (1 << 30), 1)
        info["cuda"] = torch.version.cuda
        info["gpu_peak_flops"] = {dt: gpu_peak_flops(props.name, dt) for dt in ("float32", "bfloat16")}
    return info


def child_json(module: str, argv: list[str], mark: str, what: str, timeout_s: float | None = None) -> dict[str, Any]:
    """Run ``python -m MODULE ARGV`` in a fresh process (its own peak memory) and return the JSON it
    printed on the line starting with ``mark``; RuntimeError with its stderr when it failed."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, env=env,
                          timeout=timeout_s, check=False)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(mark)), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(line[len(mark):])
