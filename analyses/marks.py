"""Punctuation marks in running text and the token windows around them: the stimuli of the punct analysis.

>>> pieces = {0: "A", 1: ",", 2: " b", 3: ".", 4: " 3", 5: ".", 6: "5"}   # "A, b. 3.5"
>>> scan_marks(list(range(7)), pieces.__getitem__, skip=0, before=1, after=1)
([1], [3])

A token whose text (what it adds to the decoded running text, engine/token_text.py) is ``,``
once whitespace around it is stripped is an *internal* mark - so ``" ,"`` or ``",\n"`` of a
tokenizer that glues punctuation to spaces or newlines counts; one whose stripped text is ``.``
is a *terminal* mark unless the previous token's text ends or the next token's text starts with
a digit ("3.5", "in 1999."). The FIRST ``n`` marks of each class from token ``skip`` on whose
window ``tokens[loc - before : loc + after]`` lies inside the text are kept; the mark sits at
index ``before`` of its window.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lamina.engine.errors import InputError
from lamina.engine.inputs import TokenBatch, from_token_ids
from lamina.engine.provenance import sha256_texts
from lamina.engine.token_text import text_table

from .corpus import read_text, tokenize_document

CLASSES = ("internal", "terminal")
MARKS = {"internal": ",", "terminal": "."}  # what a mark token decodes to, stripped


def scan_marks(ids: Sequence[int], decode: Callable[[int], str], *, skip: int, before: int, after: int,
               limit: int | None = None) -> tuple[list[int], list[int]]:
    """Token positions of the internal and terminal marks, in text order (the first ``limit`` of each)."""
    internal: list[int] = []
    terminal: list[int] = []
    cap = math.inf if limit is None else limit
    for loc in range(max(skip, before), len(ids) - after + 1):
        if len(internal) >= cap and len(terminal) >= cap:
            break
        mark = decode(ids[loc]).strip()
        if mark == MARKS["internal"]:
            if len(internal) < cap:
                internal.append(loc)
        elif mark == MARKS["terminal"] and len(terminal) < cap:
            prev = decode(ids[loc - 1])[-1:] if loc > 0 else ""
            nxt = decode(ids[loc + 1])[:1] if loc + 1 < len(ids) else ""
            if not (prev.isdigit() or nxt.isdigit()):
                terminal.append(loc)
    return internal, terminal


@dataclasses.dataclass(frozen=True)
class MarkWindows:
    """The chosen windows of both classes, validated, ready for the model."""

    batches: tuple[TokenBatch, ...]  # per class: tokens [sample, pos], pos = before + after
    locations: np.ndarray  # [class, sample] int64 position of each mark in the text
    text_path: str
    text_sha256: str
    n_text_tokens: int

    @property
    def tokens(self) -> np.ndarray:
        """[class, sample, pos] int32."""
        return np.stack([b.tokens.numpy() for b in self.batches]).astype(np.int32)


def read_mark_windows(path: str | Path, tok, *, n: int, skip: int, before: int, after: int, n_ctx: int,
                      model: str = "the model") -> MarkWindows:
    """Read the text, find the marks and build the windows; every input error here."""
    if before + after > n_ctx:
        raise InputError(f"a window of --before {before} + --after {after} = {before + after} tokens is longer than "
                         f"the context of {model} ({n_ctx}); use smaller --before/--after")
    path = Path(path).expanduser()
    text = read_text(path)  # missing / unreadable / non-UTF-8 / blank: InputError naming the file
    ids = tokenize_document(tok, text).tolist()  # the whole text as ONE document, no BOS
    found = scan_marks(ids, text_table(tok, ids).__getitem__, skip=skip, before=before, after=after, limit=n)
    if min(len(f) for f in found) < n:
        counts = ", ".join(f"{len(f)} {c} ({MARKS[c]!r})" for c, f in zip(CLASSES, found))
        raise InputError(
            f"{str(path)!r} has too few punctuation marks: from token {skip} on (of {len(ids)} tokens), counting "
            f"marks with {before} tokens before and {after - 1} after them, it has {counts}; --marks {n} of each is "
            "needed. Use a longer --text, a smaller --marks or a smaller --skip")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batches = tuple(from_token_ids([ids[loc - before: loc + after] for loc in locs], pad_id=int(pad), n_ctx=n_ctx,
                                   what=f"{c} window") for c, locs in zip(CLASSES, found))
    return MarkWindows(batches, np.asarray(found, dtype=np.int64), str(path.resolve()), sha256_texts([text]), len(ids))
