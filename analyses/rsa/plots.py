"""Figures of an rsa run (docs/analyses.md "rsa"), drawn from the store alone.

>>> paths = plot(open_run("runs/rsa-gpt2-large-random"), Path("figs"))   # doctest: +SKIP
>>> sorted(p.name for p in paths)[:2]                                    # doctest: +SKIP
['rsa_against_block.pdf', 'rsa_against_block.png']

One PNG (dpi 150) and one PDF per figure:
- ``rsa_selectivity``: SI of Q, K and V against the block; filled markers where the
  permutation p-value is < 0.05; SI = 1 (no selectivity) dashed;
- ``rsa_against_block``: RSA (Pearson r of the RSMs' upper triangles) of QK, QV, KV;
- ``rsa_rsm_grid``: the RSMs of Q, K, V (rows) at the first, middle and last block
  (columns), items grouped by category, category boundaries marked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lamina.engine.reader import Run

from ..plotting import save_figure, shown_blocks, start
from . import schema

COLORS = {"Q": "tab:blue", "K": "tab:orange", "V": "tab:green", "QK": "tab:purple", "QV": "tab:brown",
          "KV": "tab:cyan"}
ALPHA = 0.05  # p-value threshold of the markers


def plot(run: Run, figdir: Path) -> list[Path]:
    """Draw every figure of ``run`` into ``figdir``; returns the files written (PNG and PDF)."""
    figdir, suffix = start(run, figdir)
    labels = run.numpy(schema.INPUTS_LABELS)  # (item,)
    categories = list(run[schema.INPUTS_LABELS].attrs.get("categories", []))
    permutations = dict(run[schema.SELECTIVITY_PVALUE].attrs).get("permutations", "?")
    components = run.labels(schema.SELECTIVITY, "component")
    pairs = run.labels(schema.RSA, "pair")
    blocks = np.asarray(run.labels(schema.RSA, "layer"), dtype=np.int64)  # the model's block numbers (--layers)
    paths: list[Path] = []
    paths += _selectivity(run.numpy(schema.SELECTIVITY), run.numpy(schema.SELECTIVITY_PVALUE), components,
                          permutations, suffix, figdir, blocks)
    paths += _rsa(run.numpy(schema.RSA), pairs, suffix, figdir, blocks)
    paths += _rsm_grid(run.numpy(schema.RSM), labels, categories, components, suffix, figdir, blocks)
    return paths


def _block_axis(ax, blocks: np.ndarray) -> None:
    ax.set_xlabel("block")
    ax.set_xlim(blocks[0] - 0.5, blocks[-1] + 0.5)
    ax.grid(alpha=0.3)
    if len(blocks) <= 12:
        ax.set_xticks(blocks)


def _selectivity(si: np.ndarray, pvalue: np.ndarray, components, permutations, suffix: str,
                 figdir: Path, blocks: np.ndarray) -> list[Path]:
    """si, pvalue: (component, layer); blocks: the layer axis' block numbers."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
    for i, c in enumerate(components):
        ax.plot(blocks, si[i], color=COLORS[c], lw=1.6, label=c)
        sig = pvalue[i] < ALPHA
        ax.plot(blocks[sig], si[i, sig], "o", color=COLORS[c], ms=5)
        ax.plot(blocks[~sig], si[i, ~sig], "o", mfc="white", color=COLORS[c], ms=4, lw=0)
    ax.axhline(1.0, color="0.4", ls="--", lw=1, label="SI = 1 (no selectivity)")
    ax.plot([], [], "o", color="0.3", ms=5, label=f"p < {ALPHA} (filled; {permutations} label permutations)")
    ax.plot([], [], "o", color="0.3", mfc="white", ms=4, label=f"p ≥ {ALPHA} (open)")
    _block_axis(ax, blocks)
    ax.set_ylabel("selectivity index SI\n(mean within-category / mean between-category cosine)")
    ax.set_title(f"Category selectivity of the final word's Q, K, V per block\n{suffix}")
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, figdir, "rsa_selectivity")


