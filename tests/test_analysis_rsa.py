"""``lamina run rsa`` (docs/analyses.md "rsa") against a plain NumPy/SciPy reference on plain-HF activations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from transformers import AutoTokenizer

from lamina.analyses import rsa
from lamina.analyses.cli import main as cli_main
from lamina.analyses.options import RunOptions
from lamina.analyses.textfiles import stimulus_path
from lamina.engine.errors import InputError
from lamina.engine.inputs import from_token_ids
from lamina.engine.reader import open_run
from lamina.engine.tokenizer import gpt2_tokenizer

from .helpers import run_analysis, spec_of
from .reference_hf import hf_reference

PERMUTATIONS = 500


# ---- independent reference (NumPy / SciPy only, written from docs/analyses.md "rsa") ---------------


def read_words(path):
    words, cats = [], []
    for line in open(path, encoding="utf-8"):
        if line.strip():
            w, c = line.rstrip("\n").split("\t")
            words.append(w)
            cats.append(c)
    return words, cats


def reference_acts(folder, words):
    """Q|K|V of the final token, plain HF hooks: (layer, item, 3D)."""
    tok = AutoTokenizer.from_pretrained(str(folder))
    ids = [tok(f"The next word is {w}", add_special_tokens=False)["input_ids"] for w in words]
    assert len({len(r) for r in ids}) == 1
    batch = from_token_ids(ids, pad_id=tok.eos_token_id, n_ctx=1024)
    return hf_reference(folder, batch)["qkv"][:, :, -1].astype(np.float64), np.array(ids)


def numpy_rsm(x):
    """x: (item, D) -> cosine between rows (item, item)."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    return xn @ xn.T


def numpy_si(r, g):
    """The lecture's formulation: labels g in {1,2,3}, G = triu(g gᵀ, 1); 1,4,9 within, 2,3,6 between."""
    G = np.triu(np.outer(g, g), 1)
    within = np.mean([r[G == v].mean() for v in (1, 4, 9)])
    between = np.mean([r[G == v].mean() for v in (2, 3, 6)])
    return within / between


def numpy_reference(acts, g):
    """acts (layer, item, 3D) -> rsm (layer, 3, item, item), si (3, layer), rsa (3, layer)."""
    L, n, F = acts.shape
    D = F // 3
    rsm = np.zeros((L, 3, n, n))
    si = np.zeros((3, L))
    ra = np.zeros((3, L))
    iu = np.triu_indices(n, 1)
    for l in range(L):
        for c in range(3):
            rsm[l, c] = numpy_rsm(acts[l, :, c * D:(c + 1) * D])
            si[c, l] = numpy_si(rsm[l, c], g)
        for p, (a, b) in enumerate([(0, 1), (0, 2), (1, 2)]):
            ra[p, l] = scipy.stats.pearsonr(rsm[l, a][iu], rsm[l, b][iu]).statistic
    return rsm, si, ra


def numpy_pvalue(rsm, g, n_perm, seed=0):
    """One-sided permutation p-value of SI with shuffled labels: (1 + #{SI_perm >= SI}) / (1 + n_perm)."""
    rng = np.random.default_rng(seed)
    L = rsm.shape[0]
    obs = np.array([[numpy_si(rsm[l, c], g) for l in range(L)] for c in range(3)])
    hits = np.zeros_like(obs)
    for _ in range(n_perm):
        gp = rng.permutation(g)
        hits += np.array([[numpy_si(rsm[l, c], gp) for l in range(L)] for c in range(3)]) >= obs
    return (1 + hits) / (1 + n_perm)


# ---- the run against the reference ----------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_run(gpt2_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("rsa") / "run"
    opts = RunOptions(model=str(gpt2_dir), out=str(out), seed=3, figures=True, progress=False)
    return run_analysis("rsa", rsa.Config(permutations=PERMUTATIONS), opts)


