"""capture: named hooks for every text into a run, no statistics (docs/analyses.md "capture").

One folder per analysis: analysis (Config, spec, pure compute, summary); schema (every stored array: path, dims,
units). ``ANALYSIS`` is what the registry holds.
"""

from __future__ import annotations

from ..kit import Analysis
from . import schema
from .analysis import *  # noqa: F403  (the names lamina.analyses.capture held before it was a folder)
from .analysis import Config, compute, spec, summary

ANALYSIS = Analysis(
    name="capture",
    title="Capture named hooks for every text into a run (no statistics)",
    Config=Config,
    spec=spec,
    compute=compute,
    summary=summary,
    plot=None,
    default_model="gpt2",
    schema=schema,
)
