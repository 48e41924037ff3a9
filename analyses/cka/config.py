"""Options of ``lamina run cka`` (:class:`Config`); torch-free, so that ``lamina analyses``, ``--help`` and
``lamina report`` load no model code."""

from __future__ import annotations

import dataclasses
from typing import Optional

from lamina.engine.errors import InputError

from ..protocol import option
from . import schema


@dataclasses.dataclass(frozen=True)
class Config:
    """Options of ``lamina run cka``.

    >>> Config(n_seq=4, seq_len=64).n_tokens
    256
    """

    text: Optional[str] = option(None, "Corpus text file, tokenised whole. Default: the corpus shipped with lamina.")
    hook: str = option(schema.HOOK, "Hook captured at every block ({layer} is the block number).")
    n_seq: int = option(16, "Number of sequences the corpus is cut into.")
    seq_len: int = option(256, "Tokens per sequence (at most the model's context).")
    estimator: str = option("auto", "State streamed per unit: moments (exact), minibatch (Nguyen et al. 2021), or "
                                    "auto (moments while 8 x layers^2 x width^2 bytes <= 64 MiB).")
    batch_size: Optional[int] = option(None, "Tokens per minibatch of the minibatch estimator. Default: one "
                                             "sequence's tokens.")
    unit_tokens: int = option(1024, "Minimum tokens per work unit (the resume / multi-rank granularity).")
    store_acts: bool = option(True, "Keep acts/resid (layer, sample, pos, feature): `lamina similarity` needs it.")

    def __post_init__(self):
        for name in ("n_seq", "seq_len", "unit_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
        if self.estimator not in ("auto", *schema.ESTIMATORS):
            raise InputError(f"--estimator must be auto, moments or minibatch, got {self.estimator!r}")
        b = self.batch_size
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 4):
            raise InputError(f"--batch-size must be an integer >= 4 (the unbiased HSIC needs 4 tokens), got {b!r}")
        if "{layer}" not in self.hook:
            raise InputError(f"--hook {self.hook!r} has no {{layer}}; give a template such as {schema.HOOK}")
        if self.n_tokens < 4:
            raise InputError(f"--n-seq {self.n_seq} x --seq-len {self.seq_len} = {self.n_tokens} tokens; the "
                             "debiased CKA needs at least 4")

    @property
    def n_tokens(self) -> int:
        return self.n_seq * self.seq_len
