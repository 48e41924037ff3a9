"""CKA of every layer pair, side by side: lamina vs per-pair loops in the style of the CKA libraries vs the GEMM floor.

    python -m lamina.benchmarks.cka_bench --quick          # about a minute on a 2-core CPU
    python -m lamina.benchmarks.cka_bench                  # 48 x 48 pairs, 2048 tokens x 1600
    python -m lamina.benchmarks.cka_bench --device cuda --tokens 8192 --out bench-results/cka-h200.json

>>> spec = bench_spec("tiny")
>>> spec["layers"], spec["width"]
(3, 16)

One activation set of GPT-2-XL width (``layers`` x ``tokens`` x 1600, random float32: speed does
not depend on values) and the CKA of every layer with every layer (48 x 48 = 2304 pairs):

* ``lamina``: :func:`~lamina.engine.kernels.cka.cka_terms` (Gram form at these sizes) and both
  matrices, biased and debiased;
* ``floor``: the matrix products of lamina's Gram form and nothing else, into preallocated
  buffers: the Gram blocks of the upper block triangle and one ``[L, b²] @ [b², L]`` per block pair;
* ``per_pair_feature``: the loop of anatome-style libraries, per pair: centre X and Y, then
  ``‖XᵀY‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)`` (three d x N x d products);
* ``per_pair_gram``: the loop of Kornblith et al.'s reference code (and torch_cka-style
  libraries), per pair: ``K = XXᵀ``, ``L = YYᵀ``, both centred (``HKH``), then
  ``⟨K, L⟩ / (‖K‖ ‖L‖)``;
* ``bootstrap``: :func:`~lamina.engine.kernels.cka_inference.cka_bootstrap_terms` with B = 1000 multinomial
  resamples of units of 64 tokens, both matrices for every resample;
* ``minibatch``: :func:`~lamina.engine.kernels.cka_streaming.minibatch_state` over the same tokens (the
  streamed debiased form, minibatches of 256).

The two per-pair loops are timed on ``sample_pairs`` pairs and scaled to all L x L pairs
(labelled so). All variants run interleaved, round robin (:func:`~lamina.benchmarks.timing.
measure_many`): warm-up, then at least ``--repeats`` rounds and more until every variant's
``(max - min) / median`` is under 10% or ``--max-repeats`` rounds were timed. Ratios are of
medians measured in the same process on the same inputs; the JSON keeps every repeat.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
from pathlib import Path
from typing import Any

import torch

from lamina.engine.kernels import cka as cka_mod
from lamina.engine.kernels.bootstrap import resample_counts
from lamina.engine.kernels.cka import cka_terms
from lamina.engine.kernels.cka_inference import cka_bootstrap_terms
from lamina.engine.kernels.cka_streaming import minibatch_state

from .report import CaseResult
from .timing import Timing, machine_info, measure_many

UNIT_TOKENS = 64  # tokens per bootstrap unit
MINIBATCH = 256
RESAMPLES = 1000


def bench_spec(mode: str) -> dict[str, int]:
    """Shapes per mode: full (GPT-2 XL: 48 layers x 1600, 2048 tokens), quick (512 tokens), tiny (smoke)."""
    if mode == "tiny":
        return {"layers": 3, "tokens": 128, "width": 16, "sample_pairs": 2}
    return {"layers": 48, "tokens": 2048 if mode == "full" else 512, "width": 1600,
            "sample_pairs": 3 if mode == "full" else 4}


def per_pair_feature(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """anatome-style linear CKA of one pair: centre, then three d x N x d products."""
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    return torch.linalg.norm(x.T @ y) ** 2 / (torch.linalg.norm(x.T @ x) * torch.linalg.norm(y.T @ y))


def per_pair_gram(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Kornblith-style linear CKA of one pair: Grams, centred (HKH by row/column means), cosine of the Grams."""

    def centred(k: torch.Tensor) -> torch.Tensor:
        return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()

    k, l = centred(x @ x.T), centred(y @ y.T)
    return (k * l).sum() / (torch.linalg.norm(k) * torch.linalg.norm(l))


