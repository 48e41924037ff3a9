"""Figures of ``lamina compare``: every run's per-layer curves on one relative-depth axis.

>>> paths = draw_comparison([curves_a, curves_b], ["gpt2", "gpt2-xl"], Path("cmp/figures"), experiment="qkv")  # doctest: +SKIP

One PNG (dpi 150) and one PDF per curve:
- line curves -> ``compare_{experiment}_{curve}``: one panel per label combination (rows = the first
  label dimension, columns = the second; e.g. role x block), one line per run against relative
  depth = index / (n - 1), so models of different depths share the axis;
- heatmap curves ([depth, bin]) -> ``compare_{experiment}_{curve}``: the runs' depth x bin heatmaps
  side by side on ONE colour scale (0 .. the largest value of any run), each with its own depth axis.
"""

from __future__ import annotations

import itertools
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lamina.engine import destination as dst
from lamina.engine.labelled import Coord, Labelled

from .curves import depth_dim, depth_x, is_heatmap
from .plotting import save_figure

DEPTH_LABEL = {"layer": "relative depth = block / (n_blocks − 1)",
               "state": "relative depth = hidden state / (n_states − 1)"}
UNIT = {"layer": "blocks", "state": "states"}
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray",
           "tab:olive", "tab:cyan")
STYLES = ("-", "--", "-.", ":")  # per run too, so that runs with equal curves stay visible
MARKERS = ("o", "s", "^", "D", "v", "P")


def draw_comparison(per_run: Sequence[Mapping[str, Labelled]], labels: Sequence[str], figdir: Path, *,
                    experiment: str, random: Sequence[str] = ()) -> list[Path]:
    """Every curve of the first run, drawn for all runs; returns the files written (PNG, PDF).

    ``random``: the labels of runs with random weights (named in every title: meaningless)."""
    import matplotlib

    matplotlib.use("Agg")
    figdir = Path(figdir)
    figdir.mkdir(parents=True, exist_ok=True)
    for old in dst.lamina_figures(figdir) or ():  # a previous comparison's figures would be mistaken for these
        if (figdir / old).is_file():
            (figdir / old).unlink()
    note = f"RANDOM WEIGHTS (scientifically meaningless): {', '.join(random)}" if random else ""
    paths: list[Path] = []
    for name, first in per_run[0].items():
        runs = [c.get(name) for c in per_run]
        stem = f"compare_{experiment}_{name}"
        if is_heatmap(first):
            paths += _heatmaps(runs, labels, figdir, stem, experiment, note)
        else:
            paths += _lines(runs, labels, figdir, stem, experiment, note)
    return paths


def coord_labels(c: Labelled, dim: str) -> list[str]:
    """The labels along ``dim`` as strings (its index when it has no coordinate)."""
    if dim in c.coords:
        return [str(v) for v in Coord.of(c.coords[dim]).values]
    return [str(i) for i in range(c.shape[c.dims.index(dim)])]


def _title(fig, lines: Sequence[str]) -> None:
    """A suptitle whose lines are wrapped to the figure's width."""
    width = max(int(fig.get_figwidth() * 10), 40)
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in lines if line), fontsize=11)


def _legend_label(label: str, c: Labelled) -> str:
    d = depth_dim(c)
    return f"{label} ({c.shape[c.dims.index(d)]} {UNIT[d]})"


