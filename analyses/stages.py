"""The runner's guard rails around an analysis' own code: its Spec checked before any work, and its exceptions
turned into one line naming the analysis and the stage (``punct compute: ValueError: ...``).

>>> stage_call("demo", "compute", lambda: 1 / 0)
Traceback (most recent call last):
...
lamina.engine.errors.AnalysisError: demo compute: ZeroDivisionError: division by zero
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from lamina.engine.errors import AnalysisError, LaminaError, PluginError

from .protocol import Pass, Spec, results_of

T = TypeVar("T")


def stage_call(name: str, stage: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``; an exception of the analysis' own becomes one :class:`AnalysisError`
    "``name stage: Type: message``" (the original is its ``__cause__``). lamina's own errors (bad input, a
    missing hook, NaN) and the machine's (OSError: a full disk, MemoryError) pass through as they are; an
    AnalysisError without a stage gets this one."""
    try:
        return fn(*args, **kwargs)
    except AnalysisError as e:
        if getattr(e, "stage", None):
            raise
        err = AnalysisError(f"{name} {stage}: {e.render()}")
        err.stage = stage  # type: ignore[attr-defined]
        raise err from e
    except (LaminaError, OSError, MemoryError):  # lamina's own errors; the disk's and the machine's
        raise
    except Exception as e:  # noqa: BLE001 - one line naming analysis and stage; --debug shows the traceback
        text = str(e).strip().splitlines()
        err = AnalysisError(f"{name} {stage}: {type(e).__name__}: {text[0] if text else ''}".rstrip(": "))
        err.stage = stage  # type: ignore[attr-defined]
        raise err from e


def check_spec(name: str, spec: Any) -> None:
    """What the runner needs of a Spec, before the model loads: a Spec of Passes whose phases and reducer
    names are unique (captures of one name in several passes fill one array). PluginError (one line) otherwise.

    >>> p = Pass(batch=None, captures=())
    >>> check_spec("demo", Spec(passes=(p, p), stimuli_sha256=""))
    Traceback (most recent call last):
    ...
    lamina.engine.errors.PluginError: demo spec: passes 0 and 1 share the phase 'capture'; give each Pass its own phase=
    """
    if not isinstance(spec, Spec):
        raise PluginError(f"{name} spec: returned a {type(spec).__name__}, not a lamina Spec")
    if not isinstance(spec.passes, tuple) or not all(isinstance(p, Pass) for p in spec.passes):
        raise PluginError(f"{name} spec: Spec.passes must be a tuple of Pass")
    seen: dict[str, tuple[str, int]] = {}

    def once(kind: str, value: str, i: int, fix: str) -> None:
        key = f"{kind}:{value}"
        if key in seen:
            raise PluginError(
                f"{name} spec: passes {seen[key][1]} and {i} share the {kind} {value!r}; {fix}"
                if seen[key][1] != i
                else f"{name} spec: pass {i} has two {kind}s {value!r}; {fix}"
            )
        seen[key] = (kind, i)

    for i, p in enumerate(spec.passes):
        once("phase", p.phase, i, "give each Pass its own phase=")
        for r in p.reducers:
            once("reducer name", r.name, i, "give each reducer its own name")


def check_results(analysis: Any, results: Any) -> None:
    """compute's results against the analysis' schema (when it declares one): every declared path with its
    declared dims. PluginError (one line) otherwise."""
    if getattr(analysis, "schema", None) is None:
        return
    declared = results_of(analysis.schema)
    for path, value in results.items():
        want = declared.get(str(path))
        if want is not None and tuple(value.dims) != want.dims:
            raise PluginError(
                f"{analysis.name} compute: {path} has dims {tuple(value.dims)}, its schema says {want.dims}"
            )
