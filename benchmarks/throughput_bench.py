"""Capture throughput against the disk and the forward: ``lamina capture`` of every layer, every position.

>>> sizes_for("full")
[100000, 1000000]

One size per Python process (``python -m lamina.benchmarks.throughput_bench --tokens N ...``), so
its peak resident memory is its own. The child loads the model (by default a random checkpoint
with GPT-2-small widths and 2 blocks, made on the fly), warms up on one micro-batch, then times,
on ``ceil(N / seq_len)`` random sequences of ``seq_len`` tokens:

- ``lamina``: ``lamina.capture(model, tokens, hooks="blocks.{layer}.hook_resid_post",
  positions="all", out=RUN)``, the code path of ``lamina capture --positions all --out RUN``
  (run metadata, work units, Zarr chunks with checksums, finalise), peak RSS sampled;
- ``compute floor``: the raw HF transformer body over the same micro-batches, no hooks, no store
  (above ``FLOOR_TOKENS`` tokens timed on the first micro-batches and scaled to all: labelled in the JSON);
- ``disk floor``: a plain sequential write of the same number of bytes into one file in the
  same folder (8 MiB ``write`` calls from one buffer; no fsync, as lamina's store does none),
  and, reported beside it, the ``fsync`` that would push them to the device.

Reported per size: tokens/s and GB/s of each, lamina / max(compute floor, disk floor) and
lamina / (compute floor + disk floor) (what no overlap at all would cost), peak RSS; across
sizes the growth of peak RSS. The child prints one JSON line; the parent collects them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .timing import child_json

MARK = "LAMINA_THROUGHPUT_JSON "
HOOK = "blocks.{layer}.hook_resid_post"
WRITE_CHUNK = 8 << 20
FLOOR_TOKENS = 204_800  # the compute floor is timed on at most this many tokens, then scaled


def sizes_for(mode: str) -> list[int]:
    return {"full": [100_000, 1_000_000], "quick": [32_768], "tiny": [2_048]}[mode]


def run_size(model_name: str, tokens: int, *, seq_len: int, device: str, tmp_dir: str | None = None,
             repeats: int = 1, floor_tokens: int = FLOOR_TOKENS) -> dict[str, Any]:
    """One size in THIS process: load, warm up, then lamina, the compute floor and the disk floor.

    The compute floor runs the first ``floor_tokens`` tokens' micro-batches and is scaled to all
    (a forward's cost per token does not depend on how many came before); the others run in full.
    """
    import lamina
    from lamina.engine.capture import auto_micro_batch
    from lamina.engine.inputs import TokenBatch
    from lamina.engine.models import MODEL_SPECS

    from .capture_bench import micro_batches, raw_hf_twin
    from .timing import PeakRSS, sync

    model = lamina.load_model(model_name, weights="random" if model_name in MODEL_SPECS else "pretrained",
                              device=device)
    seq_len = min(seq_len, model.n_ctx)
    n_seq = math.ceil(tokens / seq_len)
    g = torch.Generator().manual_seed(0)
    batch = TokenBatch(torch.randint(0, model.cfg.d_vocab, (n_seq, seq_len), generator=g),
                       torch.full((n_seq,), seq_len), int(model.tokenizer.eos_token_id))
    mb = auto_micro_batch(model, seq_len, n_seq)
    raw = raw_hf_twin(model)
    body = getattr(raw, raw.base_model_prefix)
    root = Path(tempfile.mkdtemp(prefix="lamina-throughput-", dir=tmp_dir))
    n_tokens = n_seq * seq_len
    nbytes = n_tokens * model.d_model * model.n_layers * 4
    times: dict[str, list[float]] = {"lamina": [], "compute": [], "disk": [], "fsync": []}
    rss: dict[str, float] = {}
    try:
        def capture(b: TokenBatch, name: str) -> None:
            lamina.capture(model, b, hooks=HOOK, positions="all", out=str(root / name), micro_batch=mb)

        floor_batches = micro_batches(batch, mb, model.device)[: max(1, math.ceil(floor_tokens / (mb * seq_len)))]
        floor_scale = n_seq / sum(int(t.shape[0]) for t, _ in floor_batches)

        def compute() -> None:
            with torch.inference_mode():
                for t, m in floor_batches:
                    body(t, attention_mask=m)
            sync(model.device)

        def disk() -> tuple[float, float]:
            buf = memoryview(bytearray(WRITE_CHUNK))
            path = root / "plain.bin"
            t0 = time.perf_counter()
            with open(path, "wb", buffering=0) as f:
                left = nbytes
                while left > 0:
                    left -= f.write(buf[: min(left, WRITE_CHUNK)])
                t1 = time.perf_counter()
                os.fsync(f.fileno())
                t2 = time.perf_counter()
            path.unlink()
            return t1 - t0, t2 - t1

        capture(TokenBatch(batch.tokens[:mb], batch.lengths[:mb], batch.pad_id), "warmup")
        shutil.rmtree(root / "warmup")
        for r in range(repeats):
            sync(model.device)
            with PeakRSS() as peak:
                t0 = time.perf_counter()
                capture(batch, f"run{r}")
                times["lamina"].append(time.perf_counter() - t0)
            if r == 0:
                rss = {"peak_rss_mib": round(peak.peak_mib, 1), "rss_before_mib": round(peak.before_mib, 1)}
            shutil.rmtree(root / f"run{r}")  # deleted at once: its dirty pages need no writeback
            t0 = time.perf_counter()
            compute()
            times["compute"].append((time.perf_counter() - t0) * floor_scale)
            w, s = disk()
            times["disk"].append(w)
            times["fsync"].append(s)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    floor = max(med["compute"], med["disk"])
    out = {"tokens": n_tokens, "n_seq": n_seq, "seq_len": seq_len, "micro_batch": mb, "hook": HOOK,
           "positions": "all", "model": model_name, "n_layers": model.n_layers, "d_model": model.d_model,
           "device": str(model.device), "torch_threads": torch.get_num_threads(), "store_bytes": nbytes,
           "repeats": repeats, "times": times, **rss,
           "compute_floor_tokens_timed": min(n_tokens, sum(int(t.shape[0]) for t, _ in floor_batches) * seq_len),
           "lamina_s": med["lamina"], "compute_floor_s": med["compute"], "disk_floor_s": med["disk"],
           "fsync_s": med["fsync"],
           "lamina_tokens_per_s": n_tokens / med["lamina"], "lamina_gb_per_s": nbytes / med["lamina"] / 1e9,
           "compute_tokens_per_s": n_tokens / med["compute"], "disk_gb_per_s": nbytes / med["disk"] / 1e9,
           "disk_with_fsync_gb_per_s": nbytes / (med["disk"] + med["fsync"]) / 1e9,
           "lamina_over_max_floor": med["lamina"] / floor,
           "lamina_over_sum_of_floors": med["lamina"] / (med["compute"] + med["disk"]),
           "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    return out


def run_throughput(model_name: str, sizes: list[int], *, seq_len: int = 512, device: str = "cpu",
                   tmp_dir: str | None = None, inprocess: bool = False, threads: int | None = None,
                   repeats: int = 1, timeout_s: float | None = None) -> dict[str, Any]:
    """Every size (in a fresh process unless ``inprocess``), then peak-RSS growth across sizes."""
    runs = []
    for n in sizes:
        if inprocess:
            runs.append(run_size(model_name, n, seq_len=seq_len, device=device, tmp_dir=tmp_dir, repeats=repeats))
            continue
        argv = ["--model", model_name, "--tokens", str(n), "--seq-len", str(seq_len), "--device", device,
                "--repeats", str(repeats)] + (["--tmp-dir", tmp_dir] if tmp_dir else []) \
            + (["--threads", str(threads)] if threads else [])
        runs.append(child_json("lamina.benchmarks.throughput_bench", argv, MARK, f"throughput run for {n} tokens",
                               timeout_s))
    out = {"model": model_name, "hook": HOOK, "positions": "all", "seq_len": runs[0]["seq_len"], "device": device,
           "torch_threads": threads or torch.get_num_threads(), "independent_processes": not inprocess,
           "sizes": runs}
    if len(runs) > 1:
        out["peak_rss_growth"] = round(runs[-1]["peak_rss_mib"] / runs[0]["peak_rss_mib"] - 1, 4)
    return out


def table(res: dict[str, Any]) -> str:
    rows = [(f"throughput: lamina capture --hook '{res['hook']}' --positions all, model={res['model']}, "
             f"device={res['device']}, threads={res['torch_threads']}"),
            (f"  {'tokens':>10} {'lamina s':>9} {'tok/s':>9} {'GB/s':>6} {'compute s':>10} {'disk s':>7} "
             f"{'disk GB/s':>9} {'+fsync':>7} {'/max floor':>10} {'/sum':>6} {'peak RSS MiB':>12}")]
    for r in res["sizes"]:
        rows.append(f"  {r['tokens']:>10,} {r['lamina_s']:>9.2f} {r['lamina_tokens_per_s']:>9,.0f} "
                    f"{r['lamina_gb_per_s']:>6.2f} {r['compute_floor_s']:>10.2f} {r['disk_floor_s']:>7.2f} "
                    f"{r['disk_gb_per_s']:>9.2f} {r['fsync_s']:>7.2f} {r['lamina_over_max_floor']:>10.3f} "
                    f"{r['lamina_over_sum_of_floors']:>6.3f} {r['peak_rss_mib']:>12,.0f}")
    if "peak_rss_growth" in res:
        rows.append(f"  peak RSS growth smallest -> largest: {100 * res['peak_rss_growth']:+.1f}%")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    """Child entry point: one size, one JSON line on stdout."""
    p = argparse.ArgumentParser(prog="python -m lamina.benchmarks.throughput_bench",
                                description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--tokens", type=int, required=True)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--device", default="cpu")
    p.add_argument("--tmp-dir", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=1)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(MARK + json.dumps(run_size(a.model, a.tokens, seq_len=a.seq_len, device=a.device, tmp_dir=a.tmp_dir,
                                     repeats=a.repeats)), flush=True)


if __name__ == "__main__":
    main()
