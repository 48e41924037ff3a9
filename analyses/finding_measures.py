"""The lectures' findings as measurable claims: for each of the four analyses, each published finding
(docs/analyses.md) with the numbers that test it and a verdict from a rule fixed in advance.

Pure: every function takes ``get(name) -> numpy array`` (a run's arrays by store path) and returns
:class:`Claim` rows; reading runs and writing the page is :mod:`lamina.analyses.findings`.

>>> modes(np.r_[np.random.default_rng(0).normal(0, 1, 500), np.random.default_rng(1).normal(8, 1, 500)])
2
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

Get = Callable[[str], np.ndarray]
FAR = 0.9  # |cosine| >= FAR counts as "near +-1"


@dataclasses.dataclass(frozen=True)
class Claim:
    """One lecture finding, the measure that tests it, and what one run shows."""

    finding: str  # the lecture's words (docs/analyses.md)
    measure: str  # what is computed, and the rule of the verdict
    value: str  # the numbers, as text
    holds: bool | None  # the rule's verdict; None: not testable on this run


def thirds(n: int) -> tuple[slice, slice, slice]:
    """Blocks 0..n-1 cut into a first, middle and last third (the last takes the remainder).

    >>> thirds(30)
    (slice(0, 10, None), slice(10, 20, None), slice(20, 30, None))
    """
    a = n // 3
    return slice(0, a), slice(a, 2 * a), slice(2 * a, n)


def _centres(n_bins: int, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    edges = np.linspace(lo, hi, n_bins + 1)
    return (edges[:-1] + edges[1:]) / 2


def share_far(hist: np.ndarray) -> np.ndarray:
    """[..., bin] counts on [-1, 1] -> [...] share of values with |centre| > 0.9."""
    far = np.abs(_centres(hist.shape[-1])) > FAR
    return hist[..., far].sum(-1) / np.maximum(hist.sum(-1), 1)


def end_peak_ratio(hist: np.ndarray) -> np.ndarray:
    """[..., bin] counts on [-1, 1] -> [...] mean count per bin with |centre| > 0.9 over mean count per bin with
    |centre| < 0.5: above 1 the histogram is U-shaped, its mass piled at the two ends."""
    c = np.abs(_centres(hist.shape[-1]))
    return hist[..., c > FAR].mean(-1) / np.maximum(hist[..., c < 0.5].mean(-1), 1e-12)


def hist_sd(hist: np.ndarray) -> np.ndarray:
    """[..., bin] counts on [-1, 1] -> [...] standard deviation of the binned values."""
    c = _centres(hist.shape[-1])
    p = hist / np.maximum(hist.sum(-1, keepdims=True), 1)
    mu = (p * c).sum(-1, keepdims=True)
    return np.sqrt((p * (c - mu) ** 2).sum(-1))


def hist_mean(hist: np.ndarray) -> np.ndarray:
    p = hist / np.maximum(hist.sum(-1, keepdims=True), 1)
    return (p * _centres(hist.shape[-1])).sum(-1)


def modes(values: np.ndarray, bins: int = 40) -> int:
    """How many separate clusters a 1-D sample has: peaks of its histogram (1st..99th percentile, 3-bin
    smoothing) at least 10% of the highest, two neighbouring peaks counting as one unless the histogram
    falls below half the lower of the two between them."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 3:
        return 0
    lo, hi = np.percentile(v, [1, 99])
    if hi <= lo:
        return 1
    h = np.histogram(v, bins=bins, range=(lo, hi))[0].astype(np.float64)
    h = np.convolve(np.r_[h[0], h, h[-1]], np.ones(3) / 3, mode="valid")
    padded = np.r_[-np.inf, h, -np.inf]
    peaks = [i for i in range(len(h)) if h[i] >= 0.1 * h.max() and padded[i] <= h[i] > padded[i + 2]]
    kept: list[int] = []
    for p in peaks:
        if kept and h[kept[-1]:p + 1].min() >= 0.5 * min(h[kept[-1]], h[p]):
            kept[-1] = p if h[p] > h[kept[-1]] else kept[-1]
            continue
        kept.append(p)
    return len(kept)


def _fmt(xs, digits: int = 3) -> str:
    return ", ".join(f"{x:.{digits}g}" for x in np.atleast_1d(xs))


# ---- qkv ---------------------------------------------------------------------------------------------


