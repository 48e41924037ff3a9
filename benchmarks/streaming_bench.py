"""Streaming correlation at scale: ``lamina run length --no-store-acts`` over 100k and 1M tokens.

Each size runs ``lamina run length`` in its own process on a small random GPT-Neo
checkpoint (made on the fly) and a corpus built by repeating the shipped one; peak
resident memory is sampled with psutil. Activations are never stored: every work
unit is reduced on the device to per-neuron running moments, so peak memory must
not grow with the corpus.

    python -m lamina.benchmarks.streaming_bench [--sizes 100000,1000000] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from .timing import load_average

SEQ_LEN = 512


def make_model(folder: Path) -> Path:
    import torch
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    from lamina.engine.tokenizer import gpt2_tokenizer

    torch.manual_seed(0)
    cfg = GPTNeoConfig(num_layers=2, hidden_size=128, num_heads=4, max_position_embeddings=SEQ_LEN,
                       attention_types=[[["global", "local"], 1]], window_size=256, intermediate_size=512)
    GPTNeoForCausalLM(cfg).save_pretrained(str(folder))
    gpt2_tokenizer().save_pretrained(str(folder))
    return folder


def make_corpus(path: Path, tokens: int) -> Path:
    from lamina.analyses.textfiles import stimulus_path

    text = stimulus_path("corpus.txt").read_text(encoding="utf-8")
    repeats = math.ceil(tokens / 11_000) + 1  # the shipped corpus has ~11.4k GPT-2 tokens
    path.write_text("\n\n".join([text] * repeats), encoding="utf-8")
    return path


def run_size(model: Path, tokens: int, work: Path) -> dict:
    n_seq = math.ceil(tokens / SEQ_LEN)
    corpus = make_corpus(work / f"corpus-{tokens}.txt", n_seq * SEQ_LEN)
    cmd = [sys.executable, "-m", "lamina.analyses.cli", "run", "length", "--model", str(model), "--text", str(corpus),
           "--n-seq", str(n_seq), "--seq-len", str(SEQ_LEN), "--block", "1", "--no-store-acts", "--no-figures", "--no-progress",
           "--overwrite", "--out", str(work / f"run-{tokens}")]
    load_start = load_average()
    start = time.perf_counter()
    proc = psutil.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                        env={**os.environ, "HF_HUB_OFFLINE": "1"})
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"lamina run length failed at {tokens} tokens: {proc.stderr.read().decode()[-2000:]}")
    return {"tokens": n_seq * SEQ_LEN, "seconds": seconds, "tokens_per_s": n_seq * SEQ_LEN / seconds,
            "peak_rss_mib": peak / 2**20, "load_average_1min": {"start": load_start, "end": load_average()}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated token counts")
    ap.add_argument("--out", default=None, help="JSON output file")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="lamina-streaming-") as tmp:
        work = Path(tmp)
        model = make_model(work / "model")
        rows = [run_size(model, n, work) for n in sizes]
    growth = rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"] - 1
    report = {"case": "streaming_length_correlation", "rows": rows, "peak_rss_growth": growth}
    print(f"{'tokens':>10} {'seconds':>9} {'tokens/s':>10} {'peak RSS MiB':>13} {'load start -> end':>18}")
    for r in rows:
        load = r["load_average_1min"]
        print(f"{r['tokens']:>10} {r['seconds']:>9.1f} {r['tokens_per_s']:>10.0f} {r['peak_rss_mib']:>13.0f} "
              f"{load['start']!s:>8} -> {load['end']!s:<8}")
    print(f"peak RSS growth {sizes[0]} -> {sizes[-1]} tokens: {100 * growth:+.1f}%")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
