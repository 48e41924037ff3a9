"""Every analysis on tokenizers that are not GPT-2's: SmolLM2's byte-level BPE (' sofa' is two tokens, digits
one by one, ' .' and ' ,' tokens) and a SentencePiece-style BPE with byte fallback and a BOS (tests/
tokenizers_offline.py), each in a tiny random Llama checkpoint, against NumPy on plain-HuggingFace activations
and token texts written from the definitions of docs/analyses.md (no lamina code in the references)."""

from __future__ import annotations

import numpy as np
import pytest

from lamina.analyses import length, punct, qkv, rsa
from lamina.analyses.textfiles import stimulus_path
from lamina.engine.token_text import token_texts, tokenizer_kind
from lamina.engine.tokenizer import gpt2_tokenizer

from .families import make_family_checkpoint
from .helpers import run_analysis
from .test_analysis_qkv import SHORT
from .test_analysis_rsa import read_words
from .test_families_end_to_end import _lines, assert_rsa_matches, opts, plain_hf
from .tokenizers_offline import sentencepiece_tokenizer, smollm2_tokenizer

KINDS = ("smollm2", "sentencepiece")


def _tokenizer(kind):
    return smollm2_tokenizer() if kind == "smollm2" else sentencepiece_tokenizer()


@pytest.fixture(scope="module", params=KINDS)
def ckpt(request, tmp_path_factory):
    tok = _tokenizer(request.param)
    folder = tmp_path_factory.mktemp(f"tok-{request.param}")
    make_family_checkpoint(folder, "llama", tokenizer=tok, seed=4, vocab_size=len(tok))
    return request.param, folder, tok


def reference_text(tok, kind: str, i: int) -> str:
    """A token's text in running text, from its piece (independent of lamina's decode-after-an-anchor rule)."""
    piece = tok.convert_ids_to_tokens(int(i))
    if kind == "sentencepiece":
        if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
            byte = int(piece[3:5], 16)
            return chr(byte) if byte < 0x80 else "\ufffd"  # part of a multi-byte character: one U+FFFD
        return piece.replace("\u2581", " ")
    raw = bytes(_BYTE_DECODER[ch] for ch in piece) if all(ch in _BYTE_DECODER for ch in piece) else piece.encode()
    return raw.decode("utf-8", errors="replace")  # byte-level BPE: the bytes the piece stands for


