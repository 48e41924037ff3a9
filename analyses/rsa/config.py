"""Options of ``lamina run rsa``: what defines a run (Config); torch-free, so that ``lamina analyses``,
``--help`` and ``lamina report`` load no model code."""

from __future__ import annotations

import dataclasses
from typing import Optional

from lamina.engine.errors import InputError

from ..protocol import check_options, option

DEFAULT_TEMPLATE = "The next word is {w}"


@dataclasses.dataclass(frozen=True)
class Config:
    """Options of ``lamina run rsa`` (cheap validation only; files are read in the spec)."""

    words: Optional[str] = option(None, "File of 'word<TAB>category' lines (>= 2 categories of >= 2 words). "
                                        "Default: the shipped 34 words in 3 categories.")
    template: str = option(DEFAULT_TEMPLATE, "Prompt ending with the '{w}' placeholder; the word's last token is the "
                                             "prompt's final token (words of several tokens are fine).")
    permutations: int = option(1000, "Label shuffles of the SI permutation test (seeded by --seed).", min=1)

    def __post_init__(self):
        n = self.template.count("{w}")
        if n != 1:
            raise InputError(f"{{template}} must contain the placeholder '{{w}}' exactly once "
                             f"(found {n}), e.g. {DEFAULT_TEMPLATE!r}", params={"template": self.template})
        if not self.template.endswith("{w}"):
            raise InputError(f"{{template}} must end with '{{w}}': the word has to be the final "
                             f"token of the prompt, e.g. {DEFAULT_TEMPLATE!r}", params={"template": self.template})
        check_options(self)
