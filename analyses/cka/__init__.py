"""Layer × layer linear CKA of one model, streamed over any corpus: ``lamina run cka``.

>>> run = lamina.run("cka", model="smollm2-135m", weights="random", n_seq=4, seq_len=64)   # doctest: +SKIP
>>> run.datatree()["results"].cka_debiased.sel(layer_a=3)                                 # doctest: +SKIP

Definitions (docs/analyses.md, "cka"): a corpus (default: the text shipped with lamina) is cut
into ``n_seq`` sequences of ``seq_len`` tokens; one hook per block (default
``blocks.{layer}.hook_resid_post``) is captured at every position, and every token except a BOS
in front is a sample. Each work unit is reduced on the device to a mergeable CKA state
(:class:`.compute.CKAState`: exact moments, or minibatch sums for wide models), so memory does
not grow with the corpus; the states are folded in unit order, so a resumed run and a run over
several ranks give bitwise the same matrices. The activations are kept (``acts/resid``) so that
``lamina similarity`` can compare two runs token by token.
"""

from __future__ import annotations

import importlib
import importlib.util

from ..kit import Analysis
from . import captions
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
    """The names of :mod:`.analysis` (``spec``, ``compute``, ``hook_width``, ...: what this module held before they
    moved), imported on first use, so that ``ANALYSIS`` alone (``lamina analyses``, ``report``) needs no torch."""
    if name.startswith("__"):
        raise AttributeError(name)
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule: pkg.analysis, pkg.plots
        return importlib.import_module(f"{__name__}.{name}")
    try:
        return getattr(importlib.import_module(f"{__name__}.analysis"), name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def _plot(run, folder, **figure_options):
    """The figures of a cka run (:func:`.plots.plot`; matplotlib loads on first use)."""
    from . import plots

    return plots.plot(run, folder, **figure_options)


ANALYSIS = Analysis(
    name="cka", title="Layer x layer linear CKA (biased and debiased), streamed over a corpus",
    Config=Config, spec=_spec, compute=_compute, summary=_summary, plot=_plot, captions=captions.CAPTIONS,
    default_model="gpt2")
