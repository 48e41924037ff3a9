"""Every error lamina raises: ``from lamina.errors import InputError`` (the classes of ``lamina.engine.errors``).

>>> from lamina.errors import LaminaError, InputError
>>> issubclass(InputError, LaminaError)
True
"""


from lamina.engine.errors import (  # noqa: F401
    AnalysisError,
    HookError,
    InputError,
    LaminaError,
    ModelNotFoundError,
    NonFiniteError,
    NotARunError,
    OfflineError,
    PluginError,
    RunCorruptError,
    RunNotFoundError,
    StoreExistsError,
    StoreLockedError,
    StoreMismatchError,
    StoreNotWritableError,
    StoreURLError,
)

__all__ = ["LaminaError", "InputError", "ModelNotFoundError", "HookError", "RunNotFoundError", "StoreExistsError",
           "StoreLockedError", "StoreMismatchError", "StoreNotWritableError", "NotARunError", "StoreURLError",
           "RunCorruptError", "NonFiniteError", "OfflineError", "PluginError", "AnalysisError"]
