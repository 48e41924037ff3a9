"""`lamina run qkv` (docs/analyses.md "qkv") against a plain NumPy reference on plain-HuggingFace activations.

The reference below is written from docs/analyses.md "qkv" alone: first occurrence of the target
token, the token before it, column normalisation, C = Xnᵀ Xn, np.triu_indices masks,
np.histogram(bins=100, range=(-1, 1)), np.var(ddof=0). No lamina kernel is used.

Histogram tolerance: lamina computes cosines in float32 from TransformerLens activations,
the reference in float64 from HuggingFace activations; the two agree to ~1e-6. A value can
only land in a different bin when it lies within that distance of a bin edge (or of ±1,
where it may drop out of the range), and each such value changes the summed |count
difference| by at most 2. So sum |diff| <= 2 x (reference values within 1e-5 of an edge);
with no such value the counts must be equal.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lamina.analyses import qkv
from lamina.analyses.cli import main as cli_main
from lamina.analyses.options import RunOptions
from lamina.analyses.textfiles import stimulus_path
from lamina.engine.errors import InputError
from lamina.engine.reader import open_run
from lamina.engine.tokenizer import gpt2_tokenizer

from .conftest import make_checkpoint
from .helpers import run_analysis, spec_of
from .reference_hf import hf_reference

EDGES = np.linspace(-1.0, 1.0, 101)
BLOCK_NAMES = ["QQ", "KK", "VV", "QK", "QV", "KV"]
SHORT = [
    "I saw her at the market.",
    "Tell her the train leaves at noon, and tell her again.",
    "The dog followed her.",
    "We gave her a very small but extremely heavy box of old books.",
    "Yesterday my brother finally called her.",
    "Her cat watched her.",
    "They thanked her.",
]


# ---------------------------------------------------------------------------------- reference


class _Batch:
    """Right-padded tokens (pad = EOS) for hf_reference, built without lamina."""

    def __init__(self, ids: list[list[int]], pad: int):
        width = max(map(len, ids))
        self.tokens = torch.tensor([row + [pad] * (width - len(row)) for row in ids])
        self.lengths = torch.tensor([len(r) for r in ids])

    def attention_mask(self):
        return (torch.arange(self.tokens.shape[1])[None] < self.lengths[:, None]).long()


def reference_acts(folder, sentences: list[str], target: str = " her"):
    """X_trg, X_non: (layer, sample, 3D) float64 from plain HF hooks, and the positions."""
    tok = gpt2_tokenizer()
    (tid,) = tok(target, add_special_tokens=False)["input_ids"]
    ids = [tok(s, add_special_tokens=False)["input_ids"] for s in sentences]
    t = np.array([row.index(tid) for row in ids])
    qkv_all = hf_reference(folder, _Batch(ids, tok.eos_token_id))["qkv"].astype(np.float64)  # (layer, sample, pos, 3D)
    rows = np.arange(len(ids))
    return qkv_all[:, rows, t], qkv_all[:, rows, t - 1], t, ids


def ref_matrix(x: np.ndarray, center: bool) -> np.ndarray:
    """(sample, F) -> (F, F): columns to unit L2 norm over samples, C = Xnᵀ Xn."""
    if center:
        x = x - x.mean(axis=0, keepdims=True)
    norms = np.sqrt((x * x).sum(axis=0))
    assert (norms > 0).all()
    xn = x / norms
    return xn.T @ xn


def ref_block_values(x: np.ndarray, center: bool) -> dict[str, np.ndarray]:
    c = ref_matrix(x, center)
    d = x.shape[1] // 3
    iu = np.triu_indices(d, 1)
    out = {}
    for name, (a, b) in zip(BLOCK_NAMES, [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]):
        block = c[a * d : (a + 1) * d, b * d : (b + 1) * d]
        out[name] = block[iu] if a == b else block.ravel()
    return out


def near_edge(values: np.ndarray, eps: float = 1e-5) -> int:
    return int((np.abs(values[:, None] - EDGES[None, :]) <= eps).any(axis=1).sum())


def assert_hist_close(got: np.ndarray, values: np.ndarray, what: str) -> None:
    want = np.histogram(values, bins=100, range=(-1.0, 1.0))[0]
    diff = int(np.abs(got.astype(np.int64) - want).sum())
    allowed = 2 * near_edge(values)
    assert diff <= allowed, f"{what}: sum |count diff| = {diff} > {allowed}"


def ref_baseline_values(x_trg_layer: np.ndarray, perm: np.ndarray, center: bool) -> np.ndarray:
    shuffled = x_trg_layer.reshape(-1)[perm].reshape(x_trg_layer.shape)
    c = ref_matrix(shuffled, center)
    return c[np.triu_indices(c.shape[0], 1)]


def check_run(url, folder, sentences, seed: int):
    run = open_run(url)
    assert run.complete
    x_trg, x_non, t, ids = reference_acts(folder, sentences)
    n_layers, n, f = x_trg.shape
    d = f // 3
    # inputs
    tokens, lengths = run.numpy("inputs/tokens"), run.numpy("inputs/lengths")
    assert tokens.dtype == np.int32 and run.dims("inputs/tokens") == ("sample", "pos")
    assert lengths.tolist() == [len(r) for r in ids]
    for i, row in enumerate(ids):
        assert tokens[i, : len(row)].tolist() == row and (tokens[i, len(row):] == 50256).all()
    np.testing.assert_array_equal(run.numpy("inputs/target_pos"), t)
    np.testing.assert_array_equal(run.numpy("inputs/nontarget_pos"), t - 1)
    # activations
    for name, ref in (("acts/target", x_trg), ("acts/nontarget", x_non)):
        assert run.dims(name) == ("layer", "sample", "feature")
        np.testing.assert_allclose(run.numpy(name), ref, atol=1e-4, rtol=1e-4)
    # histograms of the six blocks
    assert run.numpy("results/bin_edges").tolist() == EDGES.tolist()
    assert run.dims("results/bin_edges") == ("edge",)
    for stat, center in (("cosine", False), ("correlation", True)):
        name = f"results/{stat}_hist"
        hist = run.numpy(name)
        assert hist.dtype == np.int64 and hist.shape == (2, n_layers, 6, 100)
        assert run.dims(name) == ("role", "layer", "block", "bin")
        assert run.labels(name, "role") == ["target", "nontarget"]
        assert run.labels(name, "block") == BLOCK_NAMES
        for r, x in enumerate((x_trg, x_non)):
            for l in range(n_layers):
                vals = ref_block_values(x[l], center)
                for b, block in enumerate(BLOCK_NAMES):
                    assert vals[block].size == (d * (d - 1) // 2 if b < 3 else d * d)
                    assert_hist_close(hist[r, l, b], vals[block], f"{stat} role {r} layer {l} {block}")
    # mean and variance per component (ddof=0)
    for stat, fn in (("mean", np.mean), ("variance", np.var)):
        name = f"results/{stat}"
        assert run.dims(name) == ("role", "layer", "component")
        assert run.labels(name, "component") == ["Q", "K", "V"]
        want = np.stack([fn(x, axis=1).reshape(n_layers, 3, d).mean(axis=-1) for x in (x_trg, x_non)])
        np.testing.assert_allclose(run.numpy(name), want, rtol=1e-5, atol=1e-5)
    # random baseline: one permutation of all elements of X_trg per layer, drawn in layer order from
    # torch.Generator().manual_seed(seed) (the documented contract); the same one for cosine and correlation
    g = torch.Generator().manual_seed(seed)
    perms = [torch.randperm(n * f, generator=g).numpy() for _ in range(n_layers)]
    for stat, center in (("cosine", False), ("correlation", True)):
        name = f"results/baseline_{stat}_hist"
        base = run.numpy(name)
        assert base.dtype == np.int64 and base.shape == (n_layers, 100) and run.dims(name) == ("layer", "bin")
        assert (base.sum(-1) == f * (f - 1) // 2).all()
        for l in range(n_layers):
            assert_hist_close(base[l], ref_baseline_values(x_trg[l], perms[l], center), f"baseline {stat} {l}")
    return run


# ---------------------------------------------------------------------------------- runs


def test_qkv_default_sentences_match_numpy_reference(gpt2_dir, tmp_path):
    opts = RunOptions(model=str(gpt2_dir), out=str(tmp_path / "run"), figures=True, progress=False, seed=3)
    url = run_analysis("qkv", qkv.Config(), opts).url
    sentences = [ln for ln in stimulus_path("her_sentences.txt").read_text().splitlines() if ln.strip()]
    assert len(sentences) == 54
    run = check_run(url, gpt2_dir, sentences, seed=3)
    assert run.attrs["summary"]["sentences"] == 54
    figs = sorted(p.name for p in (tmp_path / "run" / "figures").iterdir())
    stems = ["qkv_block2_cosine", "qkv_block2_correlation", "qkv_layers_cosine", "qkv_layers_correlation",
             "qkv_heatmap_QQ_cosine", "qkv_heatmap_QQ_correlation", "qkv_mean_variance"]
    drawn = sorted(f"{s}.{ext}" for s in stems for ext in ("png", "pdf"))
    assert figs == sorted([*drawn, ".lamina-figures.json"])  # the figures, and the list of what lamina drew
    assert sorted(json.loads((tmp_path / "run" / "figures" / ".lamina-figures.json").read_text())["files"]) == drawn
    # the baseline is a seeded permutation: same seed -> same counts, other seed -> other counts
    x = torch.from_numpy(run.numpy("acts/target"))
    a = qkv.histograms(x, x, generator=torch.Generator().manual_seed(3))
    b = qkv.histograms(x, x, generator=torch.Generator().manual_seed(4))
    for stat in ("cosine", "correlation"):
        key = f"baseline_{stat}_hist"
        np.testing.assert_array_equal(a[key].numpy(), run.numpy(f"results/{key}"))
        assert not np.array_equal(a[key].numpy(), b[key].numpy())
        np.testing.assert_array_equal(a[f"{stat}_hist"].numpy(), b[f"{stat}_hist"].numpy())
    # correlation of shuffled columns is chance-level: spread about 1/sqrt(n - 1)
    centres = (EDGES[:-1] + EDGES[1:]) / 2
    p = run.numpy("results/baseline_correlation_hist")[-1] / run.numpy("results/baseline_correlation_hist")[-1].sum()
    sd = np.sqrt((p * centres**2).sum() - (p * centres).sum() ** 2)
    assert abs(sd - 1 / np.sqrt(53)) < 0.2 / np.sqrt(53)


def test_qkv_cli_on_gpt_neo_with_own_sentences(neo_dir, tmp_path, capsys):
    path = tmp_path / "s.txt"
    path.write_text("\n".join(SHORT[:3]) + "\n\n" + "\n".join(SHORT[3:]) + "\n")  # a blank line is skipped
    out = tmp_path / "neo"
    cli_main(["run", "qkv", "--model", str(neo_dir), "--sentences", str(path), "--target", "her", "--seed", "5",
              "--layer", "1", "--out", str(out), "--no-figures", "--no-progress", "--micro-batch", "3"])
    text = capsys.readouterr().out
    assert "results/cosine_hist" in text and "status COMPLETE" in text
    run = check_run(out, neo_dir, SHORT, seed=5)
    assert run.attrs["options"]["target"] == " her" and "layer" not in run.attrs["options"]  # a figure option
    assert not (out / "figures").exists()


# ---------------------------------------------------------------------------------- input errors


def _prepare_error(tmp_path, folder, lines: list[str] | None, **cfg) -> str:
    """Run qkv on a sentences file; it must fail with InputError before any store is made."""
    path = None
    if lines is not None:
        path = tmp_path / "sentences.txt"
        path.write_text("\n".join(lines) + ("\n" if lines else ""))
    out = tmp_path / "out"
    opts = RunOptions(model=str(folder), out=str(out), progress=False, figures=False)
    with pytest.raises(InputError) as e:
        run_analysis("qkv", qkv.Config(sentences=str(path) if path else None, **cfg), opts)
    assert not out.exists(), "an input error must come before the store is created"
    return str(e.value)


def test_error_target_missing(gpt2_dir, tmp_path):
    msg = _prepare_error(tmp_path, gpt2_dir, ["I saw her.", "", "Nobody came today."])
    assert "sentence 2 (line 3" in msg and "'Nobody came today.'" in msg and "' her'" in msg


def test_error_target_at_position_zero(gpt2_dir, tmp_path):
    msg = _prepare_error(tmp_path, gpt2_dir, ["I saw her.", " her book is red."])
    assert "sentence 2" in msg and "position 0" in msg and "' her book is red.'" in msg


def test_error_multi_token_target(gpt2_dir, tmp_path):
    msg = _prepare_error(tmp_path, gpt2_dir, SHORT, target="elephantine")
    assert "' elephantine'" in msg and "2 tokens" in msg and "' elephant'" in msg and "'ine'" in msg


def test_error_sentence_longer_than_context(gpt2_dir, tmp_path):
    long = "I told her " + "very " * 150 + "much."  # > 128 tokens, the tiny checkpoint's n_ctx
    msg = _prepare_error(tmp_path, gpt2_dir, ["I saw her.", long])
    assert "sentence 2" in msg and "context" in msg and "128" in msg


@pytest.mark.parametrize("lines", [[], ["   ", ""]])
def test_error_empty_sentences_file(gpt2_dir, tmp_path, lines):
    msg = _prepare_error(tmp_path, gpt2_dir, lines)
    assert "no sentences" in msg and "sentences.txt" in msg


def test_error_missing_file_and_bad_config(gpt2_dir, tmp_path):
    opts = RunOptions(model=str(gpt2_dir), out=str(tmp_path / "out"))
    with pytest.raises(InputError, match="does not exist"):
        spec_of("qkv", qkv.Config(sentences=str(tmp_path / "nope.txt")), opts)
    with pytest.raises(InputError, match="layer=-1: must be >= 0"):
        qkv.PlotOptions(layer=-1)
    with pytest.raises(InputError, match="target="):
        qkv.Config(target="  ")


def test_cli_input_error_exits_2(gpt2_dir, tmp_path, capsys):
    path = tmp_path / "s.txt"
    path.write_text("I saw her.\nNo target here.\n")
    with pytest.raises(SystemExit) as e:
        cli_main(["run", "qkv", "--model", str(gpt2_dir), "--sentences", str(path), "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    assert "sentence 2" in capsys.readouterr().err


def test_shipped_defaults_validate_for_every_gpt2_size():
    """The shipped 54 sentences pass validation (tokenizer only, no weights) with the real context."""
    stim = spec_of("qkv", opts=RunOptions(model="gpt2", weights="random")).state
    assert len(stim.texts) == 54 and stim.target_id == 607
    assert (stim.target_pos >= 1).all() and (stim.target_pos < stim.batch.lengths).all()
    assert len(spec_of("qkv", opts=RunOptions(model="gpt2-xl", weights="random")).passes[0].captures[0].hooks) == 48


def test_figure_layer_is_clipped_and_redrawn_without_rerunning(tmp_path):
    """--layer is a figure option: clipped to the last block, and `lamina plot --layer` redraws another."""
    folder = make_checkpoint(tmp_path / "two", "gpt2", n_layers=2, d_model=32, n_heads=2, n_ctx=64)
    out = tmp_path / "run"
    run_analysis("qkv", qkv.Config(), RunOptions(model=str(folder), out=str(out), progress=False), layer=6)
    assert (out / "figures" / "qkv_block1_cosine.png").exists()
    assert "qkv_block0_cosine.png" not in (out / "report.html").read_text(encoding="utf-8")
    cli_main(["plot", str(out), "--layer", "0"])
    assert (out / "figures" / "qkv_block0_cosine.png").exists()
    assert "figures/qkv_block0_cosine.png" in (out / "report.html").read_text(encoding="utf-8")  # page refreshed
