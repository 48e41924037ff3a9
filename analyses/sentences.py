"""Sentences that each hold a target word: the stimuli of the qkv analysis, validated before any model work.

>>> from lamina.engine.tokenizer import gpt2_tokenizer
>>> s = read_target_sentences(stimulus_path("her_sentences.txt"), " her", gpt2_tokenizer(), n_ctx=1024)
>>> len(s.texts), s.target_id, int(s.target_pos[0]) > 0
(54, 607, True)

Per sentence the *target* position is the FIRST occurrence of the target token and the
*non-target* position the token just before it. Sentences are tokenised without special
tokens; when the model's tokenizer starts every text with a BOS token, it is prepended
and both positions move one to the right (the rule stays: the token before the target).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from lamina.engine.errors import InputError
from lamina.engine.inputs import TokenBatch, from_token_ids

from .textfiles import read_lines, stimulus_path

__all__ = ["TargetSentences", "read_target_sentences", "stimulus_path", "target_token"]


@dataclasses.dataclass(frozen=True)
class TargetSentences:
    texts: tuple[str, ...]
    batch: TokenBatch  # tokens [sample, pos] right-padded, lengths [sample]
    target_pos: torch.Tensor  # [sample] int64, first occurrence of the target token (>= 1)
    target_id: int
    target_text: str
    path: str

    @property
    def nontarget_pos(self) -> torch.Tensor:
        """[sample] int64: the token just before the target."""
        return self.target_pos - 1


# words offered as single-token targets, when this model's vocabulary holds them whole
_ALTERNATIVES = (" her", " him", " his", " them", " she", " he", " it", " the")


def target_token(tok, word: str) -> int:
    """The one token id of ``word`` (with its leading space); InputError naming the pieces otherwise, and
    for a word this vocabulary does not know (it becomes the unknown token)."""
    ids = tok(word, add_special_tokens=False)["input_ids"]
    unk = getattr(tok, "unk_token_id", None)
    if len(ids) == 1 and (unk is None or ids[0] != unk or tok.decode(ids).strip() == word.strip()):
        return int(ids[0])
    alts = [w for w in _ALTERNATIVES if w != word and _whole(tok, w, unk)][:3]
    fix = ("pass a --target that is a single token of this vocabulary, e.g. " + " or ".join(map(repr, alts))
           if alts else "pass a --target that this vocabulary holds as one token")
    if len(ids) == 1:
        raise InputError(f"target {word!r} is not in this model's vocabulary: it becomes the unknown token "
                         f"{tok.decode(ids)!r} (id {ids[0]}); {fix}")
    pieces = [tok.decode([i]) for i in ids]
    raise InputError(f"target {word!r} is not one token for this model's tokenizer: with its leading space it becomes "
                     f"{len(ids)} tokens {pieces} (ids {ids}); {fix}")


def _whole(tok, word: str, unk: int | None) -> bool:
    ids = tok(word, add_special_tokens=False)["input_ids"]
    return len(ids) == 1 and ids[0] != unk


def read_target_sentences(path: str | Path, word: str, tok, *, n_ctx: int, bos_token_id: int | None = None,
                          model: str = "the model") -> TargetSentences:
    """Read, tokenise and check the sentences of ``path``; every problem names the sentence and line."""
    path = Path(path).expanduser()
    target_id = target_token(tok, word)
    lines = read_lines(path, "sentences", "pass --sentences FILE (one sentence per line)")
    if not lines:
        raise InputError(f"sentences file {str(path)!r} has no sentences (it is empty or only blank lines); "
                         f"write one sentence per line, each containing {word!r}")
    if len(lines) < 2:
        raise InputError(f"sentences file {str(path)!r} has only 1 sentence; feature similarities across sentences "
                         "need at least 2 (the lecture used 54)")
    token_ids = [tok(text, add_special_tokens=False, verbose=False)["input_ids"] for _, text in lines]
    room = n_ctx - (bos_token_id is not None)
    _refuse(path, lines, [k for k, row in enumerate(token_ids) if len(row) > room],
            lambda k: f"has {len(token_ids[k])} tokens, longer than the context of {model} ({room})",
            "shorten or split it")
    first = [row.index(target_id) if target_id in row else -1 for row in token_ids]
    _refuse(path, lines, [k for k, t in enumerate(first) if t < 0],
            lambda k: f"has no {word!r} token (id {target_id})",
            f"every sentence needs the target as a word after another token (the word capitalised, "
            f"{word.strip().capitalize()!r}, or inside a longer word is another token); fix or remove the line")
    _refuse(path, lines, [k for k, t in enumerate(first) if t == 0],
            lambda k: f"has its first {word!r} at position 0, so there is no token before it to be the non-target",
            "put a word before it")
    if bos_token_id is not None:
        token_ids = [[bos_token_id, *row] for row in token_ids]
        first = [t + 1 for t in first]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batch = from_token_ids(token_ids, pad_id=int(pad), n_ctx=n_ctx, what="sentence")
    return TargetSentences(tuple(text for _, text in lines), batch, torch.tensor(first, dtype=torch.long),
                           target_id, word, str(path.resolve()))


def _refuse(path: Path, lines, bad: list[int], why, fix: str) -> None:
    """InputError for the first bad sentence (number, line, text), counting the others."""
    if not bad:
        return
    k = bad[0]
    line, text = lines[k]
    short = repr(text if len(text) <= 80 else text[:77] + "...")
    others = ""
    if len(bad) > 1:
        more = ", ".join(str(i + 1) for i in bad[1:6]) + (", ..." if len(bad) > 6 else "")
        others = f" ({len(bad) - 1} more: sentence {more})"
    raise InputError(f"sentence {k + 1} (line {line} of {str(path)!r}) {why(k)}: {short}{others}; {fix}")
