"""Reading a run stays lazy: a mean over a >= 1 GB activation array at flat memory.

    python -m lamina.benchmarks.lazy_read_bench [--gib 1.0] [--chunk-mib 8] [--eager]

Writes a run holding one float32 array ``acts/mlp_pre`` [layer, sample, pos, feature] of ``--gib`` GiB,
the way a capture writes it (whole chunks along samples, each unit marked done with its manifest),
then, each in a fresh process, computes ``mlp_pre.mean(["sample", "pos"])`` through

- ``lamina.open_run(url).datatree()`` (the run's own reader: dask on the stored chunks; a missing chunk
  raises);
- ``xr.open_datatree(url, engine="zarr", chunks={})`` (the README's plain-xarray read);
- with ``--eager``, ``xr.open_datatree(url, engine="zarr")`` without ``chunks=`` (not lazy: for contrast).

Each prints its peak resident memory (VmHWM), its peak after the imports and the opening, before the read,
and the time; the flat-memory bound is peak <= 2 chunks + 300 MB over the memory before the read. The
means are checked against float64 sums accumulated while writing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

MiB = 1 << 20
READERS = {
    "Run.datatree()": "import lamina.engine.reader as r\ntree = r.open_run(URL).datatree()",
    "xr.open_datatree(chunks={})": "tree = xr.open_datatree(URL, engine='zarr', chunks={})",
    "xr.open_datatree() (eager)": "tree = xr.open_datatree(URL, engine='zarr')",
}
_CHILD = """
import json, resource, sys, time
import numpy as np, xarray as xr
URL = sys.argv[1]

def peak():  # this process's high-water mark (VmHWM; ru_maxrss would include the parent's, kept across exec)
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

{open}
before = peak()
t = time.perf_counter()
mean = tree["acts"].mlp_pre.mean(["sample", "pos"]).compute()
seconds = time.perf_counter() - t
data = tree["acts"].mlp_pre.variable._data
lazy = type(data).__module__.split(".")[0] + "." + type(data).__name__
print(json.dumps({{"seconds": seconds, "before": before, "peak": peak(),
                  "mean": np.asarray(mean).tolist(), "backing": lazy}}))
"""


def write_run(url: str, gib: float, chunk_mib: float, seed: int = 0) -> dict:
    """A run with acts/mlp_pre of ``gib`` GiB in chunks of ~``chunk_mib`` MiB; returns its shape, chunk bytes and the
    float64 reference mean [layer, feature]."""
    from lamina.engine.store import RunWriter

    layers, pos, features = 8, 128, 1024
    per_sample = pos * features * 4
    samples = max(1, round(gib * (1 << 30) / (layers * per_sample)))
    spc = max(1, min(samples, round(chunk_mib * MiB / per_sample)))
    rng = np.random.default_rng(seed)
    run = RunWriter.open(url, experiment="bench-lazy-read", key={"gib": gib}, provenance={})
    try:
        run.array("acts/mlp_pre", shape=(layers, samples, pos, features), dims=("layer", "sample", "pos", "feature"),
                  chunks=(1, spc, pos, features))
        n_units = math.ceil(samples / spc)
        run.progress("capture", n_units)
        total = np.zeros((layers, features))
        for u in range(n_units):
            rows = slice(u * spc, min(samples, (u + 1) * spc))
            block = rng.standard_normal((layers, rows.stop - rows.start, pos, features), dtype=np.float32)
            block += np.arange(features, dtype=np.float32) / features  # a mean that differs per feature
            total += block.sum((1, 2), dtype=np.float64)
            with run.unit("capture", u) as w:
                w.write("acts/mlp_pre", (slice(None), rows), block)
        run.finalise()
    finally:
        run.close()
    return {"shape": [layers, samples, pos, features], "bytes": layers * samples * per_sample,
            "chunk_bytes": spc * per_sample, "mean": total / (samples * pos)}


def read_in_child(url: str, reader: str) -> dict:
    code = _CHILD.format(open=READERS[reader])
    res = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(gib: float = 1.0, chunk_mib: float = 8, eager: bool = False, tmp_dir: str | None = None) -> dict:
    root = tempfile.mkdtemp(prefix="lamina-lazy-", dir=tmp_dir)
    try:
        url = os.path.join(root, "run")
        t = time.perf_counter()
        made = write_run(url, gib, chunk_mib)
        out = {"array_bytes": made["bytes"], "chunk_bytes": made["chunk_bytes"], "shape": made["shape"],
               "write_s": round(time.perf_counter() - t, 2), "readers": {}}
        bound = 2 * made["chunk_bytes"] + 300e6
        for reader in READERS:
            if "eager" in reader and not eager:
                continue
            got = read_in_child(url, reader)
            growth = got["peak"] - got["before"]
            out["readers"][reader] = {
                "seconds": round(got["seconds"], 2), "peak_mb": round(got["peak"] / 1e6),
                "before_read_mb": round(got["before"] / 1e6), "growth_mb": round(growth / 1e6),
                "backing": got["backing"], "within_bound": growth <= bound,
                "max_abs_error": float(np.abs(np.asarray(got["mean"]) - made["mean"]).max())}
        out["bound_mb"] = round(bound / 1e6)
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m lamina.benchmarks.lazy_read_bench", description=__doc__.split("\n")[0])
    p.add_argument("--gib", type=float, default=1.0, help="size of the array (GiB, >= 1 for the README figure)")
    p.add_argument("--chunk-mib", type=float, default=8, help="stored chunk size (MiB)")
    p.add_argument("--eager", action="store_true", help="also read without chunks= (not lazy; needs ~3x the array)")
    p.add_argument("--tmp-dir", default=None)
    args = p.parse_args(argv)
    out = run(args.gib, args.chunk_mib, args.eager, args.tmp_dir)
    print(f"acts/mlp_pre {out['shape']} float32: {out['array_bytes'] / 1e9:.2f} GB in chunks of "
          f"{out['chunk_bytes'] / 1e6:.1f} MB (written in {out['write_s']} s); bound: memory growth <= 2 chunks + "
          f"300 MB = {out['bound_mb']} MB")
    for reader, r in out["readers"].items():
        print(f"  {reader:<30} {r['seconds']:>7.2f} s   peak {r['peak_mb']:>6} MB   before the read "
              f"{r['before_read_mb']:>5} MB   growth {r['growth_mb']:>6} MB   {r['backing']:<22} "
              f"{'within' if r['within_bound'] else 'OVER'} the bound   max |error| {r['max_abs_error']:.1e}")
    return out


if __name__ == "__main__":
    main()
