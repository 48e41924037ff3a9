"""Users' files and odd inputs: byte-order marks, encodings, corpora without variation, NaN messages."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

from lamina.analyses import length, qkv, rsa
from lamina.analyses.options import RunOptions
from lamina.analyses.textfiles import read_lines, read_text_file
from lamina.engine.errors import InputError, NonFiniteError

from .helpers import spec_of
from .test_analysis_qkv import SHORT

BOM = "\ufeff".encode()


def test_byte_order_mark_is_dropped_from_sentences(gpt2_dir, tmp_path):
    plain, marked = tmp_path / "plain.txt", tmp_path / "bom.txt"
    plain.write_text("\n".join(SHORT) + "\n", encoding="utf-8")
    marked.write_bytes(BOM + plain.read_bytes())
    opts = RunOptions(model=str(gpt2_dir))
    a, b = (spec_of("qkv", qkv.Config(sentences=str(p)), opts).state for p in (plain, marked))
    assert a.texts == b.texts and torch.equal(a.batch.tokens, b.batch.tokens)
    assert not b.texts[0].startswith("\ufeff")


def test_byte_order_mark_is_dropped_from_words(gpt2_dir, tmp_path):
    words = tmp_path / "w.tsv"
    words.write_bytes(BOM + "galaxy\tspace\nsun\tspace\npear\tfruit\napple\tfruit\n".encode())
    stim = spec_of("rsa", rsa.Config(words=str(words)), RunOptions(model=str(gpt2_dir))).state
    assert stim.words[0] == "galaxy"


def test_non_utf8_file_gets_an_iconv_hint_that_works(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("café au lait, crème brûlée\n".encode("cp1252"))
    with pytest.raises(InputError) as e:
        read_text_file(path, "text", "pass --text FILE")
    msg = str(e.value)
    assert "not UTF-8" in msg and "iconv -f WINDOWS-1252 -t UTF-8 latin.txt > latin.utf8.txt" in msg
    cmd = msg.split("`")[1]
    subprocess.run(cmd, shell=True, cwd=tmp_path, check=True)  # the hint, as printed, converts the file
    assert read_lines(tmp_path / "latin.utf8.txt", "text", "") == [(1, "café au lait, crème brûlée")]


def test_corpus_of_one_token_length_is_refused_before_loading(gpt2_dir, tmp_path):
    corpus = tmp_path / "same.txt"
    corpus.write_text(" cat" * 400, encoding="utf-8")  # every token is ' cat': 4 characters
    with pytest.raises(InputError, match="is 4 characters long: a correlation with token length is undefined"):
        spec_of("length", length.Config(text=str(corpus), n_seq=2, seq_len=32, block=1),
                RunOptions(model=str(gpt2_dir)))


def test_nan_message_fits_the_dtype(tmp_path):
    """float32 runs are not told to 'try --dtype float32'; half-precision runs are."""
    from lamina.engine.capture import capture_arrays
    from lamina.engine.hooks import Capture, layer_hooks
    from lamina.engine.inputs import Selector, from_token_ids
    from lamina.engine.models import load_model

    from .conftest import make_nan_checkpoint

    folder = make_nan_checkpoint(tmp_path / "nan", n_layers=2, layer=0, neuron=3)
    batch = from_token_ids([[1, 2, 3]], pad_id=0, n_ctx=128)
    cap = [Capture("pre", layer_hooks("blocks.{layer}.mlp.hook_pre", range(2)), Selector.every())]
    for dtype, needle, absent in (("float32", "check the weights", "--dtype float32"),
                                  ("bfloat16", "try --dtype float32", None)):
        with pytest.raises(NonFiniteError) as e:
            capture_arrays(load_model(str(folder), dtype=dtype), batch, cap)
        assert needle in str(e.value) and (absent is None or absent not in str(e.value))
    assert np.isnan(np.float32("nan"))


def test_target_outside_the_vocabulary_is_refused_with_alternatives_it_holds():
    """A word the tokenizer maps to its unknown token is no target; the suggested targets are single tokens
    of THIS vocabulary (not GPT-2's)."""
    from lamina.analyses.sentences import target_token
    from lamina.engine.tokenizer import gpt2_tokenizer

    from .families import word_tokenizer

    tok = word_tokenizer()
    assert target_token(tok, " her") == tok.convert_tokens_to_ids("her")
    with pytest.raises(InputError, match=r"' zebra' is not in this model's vocabulary: it becomes the unknown token") as e:
        target_token(tok, " zebra")
    assert "' her' or ' she'" in str(e.value) and "' him'" not in str(e.value)  # 'him' is not in this vocabulary
    with pytest.raises(InputError, match=r"becomes 2 tokens \['her', ','\]") as e:
        target_token(tok, " her,")
    assert "' him'" not in str(e.value)
    with pytest.raises(InputError, match="e.g. ' her' or ' him' or ' his'"):
        target_token(gpt2_tokenizer(), " hello world")
