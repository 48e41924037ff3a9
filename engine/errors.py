"""Every error lamina raises on purpose, in one place.

Each subclasses the built-in a caller would naturally catch, so
``except FileNotFoundError`` still catches a missing checkpoint. Messages name
the input that was wrong (sentence number, word, token, hook, path) and the fix.

>>> try:
...     raise InputError("sentence 3 has no ' her'")
... except ValueError as e:
...     print(e)
sentence 3 has no ' her'
"""

from __future__ import annotations


class LaminaError(Exception):
    """Base of all lamina errors (catch this to catch any of them)."""


class InputError(LaminaError, ValueError):
    """Stimuli, positions or options that cannot be used as given."""


class ModelNotFoundError(LaminaError, FileNotFoundError):
    """A model name that is not cached offline, or a checkpoint path that does not exist."""


class HookError(LaminaError, KeyError):
    """A hook point or layer the model does not have."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


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
    another name, or shares its name with another analysis."""


class OfflineError(LaminaError, ConnectionError):
    """Something needs the network (a hub data set or model) and the network is not there."""