def qkv_claims(get: Get) -> list[Claim]:
    cos, cor = get("results/cosine_hist"), get("results/correlation_hist")  # [role, layer, block, bin]
    base = get("results/baseline_correlation_hist")  # [layer, bin]
    qq = 0  # QKV_BLOCKS order: QQ, KK, VV, QK, QV, KV
    n = cos.shape[1]
    first, _, last = thirds(n)
    far = share_far(cos[0, :, qq])  # [layer]
    ends = end_peak_ratio(cos[0, :, qq])  # [layer]
    sd = hist_sd(cos[0, :, qq])
    early = float(ends[1:max(first.stop, 2)].mean())  # block 0 left out: one vector, nothing in the centre
    late = float(far[last].mean())
    c_sd, b_sd = hist_sd(cor[0, :, qq]), hist_sd(base)
    ratio = float(c_sd[last].mean() / b_sd[last].mean())
    mean_late = float(hist_mean(cor[0, last, qq]).mean())
    return [
        Claim("Target cosine distributions are bimodal near ±1 in early blocks.",
              f"QQ target cosine histogram: mean count per bin with |c| > {FAR} over mean count per bin with |c| < 0.5, "
              "averaged over blocks 1 to the end of the first third; holds when > 2 (mass piled at both ends). "
              "Block 0 is left out: the target is the same token in every sentence, one Q vector, so every |c| is 1 "
              f"(its share with |c| > {FAR} is shown).",
              f"end/centre ratio {early:.2f} (blocks 1-{max(first.stop, 2) - 1}); share |c| > {FAR}: block 0 {far[0]:.3f}, first third "
              f"{far[first].mean():.3f}", bool(early > 2)),
        Claim("They flatten towards 0 in deep blocks.",
              f"QQ target cosine in the last third: share with |c| > {FAR} (holds when < 0.1) and sd against the first "
              "third (holds when smaller).",
              f"share {late:.3f}; sd {sd[last].mean():.3f} (last third) vs {sd[first].mean():.3f} (first third)",
              bool(late < 0.1 and sd[last].mean() < sd[first].mean())),
        Claim("Correlation collapses to a roughly Gaussian shape around 0, like the random baseline.",
              "QQ target correlation in the last third: its sd over the permutation baseline's sd (holds within "
              "0.8-1.25) and its mean (holds when |mean| < 0.05).",
              f"sd ratio {ratio:.2f} ({c_sd[last].mean():.3f} / {b_sd[last].mean():.3f}); mean {mean_late:+.3f}",
              bool(0.8 <= ratio <= 1.25 and abs(mean_late) < 0.05)),
    ]


# ---- rsa ---------------------------------------------------------------------------------------------


def rsa_claims(get: Get) -> list[Claim]:
    si, p, rsa = get("results/selectivity"), get("results/selectivity_pvalue"), get("results/rsa")  # [c, layer]
    n = si.shape[1]
    first, middle, last = thirds(n)
    lows = [f"{pair} {rsa[i].min():.2f} (block {int(rsa[i].argmin())})" for i, pair in enumerate(("QK", "QV", "KV"))]
    early_peak, declines = [], []
    for c in (0, 1):
        early_peak.append(int(si[c].argmax()) < first.stop)
        declines.append(si[c, last].mean() < si[c, first].mean())
    qk = [f"{name}: peak block {int(si[c].argmax())}, first/last third mean {si[c, first].mean():.3f}/"
          f"{si[c, last].mean():.3f}" for c, name in ((0, "Q"), (1, "K"))]
    v_last, v_mid = float(si[2, last].max()), float(si[2, middle].max())
    sig = "; ".join(f"{c} {int((p[i] < 0.05).sum())}/{n}" for i, c in enumerate("QKV"))
    return [
        Claim("RSA stays high (about 0.84-0.96) at every depth.",
              "Lowest RSA over the blocks, per pair; holds when every pair stays >= 0.8.",
              "; ".join(lows), bool(rsa.min() >= 0.8)),
        Claim("SI is highest in early blocks for Q and K and declines.",
              "Per Q and K: the block of the highest SI lies in the first third, and the last third's mean SI is below "
              "the first third's; holds when both hold for both.",
              "; ".join(qk), bool(all(early_peak) and all(declines))),
        Claim("V's SI rises again in the deepest third.",
              "Highest SI of V in the last third against the middle third; holds when higher.",
              f"V max SI: last third {v_last:.3f} (block {last.start + int(si[2, last].argmax())}), middle third "
              f"{v_mid:.3f}; blocks with permutation p < 0.05: {sig}", bool(v_last > v_mid)),
    ]


# ---- length ------------------------------------------------------------------------------------------


