"""Words in categories at the end of a prompt: the stimuli of the rsa analysis, validated before any model work.

>>> from lamina.engine.tokenizer import gpt2_tokenizer
>>> s = read_category_prompts(stimulus_path("categories.tsv"), "The next word is {w}", gpt2_tokenizer(), n_ctx=1024)
>>> len(s.words), s.categories, tuple(s.batch.tokens.shape)
(34, ('space', 'interior', 'fruit'), (34, 5))

Each word is put at the end of the template and must start on a token boundary; a word may be
several tokens (lamina's extension, docs/analyses.md "rsa"): the prompt's FINAL token is then the
word's last token, and prompts may differ in length (right-padded, each read at its own final
token). With a tokenizer that starts texts with a BOS token, it is prepended to every prompt.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from lamina.engine.errors import InputError
from lamina.engine.inputs import TokenBatch, from_token_ids
from lamina.engine.provenance import sha256_texts
from lamina.engine.token_text import token_texts

from .textfiles import read_text_file, stimulus_path

__all__ = ["CategoryPrompts", "read_categories", "read_category_prompts", "stimulus_path"]


@dataclasses.dataclass(frozen=True)
class CategoryPrompts:
    """Validated prompts: one item per word, categories in order of first appearance."""

    words: tuple[str, ...]  # [item]
    categories: tuple[str, ...]  # [category]
    labels: np.ndarray  # [item] int32, index into ``categories``
    prompts: tuple[str, ...]  # [item]
    batch: TokenBatch  # tokens [sample=item, pos], right-padded; lengths [item]
    path: str
    word_tokens: tuple[int, ...] = ()  # [item] how many tokens each word became (1 = the lecture's case)

    @property
    def sha256(self) -> str:
        return sha256_texts(f"{w}\t{self.categories[g]}\t{p}" for w, g, p in zip(self.words, self.labels, self.prompts))


def read_categories(path: str | Path) -> list[tuple[int, str, str]]:
    """(line number, word, category) per non-blank line of a 'word<TAB>category' file.

    >>> read_categories(stimulus_path("categories.tsv"))[0]
    (1, 'galaxy', 'space')

    Lines starting with ``#`` are comments. Fields are split on a tab (or, in a file
    without tabs on that line, on whitespace); anything other than two non-empty fields,
    a repeated word or an empty file is an input error naming the line.
    """
    p = Path(path)
    text = read_text_file(p, "words", "pass --words FILE with one 'word<TAB>category' per line")
    out: list[tuple[int, str, str]] = []
    first_line: dict[str, int] = {}
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in (line.split("\t") if "\t" in line else line.split())]
        if len(fields) != 2 or not all(fields):
            raise InputError(f"words file {str(p)!r}, line {n}: {raw!r} is not 'word<TAB>category' "
                             f"({len(fields)} field(s)); write one word, a tab, and its category per line")
        word, category = fields
        if word in first_line:
            raise InputError(f"words file {str(p)!r}, line {n}: the word {word!r} is already on line "
                             f"{first_line[word]}; list each word once")
        first_line[word] = n
        out.append((n, word, category))
    if not out:
        raise InputError(f"words file {str(p)!r} has no words; write one 'word<TAB>category' per line "
                         "(at least 2 categories with at least 2 words each)")
    return out


def _check_categories(entries: list[tuple[int, str, str]], path: Path) -> tuple[tuple[str, ...], np.ndarray]:
    """Categories in order of first appearance and the [item] label of each word."""
    members: dict[str, list[tuple[int, str]]] = {}
    for n, word, category in entries:
        members.setdefault(category, []).append((n, word))
    if len(members) < 2:
        raise InputError(f"words file {str(path)!r} has only one category ({next(iter(members))!r}); "
                         "selectivity compares categories: give at least 2 categories with at least 2 words each")
    for category, items in members.items():
        if len(items) < 2:
            n, word = items[0]
            raise InputError(f"words file {str(path)!r}: category {category!r} has only one word ({word!r}, "
                             f"line {n}); every category needs at least 2 words (add words or drop the category)")
    categories = tuple(members)
    labels = np.array([categories.index(c) for _, _, c in entries], dtype=np.int32)
    return categories, labels


def read_category_prompts(path: str | Path, template: str, tok, *, n_ctx: int,
                          bos_token_id: int | None = None) -> CategoryPrompts:
    """Words, categories and prompts -> a token batch; each prompt ends with its word, which starts on a token
    boundary (its last token is the prompt's final token)."""
    path = Path(path).expanduser()
    entries = read_categories(path)
    categories, labels = _check_categories(entries, path)
    prompts = [template.replace("{w}", word) for _, word, _ in entries]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    counts, problems = [], []
    for (n, word, _), prompt, row in zip(entries, prompts, ids):
        k = word_token_count(token_texts(tok, row), word)
        if k:
            counts.append(k)
            continue
        pieces = [tok.decode([i]) for i in row]
        problems.append(f"word {word!r} (line {n}) does not start on a token boundary: {prompt!r} tokenises to "
                        f"{len(row)} tokens {pieces}")
    if problems:
        shown = problems[:8] + ([f"... and {len(problems) - 8} more"] if len(problems) > 8 else [])
        raise InputError(
            "every prompt must end with its word as whole tokens (the word's last token is the prompt's final "
            "token):\n  " + "\n  ".join(shown) +
            "\nend the --template with a space before '{w}', or replace these words")
    if bos_token_id is not None:
        ids = [[bos_token_id, *row] for row in ids]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batch = from_token_ids(ids, pad_id=int(pad), n_ctx=n_ctx, what="prompt")
    return CategoryPrompts(tuple(w for _, w, _ in entries), categories, labels, tuple(prompts), batch,
                           str(path.resolve()), tuple(counts))


def word_token_count(texts: list[str], word: str) -> int:
    """How many final tokens of a prompt (their texts, engine/token_text.py) make up ``word``; 0 when the word
    does not start on a token boundary.

    >>> word_token_count(["The", " next", " word", " is", " so", "fa"], "sofa")
    2
    >>> word_token_count(["The", " next", " word", " island"], "land")
    0
    """
    tail = ""
    for k in range(1, len(texts) + 1):
        tail = texts[-k] + tail
        if tail.strip() == word:
            return k
        if len(tail.strip()) > len(word):
            return 0
    return 0
