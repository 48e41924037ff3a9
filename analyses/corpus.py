"""Token streams for analyses over running text: a text file or a HuggingFace data set.

>>> from lamina.engine.tokenizer import gpt2_tokenizer
>>> tok = gpt2_tokenizer()
>>> ids, source = corpus_tokens(tok, text=None, dataset=None, n_tokens=8192)
>>> cut(ids, n_seq=16, seq_len=512, source=source).shape
(16, 512)

Two sources, both "no BOS, no separators" (docs/analyses.md "length"):

- a text file (default: the original corpus shipped in ``stimuli/corpus.txt``),
  tokenised WHOLE as one document;
- ``NAME[:split]`` (or ``NAME:config:split``), a HuggingFace ``datasets`` data set
  streamed record by record: each record's ``text`` field is tokenised on its own
  and the token ids are concatenated until there are enough. ``NAME`` may also be
  a local folder of json/csv/parquet/text files. ``datasets`` is optional and
  imported only here; missing, or without network, is a clear error before any
  model work.

Every failure is an :class:`InputError` (or :class:`OfflineError`) naming the file
or data set and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lamina.engine.errors import InputError, OfflineError

from .textfiles import read_text_file, stimulus_path

DEFAULT_CORPUS = "corpus.txt"  # in analyses/stimuli/
TEXT_FIELD = "text"


def corpus_tokens(tok, *, text: str | os.PathLike | None, dataset: str | None, n_tokens: int) -> tuple[np.ndarray, str]:
    """Token ids [token] (int64) of the chosen corpus, and a short description of the source.

    A text file is tokenised whole (all of its tokens come back); a data set is read
    only until ``n_tokens`` tokens are there (fewer if it runs out).

    >>> ids, source = corpus_tokens(tok, text="my.txt", dataset=None, n_tokens=100)   # doctest: +SKIP
    >>> source                                                                           # doctest: +SKIP
    'text my.txt'
    """
    if text is not None and dataset is not None:
        raise InputError("give either --text FILE or --dataset NAME[:split], not both")
    if dataset is not None:
        return dataset_tokens(tok, dataset, n_tokens), f"dataset {dataset}"
    path = Path(text) if text is not None else stimulus_path(DEFAULT_CORPUS)
    return tokenize_document(tok, read_text(path)), f"text {path}"


def read_text(path: str | os.PathLike) -> str:
    """The whole file as a string; missing, unreadable, non-UTF-8 or blank files are input errors."""
    p = Path(path).expanduser()
    text = read_text_file(p, "text", "pass an existing UTF-8 text file with --text")
    if not text.strip():
        raise InputError(f"text file {str(p)!r} is empty (only whitespace); it needs running text")
    return text


def tokenize_document(tok, text: str) -> np.ndarray:
    """All token ids [token] of ``text`` as ONE document: no BOS, no EOS, int64."""
    return np.asarray(tok(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=np.int64)


def parse_dataset(spec: str) -> tuple[str, str | None, str]:
    """``NAME`` / ``NAME:split`` / ``NAME:config:split`` -> (name, config, split); split defaults to train.

    >>> parse_dataset("Skylion007/openwebtext")
    ('Skylion007/openwebtext', None, 'train')
    >>> parse_dataset("wikitext:wikitext-103-raw-v1:validation")
    ('wikitext', 'wikitext-103-raw-v1', 'validation')
    """
    parts = [p.strip() for p in str(spec).split(":")]
    if not parts[0] or any(not p for p in parts) or len(parts) > 3:
        raise InputError(f"--dataset {spec!r} is not NAME, NAME:split or NAME:config:split")
    if len(parts) == 1:
        return parts[0], None, "train"
    if len(parts) == 2:
        return parts[0], None, parts[1]
    return parts[0], parts[1], parts[2]


def dataset_documents(spec: str) -> Iterator[str]:
    """The ``text`` field of each record of a streamed data set (blank records skipped).

    Errors (each names the data set): ``datasets`` not installed, no network (or
    ``HF_HUB_OFFLINE``), an unknown name or split, records without a ``text`` field.
    """
    name, config, split = parse_dataset(spec)
    try:
        import datasets
    except ImportError:
        raise InputError(
            f"--dataset {spec!r} needs the optional `datasets` package, which is not installed: "
            "`pip install datasets`, or pass a text file with --text FILE"
        ) from None
    try:
        stream = datasets.load_dataset(name, config, split=split, streaming=True)
        records = iter(stream)
        first = next(records, None)
    except ConnectionError as e:
        raise OfflineError(_offline_message(spec, e)) from None
    except FileNotFoundError as e:
        raise InputError(f"data set {name!r} was not found ({_first_line(e)}); check the name or use --text FILE") from None
    except ValueError as e:  # bad split or config
        raise InputError(f"--dataset {spec!r}: {_first_line(e)}") from None
    except OSError as e:
        raise OfflineError(_offline_message(spec, e)) from None
    if first is None:
        raise InputError(f"data set {spec!r} has no records in split {split!r}")
    if TEXT_FIELD not in first:
        raise InputError(
            f"data set {spec!r} has no {TEXT_FIELD!r} field (its fields are {sorted(first)}); "
            "choose a data set of running text"
        )
    yield from _texts(first, records, spec)


def _texts(first: dict, records, spec: str) -> Iterator[str]:
    record = first
    while record is not None:
        text = record.get(TEXT_FIELD)
        if isinstance(text, str) and text.strip():
            yield text
        try:
            record = next(records, None)
        except ConnectionError as e:
            raise OfflineError(_offline_message(spec, e)) from None


def dataset_tokens(tok, spec: str, n_tokens: int) -> np.ndarray:
    """Token ids [token] of the data set's documents, each tokenised alone and concatenated
    (no BOS, no separators) until there are at least ``n_tokens`` (fewer if the data set ends)."""
    parts: list[np.ndarray] = []
    have = 0
    for doc in dataset_documents(spec):
        ids = tokenize_document(tok, doc)
        parts.append(ids)
        have += len(ids)
        if have >= n_tokens:
            break
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def cut(ids: np.ndarray, *, n_seq: int, seq_len: int, source: str) -> np.ndarray:
    """The first ``n_seq * seq_len`` tokens as [sample, pos]; too few tokens is an input error.

    >>> cut(np.arange(10), n_seq=2, seq_len=4, source="x")
    array([[0, 1, 2, 3],
           [4, 5, 6, 7]])
    """
    need = n_seq * seq_len
    if len(ids) < need:
        raise InputError(
            f"the corpus ({source}) has {len(ids)} tokens, but {need} are needed "
            f"(--n-seq {n_seq} x --seq-len {seq_len}); use a longer text or lower --n-seq / --seq-len"
        )
    return np.asarray(ids[:need]).reshape(n_seq, seq_len)


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _offline_message(spec: str, e: BaseException) -> str:
    offline = any(os.environ.get(v, "0") not in ("0", "", "false", "False")
                  for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    why = "HF_HUB_OFFLINE is set" if offline else "the HuggingFace Hub cannot be reached"
    return (
        f"--dataset {spec!r} is streamed from the HuggingFace Hub, but {why} ({_first_line(e)}). "
        "Use --text FILE (a local text file), or run where the network is available"
    )
