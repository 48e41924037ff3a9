"""What an analysis' spec may know of the model before any weights load: tokenizer and sizes.

>>> info = inspect(RunOptions(model="gpt2", weights="random"))    # doctest: +SKIP
>>> info.n_layers, info.n_ctx                                     # doctest: +SKIP
(12, 1024)
"""

from __future__ import annotations

from typing import Any

from lamina.engine import models

from .options import RunOptions


def inspect(opts: RunOptions, loaded: Any = None):
    """The model's facts without its weights (``loaded``: a model already in memory)."""
    if loaded is not None:
        return _Info(loaded.name, loaded.tokenizer, loaded.n_ctx, loaded.n_layers, None)
    if hasattr(models, "inspect_model"):
        return models.inspect_model(opts.model, weights=opts.weights)
    tok, n_ctx, n_layers = models.peek(opts.model, opts.weights)
    return _Info(opts.model, tok, n_ctx, n_layers, None)


class _Info:
    def __init__(self, name: str, tokenizer, n_ctx: int, n_layers: int, bos_token_id: int | None):
        self.name, self.tokenizer, self.n_ctx, self.n_layers, self.bos_token_id = (
            name, tokenizer, int(n_ctx), int(n_layers), bos_token_id)
