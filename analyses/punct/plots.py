"""Figures of a punct run (docs/analyses.md "punct"), drawn from the store alone.

>>> paths = plot(open_run("runs/punct-gpt2-medium-random"), Path("figs"), state=1)   # doctest: +SKIP
>>> sorted(p.name for p in paths)[:2]                                           # doctest: +SKIP
['punct_hist_state1.pdf', 'punct_hist_state1.png']

One PNG (dpi 150) and one PDF per figure:
- ``punct_matrices_state{s}``: MI, covariance and correlation of every pair as n x n upper triangles;
- ``punct_hist_state{s}``: 60-bin count histograms, internal vs terminal, of MI, cov and corr;
- ``punct_scatter_state{s}``: covariance (x) vs MI (y), corrcoef(cov, MI) in the title;
- ``punct_scatter_grid``: that scatter for each hidden state (the first 25), a 5 x 5 grid;
- ``punct_per_state_hist``: density histograms of cov, MI and corr per state (lines by depth);
- ``punct_per_state_means``: means of cov, MI and corr, and r(cov, MI), against the state.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lamina.engine.reader import Run

from ..plotting import save_figure, start
from . import schema
from .stats import pearson

COLORS = {"internal": "tab:blue", "terminal": "tab:orange"}
LABELS = {"mi": "MI (bits)", "cov": "covariance", "corr": "correlation (Pearson r)"}
MAX_GRID_STATES = 25  # the lecture's 5 x 5 grid


class PairData(dict):
    """{stat: [class, state, pair] values} with the run's class labels (stats in the run's order)."""

    def __init__(self, values: dict, classes: list[str]):
        super().__init__(values)
        self.classes = list(classes)

    @property
    def stats(self) -> list[str]:
        return list(self)


def plot(run: Run, figdir: Path, *, state: int = 1) -> list[Path]:
    """Draw every figure of ``run`` into ``figdir`` (``state``: the hidden state of the single-state
    figures, clipped to the last); returns the files written."""
    figdir, suffix = start(run, figdir)
    stats = run.labels(schema.MEAN, "stat")
    data = PairData({k: run.numpy(schema.BY_STAT[k]) for k in stats}, run.labels(schema.MEAN, "class"))
    numbers = np.asarray(run.labels(schema.MEAN, "state"), dtype=np.int64)  # state numbers (--layers: a subset)
    n = int(run[schema.ACTS_HIDDEN].shape[2])
    state = int(np.abs(numbers - min(int(state), int(numbers[-1]))).argmin())  # the nearest analysed state
    mean = run.numpy(schema.MEAN)  # (class, state, stat)
    r = run.numpy(schema.R_COV_MI)  # (class, state)
    paths: list[Path] = []
    paths += _matrices(data, state, n, suffix, figdir, int(numbers[state]))
    paths += _class_histograms(data, state, n, suffix, figdir, int(numbers[state]))
    paths += _scatter(data, state, n, suffix, figdir, int(numbers[state]))
    paths += _scatter_grid(data, r, suffix, figdir, numbers)
    paths += _per_state_histograms(data, suffix, figdir)
    paths += _per_state_means(data, mean, r, n, suffix, figdir, numbers)
    return paths


def _finite(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=float).ravel()
    return v[np.isfinite(v)]


def _is_constant(v: np.ndarray) -> bool:
    """All values equal up to float rounding (e.g. state 0, where every vector of a class is the same)."""
    return v.size > 0 and float(np.ptp(v)) <= 1e-9 * max(float(np.abs(v).max()), 1e-300)


def _range(v: np.ndarray, q: float = 0.0) -> tuple[float, float]:
    """[q, 100 - q] percentile range of the finite values, widened when empty or a single value."""
    v = _finite(v)
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v.min()), float(v.max())) if q == 0 else tuple(float(x) for x in np.percentile(v, [q, 100 - q]))
    if hi - lo <= 1e-9 * max(abs(lo), abs(hi), 1e-300):
        pad = 0.5 * abs(lo) if lo != 0 else 0.5
        lo, hi = lo - pad, hi + pad
    return lo, hi


def _fmt_r(r: float, digits: int = 2) -> str:
    return f"{r:+.{digits}f}" if np.isfinite(r) else "n/a"


def _upper(values: np.ndarray, n: int) -> np.ndarray:
    """(pair,) in triu order -> (n, n) with NaN on and below the diagonal."""
    m = np.full((n, n), np.nan)
    m[np.triu_indices(n, 1)] = values
    return m


def _color_scale(vals: np.ndarray) -> tuple[str, float, float]:
    """Colour map and limits shared by both classes: the 1..99 percentile range, sequential;
    diverging around 0 only when the values clearly take both signs."""
    lo, hi = _range(vals, 1)
    if lo < 0 < hi and min(-lo, hi) > 0.1 * max(-lo, hi):
        a = max(-lo, hi)
        return "RdBu_r", -a, a
    return "viridis", lo, hi


def _matrices(data, state: int, n: int, suffix: str, figdir: Path, number: int) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(data.classes), len(data.stats), figsize=(13, 8.2), squeeze=False, layout="constrained")
    for k, stat in enumerate(data.stats):
        vals = data[stat][:, state]  # (class, pair)
        cmap, vmin, vmax = _color_scale(vals)
        for c, name in enumerate(data.classes):
            ax = axes[c, k]
            cm = plt.get_cmap(cmap).with_extremes(bad="white")
            im = ax.imshow(_upper(vals[c], n), cmap=cm, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_title(f"{name}: {LABELS[stat]}", fontsize=10)
            ax.set_xlabel("sequence j")
            ax.set_ylabel("sequence i")
            fig.colorbar(im, ax=ax, shrink=0.85, label=LABELS[stat])
    fig.suptitle(f"punct: pairwise MI, covariance and correlation at hidden state {number} "
                 f"({n} sequences per class, upper triangle i < j)\n{suffix}")
    return save_figure(fig, figdir, f"punct_matrices_state{number}")


def _class_histograms(data, state: int, n: int, suffix: str, figdir: Path, number: int) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(data.stats), figsize=(14, 4.4), squeeze=False, layout="constrained")
    for k, stat in enumerate(data.stats):
        ax = axes[0, k]
        edges = np.linspace(*_range(data[stat][:, state]), 61)
        for c, name in enumerate(data.classes):
            v = _finite(data[stat][c, state])
            ax.hist(v, bins=edges, histtype="stepfilled", alpha=0.45, color=COLORS[name],
                    label=f"{name} ({v.size} pairs)")
            ax.hist(v, bins=edges, histtype="step", color=COLORS[name])
        ax.set_xlabel(LABELS[stat])
        ax.set_ylabel("pairs (count)")
        ax.set_title(f"{LABELS[stat]}, 60 bins")
        ax.legend(fontsize=8)
    fig.suptitle(f"punct: internal (,) vs terminal (.) at hidden state {number}, {n} sequences per class\n{suffix}")
    return save_figure(fig, figdir, f"punct_hist_state{number}")


def _scatter_panel(ax, data, state: int, *, ms: float) -> tuple[float, float, float]:
    """cov (x) vs MI (y) of both classes at ``state``; returns r(cov, MI) internal, terminal, pooled."""
    rs = []
    for c, name in enumerate(data.classes):
        cov, mi = data["cov"][c, state], data["mi"][c, state]
        if _is_constant(_finite(cov)) and _is_constant(_finite(mi)):  # state 0: one point for every pair
            ax.plot(cov[:1], mi[:1], "o", ms=7, mfc="none", mew=2, color=COLORS[name], label=name)
        else:
            ax.plot(cov, mi, ".", ms=ms, alpha=0.35, color=COLORS[name], rasterized=True, label=name)
        rs.append(pearson(cov, mi))
    pooled = pearson(data["cov"][:, state].ravel(), data["mi"][:, state].ravel())
    return rs[0], rs[1], pooled


def _scatter(data, state: int, n: int, suffix: str, figdir: Path, number: int) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 6), layout="constrained")
    ri, rt, rp = _scatter_panel(ax, data, state, ms=3)
    ax.set_xlabel("covariance")
    ax.set_ylabel("MI (bits)")
    leg = ax.legend(markerscale=4)
    for h in leg.legend_handles:
        h.set_alpha(1)
    ax.set_title(f"punct: covariance vs MI at hidden state {number}, {n} sequences per class\n"
                 f"corrcoef(cov, MI): internal {_fmt_r(ri, 3)}, terminal {_fmt_r(rt, 3)}, pooled {_fmt_r(rp, 3)}"
                 f"\n{suffix}",
                 fontsize=10)
    return save_figure(fig, figdir, f"punct_scatter_state{number}")


def _scatter_grid(data, r: np.ndarray, suffix: str, figdir: Path, numbers: np.ndarray) -> list[Path]:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    states = list(range(min(MAX_GRID_STATES, data["mi"].shape[1])))
    side = math.ceil(math.sqrt(len(states)))
    rows = math.ceil(len(states) / side)
    fig, axes = plt.subplots(rows, side, figsize=(max(3.1 * side, 8.0), 2.7 * rows + 1.0), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(states):]:
        ax.set_visible(False)
    for s, ax in zip(states, axes.flat):
        _scatter_panel(ax, data, s, ms=1)
        ax.set_title(f"state {numbers[s]}: r = {_fmt_r(r[0, s])} / {_fmt_r(r[1, s])}", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.xaxis.set_major_locator(MaxNLocator(4))  # long labels (state 0: 0.000796 ...) must not overlap
        ax.yaxis.set_major_locator(MaxNLocator(5))
        ax.xaxis.get_offset_text().set_fontsize(6)
        if s // side == rows - 1 or s + side >= len(states):
            ax.set_xlabel("covariance", fontsize=7)
        if s % side == 0:
            ax.set_ylabel("MI (bits)", fontsize=7)
    handles = [plt.Line2D([], [], ls="", marker="o", color=COLORS[c], label=c) for c in data.classes]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=9)
    fig.suptitle("punct: covariance (x) vs MI (y) per hidden state\n"
                 f"r = corrcoef(cov, MI) internal / terminal (n/a: one value for every pair)\n{suffix}")
    return save_figure(fig, figdir, "punct_scatter_grid")


def _per_state_histograms(data, suffix: str, figdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    order = ("cov", "mi", "corr")
    n_states = data["mi"].shape[1]
    cmap = plt.get_cmap("plasma")
    norm = Normalize(0, max(n_states - 1, 1))
    fig, axes = plt.subplots(len(data.classes), len(order), figsize=(15, 8), squeeze=False, layout="constrained")
    for k, stat in enumerate(order):
        # covariance grows tens-fold with depth: when it is all positive, bin log10(cov) so that
        # every state keeps its shape (density per decade, log x axis)
        log = stat == "cov" and _finite(data[stat]).size > 0 and bool((_finite(data[stat]) > 0).all())
        tf = np.log10 if log else (lambda v: v)
        # the axis spans the states whose pairs differ: a state where every pair has one value (state 0)
        # must not stretch it (MI 3.3 bits there against ~0.5 elsewhere)
        spread = [_finite(data[stat][c, s]) for c in range(len(data.classes)) for s in range(n_states)]
        spread = [v for v in spread if v.size and not _is_constant(v)]
        lo, hi = _range(tf(np.concatenate(spread)) if spread else tf(_finite(data[stat])))
        edges = np.linspace(lo, hi, 61)
        centres = 0.5 * (edges[:-1] + edges[1:])
        x = 10.0**centres if log else centres
        for c, name in enumerate(data.classes):
            ax = axes[c, k]
            off_scale = []
            for s in range(n_states):
                v = _finite(data[stat][c, s])
                if v.size == 0:
                    continue
                if _is_constant(v):  # every pair the same value (state 0): a line, not a spike
                    if lo <= float(tf(v[:1])[0]) <= hi:
                        ax.axvline(float(v[0]), color=cmap(norm(s)), ls="--", lw=1.2)
                    else:
                        off_scale.append(f"state {s}: every pair = {float(v[0]):.3g} (off scale)")
                    continue
                dens, _ = np.histogram(tf(v), bins=edges, density=True)
                ax.plot(x, dens, color=cmap(norm(s)), lw=1)
            if off_scale:
                ax.text(0.98, 0.97, "\n".join(off_scale), transform=ax.transAxes, ha="right", va="top", fontsize=8,
                        color="0.25", bbox={"boxstyle": "round", "fc": "white", "ec": "0.8"})
            if log:
                ax.set_xscale("log")
            ax.set_xlabel(LABELS[stat] + (" (log scale)" if log else ""))
            ax.set_ylabel("density per decade" if log else "density")
            ax.set_title(f"{name}: {LABELS[stat]} per state", fontsize=10)
        fig.colorbar(ScalarMappable(norm, cmap), ax=axes[:, k], label="hidden state", shrink=0.8)
    fig.suptitle("punct: density of pairwise covariance, MI and correlation per hidden state "
                 f"(dashed: every pair has the same value)\n{suffix}")
    return save_figure(fig, figdir, "punct_per_state_hist")


def _per_state_means(data, mean: np.ndarray, r: np.ndarray, n: int, suffix: str, figdir: Path,
                     numbers: np.ndarray) -> list[Path]:
    import matplotlib.pyplot as plt

    states = numbers  # the state numbers (a subset under --layers)
    panels = [("cov", "mean covariance"), ("mi", "mean MI (bits)"), ("corr", "mean correlation"),
              ("r", "corrcoef(cov, MI) over pairs")]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.6), squeeze=False, layout="constrained")  # readable at page width
    for ax, (key, label) in zip(axes.flat, panels):
        for c, name in enumerate(data.classes):
            y = r[c] if key == "r" else mean[c, :, data.stats.index(key)]
            ax.plot(states, y, marker="o", ms=3, color=COLORS[name], label=name)
        if key == "r":
            ax.axhline(0, color="0.6", lw=0.8)
        if key == "cov" and bool((mean[..., data.stats.index("cov")] > 0).all()):
            ax.set_yscale("log")  # it grows tens-fold with depth
        ax.set_xlabel("hidden state (0 = embeddings)")
        ax.set_ylabel(label)
        ax.set_title(label)
        ax.legend(fontsize=8)
    fig.suptitle(f"punct: per-state means over all pairs ({n} sequences per class)\n{suffix}")
    return save_figure(fig, figdir, "punct_per_state_means")
