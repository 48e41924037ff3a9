"""Hostile probes of ``lamina run cka`` and ``lamina similarity`` (a researcher misusing them), one test per finding:
bad input is refused in one line (exit 2, no traceback) before any activation is read, nothing lamina did not write
is touched; what should work (other hooks, other layer counts, a constant layer, ``lamina report`` / ``plot`` of a
similarity folder) works and equals NumPy CKA from the definitions."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

import lamina
from lamina.analyses.similarity import reading as similarity_reading
from lamina.analyses.similarity import Options
from lamina.engine.errors import InputError

from .cka_reference import cka_matrix
from .conftest import make_checkpoint
from .helpers import run_analysis
from .test_data_safety import snapshot
from .test_hostile import lamina_cli, one_line

WORDS = "the miller walked north past a river, then the sea; rain fell twice and birds sang".split()


def _cka(model, out, text, **cfg):
    from lamina.analyses import registry
    from lamina.analyses.options import RunOptions

    cfg = registry.get("cka").Config(text=text, n_seq=4, seq_len=24, unit_tokens=48, **cfg)
    return run_analysis("cka", cfg, RunOptions(model=str(model), out=str(out), progress=False, figures=False))


def _flat_checkpoint(folder, layer: int, value: float):
    """A tiny GPT-2 whose block ``layer`` writes the same vector for every token (attention output projection 0,
    bias ``value``): its hook_attn_out has no variance."""
    import torch
    from transformers import GPT2LMHeadModel

    make_checkpoint(folder, "gpt2", seed=int(np.random.default_rng().integers(99)))
    m = GPT2LMHeadModel.from_pretrained(str(folder))
    with torch.no_grad():
        m.transformer.h[layer].attn.c_proj.weight.zero_()
        m.transformer.h[layer].attn.c_proj.bias.fill_(value)
    m.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory, gpt2_dir):
    """cka runs on one random text: ``a`` (tiny GPT-2, 3 blocks, resid), ``b`` (another GPT-2, 2 blocks, width 32),
    ``attn`` (tiny GPT-2, hook_attn_out), ``flat`` (block 1 constant, hook_attn_out), ``noacts`` (no acts kept);
    ``sim``: a similarity folder of a and b."""
    root = tmp_path_factory.mktemp("hostile-cka")
    text = root / "text.txt"
    text.write_text(" ".join(np.random.default_rng().choice(WORDS, size=500)))
    seed = int(np.random.default_rng().integers(99))
    other = make_checkpoint(root / "other", "gpt2", n_layers=2, d_model=32, seed=seed)
    attn = "blocks.{layer}.hook_attn_out"
    out = {"root": root, "text": str(text),
           "a": _cka(gpt2_dir, root / "a", str(text)), "b": _cka(other, root / "b", str(text)),
           "attn": _cka(gpt2_dir, root / "attn", str(text), hook=attn),
           "flat": _cka(_flat_checkpoint(root / "flat-model", 1, 0.5), root / "flat", str(text), hook=attn),
           "noacts": _cka(gpt2_dir, root / "noacts", str(text), store_acts=False)}
    out["sim"] = lamina.similarity(out["a"].url, out["b"].url, out=root / "sim-as-input", figures=False,
                                   options=Options(permutations=0, resamples=0)).out
    return out


@pytest.fixture
def no_reading(monkeypatch):
    """Refusals must come before any activation is read."""
    def refuse(*a, **k):
        raise AssertionError("activations were read before the input was checked")

    monkeypatch.setattr(similarity_reading, "token_blocks", refuse)  # similarity() imports it when called


def _acts(run) -> np.ndarray:
    x = run.numpy("acts/resid").astype(np.float64)  # GPT-2: no BOS, every token is a sample
    return x.reshape(x.shape[0], -1, x.shape[-1])


# ---- 1. lamina report / lamina plot of a similarity folder ---------------------------------------------------


def test_report_and_plot_of_a_similarity_folder(runs, capsys):
    root, a, b = runs["root"], runs["a"], runs["b"]
    s = lamina.similarity(a.url, b.url, out=root / "sim", options=Options(batch_size=16, permutations=9,
                                                                          resamples=20))
    figures, report = root / "sim" / "figures", root / "sim" / "report.html"
    data = {k: v for k, v in snapshot(root / "sim").items() if not k.startswith(("figures/", "report.html"))}
    report.unlink()
    for p in figures.iterdir():
        if not p.name.startswith("."):
            p.unlink()
    code, out, err = lamina_cli(capsys, "report", s.out)
    assert code == 0, err
    html = report.read_text()
    assert "Linear CKA between the layers of two runs" in html and "similarity" in html
    code, out, err = lamina_cli(capsys, "plot", s.out)
    assert code == 0, err
    assert {"similarity_heatmap.png", "similarity_best_layer.png", "similarity_pvalues.png",
            "similarity.csv"} <= {p.name for p in figures.iterdir()}
    assert "similarity_heatmap.png" in report.read_text()  # the report plot refreshed lists the figures
    run = lamina.open_run(s.out)
    with open(figures / "similarity.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    want = cka_matrix(_acts(a), _acts(b), True)  # the redrawn table holds the NumPy CKA
    assert len(rows) == want.size
    np.testing.assert_allclose([float(r["cka_debiased"]) for r in rows], want.ravel(), rtol=1e-7, atol=1e-9)
    assert {k: v for k, v in snapshot(root / "sim").items() if k in data} == data  # no result rewritten
    assert run.complete and lamina.verify(s.out).ok


# ---- 2. inputs refused in one line, before reading --------------------------------------------------------------


def _damaged(runs, name: str):
    """A copy of run b with one acts chunk flipped (``damaged``) or marked running (``incomplete``)."""
    dest = runs["root"] / f"{name}-copy"
    if not dest.exists():
        shutil.copytree(runs["b"].folder, dest)
        if name == "damaged":
            chunk = next(p for p in sorted((dest / "acts" / "resid" / "c").rglob("*")) if p.is_file())
            data = bytearray(chunk.read_bytes())
            data[len(data) // 2] ^= 0xFF
            chunk.write_bytes(bytes(data))
        else:
            meta = json.loads((dest / "zarr.json").read_text())
            meta["attributes"]["status"] = "running"
            (dest / "zarr.json").write_text(json.dumps(meta))
    return dest


CASES = {  # name: (argv after `lamina similarity`, words the one line must hold)
    "same run twice": (lambda r: [r["a"].url, r["a"].url], ["given twice"]),
    "not a run": (lambda r: [r["a"].url, r["root"] / "other"], ["not a lamina run"]),
    "a group inside a run": (lambda r: [r["a"].url, f"{r['b'].url}/acts"], ["is inside the lamina run"]),
    "a similarity folder": (lambda r: [r["a"].url, r["sim"]], ["similarity folder", "not a run"]),
    "no activations": (lambda r: [r["a"].url, r["noacts"].url], ["0 activation arrays", "--no-store-acts"]),
    "damaged": (lambda r: [r["a"].url, _damaged(r, "damaged")], ["is damaged", "acts/resid", "checksum"]),
    "incomplete": (lambda r: [r["a"].url, _damaged(r, "incomplete")], ["is running", "finish it"]),
    "unknown acts": (lambda r: [r["a"].url, r["b"].url, "--acts-b", "nope"], ["acts/nope", "--acts-b"]),
    "permutations -1": (lambda r: [r["a"].url, r["b"].url, "--permutations", "-1"], ["--permutations", ">= 0"]),
    "permutations 10**12": (lambda r: [r["a"].url, r["b"].url, "--permutations", str(10**12)],
                            ["--permutations", "100000 at most"]),
    "resamples 10**12": (lambda r: [r["a"].url, r["b"].url, "--resamples", str(10**12)], ["--resamples"]),
    "batch over the tokens": (lambda r: [r["a"].url, r["b"].url, "--batch-size", "1000"],
                              ["only 96 sample tokens", "--batch-size 48"]),
    "level 1.5": (lambda r: [r["a"].url, r["b"].url, "--level", "1.5"], ["--level"]),
    "device meta": (lambda r: [r["a"].url, r["b"].url, "--device", "meta"], ["--device meta", "--device cpu"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_inputs_refused_in_one_line_before_reading(case, runs, capsys, no_reading):
    argv, needles = CASES[case]
    args = argv(runs)
    inputs = [p for p in args[:2] if (runs["root"] / str(p)).exists()]
    before = {str(p): snapshot(p) for p in inputs}
    out = runs["root"] / f"refused-{case.replace(' ', '-')}"
    code, _, err = lamina_cli(capsys, "similarity", *args, "--out", out)
    assert code == 2
    one_line(err, *needles)
    assert not out.exists() or not any(out.iterdir())
    assert {str(p): snapshot(p) for p in inputs} == before


def test_out_refusals_touch_nothing(runs, capsys, no_reading):
    root, a, b = runs["root"], runs["a"].url, runs["b"].url
    mine = root / "mine"
    mine.mkdir(exist_ok=True)
    (mine / "notes.txt").write_text("mine")
    link = root / "link-to-mine"
    if not link.exists():
        link.symlink_to(mine)
    before = {p: snapshot(p) for p in (runs["a"].folder, runs["b"].folder, mine)}
    for out, needles in ((mine, ["notes.txt", "did not write"]), (link, ["notes.txt"]),
                         (f"{a}/inside", ["inside the lamina run"]), (runs["text"], ["is a file"]),
                         (b, ["being compared"])):
        code, _, err = lamina_cli(capsys, "similarity", a, b, "--out", out, "--overwrite")
        assert code == 2, out
        one_line(err, *needles)
    assert {p: snapshot(p) for p in before} == before and link.is_symlink()
    assert not (root / "a" / "inside").exists()


@pytest.mark.parametrize("bad", [dict(run_a=None), dict(run_b=None), dict(run_a=123), dict(run_b=""),
                                 dict(out=None), dict(out=""), dict(options={"permutations": 3})])
def test_python_wrong_types_are_one_clear_error(runs, bad, tmp_path, monkeypatch, no_reading):
    monkeypatch.chdir(tmp_path)  # out=None once made a folder called "None" here
    kwargs = {"run_a": runs["a"].url, "run_b": runs["b"].url, "out": tmp_path / "sim", **bad}
    with pytest.raises(InputError) as e:
        lamina.similarity(kwargs.pop("run_a"), kwargs.pop("run_b"), **kwargs)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{next(iter(bad))} must be"), msg
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind, shape, options, needles", [
    ("moments", (48, 96, 1600), Options(estimator="moments"), ["--estimator moments needs", "minibatch"]),
    ("minibatch", (30, 96, 576), Options(resamples=1_000_000), ["--resamples 1000000 needs", "give fewer"]),
    ("minibatch", (30, 96, 576), Options(permutations=100_000, batch_size=4096), ["--permutations 100000 needs"]),
])
def test_what_would_not_fit_in_memory_is_refused(kind, shape, options, needles):
    # GPT-2 XL- and SmolLM2-sized activations: refused from the shapes alone (nothing that large is made here)
    from lamina.analyses.similarity import _check_sizes

    with pytest.raises(InputError) as e:
        _check_sizes(10**6, options.batch_size or 256, shape, shape, kind, options)
    assert all(n in str(e.value) for n in needles), str(e.value)
    _check_sizes(10**6, 256, (3, 96, 64), (2, 96, 32), kind, Options())  # the defaults on small runs fit


# ---- 3. what must work -------------------------------------------------------------------------------------------


def test_other_hooks_and_layer_counts_give_la_by_lb(runs):
    a, b, attn = runs["a"], runs["b"], runs["attn"]
    s = lamina.similarity(attn.url, b.url, out=runs["root"] / "attn-b", figures=False,
                          options=Options(permutations=0, resamples=0))
    run = lamina.open_run(s.out)
    assert run.numpy("results/cka").shape == (3, 2)
    # attn_out carries a large mean (the output bias): Song's debiased HSIC of uncentred Grams cancels there in
    # float64 (~1e-6 relative); it is translation invariant, so the reference takes the centred activations
    xa, xb = (x - x.mean(1, keepdims=True) for x in (_acts(attn), _acts(b)))
    for name, debiased in (("results/cka", False), ("results/cka_debiased", True)):
        np.testing.assert_allclose(run.numpy(name), cka_matrix(xa, xb, debiased), rtol=1e-9, atol=1e-12,
                                   err_msg=name)
    assert np.isnan(run.numpy("results/p_value")).all()  # --permutations 0: no p-values, said by NaN


def test_a_constant_layer_is_nan_and_named_not_an_error(runs):
    flat, a = runs["flat"], runs["a"]
    assert flat.attrs["summary"]["constant_layers"] == [1] and flat.attrs["summary"]["best_layer"][1] == -1
    within = flat.numpy("results/cka_debiased")
    assert np.isnan(within[1]).all() and np.isnan(within[:, 1]).all()
    s = lamina.similarity(flat.url, a.url, out=runs["root"] / "flat-a", figures=False,
                          options=Options(batch_size=16, permutations=9, resamples=20))
    run = lamina.open_run(s.out)
    summary = run.attrs["summary"]
    assert summary["constant_layers_a"] == [1] and summary["constant_layers_b"] == []
    for name in ("results/cka", "results/cka_debiased", "results/cka_debiased_minibatch", "results/mutual_knn",
                 "results/p_value", "results/p_value_fwer"):
        assert np.isnan(run.numpy(name)[1]).all(), name
    xa, xb = (x - x.mean(1, keepdims=True) for x in (_acts(flat), _acts(a)))  # centred: see the test above
    keep = [0, 2]
    np.testing.assert_allclose(run.numpy("results/cka_debiased")[keep], cka_matrix(xa[keep], xb, True), rtol=1e-9,
                               atol=1e-12)
    assert run.numpy("results/best_layer")[1] == -1


# ---- 4. lamina run cka ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, needles", [
    (["--hook", "blocks.0.hook_resid_post"], ["has no {layer}"]),
    (["--hook", "blocks.{layer}.attn.hook_pattern"], ["hook_pattern", "not one value per token"]),
    (["--hook", "blocks.{layer}.no_such_hook"], ["no hook point"]),
    (["--text", "EMPTY"], ["is empty"]),
    (["--text", "ONE", "--n-seq", "4", "--seq-len", "1"], ["tokens, but 4 are needed"]),
    (["--n-seq", "1", "--seq-len", "3"], ["at least 4"]),
])
def test_run_cka_bad_inputs_one_line(extra, needles, gpt2_dir, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "one.txt").write_text("north")
    extra = [{"EMPTY": tmp_path / "empty.txt", "ONE": tmp_path / "one.txt"}.get(e, e) for e in extra]
    out = tmp_path / "out"
    code, _, err = lamina_cli(capsys, "run", "cka", "--model", gpt2_dir, "--n-seq", "2", "--seq-len", "8",
                              "--no-progress", "--out", out, *extra)
    assert code == 2
    one_line(err, *needles)
    assert not out.exists() or not any(out.iterdir())


def test_compare_of_similarity_folders_names_what_they_are(runs, capsys, tmp_path):
    root, a, b = runs["root"], runs["a"], runs["b"]
    other = lamina.similarity(b.url, a.url, out=root / "sim-ba", figures=False,
                              options=Options(permutations=0, resamples=0)).out
    code, out, err = lamina_cli(capsys, "compare", runs["sim"], other, "--out", str(tmp_path / "cmp"))
    assert code == 2 and "Traceback" not in err
    assert "similarity folder, already a comparison of two runs" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "cmp").exists()
