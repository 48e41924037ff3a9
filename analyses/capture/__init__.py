"""capture: named hooks for every text into a run, no statistics (docs/analyses.md "capture").

One folder per analysis: config (Config; torch-free); analysis (spec, pure compute, summary: loaded on first use);
schema (every stored array: path, dims, units). ``ANALYSIS`` is what the registry holds.
"""

from __future__ import annotations

import importlib
import importlib.util

from ..kit import Analysis
from . import schema
from .config import Config


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
    """The other names of :mod:`.analysis` (``spec``, ``compute``, ...: what lamina.analyses.capture held before it
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


ANALYSIS = Analysis(
    name="capture",
    title="Capture named hooks for every text into a run (no statistics)",
    Config=Config,
    spec=_spec,
    compute=_compute,
    summary=_summary,
    plot=None,
    default_model="gpt2",
    schema=schema,
)
