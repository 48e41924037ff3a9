"""Kernels side by side: lamina vs the course-style NumPy code vs the floor (matrix products, or one read).

>>> specs = kernel_specs("tiny")
>>> [s.case for s in specs]
['qkv_blocks', 'rsa', 'length_corr', 'punct_pairs']

Inputs are random (speed does not depend on values) with the shapes of docs/analyses.md;
the punctuation vectors get one large-magnitude dimension, as GPT-2's hidden states
have, so that the outlier removal and the exact recomputation path of the pairs kernel
are exercised. The NumPy per-pair loop is timed on a sample of pairs and extrapolated
to all pairs (labelled so in the output).

Every case (quick and full) times its variants interleaved in one process: warm-up, then
at least ``--repeats`` rounds and more until every variant's ``(max - min) / median`` is
under 10% or 5 rounds were timed; min, median and max of each variant and the 1-minute
load average before and after the case go to the JSON (ratios of medians, and of minima).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from lamina.engine.kernels.correlation import StreamingPearson, pearson_with_vector
from lamina.engine.kernels.pairs import all_pairs_mi_cov_corr, default_method, pair_indices
from lamina.engine.kernels.rsa import row_cosine_rsm, rsa_pearson, selectivity_index
from lamina.engine.kernels.similarity import qkv_block_histograms

from . import course_style
from .report import CaseResult
from .timing import Timing, measure_many

# docs/analyses.md (rsa): 10 space, 13 interior, 11 fruit words
RSA_LABELS = np.array([1] * 10 + [2] * 13 + [3] * 11)
F64_BUDGET = 1 << 25  # float64 elements per StreamingPearson update, as the length analysis chunks


# Timed rounds beyond --repeats: until every variant's (max - min) / median < SPREAD, at most MAX_REPEATS.
MAX_REPEATS = 5
SPREAD = 0.10


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    case: str
    shape: dict[str, int]
    max_repeats: int | None = MAX_REPEATS  # None: exactly --repeats rounds (tiny)


def kernel_specs(mode: str) -> list[KernelSpec]:
    """Issue 5's kernel cases; ``quick`` fewer layers / tokens / states, ``tiny`` minimal."""
    full = mode == "full"
    tiny = mode == "tiny"
    extra = None if tiny else MAX_REPEATS
    specs = [
        KernelSpec("qkv_blocks", {"layers": 2 if tiny else 48 if full else 4, "roles": 2, "samples": 54,
                                  "d_model": 32 if tiny else 1600}),
        KernelSpec("rsa", {"layers": 3 if tiny else 36, "items": len(RSA_LABELS), "d_model": 32 if tiny else 1280}),
        KernelSpec("length_corr", {"layers": 2 if tiny else 12, "tokens": 256 if tiny else 8192 if full else 2048,
                                   "neurons": 64 if tiny else 3072}),
        KernelSpec("punct_pairs", {"classes": 2, "states": 1 if tiny else 25 if full else 2,
                                   "samples": 20 if tiny else 250, "d_model": 64 if tiny else 1024,
                                   "numpy_pairs": 10 if tiny else 300 if full else 100}),
    ]
    return [dataclasses.replace(s, max_repeats=extra) for s in specs]


def run_kernel_case(spec: KernelSpec, *, device: str, warmup: int, repeats: int, slow_s: float = 20.0) -> CaseResult:
    """Run one case: its variants interleaved in this process, loads recorded before and after."""
    fn = {"qkv_blocks": _qkv, "rsa": _rsa, "length_corr": _length, "punct_pairs": _punct}[spec.case]
    result = CaseResult("kernels", spec.case, {**spec.shape, "device": str(device),
                                               "torch_threads": torch.get_num_threads()}).start()
    result.params["max_repeats"] = spec.max_repeats
    fn(result, spec.shape, torch.device(device), warmup, repeats, slow_s)
    return result.finish()


def _run(result: CaseResult, variants: dict, dev: torch.device, warmup: int, repeats: int, slow_s: float) -> None:
    """Time the variants interleaved (see ``measure_many``) and add them to ``result``."""
    timings = measure_many({n: v[2] for n, v in variants.items()}, device=dev, warmup=warmup, repeats=repeats,
                           slow_s=slow_s, max_repeats=result.params.get("max_repeats"), spread=SPREAD)
    for name, (label, role, _) in variants.items():
        result.add(name, label, role, timings[name])


def _gen(device: torch.device, seed: int = 0) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


# ---- A ----------------------------------------------------------------------------------------