def _pairs(layers: int, count: int) -> list[tuple[int, int]]:
    step = max(1, layers * layers // count)
    return [divmod(i, layers) for i in range(0, layers * layers, step)][:count]


def _scaled(t: Timing, scale: float) -> Timing:
    return Timing(t.seconds * scale, tuple(x * scale for x in t.times), t.peak_rss_mib, t.rss_before_mib,
                  None, None if t.cpu_seconds is None else t.cpu_seconds * scale)


def run(spec: dict[str, int], *, device: str, warmup: int = 1, repeats: int = 3, max_repeats: int = 5) -> CaseResult:
    """Time every variant on one activation set; returns the case (table and JSON)."""
    dev = torch.device(device)
    layers, n, d = spec["layers"], spec["tokens"], spec["width"]
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(layers, n, d, generator=g, device=dev)  # (layer, token, feature)
    units = max(1, n // UNIT_TOKENS)
    sizes = [n // units] * units
    sizes[-1] += n - sum(sizes)
    weights = resample_counts(units, RESAMPLES, generator=g)
    out: dict[str, Any] = {}

    def lamina():
        t = cka_terms(x)
        out["cka"], out["cka_debiased"] = t.cka(), t.cka_debiased()

    # the floor: lamina's Gram-form products alone
    block = cka_mod._block_size(n, layers)
    starts = list(range(0, n, block))
    grams = {}  # preallocated outputs, one per block shape
    for r0 in starts:
        for t0 in starts:
            shape = (min(r0 + block, n) - r0, min(t0 + block, n) - t0)
            grams.setdefault(shape, torch.empty(layers, *shape, device=dev))
    pair = torch.empty(layers, layers, device=dev)

    def floor():
        for r0 in starts:
            r1 = min(r0 + block, n)
            for t0 in starts[starts.index(r0):]:
                t1 = min(t0 + block, n)
                k = torch.bmm(x[:, r0:r1], x[:, t0:t1].mT, out=grams[(r1 - r0, t1 - t0)])
                f = k.flatten(1)
                torch.mm(f, f.T, out=pair)

    sample = _pairs(layers, spec["sample_pairs"])

    def loop_feature():
        out["feature"] = [per_pair_feature(x[i], x[j]) for i, j in sample]

    def loop_gram():
        out["gram"] = [per_pair_gram(x[i], x[j]) for i, j in sample]

    def bootstrap():
        t = cka_bootstrap_terms(x, weights=weights, unit_sizes=sizes)
        out["boot"], out["boot_debiased"] = t.cka(), t.cka_debiased()

    def minibatch():
        out["minibatch"] = minibatch_state(x, batch_size=min(MINIBATCH, n))

    fns = {"lamina": lamina, "floor": floor, "per_pair_feature": loop_feature, "per_pair_gram": loop_gram,
           "bootstrap": bootstrap, "minibatch": minibatch}
    result = CaseResult("cka", "all_layer_pairs", {**spec, "device": str(dev), "torch_threads": torch.get_num_threads(),
                                                    "dtype": "float32"}).start()
    timings = measure_many(fns, device=dev, warmup=warmup, repeats=repeats, max_repeats=max_repeats, spread=0.10)
    result.finish()
    gram_macs = layers * d * (n * n + n * block) / 2  # upper block triangle, diagonal blocks whole
    pair_macs = layers * layers * (n * n + n * block) / 2
    floor_t = timings["floor"]
    result.add("lamina", "cka_terms(x): cka + cka_debiased, all pairs", "lamina", timings["lamina"],
               pairs=layers * layers)
    result.add("floor", f"Gram-form products alone (blocks of {block})", "floor", floor_t,
               gflop=round(2 * (gram_macs + pair_macs) / 1e9, 2),
               gflop_per_s=round(2 * (gram_macs + pair_macs) / 1e9 / floor_t.seconds, 1))
    scale = layers * layers / len(sample)
    for name, label in (("per_pair_feature", "per-pair loop, anatome-style feature form"),
                        ("per_pair_gram", "per-pair loop, Kornblith-style centred Grams")):
        t = timings[name]
        result.add(name, label, "baseline", _scaled(t, scale), extrapolated_from_pairs=len(sample),
                   measured_s=round(t.seconds, 4))
    result.add("bootstrap", f"cka_bootstrap_terms, B={RESAMPLES}, {units} units", "extra", timings["bootstrap"],
               over_lamina=round(timings["bootstrap"].seconds / timings["lamina"].seconds, 3))
    result.add("minibatch", f"minibatch_state, batches of {min(MINIBATCH, n)}", "extra", timings["minibatch"])
    # agreement: the loops' pairs against lamina's matrix; the bootstrap with all-ones weights is the estimate
    ref = torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in out["feature"]]).cpu()
    got = torch.stack([out["cka"][i, j] for i, j in sample]).cpu()
    result.checks["max_abs_diff_vs_per_pair_feature"] = float((ref - got).abs().max())
    ref = torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in out["gram"]]).cpu()
    result.checks["max_abs_diff_vs_per_pair_gram"] = float((ref - got).abs().max())
    result.notes.append(f"per-pair loops timed on {len(sample)} pairs, scaled to all {layers * layers}")
    result.notes.append("bootstrap: both matrices for each of the B resamples of whole units; "
                        "over_lamina = its time / lamina's")
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lamina.benchmarks.cka_bench", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="512 tokens instead of 2048 (about a minute on a CPU)")
    size.add_argument("--tiny", action="store_true", help="minimal shapes (smoke test, seconds)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    p.add_argument("--tokens", type=int, default=None, help="tokens (samples) per layer, overriding the mode")
    p.add_argument("--layers", type=int, default=None, help="layers, overriding the mode")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="timed rounds at least (medians reported)")
    p.add_argument("--max-repeats", type=int, default=5, help="timed rounds at most, until the spread is < 10%%")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", default=None, help="write the case as JSON here (with the machine it ran on)")
    a = p.parse_args(argv)
    a.mode = "tiny" if a.tiny else "quick" if a.quick else "full"
    return a


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    spec = bench_spec(a.mode)
    if a.tokens:
        spec["tokens"] = a.tokens
    if a.layers:
        spec["layers"] = a.layers
    result = run(spec, device=device, warmup=a.warmup, repeats=a.repeats, max_repeats=a.max_repeats)
    print(result.table())
    r = result.ratios()
    print(f"  per-pair feature loop / lamina: {_inv(r.get('lamina/per_pair_feature'))}x   "
          f"per-pair Gram loop / lamina: {_inv(r.get('lamina/per_pair_gram'))}x   "
          f"lamina / floor: {r.get('lamina/floor')}   bootstrap (B={RESAMPLES}) / lamina: {_inv(r.get('lamina/bootstrap'))}")
    report = {"mode": a.mode, "date": _dt.datetime.now().isoformat(timespec="seconds"), "device": device,
              "machine": machine_info(device), "cka": result.to_json()}
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(report, indent=1))
        print(f"wrote {a.out}")
    return report


def _inv(r: float | None) -> str:
    return "-" if not r else f"{1 / r:,.2f}" if 1 / r < 100 else f"{1 / r:,.0f}"


if __name__ == "__main__":
    main()
