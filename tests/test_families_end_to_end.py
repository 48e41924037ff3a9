"""Every analysis end to end on a grouped-query-attention Llama whose tokenizer adds a BOS, and on a Pythia-shaped
GPT-NeoX, against NumPy on plain-HuggingFace activations (no lamina, no TransformerLens in the reference).

The Llama has 4 query heads and 2 key/value heads (d_q = 64, d_k = d_v = 32): qkv's within-blocks use each
component's own width, its across-blocks are rectangular, rsa's RSMs are per component. Its tokenizer is the
GPT-2 BPE made to start every text with a BOS, so every position (target, the token before it, the final
token, the mark) must skip it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lamina.analyses import length, punct, qkv, rsa
from lamina.analyses.options import RunOptions

from .families import make_family_checkpoint
from .helpers import run_analysis
from .test_analysis_punct import TEXT, reference_pair
from .test_analysis_qkv import SHORT, assert_hist_close
from .test_analysis_rsa import numpy_rsm, numpy_si, read_words
from .test_parity import HF_MODULES

EDGES = np.linspace(-1.0, 1.0, 101)


def bos_gpt2_tokenizer():
    """The GPT-2 BPE, starting every text with <|endoftext|> as its BOS (as Llama's tokenizer does with <s>)."""
    from tokenizers import processors

    from lamina.engine.tokenizer import gpt2_tokenizer

    tok = gpt2_tokenizer()
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", pair="<|endoftext|> $A <|endoftext|> $B", special_tokens=[("<|endoftext|>", 50256)])
    return tok


@pytest.fixture(scope="module", params=["llama", "gpt_neox"])
def family(request, tmp_path_factory):
    name = request.param
    folder = tmp_path_factory.mktemp(f"e2e-{name}")
    tok = bos_gpt2_tokenizer() if name == "llama" else None
    make_family_checkpoint(folder, name, tokenizer=tok, seed=3)
    return name, folder


def plain_hf(folder, family, rows: list[list[int]]):
    """{q, k, v, pre: [layer, sample, pos, feature]; hidden: [state, sample, pos, feature]} float64, one
    sequence at a time (no padding at all), from plain HF forward hooks."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager").eval()
    blocks_path, (kind, qkv_path), fc_path = HF_MODULES[family]
    blocks = hf.get_submodule(blocks_path)
    heads = hf.config.num_attention_heads
    out: dict[str, list] = {k: [] for k in ("q", "k", "v", "pre", "hidden")}
    for row in rows:
        got: dict = {}
        ids = torch.tensor([row])
        handles = []
        for l, blk in enumerate(blocks):
            if kind == "separate":
                att = blk.get_submodule(qkv_path)
                for c in "qkv":
                    handles.append(getattr(att, f"{c}_proj").register_forward_hook(
                        lambda m, i, o, c=c, l=l: got.__setitem__((c, l), o[0])))
            else:  # GPT-NeoX: per head [q_h | k_h | v_h]
                def split(m, i, o, l=l):
                    for c, part in zip("qkv", o[0].view(o.shape[1], heads, -1).chunk(3, dim=-1)):
                        got[c, l] = part.reshape(o.shape[1], -1)
                handles.append(blk.get_submodule(qkv_path).register_forward_hook(split))
            handles.append(blk.get_submodule(fc_path).register_forward_hook(
                lambda m, i, o, l=l: got.__setitem__(("pre", l), o[0])))
        with torch.no_grad():
            res = hf(ids, output_hidden_states=True)
        for h in handles:
            h.remove()
        for c in ("q", "k", "v", "pre"):
            out[c].append(np.stack([got[c, l].numpy() for l in range(len(blocks))]).astype(np.float64))
        out["hidden"].append(np.stack([h[0].numpy() for h in res.hidden_states]).astype(np.float64))
    return out  # lists over samples of [layer, pos, feature]


def opts(folder, out):
    return RunOptions(model=str(folder), out=str(out), progress=False, figures=False, seed=2)


def test_qkv(family, tmp_path):
    name, folder = family
    run = run_analysis("qkv", qkv.Config(sentences=str(_lines(tmp_path, SHORT))), opts(folder, tmp_path / "qkv"))
    tok = run_tokenizer(folder)
    bos = [tok.bos_token_id] if name == "llama" else []
    rows = [bos + tok(s, add_special_tokens=False)["input_ids"] for s in SHORT]
    t = np.array([row.index(tok(" her", add_special_tokens=False)["input_ids"][0], len(bos)) for row in rows])
    np.testing.assert_array_equal(run.numpy("inputs/target_pos"), t)
    ref = plain_hf(folder, name, rows)
    for role, pos in (("target", t), ("nontarget", t - 1)):
        x = np.stack([np.concatenate([ref[c][s][:, p] for c in "qkv"], axis=-1) for s, p in enumerate(pos)], 1)
        np.testing.assert_allclose(run.numpy(f"acts/{role}"), x, atol=2e-4 * max(1, np.abs(x).max()))
        widths = [ref[c][0].shape[-1] for c in "qkv"]
        if name == "llama":
            assert widths == [64, 32, 32]  # grouped-query attention: K and V are narrower than Q
        bounds = np.cumsum([0, *widths])
        r = ("target", "nontarget").index(role)
        for li in range(x.shape[0]):
            cos = ref_cos(x[li])
            blocks = []
            for a, b in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)):
                blk = cos[bounds[a]:bounds[a + 1], bounds[b]:bounds[b + 1]]
                blocks.append(blk[np.triu_indices(blk.shape[0], 1)] if a == b else blk.ravel())
            for k, vals in enumerate(blocks):
                assert_hist_close(run.numpy("results/cosine_hist")[r, li, k], vals, f"{name} {role} {li} {k}")
            for c in range(3):
                part = x[li][:, bounds[c]:bounds[c + 1]]
                np.testing.assert_allclose(run.numpy("results/variance")[r, li, c], part.var(0).mean(), rtol=1e-4,
                                           atol=1e-9)


def test_rsa(family, tmp_path):
    name, folder = family
    run = run_analysis("rsa", rsa.Config(permutations=20), opts(folder, tmp_path / "rsa"))
    from lamina.analyses.textfiles import stimulus_path

    words, cats = read_words(stimulus_path("categories.tsv"))
    tok = run_tokenizer(folder)
    bos = [tok.bos_token_id] if name == "llama" else []
    rows = [bos + tok(f"The next word is {w}", add_special_tokens=False)["input_ids"] for w in words]
    np.testing.assert_array_equal(run.numpy("inputs/tokens"), np.array(rows))
    assert_rsa_matches(run, plain_hf(folder, name, rows), cats)


def assert_rsa_matches(run, ref, cats):
    """RSMs and SI of ``run`` against NumPy on plain-HF Q, K, V at each prompt's final token."""
    g = np.array([list(dict.fromkeys(cats)).index(c) + 1 for c in cats])
    for c, comp in enumerate("qkv"):
        acts = np.stack([ref[comp][s][:, -1] for s in range(len(cats))], 1)  # [layer, item, d_c]
        for li in range(acts.shape[0]):
            rsm = numpy_rsm(acts[li])
            np.testing.assert_allclose(run.numpy("results/rsm")[li, c], rsm, atol=2e-5)
            np.testing.assert_allclose(run.numpy("results/selectivity")[c, li], numpy_si(rsm, g), rtol=1e-4)


def test_length(family, tmp_path):
    name, folder = family
    cfg = length.Config(n_seq=2, seq_len=24, block=1)
    run = run_analysis("length", cfg, opts(folder, tmp_path / "length"))
    tokens = run.numpy("inputs/tokens")
    offset = 1 if name == "llama" else 0
    assert tokens.shape == (2, 24 + offset) and (tokens[:, 0] == 50256).all() == (name == "llama")
    ref = plain_hf(folder, name, tokens.tolist())
    pre = np.concatenate([p[:, offset:] for p in ref["pre"]], axis=1)  # [layer, token, neuron], BOS left out
    x = run.numpy("token_length").astype(np.float64)
    for li in range(pre.shape[0]):
        a = pre[li]
        r = ((a - a.mean(0)) * (x - x.mean())[:, None]).sum(0) / np.sqrt(((a - a.mean(0)) ** 2).sum(0) *
                                                                           ((x - x.mean()) ** 2).sum())
        np.testing.assert_allclose(run.numpy("results/corr")[li], r, atol=5e-5)


def test_punct(family, tmp_path):
    name, folder = family
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    run = run_analysis("punct", punct.Config(text=str(text), marks=6, skip=10), opts(folder, tmp_path / "punct"))
    offset = 1 if name == "llama" else 0
    tokens = run.numpy("inputs/tokens")  # [class, sample, pos]
    assert run["inputs/tokens"].attrs["mark_index"] == 20 + offset
    tok = run_tokenizer(folder)
    marks = {tok.decode([int(t)]).strip() for t in tokens[:, :, 20 + offset].ravel()}
    assert marks == {",", "."}
    for c in range(2):
        ref = plain_hf(folder, name, tokens[c, :, :21 + offset].tolist())
        hidden = np.stack([h[:, 20 + offset] for h in ref["hidden"]], 1)  # [state, sample, feature]
        np.testing.assert_allclose(run.numpy("acts/hidden")[c], hidden, atol=2e-4 * max(1, np.abs(hidden).max()))
        for s in (1, hidden.shape[0] - 1):
            want = [reference_pair(hidden[s, i], hidden[s, j]) for i in range(6) for j in range(i + 1, 6)]
            np.testing.assert_allclose(run.numpy("results/cov")[c, s], [w[1] for w in want], rtol=1e-4, atol=1e-6)


# ---- helpers ---------------------------------------------------------------------------------


def _lines(tmp_path, lines):
    path = tmp_path / "sentences.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def ref_cos(x):
    xn = x / np.linalg.norm(x, axis=0, keepdims=True)
    return xn.T @ xn
