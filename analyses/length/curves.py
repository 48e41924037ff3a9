"""Per-block curves of a length run for ``lamina compare``: mean and sd of r over neurons, and the r density.

>>> c = curves(open_run("runs/length-EleutherAI-gpt-neo-125M"))   # doctest: +SKIP
>>> c["corr_mean"].dims, c["corr_density"].dims                    # doctest: +SKIP
(('layer',), ('layer', 'corr_bin'))

``corr_mean`` / ``corr_sd``: over the finite values of ``results/corr`` (layer, neuron) (constant
neurons are NaN there and left out); ``corr_density``: ``results/corr_hist`` as stored.
"""

from __future__ import annotations

import numpy as np

from lamina.engine.reader import Run

from ..curves import curve, heatmap, nan_mean_rows, nan_sd_rows
from ..kit import Labelled
from . import schema

FINDING_MEAN = ("Lecture (GPT-Neo 125M vs 1.3B): block 0 has positive r, most later blocks weakly negative r; "
                "both models have a first block unlike the rest.")
FINDING_SD = "Lecture: the distributions of r narrow in late blocks, in both models."
FINDING_DENSITY = ("Lecture: block 0 positive, most later blocks weakly negative, narrowing late; 1.3B's "
                   "distributions are multimodal where 125M's are not (\"is it universal?\").")


def curves(run: Run) -> dict[str, Labelled]:
    """``corr_mean``, ``corr_sd`` (layer) and ``corr_density`` (layer, corr_bin)."""
    r = run.numpy(schema.CORR)  # (layer, neuron)
    hist = run.numpy(schema.CORR_HIST)  # (layer, corr_bin)
    edges = run.numpy(schema.CORR_BIN_EDGES).astype(np.float64)
    bounds = np.stack([edges[:-1], edges[1:]], axis=1)
    return {
        "corr_mean": curve(nan_mean_rows(r), ("layer",), {}, long_name="mean r(MLP pre-activation, token length)",
                           finding=FINDING_MEAN, reference=0.0),
        "corr_sd": curve(nan_sd_rows(r), ("layer",), {}, long_name="sd over neurons of r(activation, token length)",
                         finding=FINDING_SD),
        "corr_density": heatmap(hist, "layer", "corr_bin", bounds.mean(1), bounds,
                                long_name="density of r(MLP pre-activation, token length) per block",
                                xlabel="Pearson r (one value per neuron)", finding=FINDING_DENSITY),
    }
