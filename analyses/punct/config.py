"""Options of ``lamina run punct``: what defines a run (Config, PlotOptions); torch-free, so that ``lamina analyses``,
``--help`` and ``lamina report`` load no model code."""

from __future__ import annotations

import dataclasses
from typing import Optional

from lamina.engine.errors import InputError

from ..protocol import check_options, option

MAX_BINS = 1024


@dataclasses.dataclass(frozen=True)
class Config:
    """Options of ``lamina run punct`` (defaults are the lecture's)."""

    text: Optional[str] = option(None, "Text file, tokenised whole as one document. Default: the shipped corpus.")
    marks: int = option(250, "Marks per class: the first MARKS commas and the first MARKS periods (pairs of "
                             "sequences are compared).", min=2)
    skip: int = option(400, "Scan token positions from this one on.", min=0)
    before: int = option(20, "Window tokens before the mark (the mark's index).", min=0)
    after: int = option(11, "Window = tokens loc-BEFORE up to (not including) loc+AFTER: the mark plus AFTER-1 "
                            "tokens.", min=1)
    bins: int = option(15, "MI histogram bins per axis (a pair's joint histogram has bins^2 cells).", min=1,
                       max=MAX_BINS)
    z_max: float = option(5.0, "Outlier rule: drop dimensions where |z| > Z_MAX in either vector (z with ddof 1).")
    full_window: bool = option(False, "Feed all BEFORE+AFTER tokens, not just up to the mark (same states: the "
                                      "model is causal; 1/3 slower).")

    def __post_init__(self):
        check_options(self)
        if not self.z_max > 0:
            raise InputError("{z_max}: must be > 0", params={"z_max": self.z_max})

    @property
    def window(self) -> int:
        return self.before + self.after

    @property
    def fed(self) -> int:
        """Tokens of each window the model runs on (the mark is the last one unless ``full_window``)."""
        return self.window if self.full_window else self.before + 1


@dataclasses.dataclass(frozen=True)
class PlotOptions:
    state: int = option(1, "Hidden state of the matrix, histogram and scatter figures (0 = embeddings; clipped to "
                           "the last state).", min=0)

    def __post_init__(self):
        check_options(self)
