"""What an analysis' spec may know of the model before any weights load: tokenizer and sizes.

>>> info = inspect(RunOptions(model="gpt2", weights="random"))   # a ModelInfo   # doctest: +SKIP
>>> info.n_layers, info.n_ctx                                     # doctest: +SKIP
(12, 1024)
"""

from __future__ import annotations

from typing import Any

from lamina.engine import models

from .options import RunOptions


def inspect(opts: RunOptions, loaded: Any = None):
    """The model's facts without its weights (``loaded``: a model already in memory: its own)."""
    if loaded is not None:
        return loaded.info
    return models.inspect_model(opts.model, weights=opts.weights, revision=opts.revision, config=opts.config,
                                tokenizer=opts.tokenizer)
