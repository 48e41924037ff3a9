"""Every error lamina raises on purpose, in one place.

Each subclasses the built-in a caller would naturally catch, so
``except FileNotFoundError`` still catches a missing checkpoint. Messages name
the input that was wrong (sentence number, word, token, hook, path) and the fix.

>>> try:
...     raise InputError("sentence 3 has no ' her'")
... except ValueError as e:
...     print(e)
sentence 3 has no ' her'

An error about a parameter names it the way its caller spells it: ``{name}`` fields of the
message are the parameters in ``params``, rendered ``out='x'`` / ``overwrite=True`` for Python
(``str(e)``) and ``--out 'x'`` / ``--overwrite`` for the command line (``e.render("cli")``);
``{name:name}`` is the name alone:

>>> e = StoreExistsError("{out} holds a run; pass {overwrite} or another {out:name}",
...                      params={"out": "runs/a", "overwrite": True})
>>> str(e)
"out='runs/a' holds a run; pass overwrite=True or another out="
>>> e.render("cli")
"--out 'runs/a' holds a run; pass --overwrite or another --out"
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

NAME: Any = object()  # a params value that renders the parameter's name alone: ``out=`` / ``--out``
Style = Literal["python", "cli"]


def param(name: str, value: Any = NAME, style: Style = "python") -> str:
    """How ``style`` spells the parameter ``name`` set to ``value`` (``NAME``: the name alone).

    >>> param("micro_batch", 0), param("micro_batch", 0, "cli"), param("figures", False, "cli")
    ('micro_batch=0', '--micro-batch 0', '--no-figures')
    """
    if style == "cli":
        flag = "--" + name.replace("_", "-")
        if value is NAME or value is True:
            return flag
        if value is False:
            return "--no-" + name.replace("_", "-")
        return f"{flag} {value!r}" if isinstance(value, str) else f"{flag} {value}"
    return f"{name}=" if value is NAME else f"{name}={value!r}"


class LaminaError(Exception):
    """Base of all lamina errors (catch this to catch any of them).

    ``params``: {parameter: value (or NAME)} for the ``{parameter}`` fields of the message, which are rendered
    in the caller's spelling (see the module docstring); messages without params are plain text.
    """

    def __init__(self, *args: Any, params: Mapping[str, Any] | None = None):
        super().__init__(*args)
        self.params = dict(params or {})

    def render(self, style: Style = "python") -> str:
        """The message with its parameters spelled for ``style`` ("python": ``out=``; "cli": ``--out``)."""
        text = str(self.args[0]) if len(self.args) == 1 else (Exception.__str__(self) if self.args else "")
        if not self.params:
            return text
        def field(m: re.Match) -> str:
            if m[1] not in self.params:
                return m[0]
            return param(m[1], NAME if m[2] else self.params[m[1]], style)

        return re.sub(r"\{(\w+)(:name)?\}", field, text)

    def __str__(self) -> str:
        return self.render("python")


class InputError(LaminaError, ValueError):
    """Stimuli, positions or options that cannot be used as given."""


class ModelNotFoundError(LaminaError, FileNotFoundError):
    """A model name that is not cached offline, or a checkpoint path that does not exist."""


class HookError(LaminaError, KeyError):
    """A hook point or layer the model does not have."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return self.render("python")


class RunNotFoundError(LaminaError, FileNotFoundError):
    """A path or URL that holds no lamina run."""


class StoreExistsError(LaminaError, FileExistsError):
    """The output store already holds a complete run (pass overwrite=True / --overwrite)."""


class StoreLockedError(LaminaError, BlockingIOError):
    """Another live process is writing the same store."""


class StoreMismatchError(LaminaError, ValueError):
    """An incomplete store was made by a different command, so it cannot be resumed."""


class StoreNotWritableError(LaminaError, PermissionError):
    """The destination cannot be written (read-only, or no space left)."""


class NotARunError(LaminaError, FileExistsError):
    """``--out`` holds something lamina did not write (files, or a Zarr group of someone else's):
    lamina writes only into a new path, an empty folder or one of its own runs."""


class StoreURLError(LaminaError, ValueError):
    """A store URL whose scheme lamina cannot write end to end (``memory://`` on the command line,
    a missing fsspec backend, an unknown scheme)."""


class RunCorruptError(LaminaError, ValueError):
    """A run whose chunks are missing or fail their checksum (``lamina verify`` names them)."""


class NonFiniteError(LaminaError, FloatingPointError):
    """NaN or inf appeared in captured activations (message names hook, layer and position)."""


class PluginError(LaminaError, RuntimeError):
    """A plugin analysis that cannot be used: it fails to import, is not an Analysis, calls itself by
    another name, shares its name with another analysis, or declares a Spec the runner cannot run."""


class AnalysisError(LaminaError, RuntimeError):
    """An analysis' own code (spec, compute, summary, plot, curves) raised: one line naming the analysis and
    the stage (``punct compute: ...``); the original exception is its ``__cause__`` (shown under ``--debug``
    or ``LAMINA_DEBUG=1``)."""


class OfflineError(LaminaError, ConnectionError):
    """Something needs the network (a hub data set or model) and the network is not there."""