def _rsa(rsa: np.ndarray, pairs, suffix: str, figdir: Path, blocks: np.ndarray) -> list[Path]:
    """rsa: (pair, layer); blocks: the layer axis' block numbers."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
    for i, pair in enumerate(pairs):
        ax.plot(blocks, rsa[i], "o-", color=COLORS[pair], lw=1.6, ms=3.5, label=f"{pair[0]}–{pair[1]}")
    _block_axis(ax, blocks)
    finite = rsa[np.isfinite(rsa)]
    lo = min(0.0, float(finite.min())) if finite.size else 0.0
    ax.set_ylim(lo - 0.02, 1.02)
    ax.set_ylabel("RSA: Pearson r between two RSMs\n(strict upper triangles)")
    ax.set_title(f"Representational similarity between Q, K and V per block\n{suffix}")
    ax.legend(fontsize=9, loc="lower left")
    return save_figure(fig, figdir, "rsa_against_block")


def _rsm_grid(rsm: np.ndarray, labels: np.ndarray, categories: list[str], components, suffix: str,
              figdir: Path, blocks: np.ndarray) -> list[Path]:
    """rsm: (layer, component, item, item); items re-ordered so each category is one block.

    Each panel has its own colour range (its off-diagonal min..max): deep blocks often
    have every cosine near 1, and a shared range would hide their structure. The
    diagonal (always 1) is masked.
    """
    import matplotlib.pyplot as plt

    n_layers, _, n_items, _ = rsm.shape
    depths = shown_blocks(n_layers)
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    shown = rsm[depths][:, :, order][:, :, :, order].astype(float)  # (depth, component, item, item)
    shown[:, :, np.eye(n_items, dtype=bool)] = np.nan
    starts = np.concatenate([[0], np.flatnonzero(np.diff(sorted_labels)) + 1, [n_items]])
    edges = starts[1:-1] - 0.5  # boundaries between categories
    centres = (starts[:-1] + starts[1:] - 1) / 2
    names = [categories[int(g)] if int(g) < len(categories) else str(int(g)) for g in sorted_labels[starts[:-1]]]
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")

    fig, axes = plt.subplots(3, len(depths), figsize=(3.6 * len(depths) + 0.6, 9.6), squeeze=False,
                             layout="constrained")
    for r, comp in enumerate(components):
        for c, layer in enumerate(depths):
            ax = axes[r, c]
            vals = shown[c, r][np.isfinite(shown[c, r])]
            vmin, vmax = (float(vals.min()), float(vals.max())) if vals.size else (-1.0, 1.0)
            if vmax - vmin < 1e-9:
                vmin, vmax = vmin - 1e-6, vmax + 1e-6
            im = ax.imshow(shown[c, r], vmin=vmin, vmax=vmax, cmap=cmap, interpolation="nearest")
            for e in edges:
                ax.axhline(e, color="white", lw=1.2)
                ax.axvline(e, color="white", lw=1.2)
            ax.set_xticks(centres, names if r == 2 else [], fontsize=8)
            ax.set_yticks(centres, names if c == 0 else [], fontsize=8, rotation=90, va="center")
            ax.tick_params(length=0)
            ax.set_title(f"{comp}, block {blocks[layer]}", fontsize=10)
            cb = fig.colorbar(im, ax=ax, shrink=0.8, pad=0.02)
            cb.ax.tick_params(labelsize=7)
            if c == len(depths) - 1:
                cb.set_label("cosine", fontsize=8)
        axes[r, 0].set_ylabel(f"{comp}: item (by category)", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("item (by category)", fontsize=9)
    fig.suptitle(f"RSMs (cosine) of the final word's Q, K, V, {n_items} items, first / middle / last block\n"
                 f"{suffix}  ·  each panel its own colour range, diagonal masked")
    return save_figure(fig, figdir, "rsa_rsm_grid")
