"""What the crc32c checksum on every chunk costs: store writes with and without it, side by side.

    python -m lamina.benchmarks.checksum_bench [--mib 256] [--chunk-mib 4] [--repeats 5]

The same float32 activations are written as a run writes them (whole chunks, every chunk stored) into
two local Zarr v3 arrays, one with zarr's ``crc32c`` codec (what lamina writes) and one without,
interleaved round-robin; then read back the same way (reads verify the checksum). Prints seconds,
GB/s and the ratio, and the cost relative to a capture of the same bytes at the capture throughput
given (``--capture-mb-s``, the rate lamina's capture produces activations, measured by the capture
benchmark).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec


def run(mib: int = 256, chunk_mib: int = 4, repeats: int = 5, tmp_dir: str | None = None) -> dict:
    features = 4096
    rows_per_chunk = chunk_mib * (1 << 20) // (4 * features)
    n_rows = mib * (1 << 20) // (4 * features)
    data = np.random.default_rng(0).standard_normal((n_rows, features), dtype=np.float32)
    times: dict[str, dict[str, list[float]]] = {k: {"write": [], "read": []} for k in ("crc32c", "none")}
    root = tempfile.mkdtemp(prefix="lamina-crc-", dir=tmp_dir)
    try:
        for r in range(repeats):
            for kind in ("crc32c", "none") if r % 2 == 0 else ("none", "crc32c"):
                path = os.path.join(root, f"{kind}-{r}")
                arr = zarr.create_array(path, shape=data.shape, chunks=(rows_per_chunk, features), dtype="float32",
                                        compressors=[Crc32cCodec()] if kind == "crc32c" else None,
                                        config={"write_empty_chunks": True}, zarr_format=3)
                t = time.perf_counter()
                for a in range(0, n_rows, rows_per_chunk):
                    arr[a:a + rows_per_chunk] = data[a:a + rows_per_chunk]
                times[kind]["write"].append(time.perf_counter() - t)
                t = time.perf_counter()
                for a in range(0, n_rows, rows_per_chunk):
                    np.asarray(arr[a:a + rows_per_chunk])
                times[kind]["read"].append(time.perf_counter() - t)
                shutil.rmtree(path)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    gb = data.nbytes / 1e9
    out = {"bytes": data.nbytes, "chunk_bytes": rows_per_chunk * features * 4, "repeats": repeats,
           "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    for op in ("write", "read"):
        crc, plain = (statistics.median(times[k][op]) for k in ("crc32c", "none"))
        out[op] = {"crc32c_s": round(crc, 4), "none_s": round(plain, 4), "crc32c_gb_s": round(gb / crc, 2),
                   "none_gb_s": round(gb / plain, 2), "ratio": round(crc / plain, 3),
                   "spread_crc32c": [round(min(times["crc32c"][op]), 4), round(max(times["crc32c"][op]), 4)]}
    return out


def capture_cost(model: str = "EleutherAI/gpt-neo-125M", n_seq: int = 4, seq_len: int = 512, repeats: int = 3,
                 tmp_dir: str | None = None) -> dict:
    """Capture + store of every block's mlp.hook_pre at every position, with and without the checksum,
    interleaved (the whole pipeline: forward, gather, background copy and writes)."""
    import torch

    from lamina.engine import store as store_mod
    from lamina.engine.hooks import Capture, layer_hooks
    from lamina.engine.inputs import Selector, TokenBatch
    from lamina.engine.models import load_model
    from lamina.engine.pipeline import capture_to_store

    m = load_model(model, weights="random", device="cpu")
    g = torch.Generator().manual_seed(0)
    batch = TokenBatch(torch.randint(0, 50000, (n_seq, seq_len), generator=g), torch.full((n_seq,), seq_len), 0)
    cap = Capture("acts/pre", layer_hooks("blocks.{layer}.mlp.hook_pre", range(m.n_layers)), Selector.every())
    times: dict[bool, list[float]] = {True: [], False: []}
    root = tempfile.mkdtemp(prefix="lamina-crc-capture-", dir=tmp_dir)
    try:
        for r in range(repeats + 1):
            for checksum in (True, False) if r % 2 else (False, True):
                store_mod.CHECKSUM = checksum
                st = store_mod.RunStore.open(os.path.join(root, f"{checksum}-{r}"), experiment="bench", key={},
                                             provenance={})
                t = time.perf_counter()
                capture_to_store(m, batch, [cap], st, micro_batch=1, samples_per_chunk=1, progress=False)
                if r:  # the first round warms up
                    times[checksum].append(time.perf_counter() - t)
                st.close()
                shutil.rmtree(os.path.join(root, f"{checksum}-{r}"))
    finally:
        store_mod.CHECKSUM = True
        shutil.rmtree(root, ignore_errors=True)
    crc, plain = statistics.median(times[True]), statistics.median(times[False])
    return {"model": model, "tokens": n_seq * seq_len, "crc32c_s": round(crc, 3), "none_s": round(plain, 3),
            "ratio": round(crc / plain, 4), "crc32c_all": times[True], "none_all": times[False],
            "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m lamina.benchmarks.checksum_bench")
    p.add_argument("--mib", type=int, default=256)
    p.add_argument("--chunk-mib", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--capture-mb-s", type=float, default=None,
                   help="capture throughput in MB of activations per second, to express the checksum's cost as a "
                        "share of a capture")
    p.add_argument("--capture", action="store_true", help="also time a whole capture + store with and without it")
    a = p.parse_args(argv)
    res = run(a.mib, a.chunk_mib, a.repeats)
    for op in ("write", "read"):
        r = res[op]
        print(f"{op:<5} {res['bytes'] / 2**20:.0f} MiB in {res['chunk_bytes'] / 2**20:.0f} MiB chunks: crc32c "
              f"{r['crc32c_s']:.3f} s ({r['crc32c_gb_s']} GB/s), none {r['none_s']:.3f} s ({r['none_gb_s']} GB/s): "
              f"{r['ratio']:.3f}x")
    if a.capture_mb_s:
        extra = res["write"]["crc32c_s"] - res["write"]["none_s"]
        capture_s = res["bytes"] / 1e6 / a.capture_mb_s
        print(f"checksum cost on a capture producing {a.capture_mb_s:.0f} MB/s: {100 * extra / capture_s:+.2f}%")
    print(f"load average {res['load_average']}")
    if a.capture:
        c = capture_cost(repeats=a.repeats)
        res["capture"] = c
        print(f"capture + store, {c['model']} random, {c['tokens']} tokens, mlp.hook_pre of every block at every "
              f"position: crc32c {c['crc32c_s']:.2f} s, none {c['none_s']:.2f} s: {c['ratio']:.3f}x "
              f"(load {c['load_average']:.2f})")
    return res


if __name__ == "__main__":
    main()