def _qkv(result: CaseResult, s: dict, dev: torch.device, warmup: int, repeats: int, slow_s: float) -> None:
    m, n, d = s["layers"] * s["roles"], s["samples"], s["d_model"]
    x = torch.randn(m, n, 3 * d, generator=_gen(dev), device=dev)  # (layer·role, sample, 3D)
    out = {}

    def lamina():
        out["cos"] = qkv_block_histograms(x, center=False)
        out["corr"] = qkv_block_histograms(x, center=True)

    units = []
    for center in (False, True):
        xc = x - x.mean(1, keepdim=True) if center else x
        units.append(xc / torch.linalg.vector_norm(xc, dim=1, keepdim=True))
    blocks = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))
    buf = torch.empty(d, d, device=dev)

    def floor():  # the six D x N x D products per matrix and variant, nothing else
        for xn in units:
            for i in range(m):
                for a, b in blocks:
                    torch.mm(xn[i, :, a * d : (a + 1) * d].T, xn[i, :, b * d : (b + 1) * d], out=buf)

    xnp = x.cpu().numpy()

    def numpy_course():
        out["np_cos"] = course_style.qkv_numpy(xnp, center=False)
        out["np_corr"] = course_style.qkv_numpy(xnp, center=True)

    _run(result, {"lamina": ("qkv_block_histograms, cosine + correlation", "lamina", lamina),
                  "floor": ("six D x N x D block matmuls (x2 variants)", "floor", floor),
                  "numpy": ("course NumPy: full 3D x 3D, masks, np.histogram", "baseline", numpy_course)},
         dev, warmup, repeats, slow_s)
    flops = 2 * 6 * 2 * m * n * d * d
    result.variants["floor"].extra["gflop"] = round(flops / 1e9, 2)
    for v in ("cos", "corr"):
        diff = np.abs(out[v].cpu().numpy() - out[f"np_{v}"]).sum()
        result.checks[f"hist_count_mismatch_fraction[{v}]"] = float(diff / out[f"np_{v}"].sum())
    result.notes.append("count mismatches are values within float32 rounding of a bin edge (BLAS sum order)")


# ---- B ----------------------------------------------------------------------------------------


def _rsa(result: CaseResult, s: dict, dev: torch.device, warmup: int, repeats: int, slow_s: float) -> None:
    x = torch.randn(s["layers"], 3, s["items"], s["d_model"], generator=_gen(dev), device=dev) + 0.5
    labels = torch.as_tensor(RSA_LABELS, device=dev)
    out = {}

    def lamina():
        rsm = row_cosine_rsm(x)  # (layer, component, item, item)
        out["si"] = selectivity_index(rsm, labels)  # (layer, component)
        out["rsa"] = rsa_pearson(rsm[:, [0, 0, 1]], rsm[:, [1, 2, 2]])  # (layer, pair)

    def floor():
        torch.matmul(x, x.mT)

    xnp = x.cpu().numpy()

    def numpy_course():
        out["np"] = course_style.rsa_numpy(xnp, RSA_LABELS)

    _run(result, {"lamina": ("row_cosine_rsm + selectivity_index + rsa_pearson", "lamina", lamina),
                  "floor": ("the RSM products X Xᵀ alone", "floor", floor),
                  "numpy": ("course NumPy: loops over layers and components", "baseline", numpy_course)},
         dev, warmup, max(repeats, 5), slow_s)  # milliseconds: more repeats cost nothing
    si_np, rsa_np = out["np"]
    result.checks["max_abs_diff_si"] = float(np.abs(out["si"].cpu().numpy().T - si_np).max())
    result.checks["max_abs_diff_rsa"] = float(np.abs(out["rsa"].cpu().numpy().T - rsa_np).max())


# ---- C ----------------------------------------------------------------------------------------