def _check_against_reference(run, folder):
    words, cats = read_words(stimulus_path("categories.tsv"))
    names = list(dict.fromkeys(cats))
    g = np.array([names.index(c) + 1 for c in cats])  # 1, 2, 3
    acts, ids = reference_acts(folder, words)
    assert run.complete
    # inputs
    np.testing.assert_array_equal(run.numpy("inputs/tokens"), ids)
    np.testing.assert_array_equal(run.numpy("inputs/lengths"), [ids.shape[1]] * len(words))
    np.testing.assert_array_equal(run.numpy("inputs/labels"), g - 1)
    attrs = dict(run["inputs/labels"].attrs)
    assert attrs["categories"] == names == ["space", "interior", "fruit"]
    assert attrs["words"] == words
    # activations
    np.testing.assert_allclose(run.numpy("acts/final"), acts, atol=1e-4)
    # statistics
    rsm, si, ra = numpy_reference(acts, g)
    np.testing.assert_allclose(run.numpy("results/rsm"), rsm, atol=1e-5)
    np.testing.assert_allclose(run.numpy("results/selectivity"), si, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run.numpy("results/rsa"), ra, atol=1e-5)
    p = run.numpy("results/selectivity_pvalue")
    assert p.shape == si.shape
    assert ((p > 0) & (p <= 1)).all()
    assert np.all(p >= 1 / (PERMUTATIONS + 1) - 1e-9)
    # the permutations differ from NumPy's, so compare statistically (|difference| ~ 4 standard errors)
    ref_p = numpy_pvalue(rsm, g, 1000)
    np.testing.assert_allclose(p, ref_p, atol=0.08)
    # dimension names (the store schema)
    L = rsm.shape[0]
    n = len(words)
    expect = {
        "inputs/tokens": (("sample", "pos"), (n, ids.shape[1])),
        "inputs/lengths": (("sample",), (n,)),
        "inputs/labels": (("item",), (n,)),
        "acts/final": (("layer", "item", "feature"), acts.shape),
        "results/rsm": (("layer", "component", "item_a", "item_b"), (L, 3, n, n)),
        "results/selectivity": (("component", "layer"), (3, L)),
        "results/selectivity_pvalue": (("component", "layer"), (3, L)),
        "results/rsa": (("pair", "layer"), (3, L)),
    }
    for name, (dims, shape) in expect.items():
        assert run.dims(name) == dims, name
        assert run[name].shape == tuple(shape), name
    assert run.labels("results/rsa", "pair") == ["QK", "QV", "KV"]
    assert run.labels("results/rsm", "component") == ["Q", "K", "V"]
    assert run.labels("results/rsm", "item_a") == run.labels("results/rsm", "item_b") == words


def test_rsa_matches_numpy_reference_gpt2(gpt2_run, gpt2_dir):
    _check_against_reference(gpt2_run, gpt2_dir)
    figs = sorted(p.name for p in (Path(gpt2_run.url) / "figures").iterdir())
    for stem in ("rsa_selectivity", "rsa_against_block", "rsa_rsm_grid"):
        assert f"{stem}.png" in figs and f"{stem}.pdf" in figs
    summary = gpt2_run.attrs["summary"]
    assert summary["items"] == 34 and summary["categories"] == {"space": 10, "interior": 13, "fruit": 11}


def test_rsa_matches_numpy_reference_neo_via_cli(neo_dir, tmp_path, capsys):
    out = tmp_path / "neo"
    cli_main(["run", "rsa", "--model", str(neo_dir), "--out", str(out), "--no-figures", "--no-progress",
              "--permutations", str(PERMUTATIONS), "--seed", "5"])
    text = capsys.readouterr().out
    assert "results/selectivity_pvalue" in text and "key numbers" in text
    run = open_run(out)
    _check_against_reference(run, neo_dir)
    assert not (out / "figures").exists()


def test_pvalue_identical_for_same_seed(gpt2_run, gpt2_dir, tmp_path):
    """Same --seed -> bitwise the same p-values; the permutations are drawn from --seed alone."""
    opts = RunOptions(model=str(gpt2_dir), out=str(tmp_path / "again"), seed=3, figures=False, progress=False)
    again = run_analysis("rsa", rsa.Config(permutations=PERMUTATIONS), opts)
    p = gpt2_run.numpy("results/selectivity_pvalue")
    np.testing.assert_array_equal(again.numpy("results/selectivity_pvalue"), p)
    np.testing.assert_array_equal(again.numpy("results/rsm"), gpt2_run.numpy("results/rsm"))
    # recomputed from the stored activations: the same with seed 3, another draw with seed 4
    acts = torch.from_numpy(gpt2_run.numpy("acts/final"))
    labels = torch.from_numpy(gpt2_run.numpy("inputs/labels")).long()

    def pvalue(seed):
        g = torch.Generator().manual_seed(seed + rsa.analysis._PVALUE_SEED_OFFSET)
        return rsa.rsa_statistics(acts, labels, permutations=PERMUTATIONS, generator=g)["selectivity_pvalue"].float().numpy()

    np.testing.assert_array_equal(pvalue(3), p)
    assert not np.array_equal(pvalue(4), p)


