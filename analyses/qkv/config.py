"""Options of ``lamina run qkv``: what defines a run (Config, PlotOptions); torch-free, so that ``lamina analyses``,
``--help`` and ``lamina report`` load no model code."""

from __future__ import annotations

import dataclasses
from typing import Optional

from lamina.engine.errors import InputError

from ..protocol import check_options, option


@dataclasses.dataclass(frozen=True)
class Config:
    """Options of ``lamina run qkv`` (defaults are the lecture's).

    >>> Config(target="him").target_text
    ' him'
    """

    sentences: Optional[str] = option(None, "Sentences file, one per line, each containing the target. Default: "
                                            "the shipped 54 sentences with ' her'.")
    target: str = option(" her", "Target word: ONE token with its leading space (added if missing).")

    def __post_init__(self):
        if not isinstance(self.target, str) or not self.target.strip():
            raise InputError("{target}: must be a word", params={"target": self.target})

    @property
    def target_text(self) -> str:
        """The target as it is tokenised inside a sentence: with one leading space."""
        return self.target if self.target[:1].isspace() else " " + self.target


@dataclasses.dataclass(frozen=True)
class PlotOptions:
    layer: int = option(6, "Block of the single-block figure (clipped to the model's last block).", min=0)

    def __post_init__(self):
        check_options(self)
