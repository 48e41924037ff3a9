"""Options of ``lamina run capture``: what defines a run (Config); torch-free, so that ``lamina analyses``,
``--help`` and ``lamina report`` load no model code."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from lamina.engine.errors import InputError
from lamina.engine.positions import HELP as POSITIONS_HELP
from lamina.engine.positions import canonical, is_multi

from ..protocol import option


@dataclasses.dataclass(frozen=True)
class Config:
    """Options of ``lamina capture`` / ``lamina run capture``."""

    hooks: tuple[str, ...] = option((), "Hook name; '{layer}' expands over --layers. Repeat to concatenate "
                                        "features (e.g. q, k, v).", flags=("--hook",))
    text_file: Optional[str] = option(None, "Texts, one per line.")
    layers: str = option("all", "Layers: all, 6, 0,3,5 or 2-7.")
    positions: str = option("last", POSITIONS_HELP + ".")
    chunk_samples: Optional[int] = option(None, "Samples per store chunk (default: chunks of >= 1 MiB).")
    concat: bool = option(True, "Concatenate the hooks of a layer into one array (acts/capture).", cli=False)
    texts: tuple[str, ...] = option((), "Texts given directly (Python only).", cli=False)
    tokens: Any = option(None, "A TokenBatch given directly (Python only).", cli=False)

    def __post_init__(self):
        if not self.hooks:
            raise InputError("no hooks: pass --hook NAME (e.g. 'blocks.{layer}.attn.hook_q'), once or more")
        if self.chunk_samples is not None and (isinstance(self.chunk_samples, bool) or self.chunk_samples < 1):
            raise InputError(f"--chunk-samples must be a positive number of samples, got {self.chunk_samples}")
        given = sum(x is not None and x != () for x in (self.text_file, self.texts or None, self.tokens))
        if given != 1:
            raise InputError("give the texts once: --text-file FILE (or, from Python, texts= or a token batch)")
        object.__setattr__(self, "positions", canonical(self.positions))  # "0, 1" and [0, 1] -> "0,1": one key
        if is_multi(self.positions):
            raise InputError(f"--positions {self.positions}: several positions per text are kept in memory only "
                             "(lamina.capture(..., out=None)); in a run, capture --positions all and select")
