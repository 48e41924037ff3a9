"""Scaling: capture + store of every position for 10k, 100k, 1M tokens; throughput and peak RSS per size.

>>> sizes_for("quick")
[10000, 100000]

Each size runs in its own Python process (``python -m lamina.benchmarks.scaling_bench
--tokens N ...``), so its peak resident memory is its own and not the high-water mark
of an earlier, larger run. The child loads the model, warms up on one micro-batch,
then times ``capture_to_store`` of ``blocks.{L-1}.hook_resid_post`` at every position
of ``ceil(N / seq_len)`` random sequences into a fresh local Zarr store, and prints one
JSON line. Reported: tokens/s, peak RSS during the capture (sampled), RSS before it,
and bytes written. ``quick`` uses a 1-block model with GPT-2-small widths (a local
random checkpoint made on the fly).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .timing import child_json

MARK = "LAMINA_SCALING_JSON "


def sizes_for(mode: str) -> list[int]:
    return {"full": [10_000, 100_000, 1_000_000], "quick": [10_000, 100_000], "tiny": [1_000, 4_000]}[mode]


def small_gpt2(folder: Path, n_layers: int = 1) -> str:
    """A random checkpoint with GPT-2-small widths and ``n_layers`` blocks (for ``--quick``), with the GPT-2 tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    from lamina.engine.tokenizer import gpt2_tokenizer

    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        hf_logging.disable_progress_bar()
        try:
            GPT2LMHeadModel(GPT2Config(n_layer=n_layers)).save_pretrained(str(folder))
        finally:
            hf_logging.enable_progress_bar()
        gpt2_tokenizer().save_pretrained(str(folder))
    return str(folder)


def run_size(model_name: str, tokens: int, *, seq_len: int, device: str, tmp_dir: str | None = None,
             micro_batch: int | None = None) -> dict[str, Any]:
    """One size in THIS process: load, warm up, time capture + store. Returns the JSON record."""
    from lamina.engine.capture import auto_micro_batch
    from lamina.engine.hooks import Capture, layer_hooks
    from lamina.engine.inputs import Selector, TokenBatch
    from lamina.engine.models import MODEL_SPECS, load_model
    from lamina.engine.pipeline import capture_to_store
    from lamina.engine.store import RunStore

    from .timing import PeakRSS, sync

    model = load_model(model_name, weights="random" if model_name in MODEL_SPECS else "pretrained", device=device)
    seq_len = min(seq_len, model.n_ctx)
    n_seq = math.ceil(tokens / seq_len)
    g = torch.Generator().manual_seed(0)
    batch = TokenBatch(torch.randint(0, model.cfg.d_vocab, (n_seq, seq_len), generator=g),
                       torch.full((n_seq,), seq_len), int(model.tokenizer.eos_token_id))
    hook = f"blocks.{model.n_layers - 1}.hook_resid_post"
    caps = [Capture("acts/resid", layer_hooks(hook, [0]), Selector.every())]
    mb = micro_batch or auto_micro_batch(model, seq_len, n_seq)
    root = Path(tempfile.mkdtemp(prefix="lamina-scaling-", dir=tmp_dir))
    try:
        def capture(b: TokenBatch, name: str) -> None:
            store = RunStore.open(str(root / name), experiment="bench-scaling", key={}, provenance={}, overwrite=True)
            try:
                capture_to_store(model, b, caps, store, micro_batch=mb, progress=False)
                store.finalise()
            finally:
                store.close()

        warm = TokenBatch(batch.tokens[:mb], batch.lengths[:mb], batch.pad_id)
        capture(warm, "warmup.zarr")
        shutil.rmtree(root / "warmup.zarr", ignore_errors=True)
        sync(model.device)
        if model.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(model.device)
        with PeakRSS() as rss:
            c0, t0 = time.process_time(), time.perf_counter()
            capture(batch, "run.zarr")
            sync(model.device)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        n_tokens = n_seq * seq_len
        nbytes = n_tokens * model.d_model * 4
        out = {"tokens": n_tokens, "n_seq": n_seq, "seq_len": seq_len, "micro_batch": mb, "hook": hook,
               "model": model_name, "n_layers": model.n_layers, "device": str(model.device), "seconds": seconds,
               "tokens_per_s": n_tokens / seconds, "cpu_seconds": cpu, "tokens_per_cpu_s": n_tokens / cpu, "peak_rss_mib": round(rss.peak_mib, 1),
               "rss_before_mib": round(rss.before_mib, 1), "store_bytes": nbytes,
               "store_gb_per_s": nbytes / seconds / 1e9}
        if model.device.type == "cuda":
            out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(model.device) / (1 << 20), 1)
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_scaling(model_name: str, sizes: list[int], *, seq_len: int, device: str, tmp_dir: str | None = None,
                inprocess: bool = False, threads: int | None = None, timeout_s: float | None = None) -> dict[str, Any]:
    """Every size (in a fresh process unless ``inprocess``), then growth of peak RSS and throughput."""
    runs = []
    for n in sizes:
        if inprocess:
            runs.append(run_size(model_name, n, seq_len=seq_len, device=device, tmp_dir=tmp_dir))
            continue
        argv = ["--model", model_name, "--tokens", str(n), "--seq-len", str(seq_len), "--device", device] \
            + (["--tmp-dir", tmp_dir] if tmp_dir else []) + (["--threads", str(threads)] if threads else [])
        runs.append(child_json("lamina.benchmarks.scaling_bench", argv, MARK, f"scaling run for {n} tokens", timeout_s))
    first, last = runs[0], runs[-1]
    return {
        "model": model_name, "hook": runs[0]["hook"], "seq_len": runs[0]["seq_len"], "device": device,
        "torch_threads": threads or torch.get_num_threads(),
        "independent_processes": not inprocess, "sizes": runs,
        "peak_rss_growth": round(last["peak_rss_mib"] / first["peak_rss_mib"] - 1, 4),
        "throughput_last_over_first": round(last["tokens_per_s"] / first["tokens_per_s"], 4),
        "cpu_throughput_last_over_first": round(last["tokens_per_cpu_s"] / first["tokens_per_cpu_s"], 4),
    }


