"""length: MLP pre-activations against token length (docs/analyses.md "length").

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
    name="length",
    title="C: MLP pre-activations vs token length: median split, per-neuron r and partial r (streamed)",
    Config=Config,
    spec=_spec,
    compute=_compute,
    summary=_summary,
    plot=_plot,
    default_model="EleutherAI/gpt-neo-125M",
    curves=_curves,
    captions=captions.CAPTIONS,
    schema=schema,
)
