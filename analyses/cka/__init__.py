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

from ..deferred import deferred, package_getattr
from ..kit import Analysis
from . import captions
from .config import Config

_spec = deferred(f"{__name__}.analysis", "spec")
_compute = deferred(f"{__name__}.analysis", "compute")
_summary = deferred(f"{__name__}.analysis", "summary")
_plot = deferred(f"{__name__}.plots", "plot")  # matplotlib loads on first use
__getattr__ = package_getattr(__name__)  # the names of .analysis, as before it was a folder


ANALYSIS = Analysis(
    name="cka", title="Layer x layer linear CKA (biased and debiased), streamed over a corpus",
    Config=Config, spec=_spec, compute=_compute, summary=_summary, plot=_plot, captions=captions.CAPTIONS,
    default_model="gpt2")
