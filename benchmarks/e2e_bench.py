"""End to end: ``lamina run qkv --weights random`` as a user runs it, against its floor, phase by phase.

The run records its own phases (``timings`` attribute: load, capture, compute, write, figures); the
floor is measured in the same process afterwards on the same model and sentences: the raw HuggingFace
body (no hooks, no LM head, its default attention kernel) over the same micro-batches, plus the six
Q/K/V block products of every layer, role and variant (cosine, correlation) and of the random baseline
(the shuffled target activations: the same six blocks make its whole upper triangle) — the arithmetic
the analysis cannot avoid.

>>> res = run_e2e("gpt2", device="cpu")          # doctest: +SKIP
>>> res["ratio_to_floor"]         # (capture + compute) / (body + GEMMs)   # doctest: +SKIP
1.21
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def run_e2e(model: str, *, device: str = "cpu", weights: str = "random", tmp_dir: str | None = None,
            repeats: int = 2) -> dict[str, Any]:
    """Run the command once (a fresh process), then time its floor here; returns the phases and ratios."""
    with tempfile.TemporaryDirectory(prefix="lamina-e2e-", dir=tmp_dir) as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "lamina.analyses.cli", "run", "qkv", "--model", model, "--weights", weights,
               "--device", device, "--out", str(out), "--no-progress"]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"lamina run qkv failed: {proc.stderr[-2000:]}")
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        import lamina

        run = lamina.open_run(out)
        phases = dict(run.attrs.get("timings", {}))
        tokens = run.numpy("inputs/tokens")
        lengths = run.numpy("inputs/lengths")
        n_layers = run["acts/target"].shape[0]
        d = run["acts/target"].shape[2]
    body = _body_seconds(model, weights, device, tokens, lengths, repeats)
    gemm = _gemm_seconds(n_layers, tokens.shape[0], d, device, repeats)
    work = phases.get("capture_s", 0.0) + phases.get("compute_s", 0.0)
    return {"case": f"lamina run qkv --model {model} --weights {weights}", "device": device, "wall_s": round(wall, 2),
            "peak_rss_mib": round(peak_mib), "phases_s": phases, "floor_body_s": round(body, 3),
            "floor_gemm_s": round(gemm, 3), "ratio_to_floor": round(work / max(body + gemm, 1e-9), 3)}


def _body_seconds(model: str, weights: str, device: str, tokens, lengths, repeats: int) -> float:
    """The raw HF body over the same micro-batches as the run (median of ``repeats``)."""
    from lamina.engine.capture import auto_micro_batch
    from lamina.engine.models import load_model

    m = load_model(model, weights=weights, device=device)
    body = getattr(m.bridge.original_model, m.bridge.original_model.base_model_prefix)
    toks = torch.as_tensor(tokens, dtype=torch.long)
    lens = torch.as_tensor(lengths)
    mb = auto_micro_batch(m, toks.shape[1], len(toks))
    times = []
    for i in range(repeats + 1):  # the first pass warms up (allocator, kernels) and is not counted
        t = time.perf_counter()
        with torch.inference_mode():
            for a in range(0, len(toks), mb):
                w = int(lens[a:a + mb].max())
                ids = toks[a:a + mb, :w].to(m.device)
                mask = (torch.arange(w)[None] < lens[a:a + mb, None]).long().to(m.device)
                body(input_ids=ids, attention_mask=mask, use_cache=False)
        if m.device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def _gemm_seconds(n_layers: int, n: int, features: int, device: str, repeats: int) -> float:
    """Six (d × n)(n × d) block products per layer, for (2 roles + the baseline) × 2 variants (median of ``repeats``)."""
    d = features // 3
    x = torch.randn(n, features, device=device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _layer in range(n_layers * 6):
            q, k, v = x[:, :d], x[:, d:2 * d], x[:, 2 * d:]
            for a, b in ((q, q), (k, k), (v, v), (q, k), (q, v), (k, v)):
                a.T @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def table(res: dict[str, Any]) -> str:
    p = res["phases_s"]
    phases = ", ".join(f"{k.removesuffix('_s')} {v:.2f}" for k, v in p.items())
    return (f"{res['case']} on {res['device']}: wall {res['wall_s']:.1f} s, peak RSS {res['peak_rss_mib']} MiB\n"
            f"  phases (s): {phases}\n"
            f"  floor: raw HF body {res['floor_body_s']:.2f} s + block GEMMs {res['floor_gemm_s']:.2f} s; "
            f"(capture + compute) / floor = {res['ratio_to_floor']:.2f}x")
