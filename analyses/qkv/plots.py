"""Figures of a qkv run (docs/analyses.md "qkv"), drawn from the store alone.

>>> paths = plot(open_run("runs/qkv-gpt2-random"), Path("figs"), layer=6)   # doctest: +SKIP
>>> sorted(p.name for p in paths)[:2]                                  # doctest: +SKIP
['qkv_block6_correlation.pdf', 'qkv_block6_correlation.png']

One PNG (dpi 150) and one PDF per figure, for ``stat`` in cosine and correlation:
- ``qkv_block{l}_{stat}``: 2 x 2 densities at one block: target within (QQ, KK, VV) /
  target across (QK, QV, KV) / non-target within / non-target across, random baseline dashed;
- ``qkv_layers_{stat}``: per-block count histograms as lines coloured by depth (plasma),
  one panel per role and Q/K/V block;
- ``qkv_heatmap_QQ_{stat}``: block x value count heatmaps of QQ, target and non-target;
- ``qkv_mean_variance``: mean and variance of Q, K and V per block, target vs non-target.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lamina.engine.reader import Run

from ..plotting import bin_centres, depth_colours, save_figure, start
from . import schema

STATS = ("cosine", "correlation")
ROLE_NAMES = {"target": "target", "nontarget": "non-target"}
BLOCK_COLORS = {"QQ": "tab:blue", "KK": "tab:orange", "VV": "tab:green",
                "QK": "tab:purple", "QV": "tab:brown", "KV": "tab:olive"}
COMPONENT_COLORS = {"Q": "tab:blue", "K": "tab:orange", "V": "tab:green"}
STAT_LABEL = {"cosine": "cosine similarity", "correlation": "correlation (Pearson r)"}


def plot(run: Run, figdir: Path, *, layer: int = 6) -> list[Path]:
    """Draw every figure of ``run`` into ``figdir`` (``layer``: the single-block figure's block, clipped
    to the last block); returns the files written."""
    figdir, suffix = start(run, figdir)
    edges = run.numpy(schema.BIN_EDGES)  # (edge,)
    roles, blocks = run.labels(schema.COSINE_HIST, "role"), run.labels(schema.COSINE_HIST, "block")
    analysed = np.asarray(run.labels(schema.COSINE_HIST, "layer"), dtype=np.int64)  # block numbers (--layers)
    layer = int(np.abs(analysed - min(int(layer), int(analysed[-1]))).argmin())  # the nearest analysed block
    target = run.attrs.get("options", {}).get("target", "?")
    n = int(run[schema.INPUTS_LENGTHS].shape[0])
    what = f"{target!r} ({n} sentences)"
    paths: list[Path] = []
    for stat in STATS:
        hist = run.numpy(schema.HIST[stat])  # (role, layer, block, bin)
        base = run.numpy(schema.BASELINE_HIST[stat])  # (layer, bin)
        paths += _single_block(hist, base, edges, layer, roles, blocks, stat, what, suffix, figdir,
                               int(analysed[layer]))
        paths += _layer_lines(hist, edges, roles, blocks, stat, what, suffix, figdir)
        paths += _heatmaps(hist, base, edges, roles, blocks, stat, what, suffix, figdir)
    paths += _mean_variance(run, what, suffix, figdir)
    return paths


def _density(counts: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts (..., bin) -> densities like np.histogram(density=True); zeros where nothing was counted."""
    total = counts.sum(-1, keepdims=True).astype(float)
    return np.divide(counts, total * np.diff(edges), out=np.zeros(counts.shape), where=total > 0)


def _integer_ticks(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _single_block(hist, base, edges, layer, roles, blocks, stat, what, suffix, figdir, number) -> list[Path]:
    """2 x 2: rows = role, columns = within (QQ, KK, VV) / across (QK, QV, KV); baseline dashed (``layer``: the
    position on the layer axis, ``number``: its block number)."""
    import matplotlib.pyplot as plt

    x = bin_centres(edges)
    groups = {"within": ("QQ", "KK", "VV"), "across": ("QK", "QV", "KV")}
    base_density = _density(base[layer], edges)
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True, sharey=True)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.07, top=0.9, wspace=0.12, hspace=0.14)
    for r, role in enumerate(roles):
        for c, (group, names) in enumerate(groups.items()):
            ax = axes[r, c]
            for name in names:
                ax.plot(x, _density(hist[r, layer, blocks.index(name)], edges), color=BLOCK_COLORS[name],
                        lw=1.6, label=name)
            ax.plot(x, base_density, color="black", ls="--", lw=1.2, label="random baseline")
            ax.set_title(f"{ROLE_NAMES.get(role, role)}, {group} Q/K/V")
            ax.set_xlim(edges[0], edges[-1])
            ax.set_xticks(np.linspace(edges[0], edges[-1], 5))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            if r == 1:
                ax.set_xlabel(STAT_LABEL[stat])
            if c == 0:
                ax.set_ylabel("density")
    fig.suptitle(f"Feature {stat} at block {number}, {what} - {suffix}")
    return save_figure(fig, figdir, f"qkv_block{number}_{stat}")


