"""punct: internal vs terminal punctuation, MI and covariance (docs/analyses.md "punct").

One folder per analysis: analysis (Config, spec, pure compute, summary); schema (every stored array: path, dims,
units); plots and captions (figures from the run alone, and what each shows); curves (per-layer curves for `lamina
compare`). ``ANALYSIS`` is what the registry holds.
"""

from __future__ import annotations

from ..kit import Analysis
from . import captions, schema
from .analysis import *  # noqa: F403  (the names lamina.analyses.punct held before it was a folder)
from .analysis import Config, PlotOptions, compute, spec, summary


def _plot(run, folder, **figure_options):
    """The figures of a punct run (:func:`.plots.plot`; matplotlib loads on first use)."""
    from . import plots

    return plots.plot(run, folder, **figure_options)


def _curves(run):
    """Per-layer curves of a punct run for ``lamina compare`` (:func:`.curves.curves`)."""
    from . import curves

    return curves.curves(run)


ANALYSIS = Analysis(
    name="punct",
    title="D: internal (,) vs terminal (.) marks: MI, covariance and correlation of all pairs, per hidden state",
    Config=Config,
    spec=spec,
    compute=compute,
    summary=summary,
    plot=_plot,
    PlotOptions=PlotOptions,
    default_model="gpt2-medium",
    curves=_curves,
    captions=captions.CAPTIONS,
    schema=schema,
)
