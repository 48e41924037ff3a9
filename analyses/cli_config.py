"""Command-line options generated from dataclasses: a Config's fields become ``--options``.

Field type -> option: ``bool`` -> ``--name/--no-name``; ``int``, ``float``, ``str`` as such;
``Optional[X]`` -> X with default None; ``Literal[...]`` -> a choice; ``tuple[str, ...]`` ->
a repeatable option; ``tuple[int, ...]`` / ``tuple[float, ...]`` -> one comma-separated list
(``--bucket-edges 0,1,4,16``), parsed to the same typed tuple Python passes (so both give one resume
key). The help is the field's :func:`~lamina.analyses.protocol.option` help with its bounds.

>>> import dataclasses
>>> from lamina.analyses.protocol import option
>>> @dataclasses.dataclass(frozen=True)
... class C:
...     n: int = option(250, "samples per class")
...     full: bool = option(False, "feed the whole window")
>>> [o.opts for o in click_options(C)]
[['--n'], ['--full']]
>>> build(C, {"n": 3, "full": True})
C(n=3, full=True)
>>> NumberList(int).convert("0,1,4,16", None, None)
(0, 1, 4, 16)
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

import click
from lamina.engine.errors import InputError

from .protocol import option_help


class NumberList(click.ParamType):
    """A comma-separated list of ``kind`` (int or float) -> a tuple of them."""

    def __init__(self, kind: type):
        self.kind = kind
        self.name = f"{kind.__name__},..."

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return tuple(self.kind(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of {self.kind.__name__}s", param, ctx)


def _unwrap(tp) -> tuple[Any, bool]:
    """(inner type, optional?) of ``Optional[X]`` / ``X | None``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def click_options(cls) -> list[click.Option]:
    """One click option per field of dataclass ``cls`` whose metadata does not say ``cli=False``."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):
            continue
        tp, _ = _unwrap(hints[f.name])
        name = "--" + f.name.replace("_", "-")
        flags = [*f.metadata.get("flags", ()), name]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else f.default
        help_ = option_help(f)
        kw: dict[str, Any] = {"default": default, "help": help_, "show_default": default not in (None, ()),
                              "required": required}
        if tp is bool:
            out.append(click.Option([f"{name}/--no-{f.name.replace('_', '-')}", *f.metadata.get("flags", ()),
                                     f.name], **kw))
            continue
        if typing.get_origin(tp) is Literal:
            kw["type"] = click.Choice([str(a) for a in typing.get_args(tp)])
        elif typing.get_origin(tp) is tuple and _element(tp) in (int, float):
            kw.update(type=NumberList(_element(tp)), default=default,
                      show_default=",".join(map(str, default)) if default else False)
        elif typing.get_origin(tp) is tuple:
            kw.update(multiple=True, type=str, default=default or (), show_default=False)
        elif tp in (int, float, str):
            kw["type"] = tp
        else:
            kw["type"] = str
        out.append(click.Option([*flags, f.name], **kw))
    return out


def _element(tp) -> Any:
    """X of ``tuple[X, ...]`` (None for other tuples)."""
    args = typing.get_args(tp)
    return args[0] if len(args) == 2 and args[1] is Ellipsis else None


def check_values(cls, values: Mapping[str, Any], where: str) -> None:
    """Each value of the type its field declares, as the command line would parse it (Python callers pass
    values unparsed); InputError naming the field otherwise."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        tp, optional = _unwrap(hints[name])
        if (value is None and optional) or _fits(value, tp):
            continue
        raise InputError(f"{where}: {name}={value!r} must be {_describe(tp)}{' or None' if optional else ''}")


def _fits(value, tp) -> bool:
    if typing.get_origin(tp) is Literal:
        return value in typing.get_args(tp)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, (str, os.PathLike))
    if typing.get_origin(tp) is tuple:
        kind = _element(tp)
        return isinstance(value, (tuple, list)) and (kind not in (int, float) or all(_fits(v, kind) for v in value))
    return True  # anything else: the dataclass' own checks


def _describe(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(tp)))
    return getattr(tp, "__name__", str(tp))


def build(cls, values: Mapping[str, Any]):
    """``cls(**values)`` for the fields the command line sets (tuples for repeatable options)."""
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names}
    return cls(**kwargs)


def split(values: Mapping[str, Any], *classes) -> list[dict[str, Any]]:
    """The parsed values shared out between dataclasses by field name."""
    out = []
    for cls in classes:
        names = {f.name for f in dataclasses.fields(cls)} if cls is not None else set()
        out.append({k: v for k, v in values.items() if k in names})
    return out