def length_claims(get: Get) -> list[Claim]:
    corr = get("results/corr")  # [layer, neuron]
    mean = np.nanmean(corr, axis=1)
    sd = np.nanstd(corr, axis=1)
    n = corr.shape[0]
    first, _, last = thirds(n)
    later = mean[1:]
    neg = float((later < 0).mean())
    weak = bool((np.abs(later[later < 0]) < 0.1).all()) if (later < 0).any() else False
    return [
        Claim("Block 0 has positive r (activation vs token length).",
              "Mean r over block 0's neurons; holds when > 0.",
              f"{mean[0]:+.4f}", bool(mean[0] > 0)),
        Claim("Most later blocks are weakly negative.",
              "Share of blocks 1..L-1 whose mean r is negative (holds when > 0.5, and every such mean is above -0.1).",
              f"{int((later < 0).sum())}/{n - 1} negative; mean r per block {_fmt(mean, 2)}", bool(neg > 0.5 and weak)),
        Claim("The distributions narrow in late blocks.",
              "sd of r over neurons, averaged over the last third against the first third; holds when smaller.",
              f"{sd[last].mean():.4f} (last third) vs {sd[first].mean():.4f} (first third)",
              bool(sd[last].mean() < sd[first].mean())),
        Claim("The 1.3B model shows multimodal distributions the 125M one lacks.",
              "Needs two sizes of one family; one model here.", "not testable with one model", None),
    ]


# ---- punct -------------------------------------------------------------------------------------------


def punct_claims(get: Get) -> list[Claim]:
    mean = get("results/mean")  # [class, state, stat = mi, cov, corr]
    cov, mi = get("results/cov"), get("results/mi")  # [class, state, pair]
    n_states = mean.shape[1]
    resid = slice(1, n_states - 1)  # the blocks' outputs, without the embeddings and the final norm
    growth = float(np.nanmax(mean[:, resid, 1], axis=1).min() / np.nanmin(mean[:, 1, 1]))
    mi_drop = bool((mean[:, n_states - 2, 0] < mean[:, 1, 0]).all())
    m_cov1, m_mi1 = modes(cov[0, 1]), modes(mi[0, 1])
    s8 = min(8, n_states - 2)
    m_cov8 = modes(cov[0, s8])
    pooled = np.corrcoef(np.r_[cov[0, 1], cov[1, 1]], np.r_[mi[0, 1], mi[1, 1]])[0, 1]
    return [
        Claim("At state 0 every sequence of a class has the identical vector (one point per class).",
              "Mean Pearson r over the pairs at state 0, both classes; holds when both are 1 (to 1e-4).",
              f"internal {mean[0, 0, 2]:.5f}, terminal {mean[1, 0, 2]:.5f}",
              bool(np.all(np.abs(mean[:, 0, 2] - 1) < 1e-4))),
        Claim("At state 1 covariance splits commas into about three clusters while MI does not.",
              "Clusters (histogram modes, see finding_measures.modes) of the commas' pair covariances and MI at state "
              "1; holds when covariance has 2-4 and MI 1.",
              f"covariance {m_cov1}, MI {m_mi1}", bool(2 <= m_cov1 <= 4 and m_mi1 == 1)),
        Claim("The clusters merge by states 7-9.",
              f"Clusters of the commas' pair covariances at state {s8}; holds when 1, after 2 or more at state 1 "
              "(without clusters at state 1 there is nothing to merge: n/a).",
              f"{m_cov1} at state 1, {m_cov8} at state {s8}", bool(m_cov8 == 1) if m_cov1 >= 2 else None),
        Claim("Mean covariance grows tens-fold with depth while MI declines.",
              "Largest mean covariance over the blocks' outputs (states 1..L-1) over state 1's, the smaller of the two "
              "classes (holds when >= 10), and MI at state L-1 below state 1 in both classes.",
              f"growth x{growth:.1f}; MI state 1 -> L-1: internal {mean[0, 1, 0]:.3f} -> {mean[0, n_states - 2, 0]:.3f},"
              f" terminal {mean[1, 1, 0]:.3f} -> {mean[1, n_states - 2, 0]:.3f}", bool(growth >= 10 and mi_drop)),
        Claim("Overall r(cov, MI) is about -0.13 at state 1.",
              "Pearson r of covariance and MI over the pairs of both classes at state 1; holds when between -0.3 and 0.",
              f"{pooled:+.3f} (internal {get('results/r_cov_mi')[0, 1]:+.3f}, terminal "
              f"{get('results/r_cov_mi')[1, 1]:+.3f})", bool(-0.3 <= pooled < 0)),
    ]


CLAIMS = {"qkv": qkv_claims, "rsa": rsa_claims, "length": length_claims, "punct": punct_claims}
