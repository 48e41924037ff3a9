"""Figures of a length run (docs/analyses.md "length"), drawn from the store alone.

>>> paths = plot(open_run("runs/length-EleutherAI-gpt-neo-125M-random"), Path("figs"))   # doctest: +SKIP
>>> sorted(p.name for p in paths)[:2]                                                    # doctest: +SKIP
['length_corr_heatmap.pdf', 'length_corr_heatmap.png']

One PNG (dpi 150) and one PDF per figure:
- ``length_median_split_block{b}``: densities of block b's MLP pre-activations (all neurons
  pooled) for tokens shorter than, longer than and equal to the median length;
- ``length_corr_by_block``: per-block density of r(activation, token length), one line per
  block coloured by depth (plasma);
- ``length_corr_heatmap``: block x r density heatmap;
- ``length_partial_corr``: the partial r (controlling for log token frequency) next to the
  plain r, per-block lines, plus the mean of each per block.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lamina.engine.reader import Run

from ..plotting import bin_centres, depth_colours, save_figure, start
from . import schema

SPLIT_STYLE = {  # colour, line style, width, label: styles differ so that identical curves stay visible
    "below": ("tab:blue", "-", 2.4, "length < median"),
    "above": ("tab:red", "--", 1.8, "length > median"),
    "equal": ("tab:green", ":", 1.8, "length = median"),
}


def plot(run: Run, figdir: Path) -> list[Path]:
    """Draw every figure of a complete length run into ``figdir``; returns the files written."""
    figdir, suffix = start(run, figdir)
    summary = run.attrs.get("summary") or {}
    what = f"{summary.get('n_tokens', '?')} tokens"
    paths: list[Path] = []
    paths += _median_split(run, what, suffix, figdir)
    edges = run.numpy(schema.CORR_BIN_EDGES)  # (edge,)
    corr_hist = run.numpy(schema.CORR_HIST)  # (layer, bin)
    paths += _corr_lines(corr_hist, edges, what, suffix, figdir)
    paths += _corr_heatmap(corr_hist, edges, what, suffix, figdir)
    paths += _partial(run, edges, what, suffix, figdir)
    return paths


def _depth_colorbar(fig, ax, cmap, n: int) -> None:
    """A discrete colour bar, one cell per block, integer ticks."""
    import matplotlib as mpl

    norm = mpl.colors.BoundaryNorm(np.arange(-0.5, n), n)
    cb = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.05, pad=0.02,
                      ticks=range(0, n, max(1, n // 12)))
    cb.set_label("block")


def _median_split(run: Run, what: str, suffix: str, figdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    dens = run.numpy(schema.MEDIAN_SPLIT_HIST)  # (split, bin)
    edges = run.numpy(schema.MEDIAN_SPLIT_BIN_EDGES).astype(np.float64)  # (edge,)
    attrs = dict(run[schema.MEDIAN_SPLIT_HIST].attrs)
    splits, median, block = run.labels(schema.MEDIAN_SPLIT_HIST, "split"), attrs["median"], attrs["block"]
    n_tokens = attrs.get("n_tokens", [None] * len(splits))
    fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    x = bin_centres(edges)
    for s, name in enumerate(splits):
        colour, style, width, label = SPLIT_STYLE.get(name, (None, "-", 1.6, name))
        if not np.isfinite(dens[s]).any():
            ax.plot([], [], color=colour, ls=style, lw=width, label=f"{label}: no tokens")
            continue
        ax.plot(x, dens[s], color=colour, ls=style, lw=width, label=f"{label} ({n_tokens[s]} tokens)")
    ax.set_xlim(edges[0], edges[-1])
    ax.set_ylim(bottom=0)
    ax.set_xlabel(f"MLP pre-activation ({attrs.get('hook', f'blocks.{block}.mlp.hook_pre')}), all neurons pooled")
    ax.set_ylabel("density")
    ax.legend(title=f"median token length = {median:g} characters", fontsize=9)
    ax.grid(alpha=0.3)
    ax.set_title(f"Block {block} activations split at the median token length ({what})\n{suffix}", fontsize=10)
    return save_figure(fig, figdir, f"length_median_split_block{block}")


def _corr_lines(hist: np.ndarray, edges: np.ndarray, what: str, suffix: str, figdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    n = hist.shape[0]
    cmap, colours = depth_colours(n)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    x = bin_centres(edges)
    for l in range(n):
        ax.plot(x, np.nan_to_num(hist[l]), color=colours[l], lw=1.2)
    ax.axvline(0, color="0.5", lw=0.8, ls=":")
    ax.set_xlim(edges[0], edges[-1])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("Pearson r (MLP pre-activation vs token length), one value per neuron")
    ax.set_ylabel("density")
    ax.grid(alpha=0.3)
    _depth_colorbar(fig, ax, cmap, n)
    ax.set_title(f"Correlation with token length per block ({what})\n{suffix}", fontsize=10)
    return save_figure(fig, figdir, "length_corr_by_block")


def _corr_heatmap(hist: np.ndarray, edges: np.ndarray, what: str, suffix: str, figdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    n = hist.shape[0]
    fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    im = ax.imshow(np.nan_to_num(hist), aspect="auto", origin="lower", cmap="viridis", interpolation="nearest",
                   extent=(edges[0], edges[-1], -0.5, n - 0.5))
    ax.set_xlabel("Pearson r (MLP pre-activation vs token length)")
    ax.set_ylabel("block")
    ax.set_yticks(range(0, n, max(1, n // 12)))
    fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02).set_label("density")
    ax.set_title(f"Correlation with token length: block x r ({what})\n{suffix}", fontsize=10)
    return save_figure(fig, figdir, "length_corr_heatmap")


def _partial(run: Run, edges: np.ndarray, what: str, suffix: str, figdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    plain = run.numpy(schema.CORR_HIST)  # (layer, bin)
    partial = run.numpy(schema.PARTIAL_CORR_HIST)  # (layer, bin)
    r, pr = run.numpy(schema.CORR), run.numpy(schema.PARTIAL_CORR)  # (layer, neuron)
    n = plain.shape[0]
    cmap, colours = depth_colours(n)
    x = bin_centres(edges)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), layout="constrained",
                             gridspec_kw={"width_ratios": [1, 1, 0.8]})
    top = max(np.nanmax(plain, initial=0), np.nanmax(partial, initial=0)) * 1.05 or 1.0
    for ax, hist, title in ((axes[0], plain, "plain r"),
                            (axes[1], partial, "partial r, controlling for log token frequency")):
        for l in range(n):
            ax.plot(x, np.nan_to_num(hist[l]), color=colours[l], lw=1.2)
        ax.axvline(0, color="0.5", lw=0.8, ls=":")
        ax.set_xlim(edges[0], edges[-1])
        ax.set_ylim(0, top)
        ax.set_xlabel("r with token length, one value per neuron")
        ax.set_ylabel("density")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    _depth_colorbar(fig, axes[1], cmap, n)
    blocks = np.asarray(run.labels(schema.CORR, "layer"), dtype=np.int64)  # block numbers (--layers: a subset)
    with np.errstate(all="ignore"):
        axes[2].plot(blocks, _nanmean_rows(r), "o-", color="tab:blue", label="plain r")
        axes[2].plot(blocks, _nanmean_rows(pr), "s--", color="tab:red", label="partial r")
    axes[2].axhline(0, color="0.5", lw=0.8, ls=":")
    axes[2].set_xlabel("block")
    axes[2].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes[2].set_ylabel("mean r over neurons")
    axes[2].set_title("mean per block", fontsize=10)
    axes[2].legend(fontsize=9)
    axes[2].grid(alpha=0.3)
    r_xz = (run.attrs.get("summary") or {}).get("r_length_logfreq")
    conf = f"; r(length, log frequency) = {r_xz:.3f}" if isinstance(r_xz, (int, float)) else ""
    fig.suptitle(f"Token-frequency confound: plain vs partial correlation with token length ({what}{conf})\n{suffix}",
                 fontsize=10)
    return save_figure(fig, figdir, "length_partial_corr")


def _nanmean_rows(a: np.ndarray) -> np.ndarray:
    """Mean of each row over its finite values (NaN for a row with none), without warnings."""
    finite = np.isfinite(a)
    total = np.where(finite, a, 0.0).sum(-1)
    count = finite.sum(-1)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)