def test_custom_words_and_template(gpt2_dir, tmp_path):
    """A user words file (4 categories, tab or space separated, comments) and another template."""
    words = tmp_path / "words.tsv"
    words.write_text("# my words\nred\tcolour\nblue colour\ngreen\tcolour\n\ndog\tanimal\ncat\tanimal\n"
                     "one\tnumber\ntwo\tnumber\nthree\tnumber\ncar\tthing\nbook\tthing\n", encoding="utf-8")
    out = tmp_path / "run"
    opts = RunOptions(model=str(gpt2_dir), out=str(out), seed=0, figures=False, progress=False)
    run = run_analysis("rsa", rsa.Config(words=str(words), template="I think of {w}", permutations=50), opts)
    ws = ["red", "blue", "green", "dog", "cat", "one", "two", "three", "car", "book"]
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 3])
    assert dict(run["inputs/labels"].attrs)["categories"] == ["colour", "animal", "number", "thing"]
    np.testing.assert_array_equal(run.numpy("inputs/labels"), labels)
    tok = AutoTokenizer.from_pretrained(str(gpt2_dir))
    ids = [tok(f"I think of {w}", add_special_tokens=False)["input_ids"] for w in ws]
    acts = hf_reference(gpt2_dir, from_token_ids(ids, pad_id=tok.eos_token_id, n_ctx=1024))["qkv"][:, :, -1]
    acts = acts.astype(np.float64)
    D = acts.shape[2] // 3
    for l in range(acts.shape[0]):
        for c in range(3):
            r = numpy_rsm(acts[l, :, c * D:(c + 1) * D])
            np.testing.assert_allclose(run.numpy("results/rsm")[l, c], r, atol=1e-5)
            # 4 categories: mean of the 4 within-category means / mean of the 6 between-pair means
            iu = np.triu(np.ones_like(r, dtype=bool), 1)
            within = [r[iu & (labels[:, None] == a) & (labels[None, :] == a)].mean() for a in range(4)]
            between = [r[iu & (((labels[:, None] == a) & (labels[None, :] == b)) |
                                ((labels[:, None] == b) & (labels[None, :] == a)))].mean()
                       for a in range(4) for b in range(a + 1, 4)]
            np.testing.assert_allclose(run.numpy("results/selectivity")[c, l], np.mean(within) / np.mean(between),
                                       rtol=1e-5, atol=1e-5)
    p = run.numpy("results/selectivity_pvalue")
    assert ((p > 0) & (p <= 1)).all() and run.numpy("results/rsa").shape == (3, acts.shape[0])


# ---- stimuli validation (before any model work) ---------------------------------------------


def test_shipped_defaults_validate():
    spec = spec_of("rsa", opts=RunOptions(model="gpt2-large", weights="random"))
    s = spec.state
    assert len(s.words) == 34 and s.categories == ("space", "interior", "fruit")
    assert np.bincount(s.labels).tolist() == [10, 13, 11]
    assert s.batch.lengths.tolist() == [5] * 34 and len(spec.passes[0].captures[0].hooks) == 36
    # GPT-2: every shipped word is one token, so the batch is exactly the lecture's (no padding, same ids)
    assert s.word_tokens == (1,) * 34
    tok = gpt2_tokenizer()
    old = [tok(f"The next word is {w}", add_special_tokens=False)["input_ids"] for w in s.words]
    assert s.batch.tokens.tolist() == old
    assert s.prompts[0] == "The next word is galaxy"


def test_words_of_several_tokens_are_read_at_their_last_token(gpt2_dir, tmp_path):
    """lamina's extension: a word of k tokens ends its prompt; prompts differ in length (right-padded) and each is
    read at its own final token - against plain-HF hooks on the padded batch and NumPy from the definitions."""
    text = "sun\tspace\nsupercalifragilistic\tspace\nmoon\tspace\npear\tfruit\ngrapefruit\tfruit\napple\tfruit\n"
    out = tmp_path / "run"
    opts = RunOptions(model=str(gpt2_dir), out=str(out), seed=0, figures=False, progress=False)
    run = run_analysis("rsa", rsa.Config(words=_words(tmp_path, text), permutations=20), opts)
    ws = ["sun", "supercalifragilistic", "moon", "pear", "grapefruit", "apple"]
    tok = AutoTokenizer.from_pretrained(str(gpt2_dir))
    ids = [tok(f"The next word is {w}", add_special_tokens=False)["input_ids"] for w in ws]
    counts = [len(r) - 4 for r in ids]
    assert counts[1] > 2 and counts[4] == 2 and dict(run["inputs/labels"].attrs)["word_tokens"] == counts
    np.testing.assert_array_equal(run.numpy("inputs/lengths"), [len(r) for r in ids])
    batch = from_token_ids(ids, pad_id=tok.eos_token_id, n_ctx=1024)
    qkv = hf_reference(gpt2_dir, batch)["qkv"]  # [layer, sample, pos, feature]
    last = np.array([len(r) - 1 for r in ids])
    acts = qkv[:, np.arange(len(ws)), last].astype(np.float64)
    np.testing.assert_allclose(run.numpy("acts/final"), acts, atol=1e-4)
    labels = np.array([0, 0, 0, 1, 1, 1])
    D = acts.shape[2] // 3
    for l in range(acts.shape[0]):
        for c in range(3):
            r = numpy_rsm(acts[l, :, c * D:(c + 1) * D])
            iu = np.triu(np.ones_like(r, dtype=bool), 1)
            within = [r[iu & (labels[:, None] == a) & (labels[None, :] == a)].mean() for a in range(2)]
            between = r[iu & (labels[:, None] != labels[None, :])].mean()
            np.testing.assert_allclose(run.numpy("results/selectivity")[c, l], np.mean(within) / between, rtol=1e-5)
    assert "supercalifragilistic" in run.attrs["summary"]["words of several tokens (read at their last token)"]