def _lines(runs: Sequence[Labelled | None], labels: Sequence[str], figdir: Path, stem: str, experiment: str,
           note: str) -> list[Path]:
    import matplotlib.pyplot as plt

    first = runs[0]
    extra = first.dims[:-1]
    if len(extra) > 2:
        raise ValueError(f"{stem}: a line curve has at most 2 label dimensions, got {extra}")
    axes_labels = [coord_labels(first, d) for d in extra]
    n_rows = len(axes_labels[0]) if len(extra) == 2 else 1
    n_cols = len(axes_labels[-1]) if extra else 1
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(max(3.1 * n_cols, 7.5), 2.7 * n_rows + 1.8), squeeze=False,
                             sharex=True, sharey=len(extra) == 2, layout="constrained")
    log = first.attrs.get("scale") == "log" and all(
        c is None or bool((c.numpy()[np.isfinite(c.numpy())] > 0).all()) for c in runs)
    for cell in itertools.product(*(range(len(a)) for a in axes_labels)):
        r, col = (cell if len(cell) == 2 else (0, cell[0] if cell else 0))
        ax = axes[r, col]
        names = [axes_labels[i][j] for i, j in enumerate(cell)]
        for k, (label, c) in enumerate(zip(labels, runs)):
            if c is None:
                continue
            y = select_series(c, extra, names)
            if y is None:
                continue
            x = depth_x(c, len(y))  # the model's depth, also for a run of --layers
            ax.plot(x, y, STYLES[k % len(STYLES)], color=COLOURS[k % len(COLOURS)],
                    marker=MARKERS[k % len(MARKERS)] if len(y) <= 50 else None, ms=3.5, lw=1.5,
                    label=_legend_label(label, c))
        if first.attrs.get("reference") is not None:
            ax.axhline(float(first.attrs["reference"]), color="0.45", ls="--", lw=0.9,
                       label=first.attrs.get("reference_label"))
        if log:
            ax.set_yscale("log")
        else:
            ax.ticklabel_format(axis="y", useOffset=False)  # an offset text would sit on the panel's title
        if names:  # "role = target · block = QQ": a bare label ("0", "1-3") does not say what it labels
            ax.set_title(" · ".join(f"{d} = {n}" for d, n in zip(extra, names)), fontsize=10)
        ax.set_xlim(-0.03, 1.03)
        ax.set_xticks([0, 0.25, 0.5, 0.75, 1])
        ax.grid(alpha=0.3)
        if r == n_rows - 1:
            ax.set_xlabel(DEPTH_LABEL[depth_dim(first)] if n_cols == 1 else "relative depth", fontsize=9)
        if col == 0:
            ax.set_ylabel(str(first.attrs.get("long_name", "")) if n_rows == 1 else
                          f"{extra[0]} = {names[0]}", fontsize=9)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=_legend_columns(fig, names), fontsize=9)
    what = f"x = {DEPTH_LABEL[depth_dim(first)]}" if n_cols > 1 else ""
    _title(fig, [f"{experiment}: {first.attrs.get('long_name', '')}, {len(runs)} runs on a shared relative-depth axis",
                 what, note])
    return save_figure(fig, figdir, stem)


def _legend_columns(fig, names: Sequence[str]) -> int:
    """As many legend columns as fit the figure's width (9 pt text: about 0.07 in per character)."""
    need = 0.07 * max((len(n) for n in names), default=1) + 0.7
    return max(1, min(len(names), int(0.95 * fig.get_figwidth() / need)))


def select_series(c: Labelled | None, dims: Sequence[str], names: Sequence[str]) -> np.ndarray | None:
    """The depth series of ``c`` at the labels ``names`` of ``dims`` (None when this run lacks the curve or a label)."""
    if c is None:
        return None
    data = c.numpy()
    index = []
    for d, name in zip(dims, names):
        labs = coord_labels(c, d)
        if name not in labs:
            return None
        index.append(labs.index(name))
    return data[tuple(index)]


def _heatmaps(runs: Sequence[Labelled | None], labels: Sequence[str], figdir: Path, stem: str, experiment: str,
              note: str) -> list[Path]:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    present = [(label, c) for label, c in zip(labels, runs) if c is not None]
    top = max((float(np.nanmax(c.numpy(), initial=0)) for _, c in present), default=1.0) or 1.0
    deepest = max(c.shape[0] for _, c in present)
    height = 3.6 + 0.04 * deepest
    fig, axes = plt.subplots(1, len(present), figsize=(3.9 * len(present) + 1.0, height), squeeze=False,
                             layout="constrained")
    im = None
    for ax, (label, c) in zip(axes[0], present):
        bounds = np.asarray(c.attrs["bounds"], dtype=np.float64)
        x = np.concatenate([bounds[:, 0], bounds[-1:, 1]])
        n = c.shape[0]
        y = np.arange(n + 1) - 0.5
        im = ax.pcolormesh(x, y, np.nan_to_num(c.numpy()), vmin=0, vmax=top, cmap="viridis")
        d = depth_dim(c)
        ax.set_title(_legend_label(label, c), fontsize=10)
        ax.set_xlabel(str(c.attrs.get("xlabel", "")), fontsize=9)
        ax.set_ylabel("block" if d == "layer" else "hidden state")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(im, ax=axes[0].tolist(), label="density (one colour scale for all runs)", shrink=0.9)
    first = present[0][1]
    _title(fig, [f"{experiment}: {first.attrs.get('long_name', '')}",
                 "side by side, one colour scale for all runs", note])
    return save_figure(fig, figdir, stem)
