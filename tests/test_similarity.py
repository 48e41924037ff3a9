"""``lamina similarity``: CKA across two runs equals NumPy CKA of their activations; different tokens and folders
holding user files are refused in one line (exit 2); the folder opens with xarray.open_datatree."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from .cka_reference import cka_matrix, minibatch_cka, mutual_knn
from .conftest import make_checkpoint
from .helpers import run_analysis

WORDS = "a long road runs past the old mill, then north. rivers bend twice and the sea waits".split()


def _text(path, seed=None):
    path.write_text(" ".join(np.random.default_rng(seed).choice(WORDS, size=400)))
    return str(path)


def _cka(model, out, text, n_seq=4, seq_len=24):
    from lamina.analyses import registry
    from lamina.analyses.options import RunOptions

    cfg = registry.get("cka").Config(text=text, n_seq=n_seq, seq_len=seq_len, unit_tokens=48)
    return run_analysis("cka", cfg, RunOptions(model=str(model), out=str(out), progress=False))


@pytest.fixture(scope="module")
def pair(tmp_path_factory, gpt2_dir):
    root = tmp_path_factory.mktemp("similarity")
    seed = int(np.random.default_rng().integers(99))
    other = make_checkpoint(root / "other", "gpt2", n_layers=2, d_model=32, seed=seed)
    text = _text(root / "text.txt")
    return root, _cka(gpt2_dir, root / "a", text), _cka(other, root / "b", text)


def lamina_run(url):
    from lamina.engine.reader import open_run

    return open_run(url)


def _main(*args):
    from lamina.analyses.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return e.code
    return 0


def test_similarity_equals_numpy(pair):
    import xarray

    import lamina
    from lamina.analyses.similarity import Options

    root, a, b = pair
    s = lamina.similarity(a.url, b.url, out=root / "sim", options=Options(batch_size=16, permutations=19,
                                                                           resamples=200))
    xa, xb = (r.numpy("acts/resid").astype(np.float64) for r in (a, b))
    xa, xb = (x.reshape(x.shape[0], -1, x.shape[-1]) for x in (xa, xb))  # GPT-2: no BOS, every token a sample
    run = lamina.open_run(s.out)
    assert run.complete and run.attrs["summary"]["estimator"] == "moments"
    np.testing.assert_allclose(run.numpy("results/cka"), cka_matrix(xa, xb, False), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(run.numpy("results/cka_debiased"), cka_matrix(xa, xb, True), rtol=1e-7, atol=1e-9)
    mini = run.numpy("results/cka_debiased_minibatch")
    np.testing.assert_allclose(mini, minibatch_cka(xa, xb, 16), rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(run.numpy("results/best_layer"), run.numpy("results/cka_debiased").argmax(1))
    parts = [slice(i, i + 16) for i in range(0, xa.shape[1] - 15, 16)]
    knn = [[np.mean([mutual_knn(x[s], y[s], 10) for s in parts]) for y in xb] for x in xa]
    np.testing.assert_allclose(run.numpy("results/mutual_knn"), knn, atol=1e-12)
    p, fwer, ci = run.numpy("results/p_value"), run.numpy("results/p_value_fwer"), run.numpy(
        "results/cka_debiased_minibatch_interval")
    assert ((p >= 1 / 20) & (p <= 1) & (fwer >= p)).all()
    assert (ci[0] <= ci[1]).all() and np.isfinite(ci).all()
    tree = xarray.open_datatree(s.out, engine="zarr")["results"]
    assert tree["cka"].dims == ("layer_a", "layer_b") and tree["cka"].shape == (3, 2)
    np.testing.assert_allclose(tree["depth_b"].values, [0.0, 1.0])
    with open(s.table, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and float(rows[1]["cka"]) == run.numpy("results/cka")[0, 1]
    assert s.report.endswith("report.html") and "similarity_heatmap" in open(s.report).read()
    assert _main("similarity", a.url, b.url, "--out", s.out) == 2  # a complete similarity is not silently redone
    again = lamina.similarity(a.url, b.url, out=s.out, overwrite=True, options=Options(permutations=3))
    assert again.table == s.table and again.report == s.report and lamina.open_run(s.out).complete


def test_different_tokens_refused_in_one_line(pair, gpt2_dir, capsys):
    root, a, _ = pair
    c = _cka(gpt2_dir, root / "c", _text(root / "other.txt"))  # same shapes, other token ids
    out = root / "refused"
    assert _main("similarity", a.url, c.url, "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and a.url in err and c.url in err and "different tokens" in err
    assert not out.exists()


def test_user_files_are_never_touched(pair, capsys):
    root, a, b = pair
    out = root / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _main("similarity", a.url, b.url, "--out", out, "--no-figures") == 2
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and "notes.txt" in capsys.readouterr().err
    assert _main("similarity", a.url, b.url, "--out", b.url, "--overwrite") == 2  # never replaces an input
    assert "being compared" in capsys.readouterr().err and (b.folder and lamina_run(b.url).complete)
    sim = root / "sim2"
    assert _main("similarity", a.url, b.url, "--out", sim, "--permutations", "0", "--resamples", "0") == 0
    (sim / "figures" / "my_plot.png").write_bytes(b"x")
    assert _main("similarity", a.url, b.url, "--out", sim, "--overwrite", "--permutations", "3") == 2
    assert (sim / "figures" / "my_plot.png").read_bytes() == b"x"


@pytest.mark.cuda
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA GPU on this machine")
def test_similarity_on_cuda_equals_cpu(pair):
    import lamina
    from lamina.analyses.similarity import Options

    root, a, b = pair
    opts = Options(batch_size=16, permutations=9, resamples=50)
    runs = [lamina.open_run(lamina.similarity(a.url, b.url, out=root / f"on-{d}", device=d, options=opts,
                                              figures=False).out) for d in ("cpu", "cuda")]
    assert runs[1].attrs["device"].startswith("cuda")
    for name in ("results/cka", "results/cka_debiased", "results/cka_debiased_minibatch"):
        np.testing.assert_allclose(runs[1].numpy(name), runs[0].numpy(name), rtol=1e-5, atol=1e-7, err_msg=name)
