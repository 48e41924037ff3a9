"""capture: named hooks for every text into a run, no statistics (docs/analyses.md "capture").

One folder per analysis: config (Config; torch-free); analysis (spec, pure compute, summary: loaded on first use);
schema (every stored array: path, dims, units). ``ANALYSIS`` is what the registry holds.
"""

from __future__ import annotations

from ..deferred import deferred, package_getattr
from ..kit import Analysis
from . import schema
from .config import Config

_spec = deferred(f"{__name__}.analysis", "spec")
_compute = deferred(f"{__name__}.analysis", "compute")
_summary = deferred(f"{__name__}.analysis", "summary")
__getattr__ = package_getattr(__name__)  # the names of .analysis, as before it was a folder


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