def table(res: dict[str, Any]) -> str:
    rows = [(f"scaling: model={res['model']}, hook={res['hook']}, seq_len={res['seq_len']}, device={res['device']}, "
             f"threads={res['torch_threads']}, separate processes={res['independent_processes']}"),
            (f"  {'tokens':>10} {'seconds':>10} {'tokens/s':>11} {'tokens/cpu s':>13} {'peak RSS MiB':>13} "
             f"{'RSS before':>11} {'store GB/s':>10}")]
    for r in res["sizes"]:
        rows.append(f"  {r['tokens']:>10,} {r['seconds']:>10.2f} {r['tokens_per_s']:>11,.0f} "
                    f"{r['tokens_per_cpu_s']:>13,.0f} {r['peak_rss_mib']:>13,.0f} {r['rss_before_mib']:>11,.0f} "
                    f"{r['store_gb_per_s']:>10.3f}")
    rows.append(f"  peak RSS growth smallest -> largest: {100 * res['peak_rss_growth']:+.1f}%; "
                f"throughput largest / smallest: {res['throughput_last_over_first']:.3f} "
                f"(per CPU second: {res['cpu_throughput_last_over_first']:.3f})")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    """Child entry point: one size, one JSON line on stdout."""
    p = argparse.ArgumentParser(prog="python -m lamina.benchmarks.scaling_bench", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--tokens", type=int, required=True)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--device", default="cpu")
    p.add_argument("--tmp-dir", default=None)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(MARK + json.dumps(run_size(a.model, a.tokens, seq_len=a.seq_len, device=a.device, tmp_dir=a.tmp_dir)),
          flush=True)


if __name__ == "__main__":
    main()
