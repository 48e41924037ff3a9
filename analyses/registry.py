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
from importlib.metadata import EntryPoint, entry_points

from lamina.engine.errors import InputError, PluginError

from .protocol import Analysis

GROUP = "lamina.analyses"
BUILTIN = {  # name -> "module:attribute" (a folder analyses/NAME/ holding ANALYSIS); imported on first use
    "qkv": "lamina.analyses.qkv:ANALYSIS",
    "rsa": "lamina.analyses.rsa:ANALYSIS",
    "length": "lamina.analyses.length:ANALYSIS",
    "punct": "lamina.analyses.punct:ANALYSIS",
    "capture": "lamina.analyses.capture:ANALYSIS",
    "cka": "lamina.analyses.cka:ANALYSIS",
}
COURSE = ("qkv", "rsa", "length", "punct")  # what `lamina run all` runs
_registered: dict[str, Analysis] = {}


def register(analysis: Analysis) -> Analysis:
    """Make ``analysis`` available by name in this process (what entry points do across processes).

    >>> lamina.register(ANALYSIS)                            # doctest: +SKIP
    >>> lamina.run(ANALYSIS.name, model="gpt2", weights="random")   # doctest: +SKIP

    A name that a built-in or another installed plugin already has is refused, naming both.
    """
    if not isinstance(analysis, Analysis):
        raise TypeError(f"register() takes an Analysis, not {type(analysis).__name__}")
    name = analysis.name
    if name in BUILTIN and get(name) is not analysis:
        raise PluginError(f"two analyses are called {name!r}: the built-in ({BUILTIN[name]}) and the one being "
                          "registered; give yours another name")
    for ep in _plugins().get(name, []):
        if _load(ep) is not analysis:
            raise PluginError(f"two analyses are called {name!r}: the plugin {_describe(ep)} and the one being "
                              "registered; give yours another name")
    _registered[name] = analysis
    return analysis


def _plugins() -> dict[str, list[EntryPoint]]:
    """{name: the entry points of that name} (several distributions may declare one)."""
    out: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=GROUP):
        if all(_describe(ep) != _describe(e) for e in out.get(ep.name, [])):
            out.setdefault(ep.name, []).append(ep)
    return out


def _describe(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    where = f" from {dist.metadata['Name']} {dist.version}" if dist is not None else ""
    return f"'{ep.name} = {ep.value}'{where}"


def names() -> list[str]:
    """Built-ins first, then registered and plugin analyses in name order (each name once)."""
    extra = sorted((set(_registered) | set(_plugins())) - set(BUILTIN))
    return [*BUILTIN, *extra]


def get(name: str) -> Analysis:
    """The analysis called ``name``; InputError listing the known ones otherwise, PluginError (one line) for a
    plugin that cannot be loaded, that is not an Analysis, whose analysis calls itself something else, or
    whose name another analysis has too."""
    if name in _registered:
        return _registered[name]
    plugins = _plugins().get(name, [])
    if name in BUILTIN:
        if plugins:
            raise PluginError(f"two analyses are called {name!r}: the built-in ({BUILTIN[name]}) and the plugin "
                              f"{_describe(plugins[0])}; uninstall the plugin or rename its entry point")
        module, _, attr = BUILTIN[name].partition(":")
        return getattr(importlib.import_module(module), attr)
    if not plugins:
        import difflib

        close = difflib.get_close_matches(name, names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InputError(f"no analysis called {name!r} (known: {', '.join(names())}){hint}")
    if len(plugins) > 1:
        raise PluginError(f"two analyses are called {name!r}: the plugins {' and '.join(map(_describe, plugins))}; "
                          "uninstall one of them")
    return _load(plugins[0])


def _load(ep: EntryPoint) -> Analysis:
    try:
        obj = ep.load()
    except Exception as e:  # noqa: BLE001 - a broken plugin is one line, and never breaks the built-ins
        raise PluginError(f"the plugin {_describe(ep)} cannot be loaded: {type(e).__name__}: {e}") from None
    if not isinstance(obj, Analysis):
        raise PluginError(f"the plugin {_describe(ep)} is a {type(obj).__name__}, not a "
                          "lamina.analyses.protocol.Analysis")
    if obj.name != ep.name:
        raise PluginError(f"the plugin {_describe(ep)} holds an analysis called {obj.name!r}: an entry point must "
                          "carry its analysis' own name")
    return obj


def source(analysis: Analysis) -> dict:
    """Where ``analysis`` comes from, for the run's provenance: built-in, registered in the process, or a plugin
    (its distribution and entry point)."""
    name = analysis.name
    if name in BUILTIN and name not in _registered:
        return {"name": name, "kind": "built-in", "object": BUILTIN[name]}
    plugins = _plugins().get(name, [])
    if name not in _registered and len(plugins) == 1:
        ep = plugins[0]
        dist = getattr(ep, "dist", None)
        return {"name": name, "kind": "plugin", "entry_point": f"{ep.name} = {ep.value}",
                "distribution": f"{dist.metadata['Name']} {dist.version}" if dist is not None else None}
    module = getattr(analysis.compute, "__module__", None)
    return {"name": name, "kind": "registered", "module": module}
