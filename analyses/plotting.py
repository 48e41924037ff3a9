"""Figure helpers shared by the analyses' plot modules (matplotlib, Agg backend).

>>> bin_centres(np.array([0.0, 1.0, 2.0]))
array([0.5, 1.5])
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def shown_blocks(n_layers: int) -> list[int]:
    """First, middle and last block (fewer when the model has fewer blocks).

    >>> shown_blocks(12), shown_blocks(2)
    ([0, 6, 11], [0, 1])
    """
    return sorted({0, n_layers // 2, n_layers - 1})


def save_figure(fig, figdir: Path, stem: str) -> list[Path]:
    """Save ``fig`` as ``stem.png`` (150 dpi) and ``stem.pdf`` in ``figdir``, close it, return the paths."""
    import matplotlib.pyplot as plt

    out = [Path(figdir) / f"{stem}.png", Path(figdir) / f"{stem}.pdf"]
    fig.savefig(out[0], dpi=150)
    fig.savefig(out[1])
    plt.close(fig)
    return out


def bin_centres(edges: np.ndarray) -> np.ndarray:
    """(bin,) centres of (edge,) = (bin + 1,) edges."""
    return (edges[:-1] + edges[1:]) / 2


def depth_colours(n: int):
    """(discrete colormap of n colours, the n colours): one plasma colour per layer, without
    plasma's palest tenth (yellow lines vanish on white)."""
    import matplotlib as mpl

    colours = [mpl.colormaps["plasma"](0.9 * i / max(n - 1, 1)) for i in range(n)]
    return mpl.colors.ListedColormap(colours, name="plasma_layers"), colours


def start(run, figdir: Path) -> tuple[Path, str]:
    """The preamble of every plot function: headless matplotlib, the folder made, the title suffix."""
    import matplotlib

    matplotlib.use("Agg")
    figdir = Path(figdir)
    figdir.mkdir(parents=True, exist_ok=True)
    return figdir, title_suffix(run.attrs)


def title_suffix(attrs) -> str:
    """'gpt2, random weights (MEANINGLESS)' for figure titles."""
    model = attrs.get("model", {})
    name = Path(str(model.get("model", "?"))).name
    kind = attrs.get("weights", "?")
    return f"{name}, {kind} weights" + (" (MEANINGLESS)" if kind == "random" else "")
