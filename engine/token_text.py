"""The text a token stands for in running text, for any tokenizer; and what kind of tokenizer it is.

Decoding a token ALONE is not the same for every tokenizer: byte-level BPE (GPT-2, SmolLM2,
Llama 3, Qwen) decodes ``Ġword`` to ``" word"``, but a SentencePiece-style tokenizer drops the
leading space of the first token of a text (``▁word`` alone decodes to ``"word"``). lamina
therefore defines a token's text as **the characters it adds to the decoded text when it follows
another token** (docs/analyses.md, "length" and "punct"):

- byte-level BPE: exactly the token decoded alone (``Ġ`` is the leading space);
- SentencePiece (``▁``): the piece with ``▁`` read as a space, leading space included;
- byte-fallback tokens (``<0x0A>``): the byte's character (``"\\n"``); a byte that is only part of
  a multi-byte UTF-8 character decodes, alone, to one replacement character ``"\\ufffd"``, as a
  byte-level BPE token holding part of a character does.

>>> from lamina.engine.tokenizer import gpt2_tokenizer
>>> tok = gpt2_tokenizer()
>>> token_texts(tok, tok(" Hello, world.")["input_ids"])
[' Hello', ',', ' world', '.']
>>> tokenizer_kind(tok)
'byte-level BPE'
"""

from __future__ import annotations

import json
from collections.abc import Sequence


def token_texts(tok, ids: Sequence[int]) -> list[str]:
    """The text each token of ``ids`` adds to running text (see the module docstring), in order."""
    anchor = tok("a", add_special_tokens=False)["input_ids"][-1:]
    base = _decode(tok, anchor)
    out = []
    for i in ids:
        text = _decode(tok, [*anchor, int(i)])
        out.append(text[len(base):] if text.startswith(base) else _decode(tok, [int(i)]))
    return out


def text_table(tok, ids) -> dict[int, str]:
    """{id: text} for the distinct ids of ``ids`` (each decoded once)."""
    uniq = sorted({int(i) for i in ids})
    return dict(zip(uniq, token_texts(tok, uniq)))


def _decode(tok, ids: list[int]) -> str:
    return tok.decode(ids, clean_up_tokenization_spaces=False, skip_special_tokens=False)


def tokenizer_kind(tok) -> str:
    """``byte-level BPE``, ``SentencePiece (▁) BPE|Unigram``, ``WordPiece``, ``WordLevel`` ...; ``, byte fallback``
    appended when unknown characters become byte tokens (``<0xNN>``)."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return "SentencePiece (slow)" if hasattr(tok, "sp_model") else type(tok).__name__
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    kind = str(model.get("type") or "?")
    parts = json.dumps([spec.get("pre_tokenizer"), spec.get("decoder"), spec.get("normalizer")])
    if '"ByteLevel"' in parts:
        name = f"byte-level {kind}"
    elif '"Metaspace"' in parts or "\u2581" in parts:
        name = f"SentencePiece (\u2581) {kind}"
    else:
        name = kind
    return name + (", byte fallback" if model.get("byte_fallback") else "")