def _layer_lines(hist, edges, roles, blocks, stat, what, suffix, figdir) -> list[Path]:
    """Per role, the Q/K/V blocks in rows of 3 (within QQ KK VV, then across QK QV KV): one count histogram
    per block (layer) coloured by depth. Three columns keep the panels readable at page width."""
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.ticker import EngFormatter

    x = bin_centres(edges)
    n_roles, n_layers, n_blocks = hist.shape[:3]
    cmap, colors = depth_colours(n_layers)
    n_cols = min(3, n_blocks)
    per_role = -(-n_blocks // n_cols)
    n_rows = n_roles * per_role
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.6 * n_cols + 1.0, 2.6 * n_rows + 0.9),
                             sharex=True, squeeze=False)  # constrained layout doubles the drawing time here
    fig.subplots_adjust(left=0.08, right=0.9, bottom=0.06, top=1 - 1.15 / (2.6 * n_rows + 0.9), wspace=0.3,
                        hspace=0.35)
    for r, role in enumerate(roles):
        for b, name in enumerate(blocks):
            ax = axes[r * per_role + b // n_cols, b % n_cols]
            for l in range(n_layers):
                ax.plot(x, hist[r, l, b], color=colors[l], lw=0.9)
            ax.set_title(f"{ROLE_NAMES.get(role, role)} {name}", fontsize=10)
            ax.set_xlim(edges[0], edges[-1])
            ax.set_xticks(np.linspace(edges[0], edges[-1], 5))
            ax.yaxis.set_major_formatter(EngFormatter(sep=""))  # 10k, 2.5M: no offset text over the title
            ax.grid(alpha=0.3)
            if b % n_cols == 0:
                ax.set_ylabel("count")
        for b in range(n_blocks, per_role * n_cols):
            axes[r * per_role + b // n_cols, b % n_cols].set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel(STAT_LABEL[stat])
    sm = ScalarMappable(norm=Normalize(0, max(n_layers - 1, 1)), cmap=cmap)
    cbar = fig.colorbar(sm, ax=axes, fraction=0.03, pad=0.02, label="block (layer)")
    _integer_ticks(cbar.ax.yaxis)
    fig.suptitle(f"Feature {stat} histograms per block, coloured by depth\n{what} - {suffix}")
    return save_figure(fig, figdir, f"qkv_layers_{stat}")


def _heatmaps(hist, base, edges, roles, blocks, stat, what, suffix, figdir) -> list[Path]:
    """Block (layer) x value count heatmaps of QQ for each role, and of the random baseline."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    qq = blocks.index("QQ")
    n_layers = hist.shape[1]
    panels = [(f"{ROLE_NAMES.get(role, role)} QQ", hist[r, :, qq]) for r, role in enumerate(roles)]
    panels.append(("random baseline (all of Q|K|V, target)", base))
    height = 4.2 + 0.06 * n_layers
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), height), squeeze=False)
    fig.subplots_adjust(left=0.05, right=0.97, bottom=0.55 / height, top=1 - 0.75 / height, wspace=0.3)
    extent = (edges[0], edges[-1], -0.5, n_layers - 0.5)
    for ax, (title, counts) in zip(axes[0], panels):
        im = ax.imshow(counts, aspect="auto", origin="lower", extent=extent, cmap="viridis",
                       interpolation="nearest")
        ax.set_title(title)
        ax.set_xlabel(STAT_LABEL[stat])
        ax.set_ylabel("block (layer)")
        _integer_ticks(ax.yaxis)
        fig.colorbar(im, ax=ax, label="count", pad=0.02, format=EngFormatter(sep=""))
    fig.suptitle(f"Feature {stat} per block (QQ), {what} - {suffix}")
    return save_figure(fig, figdir, f"qkv_heatmap_QQ_{stat}")


def _mean_variance(run: Run, what: str, suffix: str, figdir: Path) -> list[Path]:
    """Mean and variance of Q, K, V per block; target solid, non-target dashed."""
    import matplotlib.pyplot as plt

    roles, comps = run.labels(schema.MEAN, "role"), run.labels(schema.MEAN, "component")
    styles = {"target": "-", "nontarget": "--"}
    fig, axes = plt.subplots(1, 2, figsize=(13.5, 4.6))
    fig.subplots_adjust(left=0.06, right=0.85, bottom=0.12, top=0.84, wspace=0.22)
    for ax, name in zip(axes, ("mean", "variance")):
        data = run.numpy(schema.MOMENTS[name])  # (role, layer, component)
        layers = np.asarray(run.labels(schema.MOMENTS[name], "layer"), dtype=np.int64)  # block numbers
        for r, role in enumerate(roles):
            for c, comp in enumerate(comps):
                ax.plot(layers, data[r, :, c], styles.get(role, ":"), color=COMPONENT_COLORS.get(comp),
                        marker="o", ms=3, label=f"{comp}, {ROLE_NAMES.get(role, role)}")
        if name == "variance" and np.all(data > 0) and data.max() / data.min() > 100:
            ax.set_yscale("log")
        ax.set_xlabel("block (layer)")
        _integer_ticks(ax.xaxis)
        ax.set_ylabel("mean" if name == "mean" else "variance (ddof=0)")
        ax.set_title(f"{name} over sentences per feature, averaged within Q, K, V", fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=9, title="component, role")  # off the data
    fig.suptitle(f"Q/K/V mean and variance per block, {what} - {suffix}")
    return save_figure(fig, figdir, "qkv_mean_variance")
