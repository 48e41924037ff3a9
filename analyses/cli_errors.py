"""How the command line shows an error: one line, parameters spelled as options (``--out``, ``--overwrite``),
and the traceback only under ``--debug`` or ``LAMINA_DEBUG=1``.

>>> from lamina.engine.errors import StoreExistsError
>>> message(StoreExistsError("{out} exists; pass {overwrite}", params={"out": "runs/a", "overwrite": True}))
"--out 'runs/a' exists; pass --overwrite"
>>> take_debug(["run", "qkv", "--debug"], env={})
['run', 'qkv']
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import MutableMapping, Sequence

from lamina.engine.errors import LaminaError

DEBUG_ENV = "LAMINA_DEBUG"


def take_debug(argv: Sequence[str] | None, env: MutableMapping[str, str] = os.environ) -> list[str]:
    """``argv`` without ``--debug`` (anywhere); with it, ``LAMINA_DEBUG=1`` is set for this process."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args:
        env[DEBUG_ENV] = "1"
        args = [a for a in args if a != "--debug"]
    return args


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def message(e: LaminaError) -> str:
    """The error's one line, its parameters spelled as command-line options."""
    return e.render("cli")


def show(e: LaminaError) -> None:
    """``lamina: error: ...`` on stderr; the traceback (with the analysis' own exception) first when debugging."""
    import click

    if debugging():
        traceback.print_exception(e, file=sys.stderr)
    click.secho(f"lamina: error: {message(e)}", err=True, fg="red")
