"""rsa: RSA between Q, K, V and category selectivity (docs/analyses.md "rsa").

One folder per analysis: config (Config, PlotOptions; torch-free); analysis (spec, pure compute, summary: loaded
on first use); schema (every stored array: path, dims, units); plots and captions (figures from the run alone, and
what each shows); curves (per-layer curves for `lamina compare`). ``ANALYSIS`` is what the registry holds.
"""

from __future__ import annotations

from ..deferred import deferred, package_getattr
from ..kit import Analysis
from . import captions, schema
from .config import Config

_spec = deferred(f"{__name__}.analysis", "spec")
_compute = deferred(f"{__name__}.analysis", "compute")
_summary = deferred(f"{__name__}.analysis", "summary")
_plot = deferred(f"{__name__}.plots", "plot")  # matplotlib loads on first use
_curves = deferred(f"{__name__}.curves", "curves")
__getattr__ = package_getattr(__name__)  # the names of .analysis, as before it was a folder


ANALYSIS = Analysis(
    name="rsa",
    title="B: RSA between Q, K, V and category selectivity of a final word, at every block",
    Config=Config,
    spec=_spec,
    compute=_compute,
    summary=_summary,
    plot=_plot,
    default_model="gpt2-large",
    curves=_curves,
    captions=captions.CAPTIONS,
    schema=schema,
)
