"""Running an analysis from the tests the way the command line does (one code path: the runner)."""

from __future__ import annotations

from lamina.analyses import registry
from lamina.analyses.model_info import inspect
from lamina.analyses.options import RunOptions
from lamina.analyses.runner import execute


def run_analysis(name: str, cfg=None, opts: RunOptions = RunOptions(), **figure_options):
    """The complete run of analysis ``name`` (a Run)."""
    return execute(registry.get(name), cfg, opts, figure_options=figure_options, echo=lambda s: None)


def spec_of(name: str, cfg=None, opts: RunOptions = RunOptions()):
    """The analysis' spec for ``opts.model`` (tokenizer and sizes only: no weights load)."""
    a = registry.get(name)
    opts = opts.with_model(a.default_model)
    return a.spec(cfg if cfg is not None else a.Config(), inspect(opts))
