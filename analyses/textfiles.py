"""Reading users' text files: UTF-8 (a byte-order mark is dropped), one clear error naming the file.

>>> import tempfile, os
>>> p = os.path.join(tempfile.mkdtemp(), "s.txt")
>>> _ = open(p, "wb").write(b"\\xef\\xbb\\xbfgalaxy\\tspace\\n\\nsun\\tspace\\n")
>>> read_lines(p, "words", "pass --words FILE")
[(1, 'galaxy\\tspace'), (3, 'sun\\tspace')]
"""

from __future__ import annotations

import os
from pathlib import Path

from lamina.engine.errors import InputError


def read_text_file(path: str | os.PathLike, what: str, fix: str) -> str:
    """The whole of a user's UTF-8 file, without a leading byte-order mark.

    Missing, not a file, unreadable or not UTF-8: an InputError naming the ``what`` file and the ``fix``.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{what} file {str(p)!r} does not exist; {fix}")
    if not p.is_file():
        raise InputError(f"{what} file {str(p)!r} is not a file; {fix}")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise InputError(f"{what} file {str(p)!r} cannot be read: {e.strerror}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        source = _guess_encoding(raw)
        raise InputError(f"{what} file {str(p)!r} is not UTF-8 text (byte {e.start}: {e.reason}); convert it, e.g. "
                         f"`iconv -f {source} -t UTF-8 {p.name} > {p.stem}.utf8{p.suffix}`") from None


def read_lines(path: str | os.PathLike, what: str, fix: str) -> list[tuple[int, str]]:
    """(1-based line number, line) for every non-blank line of a user's file."""
    text = read_text_file(path, what, fix)
    return [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip()]


def _guess_encoding(raw: bytes) -> str:
    """An iconv source encoding that decodes ``raw``: UTF-16 with its mark, else Windows-1252, else Latin-1."""
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "UTF-16"
    try:
        raw.decode("cp1252")
        return "WINDOWS-1252"
    except UnicodeDecodeError:
        return "LATIN1"


def stimulus_path(name: str) -> Path:
    """A file shipped in analyses/stimuli/ (the package lamina.analyses.stimuli)."""
    return Path(__file__).parent / "stimuli" / name