def _length(result: CaseResult, s: dict, dev: torch.device, warmup: int, repeats: int, slow_s: float) -> None:
    n_layers, n_tok, n_neu = s["layers"], s["tokens"], s["neurons"]
    g = _gen(dev)
    acts = torch.randn(n_layers, n_tok, n_neu, generator=g, device=dev)  # (layer, token, neuron)
    length = torch.randint(1, 13, (n_tok,), generator=g, device=dev)  # (token,)
    acts[:, :, :8] += 0.05 * length[None, :, None]  # a few neurons that do follow length
    step = max(1, F64_BUDGET // (n_layers * n_neu))  # tokens per update, as the analysis streams them
    out = {}

    def lamina_stream(exact: bool = False):
        sp = StreamingPearson()
        for t in range(0, n_tok, step):
            sp.update(acts[:, t : t + step], length[t : t + step], exact=exact)
        out["exact" if exact else "stream"] = sp.correlation()

    def lamina_batch():
        out["batch"] = torch.stack([pearson_with_vector(acts[l], length) for l in range(n_layers)])

    def floor():
        acts.sum()

    anp, lnp = acts.cpu().numpy(), length.cpu().numpy()

    def numpy_course():
        out["np"] = course_style.length_corr_numpy(anp, lnp)

    _run(result, {"lamina": (f"StreamingPearson, {step} tokens per update (float32 pass)", "lamina", lamina_stream),
                  "lamina_exact": ("StreamingPearson exact=True (float64 throughout)", "extra",
                                   lambda: lamina_stream(exact=True)),
                  "lamina_batch": ("pearson_with_vector per layer (float64)", "extra", lamina_batch),
                  "floor": ("one read of the activations (sum)", "floor", floor),
                  "numpy": ("course NumPy: z-scores (ddof=1), float64, per layer", "baseline", numpy_course)},
         dev, warmup, repeats, slow_s)
    result.params["activation_bytes"] = acts.numel() * acts.element_size()
    result.checks["max_abs_diff_stream_vs_batch"] = float((out["stream"] - out["batch"]).abs().max())
    result.checks["max_abs_diff_exact_vs_batch"] = float((out["exact"] - out["batch"]).abs().max())
    result.checks["max_abs_diff_vs_numpy"] = float(np.abs(out["stream"].cpu().numpy() - out["np"]).max())


# ---- D ----------------------------------------------------------------------------------------


def _punct(result: CaseResult, s: dict, dev: torch.device, warmup: int, repeats: int, slow_s: float) -> None:
    c, st, n, d = s["classes"], s["states"], s["samples"], s["d_model"]
    x = torch.randn(c, st, n, d, generator=_gen(dev), device=dev)  # (class, state, sample, feature)
    x[..., 7] *= 30.0  # one massive dimension: outliers for most vectors, moved extremes for some pairs
    n_pairs = n * (n - 1) // 2
    out = {}

    def lamina():
        out["all"] = [[all_pairs_mi_cov_corr(x[a, b]) for b in range(st)] for a in range(c)]

    def lamina_bincount():
        out["bincount"] = [[all_pairs_mi_cov_corr(x[a, b], method="bincount") for b in range(st)] for a in range(c)]

    xf = x.to(torch.float64)
    prepared = []
    for a in range(c):
        for b in range(st):
            v = xf[a, b]
            z = (v - v.mean(1, keepdim=True)) / v.std(1, keepdim=True)
            k = (z.abs() <= 5).to(torch.float64)
            kx = k * v
            prepared.append((k, kx, kx * v))

    def floor():  # the four (n x D)(D x n) float64 products cov/corr need, per class and state
        for k, kx, kx2 in prepared:
            k @ k.T, kx @ k.T, kx @ kx.T, kx2 @ k.T

    sample = np.linspace(0, n_pairs - 1, min(s["numpy_pairs"], n_pairs)).astype(np.int64)
    ii, jj = (t.cpu().numpy() for t in pair_indices(n))
    pairs = np.stack([ii[sample], jj[sample]], axis=1)
    x00 = x[0, 0].cpu().numpy()

    def numpy_loop():
        out["np"] = course_style.pair_loop(x00, pairs)

    method = default_method(x.device)
    result.params["method"] = method
    _run(result, {"lamina": (f"all_pairs_mi_cov_corr per class and state ({method})", "lamina", lamina),
                  "lamina_bincount": ("the same, method='bincount'", "extra", lamina_bincount),
                  "floor": ("K Kᵀ, (K∘X) Kᵀ, (K∘X)(K∘X)ᵀ, (K∘X²) Kᵀ in float64", "floor", floor),
                  "numpy_loop": ("", "baseline", numpy_loop)}, dev, warmup, repeats, slow_s)
    t = result.variants.pop("numpy_loop").timing
    total = c * st * n_pairs
    scale = total / len(pairs)
    result.add("numpy_loop", f"course NumPy per-pair loop, EXTRAPOLATED from {len(pairs)} pairs", "baseline",
               Timing(t.seconds * scale, tuple(x * scale for x in t.times), t.peak_rss_mib, t.rss_before_mib,
                      None, None if t.cpu_seconds is None else t.cpu_seconds * scale),
               extrapolated_from_pairs=len(pairs), measured_s=round(t.seconds, 4),
               per_pair_us=round(1e6 * t.seconds / len(pairs), 1))
    result.params["pairs_total"] = total
    mine = out["all"][0][0]
    for k, key in enumerate(("mi", "cov", "corr")):
        ref = out["np"][:, k]
        got = mine[key].cpu().numpy()[sample]
        result.checks[f"max_abs_diff_{key}_vs_numpy"] = float(np.nanmax(np.abs(got - ref))) if len(ref) else math.nan
    result.checks["max_abs_diff_mi_vs_bincount"] = max(
        float(np.nanmax(np.abs(a["mi"].cpu().numpy() - b["mi"].cpu().numpy())))
        for ra, rb in zip(out["all"], out["bincount"]) for a, b in zip(ra, rb))
