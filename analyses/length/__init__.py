"""length: MLP pre-activations against token length (docs/analyses.md "length").

One folder per analysis: analysis (Config, spec, pure compute, summary); schema (every stored array: path, dims,
units); plots and captions (figures from the run alone, and what each shows); curves (per-layer curves for `lamina
compare`). ``ANALYSIS`` is what the registry holds.
"""

from __future__ import annotations

from ..kit import Analysis
from . import captions, schema
from .analysis import *  # noqa: F403  (the names lamina.analyses.length held before it was a folder)
from .analysis import Config, compute, spec, summary


def _plot(run, folder, **figure_options):
    """The figures of a length run (:func:`.plots.plot`; matplotlib loads on first use)."""
    from . import plots

    return plots.plot(run, folder, **figure_options)


def _curves(run):
    """Per-layer curves of a length run for ``lamina compare`` (:func:`.curves.curves`)."""
    from . import curves

    return curves.curves(run)


ANALYSIS = Analysis(
    name="length",
    title="C: MLP pre-activations vs token length: median split, per-neuron r and partial r (streamed)",
    Config=Config,
    spec=spec,
    compute=compute,
    summary=summary,
    plot=_plot,
    default_model="EleutherAI/gpt-neo-125M",
    curves=_curves,
    captions=captions.CAPTIONS,
    schema=schema,
)
