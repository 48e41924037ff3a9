"""punct: internal vs terminal punctuation, MI and covariance (docs/analyses.md "punct").

One folder per analysis: config (Config, PlotOptions; torch-free); analysis (spec, pure compute, summary: loaded
on first use); schema (every stored array: path, dims, units); plots and captions (figures from the run alone, and
what each shows); curves (per-layer curves for `lamina compare`). ``ANALYSIS`` is what the registry holds.
"""

from __future__ import annotations

import importlib
import importlib.util

from ..kit import Analysis
from . import captions, schema
from .config import Config, PlotOptions


def _spec(cfg, model):
    """:func:`.analysis.spec` (the analysis module, and torch with it, load on first use)."""
    from .analysis import spec

    return spec(cfg, model)


def _compute(data, spec, cfg, ctx):
    """:func:`.analysis.compute`."""
    from .analysis import compute

    return compute(data, spec, cfg, ctx)


def _summary(results, spec, cfg):
    """:func:`.analysis.summary`."""
    from .analysis import summary

    return summary(results, spec, cfg)


def __getattr__(name: str):
    """The other names of :mod:`.analysis` (``spec``, ``compute``, ...: what lamina.analyses.punct held before it
    was a folder), imported on first use, so that ``ANALYSIS`` alone (``lamina analyses``, ``report``) needs no
    torch."""
    if name.startswith("__"):
        raise AttributeError(name)
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule: pkg.analysis, pkg.plots
        return importlib.import_module(f"{__name__}.{name}")
    try:
        return getattr(importlib.import_module(f"{__name__}.analysis"), name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


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
    spec=_spec,
    compute=_compute,
    summary=_summary,
    plot=_plot,
    PlotOptions=PlotOptions,
    default_model="gpt2-medium",
    curves=_curves,
    captions=captions.CAPTIONS,
    schema=schema,
)
