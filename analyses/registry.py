"""Which analyses exist: the built-ins, those registered at run time, and plugins by entry point.

A third-party package makes its analysis available to ``lamina run NAME``, ``lamina info``,
``lamina plot`` and ``lamina.run`` by declaring an entry point in the group
``lamina.analyses`` that names an :class:`~lamina.analyses.protocol.Analysis` object::

    [project.entry-points."lamina.analyses"]
    resid_norm = "my_package.resid_norm:ANALYSIS"

>>> names()[:4]
['qkv', 'rsa', 'length', 'punct']
>>> get("qkv").default_model
'gpt2'
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from lamina.engine.errors import InputError

from .protocol import Analysis

GROUP = "lamina.analyses"
BUILTIN = {  # name -> "module:attribute"; imported on first use
    "qkv": "lamina.analyses.qkv:ANALYSIS",
    "rsa": "lamina.analyses.rsa:ANALYSIS",
    "length": "lamina.analyses.length:ANALYSIS",
    "punct": "lamina.analyses.punct:ANALYSIS",
    "capture": "lamina.analyses.capture:ANALYSIS",
}
COURSE = ("qkv", "rsa", "length", "punct")  # what `lamina run all` runs
_registered: dict[str, Analysis] = {}


def register(analysis: Analysis) -> Analysis:
    """Make ``analysis`` available by name in this process (what entry points do across processes).

    >>> lamina.register(ANALYSIS)                            # doctest: +SKIP
    >>> lamina.run(ANALYSIS.name, model="gpt2", weights="random")   # doctest: +SKIP
    """
    if not isinstance(analysis, Analysis):
        raise TypeError(f"register() takes an Analysis, not {type(analysis).__name__}")
    _registered[analysis.name] = analysis
    return analysis


def _plugins() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def names() -> list[str]:
    """Built-ins first, then registered and plugin analyses in name order."""
    extra = sorted((set(_registered) | set(_plugins())) - set(BUILTIN))
    return [*BUILTIN, *extra]


def get(name: str) -> Analysis:
    """The analysis called ``name``; InputError listing the known ones otherwise."""
    if name in _registered:
        return _registered[name]
    if name in BUILTIN:
        module, _, attr = BUILTIN[name].partition(":")
        return getattr(importlib.import_module(module), attr)
    plugin = _plugins().get(name)
    if plugin is None:
        import difflib

        close = difflib.get_close_matches(name, names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InputError(f"no analysis called {name!r} (known: {', '.join(names())}){hint}")
    obj = plugin.load()
    if not isinstance(obj, Analysis):
        raise InputError(f"the plugin {name!r} ({plugin.value}) is a {type(obj).__name__}, not a "
                         "lamina.analyses.protocol.Analysis")
    return obj
