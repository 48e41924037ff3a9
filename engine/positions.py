"""Which token positions a capture keeps, the same in Python and on the command line.

``positions`` is ``"last"`` (the last real token of each text), ``"all"`` (every position), one index for every
text (``1``, ``-1`` = the last real token), one index per text (``[3, 5]``; ``--positions 3,5``), or a list of
indices per text (``[[0, 1], [2]]``; ``--positions 0+1,2``; in memory only). Negative indices count from the end of
each text's real tokens. Python values become the ``--positions`` string, so the two give the same resume key.

>>> canonical([0, 1]), canonical(1), canonical(" Last "), canonical([[0, 1], [2]])
('0,1', '1', 'last', '0+1,2')
>>> per_text("0,1", lengths=[4, 3]), per_text("-1", lengths=[4, 3]), per_text("0+1,2", lengths=[4, 3])
([[0], [1]], [[3], [2]], [[0, 1], [2]])
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

from .errors import InputError

HELP = ("last | all | one index for every text (1; -1 = last) | one index per text (3,5) | several per text (0+1,2: "
        "in memory only)")


def canonical(positions) -> str:
    """The ``--positions`` string of a Python ``positions`` value (InputError naming what is wrong)."""
    if isinstance(positions, str):
        text = "".join(positions.split()).lower()
        if not text:
            raise InputError(f"positions is empty; give {HELP}")
        _parse(text)
        return text
    if _is_int(positions):
        return str(int(positions))
    if isinstance(positions, (bytes, bytearray)) or not isinstance(positions, Sequence) and not hasattr(
            positions, "tolist"):
        raise InputError(f"positions must be {HELP}; not {positions!r}")
    items = positions.tolist() if hasattr(positions, "tolist") else list(positions)
    if not items:
        raise InputError("positions is an empty list; give one index per text, or 'last' / 'all'")
    parts = []
    for i, item in enumerate(items):
        if _is_int(item):
            parts.append(str(int(item)))
            continue
        sub = item.tolist() if hasattr(item, "tolist") else item
        if isinstance(sub, (str, bytes)) or not isinstance(sub, Sequence) or not sub or not all(map(_is_int, sub)):
            raise InputError(f"positions[{i}] is {item!r}: give an integer token index, or a non-empty list of them "
                             "for that text")
        parts.append("+".join(str(int(v)) for v in sub))
    return ",".join(parts)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _parse(text: str) -> str | list[list[int]]:
    if text in ("last", "all"):
        return text
    try:
        return [[int(v) for v in part.split("+")] for part in text.split(",")]
    except ValueError:
        raise InputError(f"positions {text!r}: must be {HELP}") from None


def is_multi(text: str) -> bool:
    """Several positions for some text (kept as [.., sample, k, ..]; in memory only)."""
    return "+" in text


def per_text(text: str, lengths: Sequence[int]) -> str | list[list[int]]:
    """``"last"``/``"all"``, or for each text its list of non-negative indices, checked against its length."""
    parsed = _parse(text)
    if isinstance(parsed, str):
        return parsed
    n = len(lengths)
    if len(parsed) == 1 and n != 1:
        parsed = parsed * n
    if len(parsed) != n:
        raise InputError(f"positions {text!r} gives {len(parsed)} entries for {n} texts: give one index for every "
                         f"text (e.g. 0), or exactly one entry per text")
    out = []
    for i, (idx, length) in enumerate(zip(parsed, lengths)):
        resolved = [v + int(length) if v < 0 else v for v in idx]
        bad = [v for v, r in zip(idx, resolved) if not 0 <= r < int(length)]
        if bad:
            raise InputError(f"position {bad[0]} of text {i + 1} is out of range: that text has {int(length)} tokens "
                             f"(valid positions 0..{int(length) - 1}, or -1..-{int(length)} from its end)")
        out.append(resolved)
    return out