def _bytes_to_unicode() -> dict[str, int]:
    """GPT-2's byte <-> printable-character table (from its paper's code), inverted."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_BYTE_DECODER = _bytes_to_unicode()


# ---- token texts and kinds ----------------------------------------------------------------------


def test_gpt2_token_texts_are_the_tokens_decoded_alone():
    """On byte-level BPE the rule is the lecture's "decoded alone": every one of GPT-2's 50257 ids."""
    tok = gpt2_tokenizer()
    ids = list(range(len(tok)))
    assert token_texts(tok, ids) == [tok.decode([i], clean_up_tokenization_spaces=False) for i in ids]
    assert tokenizer_kind(tok) == "byte-level BPE"


@pytest.mark.parametrize("kind", KINDS)
def test_token_texts_of_every_id(kind):
    tok = _tokenizer(kind)
    special = set(tok.all_special_ids)
    ids = [i for i in range(len(tok)) if i not in special]
    got = token_texts(tok, ids)
    want = [reference_text(tok, kind, i) for i in ids]
    bad = [(i, g, w) for i, g, w in zip(ids, got, want) if g != w]
    assert not bad, bad[:10]
    if kind == "sentencepiece":
        assert tokenizer_kind(tok) == "SentencePiece (\u2581) BPE, byte fallback"
        assert token_texts(tok, tok("café\n", add_special_tokens=False)["input_ids"])[-3:] == ["\ufffd", "\ufffd", "\n"]
    else:
        assert tokenizer_kind(tok) == "byte-level BPE"
        assert len(tok(" sofa", add_special_tokens=False)["input_ids"]) == 2


# ---- the four analyses -----------------------------------------------------------------------------


def _bos(tok):
    return [tok.bos_token_id] if tok("a")["input_ids"][0] == tok.bos_token_id else []


def test_rsa_shipped_words(ckpt, tmp_path):
    """The 34 shipped words, sofa included: each prompt read at its own final token (the word's last)."""
    kind, folder, tok = ckpt
    run = run_analysis("rsa", rsa.Config(permutations=20), opts(folder, tmp_path / "rsa"))
    words, cats = read_words(stimulus_path("categories.tsv"))
    rows = [_bos(tok) + tok(f"The next word is {w}", add_special_tokens=False)["input_ids"] for w in words]
    np.testing.assert_array_equal(run.numpy("inputs/lengths"), [len(r) for r in rows])
    sofa = words.index("sofa")
    assert dict(run["inputs/labels"].attrs)["word_tokens"][sofa] >= 2
    assert_rsa_matches(run, plain_hf(folder, "llama", rows), cats)  # each row's own last position


def test_qkv_target(ckpt, tmp_path):
    kind, folder, tok = ckpt
    run = run_analysis("qkv", qkv.Config(sentences=str(_lines(tmp_path, SHORT))), opts(folder, tmp_path / "qkv"))
    rows = [_bos(tok) + tok(s, add_special_tokens=False)["input_ids"] for s in SHORT]
    texts = [[reference_text(tok, kind, i) for i in row] for row in rows]
    t = np.array([next(k for k, x in enumerate(tx) if x == " her" and k >= len(_bos(tok))) for tx in texts])
    np.testing.assert_array_equal(run.numpy("inputs/target_pos"), t)
    ref = plain_hf(folder, "llama", rows)
    for role, pos in (("target", t), ("nontarget", t - 1)):
        x = np.stack([np.concatenate([ref[c][s][:, p] for c in "qkv"], axis=-1) for s, p in enumerate(pos)], 1)
        np.testing.assert_allclose(run.numpy(f"acts/{role}"), x, atol=2e-4 * max(1, np.abs(x).max()))


def test_qkv_multi_token_target_names_one_token_alternatives(ckpt, tmp_path):
    """A target of several tokens in this vocabulary is refused, naming one-token words of this vocabulary."""
    from lamina.engine.errors import InputError

    kind, folder, tok = ckpt
    with pytest.raises(InputError) as e:
        run_analysis("qkv", qkv.Config(sentences=str(_lines(tmp_path, ["I saw the sofa there."])), target=" sofa"),
                     opts(folder, tmp_path / "never"))
    msg = str(e.value)
    assert "is not one token" in msg and "e.g." in msg and not (tmp_path / "never").exists()
    named = msg.split("e.g. ")[1].split(" or ")
    for word in named:
        assert len(tok(eval(word), add_special_tokens=False)["input_ids"]) == 1  # noqa: S307 - a repr from lamina


def test_punct_marks_from_token_texts(ckpt, tmp_path):
    """Marks are tokens whose text, stripped, is ',' or '.'; a '.' next to a digit is not terminal."""
    from .test_analysis_punct import TEXT

    kind, folder, tok = ckpt
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    run = run_analysis("punct", punct.Config(text=str(text), marks=6, skip=10), opts(folder, tmp_path / "punct"))
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    tx = [reference_text(tok, kind, i) for i in ids]
    internal = [k for k in range(20, len(ids) - 10) if k >= 10 and tx[k].strip() == ","][:6]
    terminal = [k for k in range(20, len(ids) - 10) if k >= 10 and tx[k].strip() == "."
                and not tx[k - 1][-1:].isdigit() and not tx[k + 1][:1].isdigit()][:6]
    np.testing.assert_array_equal(run.numpy("inputs/locations"), [internal, terminal])
    bos = len(_bos(tok))
    tokens = run.numpy("inputs/tokens")
    for c, locs in enumerate((internal, terminal)):
        rows = [_bos(tok) + ids[k - 20:k + 1] for k in locs]
        np.testing.assert_array_equal(tokens[c, :, :21 + bos], rows)
        ref = plain_hf(folder, "llama", rows)
        hidden = np.stack([h[:, 20 + bos] for h in ref["hidden"]], 1)  # [state, sample, feature]
        np.testing.assert_allclose(run.numpy("acts/hidden")[c], hidden, atol=2e-4 * max(1, np.abs(hidden).max()))


def test_length_token_lengths(ckpt, tmp_path):
    """Token length = characters of the token's text (SentencePiece: '▁' is the leading space; a byte-fallback byte
    of a multi-byte character is one U+FFFD), and r against plain-HF gate projections."""
    kind, folder, tok = ckpt
    cfg = length.Config(n_seq=2, seq_len=40, block=1)
    run = run_analysis("length", cfg, opts(folder, tmp_path / "length"))
    text = stimulus_path("corpus.txt").read_text(encoding="utf-8")
    ids = tok(text, add_special_tokens=False)["input_ids"][:80]
    x = np.array([len(reference_text(tok, kind, i)) for i in ids], dtype=np.float64)
    np.testing.assert_array_equal(run.numpy("token_length"), x)
    bos = len(_bos(tok))
    rows = [_bos(tok) + ids[s * 40:(s + 1) * 40] for s in range(2)]
    ref = plain_hf(folder, "llama", rows)
    pre = np.concatenate([p[:, bos:] for p in ref["pre"]], axis=1)  # [layer, token, neuron]
    for li in range(pre.shape[0]):
        a = pre[li]
        r = ((a - a.mean(0)) * (x - x.mean())[:, None]).sum(0) / np.sqrt(((a - a.mean(0)) ** 2).sum(0) *
                                                                           ((x - x.mean()) ** 2).sum())
        np.testing.assert_allclose(run.numpy("results/corr")[li], r, atol=5e-5)
