"""``lamina run punct`` (docs/analyses.md "punct") against an independent NumPy loop on plain-HF hidden states.

The reference here never uses lamina's kernels or capture: marks are found by a separate Python
scan over the HuggingFace tokenizer's output, hidden states come from HF ``output_hidden_states``
(tests/reference_hf.py), and MI / cov / corr from a literal per-pair loop over the spec.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from lamina.analyses import punct
from lamina.analyses.options import RunOptions
from lamina.engine.errors import InputError
from lamina.engine.inputs import TokenBatch
from lamina.engine.reader import open_run
from lamina.engine.tokenizer import gpt2_tokenizer

from .helpers import run_analysis, spec_of
from .reference_hf import hf_reference

N, SKIP, BEFORE, AFTER = 12, 10, 20, 11

TEXT = (
    "The morning was cold, grey and quiet when the ferry left the harbour. Nobody spoke, not even the captain, "
    "who stood at the rail with his coffee. The engine had been rebuilt in 1999. It ran at 3.5 knots, slower "
    "than the old one, but it never failed. Mara counted the gulls, the buoys and the clouds. She had read that "
    "the crossing took 2.5 hours, though her uncle swore it took longer. At the island, the road climbed past a "
    "chapel, a shop and a row of white houses. The shop sold bread, rope, stamps and candles. Its owner, a tall "
    "man with a limp, had lived there since version 2. Then the rain came, first softly, then in sheets. They "
    "waited under the porch, laughing. By noon the sky cleared, the wind dropped and the sea turned green. Mara "
    "walked to the cliff, where the grass was short and the sheep were loud. She sat down. Below her, the waves "
    "broke on the rocks, pulled back, and broke again. In the evening, the ferry returned with 12.75 tonnes of "
    "coal. The captain waved. She waved back, smiled, and went inside. The lamp was lit, the soup was hot and "
    "the door was shut. Later, when the house was dark, she wrote a letter. It was short, honest and a little "
    "sad. She sealed it, stamped it and left it on the table. In the morning, it was gone.\n"
)


# ------------------------------------------------------------------------------ independent reference


def reference_scan(ids, pieces, *, skip, before, after):
    """All marks from ``skip`` on whose window fits, written from the spec (no lamina code)."""
    digit = re.compile(r"\d")
    internal, terminal = [], []
    for loc in range(len(ids)):
        if loc < skip or loc - before < 0 or loc + after > len(ids):
            continue
        p = pieces[loc].strip()
        if p == ",":
            internal.append(loc)
        elif p == ".":
            prev_last = pieces[loc - 1][-1:] if loc >= 1 else ""
            next_first = pieces[loc + 1][:1] if loc + 1 < len(ids) else ""
            if not digit.fullmatch(prev_last or "x") and not digit.fullmatch(next_first or "x"):
                terminal.append(loc)
    return internal, terminal


def entropy_bits(p):
    return -np.sum(p * np.log2(p + 1e-12))


def reference_pair(x, y, bins=15, z_max=5.0):
    """The lecture's per-pair loop: outliers (ddof=1 z), histogram2d MI in bits, np.cov, Pearson r."""
    zx = (x - x.mean()) / x.std(ddof=1)
    zy = (y - y.mean()) / y.std(ddof=1)
    keep = ~((np.abs(zx) > z_max) | (np.abs(zy) > z_max))
    x, y = x[keep], y[keep]
    counts, _, _ = np.histogram2d(x, y, bins=bins)
    p = counts / counts.sum()
    mi = entropy_bits(p.sum(1)) + entropy_bits(p.sum(0)) - entropy_bits(p)
    cov = np.cov(x, y)[0, 1]
    corr = np.corrcoef(x, y)[0, 1]
    return mi, cov, corr


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("punct-text") / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def hf_tokens(gpt2_dir):
    tok = AutoTokenizer.from_pretrained(str(gpt2_dir))
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    return ids, [tok.decode([i]) for i in ids]


