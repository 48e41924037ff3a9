"""Per-state curves of a punct run for ``lamina compare``: mean MI, cov, corr and r(cov, MI) per hidden state.

>>> c = curves(open_run("runs/punct-gpt2-medium"))        # doctest: +SKIP
>>> c["mean_mi"].dims                                     # doctest: +SKIP
('class', 'state')

All four as stored (``results/mean`` (class, state, stat) and ``results/r_cov_mi`` (class, state));
state 0 = the embeddings, so relative depth = state / (n_states - 1).
"""

from __future__ import annotations

from lamina.engine.reader import Run

from ..curves import curve
from ..kit import Labelled, labels
from . import schema

WHAT = {"mi": ("mean MI over pairs (bits)", "Lecture (GPT-2 medium): MI declines with depth while covariance grows."),
        "cov": ("mean covariance over pairs", "Lecture: mean covariance grows tens-fold with depth while MI "
                                              "declines."),
        "corr": ("mean correlation over pairs", "Lecture: at state 0 every sequence of a class has the identical "
                                                "vector (r = 1 for every pair)."),
        }
FINDING_R = "Lecture: r(cov, MI) ≈ −0.13 at state 1: covariance and MI measure different things."


def curves(run: Run) -> dict[str, Labelled]:
    """``mean_mi``, ``mean_cov``, ``mean_corr`` and ``r_cov_mi``, each (class, state)."""
    mean = run.numpy(schema.MEAN)  # (class, state, stat)
    stats = run.labels(schema.MEAN, "stat")
    coords = {"class": labels(run.labels(schema.MEAN, "class"))}
    out = {}
    for key, (name, finding) in WHAT.items():
        extra = {"scale": "log"} if key == "cov" and bool((mean[..., stats.index(key)] > 0).all()) else {}
        out[f"mean_{key}"] = curve(mean[..., stats.index(key)], ("class", "state"), coords, long_name=name,
                                   finding=finding, **extra)
    out["r_cov_mi"] = curve(run.numpy(schema.R_COV_MI), ("class", "state"), coords,
                            long_name="r(cov, MI) over pairs", finding=FINDING_R, reference=0.0,
                            note="Gaps: r is undefined where every pair has the same covariance or MI (state 0).")
    return out
