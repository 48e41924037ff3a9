"""Options of ``lamina run length``: what defines a run (Config); torch-free, so that ``lamina analyses``,
``--help`` and ``lamina report`` load no model code."""

from __future__ import annotations

import dataclasses
from typing import Optional

from lamina.engine.errors import InputError

from ..protocol import check_options, option

STORE_ACTS_MAX_TOKENS = 65536  # default of store_acts: keep activations only for corpora this small


@dataclasses.dataclass(frozen=True)
class Config:
    """Options of ``lamina run length`` (cheap validation; corpus and model checks in the spec).

    >>> Config(n_seq=4, seq_len=128).n_tokens, Config().keep_acts, Config(n_seq=256).keep_acts
    (512, True, False)
    """

    text: Optional[str] = option(None, "Corpus text file, tokenised whole as one document. Default: the corpus "
                                       "shipped with lamina.")
    dataset: Optional[str] = option(None, "HuggingFace data set NAME[:split] (or NAME:config:split) streamed instead "
                                          "of --text; needs `datasets` and network.")
    n_seq: int = option(16, "Number of sequences the corpus is cut into.", min=1)
    seq_len: int = option(512, "Tokens per sequence (at most the model's context).", min=1)
    block: int = option(4, "Block of the median-split histograms.", min=0)
    store_acts: Optional[bool] = option(None, "Also store acts/mlp_pre (layer, sample, pos, neuron). Default: only "
                                              "when n-seq x seq-len <= 65536.")
    unit_tokens: int = option(256, "Minimum tokens per work unit (the resume / multi-rank granularity).", min=1)

    def __post_init__(self):
        check_options(self)
        if self.n_seq * self.seq_len < 3:
            raise InputError(f"--n-seq {self.n_seq} x --seq-len {self.seq_len} = {self.n_tokens} tokens; a "
                             "correlation needs at least 3")
        if self.text is not None and self.dataset is not None:
            raise InputError("give either --text FILE or --dataset NAME[:split], not both")

    @property
    def n_tokens(self) -> int:
        return self.n_seq * self.seq_len

    @property
    def keep_acts(self) -> bool:
        """store_acts resolved: explicit, or only for corpora of at most 65,536 tokens."""
        return self.n_tokens <= STORE_ACTS_MAX_TOKENS if self.store_acts is None else bool(self.store_acts)
