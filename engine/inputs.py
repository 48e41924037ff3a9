"""Token batches (right-padded, with lengths) and position selectors.

>>> from lamina.engine.tokenizer import gpt2_tokenizer
>>> b = encode_texts(gpt2_tokenizer(), ["Hello world", "Hi"], n_ctx=1024)
>>> b.tokens.shape, b.lengths.tolist()
(torch.Size([2, 2]), [2, 1])
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Literal

import torch

from .errors import InputError


@dataclasses.dataclass(frozen=True)
class TokenBatch:
    """Right-padded token ids.

    tokens: [sample, pos] int64 (pad = EOS); lengths: [sample] number of real tokens.
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    pad_id: int

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def max_len(self) -> int:
        return int(self.tokens.shape[1])

    def attention_mask(self, rows: slice | torch.Tensor | None = None) -> torch.Tensor:
        lengths = self.lengths if rows is None else self.lengths[rows]
        width = int(lengths.max()) if len(lengths) else 0
        return (torch.arange(width)[None, :] < lengths[:, None]).long()

    def sha256(self) -> str:
        """Hash of the real tokens (the stimuli), independent of padding."""
        h = hashlib.sha256()
        for row, n in zip(self.tokens.tolist(), self.lengths.tolist()):
            h.update(repr(row[:n]).encode())
        return h.hexdigest()


def from_token_ids(ids: Sequence[Sequence[int]], *, pad_id: int, n_ctx: int, what: str = "sequence") -> TokenBatch:
    """Right-pad lists of token ids. Empty input, empty sequences or sequences longer than
    ``n_ctx`` are input errors naming the sequence."""
    if len(ids) == 0:
        raise InputError(f"no {what}s were given: the input is empty")
    for i, row in enumerate(ids):
        if len(row) == 0:
            raise InputError(f"{what} {i + 1} is empty (no tokens)")
        if len(row) > n_ctx:
            raise InputError(
                f"{what} {i + 1} has {len(row)} tokens, longer than the model's context of {n_ctx}; "
                "shorten or split it"
            )
    width = max(len(r) for r in ids)
    tokens = torch.full((len(ids), width), pad_id, dtype=torch.long)
    for i, row in enumerate(ids):
        tokens[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    lengths = torch.tensor([len(r) for r in ids], dtype=torch.long)
    return TokenBatch(tokens, lengths, pad_id)


def encode_texts(tokenizer, texts: Sequence[str], *, n_ctx: int, what: str = "sentence",
                 bos_token_id: int | None = None) -> TokenBatch:
    """Tokenise texts without special tokens (as the course did), put ``bos_token_id`` in front when given
    (the model's tokenizer adds one: ModelInfo.bos_token_id), and right-pad with EOS."""
    if len(texts) == 0:
        raise InputError(f"no {what}s were given: the input is empty")
    for i, t in enumerate(texts):
        if not t.strip():
            raise InputError(f"{what} {i + 1} is empty")
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    if bos_token_id is not None:
        ids = [[int(bos_token_id), *row] for row in ids]
    return from_token_ids(ids, pad_id=_pad_id(tokenizer), n_ctx=n_ctx, what=what)


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad)


@dataclasses.dataclass(frozen=True)
class Selector:
    """Which positions of each sample a capture keeps.

    - ``Selector.at(idx)``: one explicit position per sample -> rows [sample, feature]
    - ``Selector.last()``: the last real (non-pad) token -> [sample, feature]
    - ``Selector.every()``: every position -> [sample, pos, feature]; pad positions are zero,
      ``inputs/lengths`` in the store says how many are real.
    """

    kind: Literal["index", "last", "all"]
    index: torch.Tensor | None = None  # [sample] int64, only for kind == "index"

    @classmethod
    def at(cls, index: Sequence[int] | torch.Tensor) -> Selector:
        return cls("index", torch.as_tensor(index, dtype=torch.long).reshape(-1))

    @classmethod
    def last(cls) -> Selector:
        return cls("last")

    @classmethod
    def every(cls) -> Selector:
        return cls("all")

    def positions(self, batch: TokenBatch) -> torch.Tensor | None:
        """[sample] index of the kept position (None for ``every``), validated against lengths."""
        if self.kind == "all":
            return None
        if self.kind == "last":
            return batch.lengths - 1
        idx = self.index
        assert idx is not None
        if idx.shape[0] != len(batch):
            raise InputError(f"position selector has {idx.shape[0]} indices for {len(batch)} samples")
        bad = ((idx < 0) | (idx >= batch.lengths)).nonzero().flatten()
        if len(bad):
            i = int(bad[0])
            raise InputError(
                f"position {int(idx[i])} of sample {i + 1} is out of range: that sample has "
                f"{int(batch.lengths[i])} tokens (valid positions 0..{int(batch.lengths[i]) - 1})"
            )
        return idx

    def describe(self) -> str:
        return self.kind
