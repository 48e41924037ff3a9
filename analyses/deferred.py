"""What an analysis package's ``ANALYSIS`` points at without importing it: functions of its modules imported on
first call, and the package's module ``__getattr__``. So ``lamina analyses``, ``lamina report`` and ``--help`` read
``ANALYSIS`` without importing torch, and the analysis module loads the first time a run needs it.

>>> sqrt = deferred("math", "sqrt")
>>> sqrt(9.0), sqrt.__name__
(3.0, 'sqrt')
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any


def deferred(module: str, attribute: str) -> Callable[..., Any]:
    """``module.attribute``, imported when first called."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), attribute)(*args, **kwargs)

    call.__name__ = call.__qualname__ = attribute
    call.__doc__ = f":func:`{module}.{attribute}` (its module, and what it imports, load on the first call)."
    return call


def package_getattr(package: str, module: str = "analysis") -> Callable[[str], Any]:
    """A package's module ``__getattr__``: its submodules (``pkg.plots``), then the names of ``pkg.<module>`` (what
    ``lamina.analyses.NAME`` held before it was a folder), imported on first use."""

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if importlib.util.find_spec(f"{package}.{name}") is not None:  # a submodule: pkg.analysis, pkg.plots
            return importlib.import_module(f"{package}.{name}")
        try:
            return getattr(importlib.import_module(f"{package}.{module}"), name)
        except AttributeError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    return __getattr__
