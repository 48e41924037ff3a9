"""Per-block curves of a qkv run for ``lamina compare``: share of |cosine| >= 0.9 and the cosine sd.

>>> c = curves(open_run("runs/qkv-gpt2"))                  # doctest: +SKIP
>>> c["cosine_far"].dims, c["cosine_far"].shape             # doctest: +SKIP
(('role', 'block', 'layer'), (2, 6, 12))

Both come from the stored count histograms ``results/cosine_hist`` (role, layer, block, bin) with
the rule of the run's summary: "|c| >= 0.9" is the bins whose centre has |centre| > 0.9 (the bins
of [-1, -0.9) and [0.9, 1]); the sd is that of the binned values (bin centres, weights = counts).
"""

from __future__ import annotations

import numpy as np

from lamina.engine.reader import Run

from ..curves import curve
from ..kit import Labelled, labels
from . import schema

FAR = 0.9
FINDING_FAR = ("Lecture (GPT-2 small at one block, GPT-2 XL at all 48): the target's cosine distributions are "
               "bimodal near ±1 in early blocks (a large share of |cos| ≥ 0.9) and flatten towards 0 in deep blocks.")
FINDING_SD = ("Lecture: wide (bimodal near ±1) in early blocks, narrowing as the distributions flatten towards 0 "
              "with depth; centred (correlation) they collapse to a roughly Gaussian shape around 0, like the "
              "random baseline.")


def histogram_moments(hist: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(share of |value| >= 0.9, sd) over the last (bin) axis of count histograms on ``edges``.

    >>> share, sd = histogram_moments(np.array([[1, 0, 0, 1]]), np.linspace(-1, 1, 5))
    >>> share.tolist(), sd.round(3).tolist()
    ([0.0], [0.75])
    """
    centres = (edges[:-1] + edges[1:]) / 2
    far = np.abs(centres) > FAR
    counts = hist.astype(np.float64)
    total = counts.sum(-1)
    share = np.divide(counts[..., far].sum(-1), total, out=np.full(total.shape, np.nan), where=total > 0)
    p = np.divide(counts, total[..., None], out=np.zeros(counts.shape), where=total[..., None] > 0)
    mu = (p * centres).sum(-1)
    sd = np.sqrt((p * (centres - mu[..., None]) ** 2).sum(-1))
    return share, np.where(total > 0, sd, np.nan)


def curves(run: Run) -> dict[str, Labelled]:
    """``cosine_far`` and ``cosine_sd``, each (role, block, layer)."""
    name = schema.COSINE_HIST
    hist = run.numpy(name)  # (role, layer, block, bin)
    share, sd = histogram_moments(hist, run.numpy(schema.BIN_EDGES))  # (role, layer, block)
    coords = {"role": labels(run.labels(name, "role")), "block": labels(run.labels(name, "block"))}
    dims = ("role", "block", "layer")
    return {
        "cosine_far": curve(share.transpose(0, 2, 1), dims, coords, long_name="share of |cosine| ≥ 0.9",
                            finding=FINDING_FAR, units="1"),
        "cosine_sd": curve(sd.transpose(0, 2, 1), dims, coords, long_name="sd of the feature cosine",
                           finding=FINDING_SD, units="1"),
    }
