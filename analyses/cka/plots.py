"""Figures of a ``lamina run cka`` run, from the run alone: the two CKA matrices as heatmaps, best layers.

>>> plot(open_run("runs/cka-gpt2"), "runs/cka-gpt2/figures")        # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..plotting import save_figure, start
from .schema import BEST_LAYER, BEST_VALUE, CKA, CKA_DEBIASED, FIGURE_BEST, FIGURE_HEATMAP, HOOK, MATRICES

TITLES = {CKA: "linear CKA (biased HSIC)", CKA_DEBIASED: "linear CKA (unbiased HSIC)"}


def heatmaps(matrices: Sequence[np.ndarray], titles: Sequence[str], labels: tuple[str, str], suptitle: str,
             ticks_a: np.ndarray, ticks_b: np.ndarray, *, vmin: float = 0.0, vmax: float = 1.0):
    """One heatmap per matrix [layer_a, layer_b] side by side on one colour scale (rows: A, from the top)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(matrices), figsize=(max(5.2 * len(matrices) + 0.8, 8.0), 5.0), squeeze=False,
                             layout="constrained")
    image = None
    for ax, m, title in zip(axes[0], matrices, titles):
        image = ax.imshow(m, cmap="viridis", vmin=vmin, vmax=vmax, origin="upper", interpolation="nearest",
                          aspect="auto")
        ax.set_title(title, fontsize=11)
        ax.set_xlabel(labels[1])
        ax.set_ylabel(labels[0])
        for axis, ticks, n in ((ax.xaxis, ticks_b, m.shape[1]), (ax.yaxis, ticks_a, m.shape[0])):
            step = max(1, -(-n // 10))
            where = np.arange(0, n, step)
            axis.set_ticks(where, [str(t) for t in np.asarray(ticks)[where]])
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.9, label="CKA")
    fig.suptitle(suptitle, fontsize=12)
    return fig


def best_layer_figure(best: np.ndarray, value: np.ndarray, labels: tuple[str, str], suptitle: str):
    """The best-matching layer of B for every layer of A (marker colour: its CKA)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.6), layout="constrained")
    layers = np.arange(len(best))
    ok = best >= 0
    points = ax.scatter(layers[ok], best[ok], c=value[ok], cmap="viridis", vmin=0, vmax=1, s=36, zorder=3)
    ax.plot(layers, layers, color="0.7", lw=1, ls="--", label="same layer")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(f"best-matching {labels[1]}")
    ax.legend(loc="upper left", fontsize=9)
    fig.colorbar(points, ax=ax, label="debiased CKA")
    fig.suptitle(suptitle, fontsize=11)
    return fig


def plot(run, figdir: str | Path) -> list[Path]:
    figdir, suffix = start(run, figdir)
    mats = [run.numpy(p) for p in MATRICES]
    attrs = dict(run[CKA].attrs)
    kind = attrs.get("estimator", "?")
    n = mats[0].shape[0]
    ticks = np.arange(n)
    how = f"{attrs.get('n_tokens', '?')} tokens, {kind}" + (f" of {attrs['batch_size']}" if "batch_size" in attrs
                                                            else "")
    hook = str(attrs.get("hook", HOOK))
    fig = heatmaps(mats, [TITLES[p] for p in MATRICES], ("block", "block"),
                   f"CKA between blocks of {suffix}\n{hook}, {how}", ticks, ticks)
    paths = save_figure(fig, figdir, FIGURE_HEATMAP)
    fig = best_layer_figure(run.numpy(BEST_LAYER), run.numpy(BEST_VALUE), ("block", "block"),
                            f"Most similar other block (debiased CKA)\n{suffix}")
    return paths + save_figure(fig, figdir, FIGURE_BEST)