@pytest.fixture(scope="module")
def punct_run(gpt2_dir, text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("punct-run") / "run"
    opts = RunOptions(model=str(gpt2_dir), out=str(out), figures=True, progress=False, micro_batch=5)
    return run_analysis("punct", punct.Config(text=str(text_file), marks=N, skip=SKIP, before=BEFORE, after=AFTER), opts)


@pytest.fixture(scope="module")
def reference(gpt2_dir, hf_tokens):
    """Locations, windows, HF hidden states at the mark and per-pair MI / cov / corr, per class."""
    ids, pieces = hf_tokens
    marks = [found[:N] for found in reference_scan(ids, pieces, skip=SKIP, before=BEFORE, after=AFTER)]
    windows = np.array([[ids[loc - BEFORE : loc + AFTER] for loc in locs] for locs in marks])  # (class, sample, pos)
    flat = torch.as_tensor(windows.reshape(2 * N, BEFORE + AFTER), dtype=torch.long)
    batch = TokenBatch(flat, torch.full((2 * N,), BEFORE + AFTER), 50256)
    hidden = hf_reference(gpt2_dir, batch)["hidden"][:, :, BEFORE]  # (state, class*sample, feature)
    hidden = hidden.reshape(hidden.shape[0], 2, N, -1).transpose(1, 0, 2, 3).astype(np.float64)
    n_class, n_state = hidden.shape[:2]
    stats = np.zeros((3, n_class, n_state, N * (N - 1) // 2))  # (stat, class, state, pair)
    for c in range(n_class):
        for s in range(n_state):
            pair = 0
            for i in range(N):
                for j in range(i + 1, N):
                    stats[:, c, s, pair] = reference_pair(hidden[c, s, i], hidden[c, s, j])
                    pair += 1
    return {"locations": np.array(marks), "windows": windows, "hidden": hidden,
            "mi": stats[0], "cov": stats[1], "corr": stats[2]}


# ------------------------------------------------------------------------------ the run


def test_selection_first_n_and_digit_rule(punct_run, hf_tokens, reference):
    ids, pieces = hf_tokens
    np.testing.assert_array_equal(punct_run.numpy("inputs/locations"), reference["locations"])
    np.testing.assert_array_equal(punct_run.numpy("inputs/tokens"), reference["windows"])
    np.testing.assert_array_equal(punct_run.numpy("inputs/lengths"), np.full((2, N), BEFORE + AFTER))
    assert punct_run.dims("inputs/tokens") == ("class", "sample", "pos")
    tokens = punct_run.numpy("inputs/tokens")
    assert {pieces[loc].strip() for loc in reference["locations"][0]} == {","}
    assert {pieces[loc].strip() for loc in reference["locations"][1]} == {"."}
    assert all(ids[loc] == tokens[c, k, BEFORE] for c in range(2) for k, loc in enumerate(reference["locations"][c]))
    # the digit rule was exercised: periods of "1999." "3.5" "2.5" "version 2." lie before the last terminal kept
    last = reference["locations"][1][-1]
    excluded = [loc for loc in range(SKIP, last) if pieces[loc] == "."
                and (pieces[loc - 1][-1:].isdigit() or pieces[loc + 1][:1].isdigit())]
    assert len(excluded) >= 4
    assert not set(excluded) & set(reference["locations"][1].tolist())
    # first n, not any n: more marks exist than were taken
    all_int, all_term = reference_scan(ids, pieces, skip=SKIP, before=BEFORE, after=AFTER)
    assert len(all_int) > N and len(all_term) > N


def test_hidden_states_match_huggingface(punct_run, reference):
    acts = punct_run.numpy("acts/hidden")
    assert punct_run.dims("acts/hidden") == ("class", "state", "sample", "feature")
    assert acts.shape == (2, 4, N, 64)  # 3 blocks -> 4 states, the last after ln_f
    np.testing.assert_allclose(acts, reference["hidden"], atol=1e-5, rtol=1e-5)


def test_results_match_numpy_pair_loop(punct_run, reference):
    for k in ("mi", "cov", "corr"):
        got = punct_run.numpy(f"results/{k}")
        assert punct_run.dims(f"results/{k}") == ("class", "state", "pair")
        assert got.shape == (2, 4, N * (N - 1) // 2)
        np.testing.assert_allclose(got, reference[k], rtol=1e-6, atol=1e-6, err_msg=k)
    np.testing.assert_array_equal(punct_run.numpy("results/pairs"), np.stack(np.triu_indices(N, 1), axis=1))
    # per-state means and r(cov, MI): from the stored (just verified) pair values, so that the
    # ~1e-7 activation noise between TransformerLens and HF is not amplified by r's small spread
    mean = punct_run.numpy("results/mean")
    r = punct_run.numpy("results/r_cov_mi")
    stored = {k: punct_run.numpy(f"results/{k}") for k in ("mi", "cov", "corr")}
    for c in range(2):
        for s in range(4):
            ref = [np.nanmean(reference[k][c, s]) for k in ("mi", "cov", "corr")]
            np.testing.assert_allclose(mean[c, s], ref, rtol=1e-6, atol=1e-9)
            cov, mi = stored["cov"][c, s], stored["mi"][c, s]
            if np.ptp(cov) > 1e-12 * np.abs(cov).max() and np.ptp(mi) > 1e-12 * np.abs(mi).max():
                np.testing.assert_allclose(r[c, s], np.corrcoef(cov, mi)[0, 1], rtol=1e-9, atol=1e-12)
            else:  # state 0: one value for every pair, no correlation
                assert np.isnan(r[c, s])
    summary = punct_run.attrs["summary"]
    assert summary["pairs per class"] == N * (N - 1) // 2
    np.testing.assert_allclose(summary["internal mean MI (bits) per state"], mean[0, :, 0], rtol=1e-3)
    np.testing.assert_allclose(summary["terminal mean cov per state"], mean[1, :, 1], rtol=1e-3)


def test_state0_same_mark_token_gives_one_value(punct_run):
    """Layer-0 sanity (issue 3): same token at the same index -> identical embeddings -> one MI, one cov."""
    acts = punct_run.numpy("acts/hidden")
    tokens = punct_run.numpy("inputs/tokens")
    mi, cov = punct_run.numpy("results/mi"), punct_run.numpy("results/cov")
    iu, ju = np.triu_indices(N, 1)
    for c in range(2):
        marks = tokens[c, :, BEFORE]
        for t in np.unique(marks):
            rows = np.flatnonzero(marks == t)
            if len(rows) < 2:
                continue
            same = acts[c, 0, rows]  # (sample, feature): every row the same vector
            np.testing.assert_array_equal(same, np.broadcast_to(same[0], same.shape))
            within = np.isin(iu, rows) & np.isin(ju, rows)
            assert within.sum() == len(rows) * (len(rows) - 1) // 2 >= 1
            assert np.unique(mi[c, 0, within]).size == 1
            v = cov[c, 0, within]
            assert np.ptp(v) <= 1e-12 * np.abs(v).max()


def test_full_window_feeds_the_literal_sequences(punct_run, gpt2_dir, text_file, tmp_path):
    """--full-window runs all 31 tokens (the lecture's input): same states, the model being causal."""
    opts = RunOptions(model=str(gpt2_dir), out=str(tmp_path / "full"), figures=False, progress=False)
    full = run_analysis("punct", punct.Config(text=str(text_file), marks=N, skip=SKIP, full_window=True), opts)
    assert full.attrs["options"]["tokens_fed"] == BEFORE + AFTER
    assert punct_run.attrs["options"]["tokens_fed"] == BEFORE + 1
    np.testing.assert_allclose(full.numpy("acts/hidden"), punct_run.numpy("acts/hidden"), atol=1e-6, rtol=1e-6)
    np.testing.assert_array_equal(full.numpy("inputs/tokens"), punct_run.numpy("inputs/tokens"))
    for k in ("mi", "cov", "corr"):
        np.testing.assert_allclose(full.numpy(f"results/{k}"), punct_run.numpy(f"results/{k}"), rtol=1e-6, atol=1e-6)


def test_figures_written(punct_run):
    figdir = Path(punct_run.url) / "figures"
    stems = ["punct_matrices_state1", "punct_hist_state1", "punct_scatter_state1", "punct_scatter_grid",
             "punct_per_state_hist", "punct_per_state_means"]
    for stem in stems:
        for ext in ("png", "pdf"):
            f = figdir / f"{stem}.{ext}"
            assert f.exists() and f.stat().st_size > 5_000, f
    assert punct_run.complete


# ------------------------------------------------------------------------------ inputs and errors


def test_too_few_marks_says_how_many(gpt2_dir, text_file, hf_tokens, tmp_path):
    ids, pieces = hf_tokens
    n_int, n_term = (len(f) for f in reference_scan(ids, pieces, skip=SKIP, before=BEFORE, after=AFTER))
    out = tmp_path / "run"
    with pytest.raises(InputError, match=rf"{n_int} internal .*{n_term} terminal .*--marks 500") as e:
        run_analysis("punct", punct.Config(text=str(text_file), marks=500, skip=SKIP),
                     RunOptions(model=str(gpt2_dir), out=str(out), progress=False))
    assert f"from token {SKIP} on" in str(e.value)
    assert not out.exists(), "the error must come before any store is made"


def test_missing_text_file(gpt2_dir, tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(InputError, match="nope.txt.*does not exist"):
        run_analysis("punct", punct.Config(text=str(missing)),
                     RunOptions(model=str(gpt2_dir), out=str(tmp_path / "run"), progress=False))
    assert not (tmp_path / "run").exists()


def test_missing_text_file_cli(gpt2_dir, tmp_path, capsys):
    from lamina.analyses.cli import main

    with pytest.raises(SystemExit) as e:
        main(["run", "punct", "--model", str(gpt2_dir), "--text", str(tmp_path / "nope.txt"), "--marks", "12",
              "--out", str(tmp_path / "run"), "--no-progress"])
    assert e.value.code == 2
    assert "nope.txt" in capsys.readouterr().err


def test_bad_options(gpt2_dir, text_file):
    opts = RunOptions(model=str(gpt2_dir))
    with pytest.raises(InputError, match="marks=1: must be >= 2"):
        punct.Config(marks=1)
    with pytest.raises(InputError, match="after=0: must be >= 1"):
        punct.Config(after=0)
    with pytest.raises(InputError, match="state=-1: must be >= 0"):
        punct.PlotOptions(state=-1)
    with pytest.raises(InputError, match="130 tokens is longer than the context.*128"):
        spec_of("punct", punct.Config(text=str(text_file), marks=N, skip=SKIP, before=100, after=30), opts)


def test_shipped_defaults_validate():
    """The default corpus has >= 250 of each mark after token 400 for gpt2-medium (no weights loaded)."""
    spec = spec_of("punct", opts=RunOptions(weights="random"))
    stim = spec.state
    assert stim.tokens.shape == (2, 250, 31) and len(spec.passes[0].captures[0].hooks) == 25
    tok = gpt2_tokenizer()  # the models' shared GPT-2 BPE (gpt2-medium has no local checkpoint here)
    ids = tok(Path(stim.text_path).read_text(encoding="utf-8"), add_special_tokens=False, verbose=False)["input_ids"]
    pieces = [tok.decode([i]) for i in ids]
    marks = reference_scan(ids, pieces, skip=400, before=20, after=11)
    np.testing.assert_array_equal(stim.locations, np.array([m[:250] for m in marks]))
    assert stim.locations.min() >= 400
    assert {pieces[loc].strip() for loc in stim.locations[0]} == {","}
    assert {pieces[loc].strip() for loc in stim.locations[1]} == {"."}