def _words(tmp_path, text):
    p = tmp_path / "w.tsv"
    p.write_text(text, encoding="utf-8")
    return str(p)


GOOD = "sun\tspace\nmoon\tspace\npear\tfruit\napple\tfruit\n"


def _fails(gpt2_dir, tmp_path, cfg_kwargs, *needles):
    out = tmp_path / "never"
    opts = RunOptions(model=str(gpt2_dir), out=str(out), figures=False, progress=False)
    with pytest.raises(InputError) as e:
        run_analysis("rsa", rsa.Config(**cfg_kwargs), opts)
    for needle in needles:
        assert needle in str(e.value), str(e.value)
    assert not out.exists(), "input errors must come before the store is created"
    return str(e.value)


def test_error_word_not_on_a_token_boundary(gpt2_dir, tmp_path):
    _fails(gpt2_dir, tmp_path, {"words": _words(tmp_path, "sun\tspace\nmoon\tspace\npear\tfruit\nland\tfruit\n"),
                                "template": "The next word is{w}"},
           "'land'", "line 4", "does not start on a token boundary", "' island'")


def test_error_category_with_one_word(gpt2_dir, tmp_path):
    _fails(gpt2_dir, tmp_path, {"words": _words(tmp_path, GOOD + "chair\tinterior\n")},
           "category 'interior' has only one word", "'chair'", "line 5")


def test_error_single_category(gpt2_dir, tmp_path):
    _fails(gpt2_dir, tmp_path, {"words": _words(tmp_path, "sun\tspace\nmoon\tspace\n")}, "only one category")


def test_error_malformed_line(gpt2_dir, tmp_path):
    _fails(gpt2_dir, tmp_path, {"words": _words(tmp_path, "sun\tspace\nmoon\tspace\tbig\npear\tfruit\n")},
           "line 2", "'word<TAB>category'")
    _fails(gpt2_dir, tmp_path, {"words": _words(tmp_path, "sun\tspace\nmoon\n")}, "line 2")


def test_error_empty_words_file(gpt2_dir, tmp_path):
    _fails(gpt2_dir, tmp_path, {"words": _words(tmp_path, "")}, "has no words")
    _fails(gpt2_dir, tmp_path, {"words": _words(tmp_path, "\n# only a comment\n\n")}, "has no words")


def test_error_duplicate_and_missing_file(gpt2_dir, tmp_path):
    _fails(gpt2_dir, tmp_path, {"words": _words(tmp_path, GOOD + "sun\tfruit\n")}, "'sun'", "line 5", "line 1")
    _fails(gpt2_dir, tmp_path, {"words": str(tmp_path / "nope.tsv")}, "does not exist")


def test_error_bad_options():
    with pytest.raises(InputError, match="exactly once"):
        rsa.Config(template="The next word is")
    with pytest.raises(InputError, match="must end with"):
        rsa.Config(template="{w} is the next word")
    with pytest.raises(InputError, match="permutations"):
        rsa.Config(permutations=0)


def test_cli_input_error_exits_2(gpt2_dir, tmp_path, capsys):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as e:
        cli_main(["run", "rsa", "--model", str(gpt2_dir), "--out", str(out), "--words",
                  _words(tmp_path, GOOD + "land\tfruit\n"), "--template", "The next word is{w}", "--no-progress"])
    assert e.value.code == 2
    assert "'land'" in capsys.readouterr().err
    assert not out.exists()
