"""`lamina run length` (docs/analyses.md "length") against a plain NumPy reference on plain-HuggingFace activations.

The checkpoint is the tiny GPT-Neo of conftest with its MLP input weights scaled up (so the
pre-activations spread over the [-8, 5] histogram range) and three neurons of block 1 made
constant (zero weights: activation = bias), which must come out as NaN and be counted.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from lamina.analyses import cli, length, runner
from lamina.analyses.options import RunOptions
from lamina.analyses.textfiles import stimulus_path
from lamina.engine.errors import InputError, OfflineError
from lamina.engine.inputs import TokenBatch
from lamina.engine.kernels.correlation import StreamingPearson
from lamina.engine.reducers import GroupHistogram, TokenPearson, Unit
from lamina.engine.reader import open_run
from lamina.engine.tokenizer import gpt2_tokenizer

from .helpers import run_analysis, spec_of
from .reference_hf import hf_reference

N_SEQ, SEQ_LEN, BLOCK = 6, 32, 2
DEAD = (1, [0, 5, 17])  # block, neurons with zero input weights
CORPUS = """\
The lighthouse keeper kept a notebook of ships that never arrived. Each evening she wrote the \
names she had been promised, the hour they were due, and a short line about the weather. Most \
entries ended with a question mark. In spring the harbour filled with gulls, and the fishermen \
argued about nets, prices, engines and the younger generation, who preferred the city. Nobody \
asked about the notebook until a schoolboy found it, read every page aloud in the kitchen, and \
declared that the missing ships were, in fact, arriving somewhere else: on an island with a \
lighthouse of its own, kept by another woman with another notebook. The keeper laughed, then \
stopped laughing, then bought a second notebook for the answers. Extraordinarily, incomprehensibly, \
the correspondence continued for eleven years, carried by postal boats, pigeons and, once, a \
bewildered meteorologist. Short words; long words. Numbers like 1,204 and 3.75 appeared too.
"""
RESULTS = ("results/corr", "results/partial_corr", "results/corr_hist", "results/partial_corr_hist",
           "results/median_split_hist", "results/median_split_counts", "results/token_frequency", "token_length",
           "inputs/tokens", "results/corr_bin_edges", "results/median_split_bin_edges")


# ---- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpt(neo_dir, tmp_path_factory):
    """neo_dir with c_fc weights x25 and three dead neurons in block 1."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("neo-length")
    model = AutoModelForCausalLM.from_pretrained(str(neo_dir))
    with torch.no_grad():
        for blk in model.transformer.h:
            blk.mlp.c_fc.weight.mul_(25.0)
        model.transformer.h[DEAD[0]].mlp.c_fc.weight[DEAD[1]] = 0.0
    model.save_pretrained(str(folder))
    gpt2_tokenizer().save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(CORPUS, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reference(ckpt):
    """Plain NumPy reference of every result, on plain-HF activations of the same tokens."""
    tok = gpt2_tokenizer()
    ids = np.array(tok(CORPUS, add_special_tokens=False)["input_ids"][: N_SEQ * SEQ_LEN]).reshape(N_SEQ, SEQ_LEN)
    batch = TokenBatch(torch.tensor(ids), torch.full((N_SEQ,), SEQ_LEN), tok.eos_token_id)
    fc = hf_reference(ckpt, batch)["fc"]  # [layer, sample, pos, neuron]
    flat_ids = ids.reshape(-1)
    lengths = np.array([len(tok.decode([int(i)], clean_up_tokenization_spaces=False)) for i in flat_ids])
    counts = Counter(flat_ids.tolist())
    freq = np.array([counts[int(i)] for i in flat_ids])
    acts = fc.reshape(fc.shape[0], -1, fc.shape[-1])  # [layer, token, neuron]
    return {"ids": ids, "fc": fc, "length": lengths, "freq": freq,
            **np_statistics(acts, fc[BLOCK], lengths, np.log(freq))}


def np_statistics(acts, block_acts, lengths, logf):
    """docs/analyses.md "length" in plain NumPy: acts [layer, token, neuron], block_acts [sample, pos, neuron]."""
    n_layers, n, n_neurons = acts.shape
    corr = np.full((n_layers, n_neurons), np.nan)
    partial = np.full((n_layers, n_neurons), np.nan)
    x = lengths.astype(np.float64)
    zx = (x - x.mean()) / x.std(ddof=1)
    design = np.stack([np.ones(n), logf], axis=1)
    res_x = x - design @ np.linalg.lstsq(design, x, rcond=None)[0]
    for l in range(n_layers):
        for j in range(n_neurons):
            a = acts[l, :, j].astype(np.float64)
            if a.std() == 0:
                continue  # zero variance: NaN by definition
            za = (a - a.mean()) / a.std(ddof=1)
            corr[l, j] = np.sum(zx * za) / (n - 1)
            res_a = a - design @ np.linalg.lstsq(design, a, rcond=None)[0]
            partial[l, j] = np.corrcoef(res_x, res_a)[0, 1]
    out = {"corr": corr, "partial": partial}
    for name, r in (("corr_hist", corr), ("partial_hist", partial)):
        out[name] = np.stack([np.histogram(row[np.isfinite(row)], bins=80, range=(-0.8, 0.8), density=True)[0]
                              for row in r])
    out["corr_edges"] = np.histogram([], bins=80, range=(-0.8, 0.8))[1]
    out.update(np_median_split(block_acts, lengths.reshape(block_acts.shape[:2])))
    return out


def np_median_split(block_acts, lengths):
    median = np.median(lengths)
    dens, counts = [], []
    for mask in (lengths < median, lengths > median, lengths == median):
        vals = block_acts[mask].ravel()  # float32, all neurons pooled
        c, edges = np.histogram(vals, bins=50, range=(-8, 5))
        with np.errstate(all="ignore"):
            d = np.histogram(vals, bins=50, range=(-8, 5), density=True)[0]
        dens.append(d)
        counts.append(c)
    return {"median": median, "split_hist": np.stack(dens), "split_counts": np.stack(counts), "split_edges": edges}


def _opts(ckpt, out, **kw):
    return RunOptions(model=str(ckpt), out=str(out), progress=False, **{"figures": False, **kw})


def _cfg(corpus, **kw):
    return length.Config(text=str(corpus), n_seq=N_SEQ, seq_len=SEQ_LEN, block=BLOCK, **kw)


@pytest.fixture(scope="module")
def cli_run(ckpt, corpus, tmp_path_factory):
    """The whole command: one work unit (default unit_tokens), activations stored, figures on."""
    out = tmp_path_factory.mktemp("runs") / "cli"
    cli.main(["run", "length", "--model", str(ckpt), "--text", str(corpus), "--n-seq", str(N_SEQ),
              "--seq-len", str(SEQ_LEN), "--block", str(BLOCK), "--store-acts", "--micro-batch", str(N_SEQ),
              "--out", str(out), "--no-progress"])
    return open_run(out)


@pytest.fixture(scope="module")
def stream_run(ckpt, corpus, tmp_path_factory):
    """Six work units of one sequence each, no activations stored."""
    out = tmp_path_factory.mktemp("runs") / "stream"
    return run_analysis("length", _cfg(corpus, unit_tokens=SEQ_LEN, store_acts=False), _opts(ckpt, out, micro_batch=1))


# ---- results against the reference -----------------------------------------------------------


def test_every_result_matches_numpy_reference(cli_run, reference):
    run, ref = cli_run, reference
    assert run.complete and run.attrs["experiment"] == "length"
    np.testing.assert_array_equal(run.numpy("inputs/tokens"), ref["ids"])
    np.testing.assert_array_equal(run.numpy("inputs/lengths"), [SEQ_LEN] * N_SEQ)
    np.testing.assert_array_equal(run.numpy("token_length"), ref["length"])
    np.testing.assert_array_equal(run.numpy("results/token_frequency"), ref["freq"])
    acts = run.numpy("acts/mlp_pre")
    assert run.dims("acts/mlp_pre") == ("layer", "sample", "pos", "neuron")
    np.testing.assert_allclose(acts, ref["fc"], rtol=1e-5, atol=1e-4)

    corr, partial = run.numpy("results/corr"), run.numpy("results/partial_corr")
    assert run.dims("results/corr") == run.dims("results/partial_corr") == ("layer", "neuron")
    np.testing.assert_allclose(corr, ref["corr"], atol=2e-5, equal_nan=True)
    np.testing.assert_allclose(partial, ref["partial"], atol=2e-5, equal_nan=True)
    dead = np.zeros_like(corr, dtype=bool)
    dead[DEAD[0], DEAD[1]] = True
    assert np.array_equal(np.isnan(corr), dead) and np.array_equal(np.isnan(partial), dead)
    assert run.attrs["summary"]["n_constant_neurons"] == len(DEAD[1])

    # r histograms: exactly np.histogram of the stored r; within a bin flip of the reference r's
    edges = run.numpy("results/corr_bin_edges")
    np.testing.assert_array_equal(edges, ref["corr_edges"])
    for name, stored_r, ref_hist in (("results/corr_hist", corr, ref["corr_hist"]),
                                     ("results/partial_corr_hist", partial, ref["partial_hist"])):
        hist = run.numpy(name)
        assert run.dims(name) == ("layer", "corr_bin") and hist.shape == (corr.shape[0], 80)
        exact = np.stack([np.histogram(r[np.isfinite(r)], bins=80, range=(-0.8, 0.8), density=True)[0]
                          for r in stored_r])
        np.testing.assert_array_equal(hist, exact)
        one_flip = 2.0 / (np.isfinite(stored_r).sum(-1, keepdims=True) * 0.02)
        assert (np.abs(hist - ref_hist) <= one_flip + 1e-9).all()

    # median split: exactly NumPy on the stored activations; within a few bin flips of the HF ones
    split_attrs = dict(run["results/median_split_hist"].attrs)
    assert split_attrs["median"] == ref["median"] and split_attrs["block"] == BLOCK
    assert run.labels("results/median_split_hist", "split") == ["below", "above", "equal"]
    np.testing.assert_array_equal(run.numpy("results/median_split_bin_edges"), ref["split_edges"])
    mine = np_median_split(acts[BLOCK], ref["length"].reshape(N_SEQ, SEQ_LEN))
    np.testing.assert_array_equal(run.numpy("results/median_split_counts"), mine["split_counts"])
    np.testing.assert_array_equal(run.numpy("results/median_split_hist"), mine["split_hist"])
    assert run.dims("results/median_split_hist") == ("split", "split_bin")
    counts = run.numpy("results/median_split_counts")
    assert np.abs(counts - ref["split_counts"]).sum() <= 8
    np.testing.assert_allclose(run.numpy("results/median_split_hist"), ref["split_hist"],
                               atol=8 / (ref["split_counts"].sum(-1).min() * 0.26))
    assert counts.sum() < acts[BLOCK].size, "the test should exercise values outside [-8, 5]"

    summary = run.attrs["summary"]
    lengths, logf = ref["length"], np.log(ref["freq"])
    assert summary["r_length_logfreq"] == pytest.approx(np.corrcoef(lengths, logf)[0, 1], abs=1e-4)
    assert summary["median_token_length"] == ref["median"] and summary["n_tokens"] == N_SEQ * SEQ_LEN
    assert run.progress()["capture"] == (1, 1) and summary["acts_stored"] is True


def test_figures_written(cli_run):
    figs = Path(cli_run.url) / "figures"
    stems = ["length_median_split_block2", "length_corr_by_block", "length_corr_heatmap", "length_partial_corr"]
    for stem in stems:
        for ext in ("png", "pdf"):
            f = figs / f"{stem}.{ext}"
            assert f.exists() and f.stat().st_size > 1000, f


def test_streaming_units_and_store_acts_give_the_same_results(cli_run, stream_run):
    assert stream_run.progress()["capture"] == (N_SEQ, N_SEQ) and "acts/mlp_pre" not in stream_run
    assert stream_run["_partials/pearson/mean_act"].shape[0] == N_SEQ  # one partial state per unit
    for name in RESULTS:
        a, b = cli_run.numpy(name), stream_run.numpy(name)
        if name == "results/median_split_counts":
            assert np.abs(a - b).sum() <= 4  # micro-batch 1 vs 6: float32 noise may move a value across an edge
        elif name == "results/median_split_hist":
            in_range = cli_run.numpy("results/median_split_counts").sum(-1).min()
            np.testing.assert_allclose(a, b, atol=4 / (in_range * 0.26))
        elif name.endswith("_hist"):
            np.testing.assert_allclose(a, b, atol=2 / (256 * 0.02))
        else:
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, equal_nan=True)


def test_resume_after_interruption_is_bitwise_identical(ckpt, corpus, stream_run, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    opts, cfg = _opts(ckpt, out, micro_batch=1), _cfg(corpus, unit_tokens=SEQ_LEN, store_acts=False)
    real, calls = TokenPearson.reduce, []

    def dies_at_unit_3(self, unit):
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated kill")
        calls.append(1)
        return real(self, unit)

    monkeypatch.setattr(TokenPearson, "reduce", dies_at_unit_3)
    with pytest.raises(KeyboardInterrupt):
        run_analysis("length", cfg, opts)
    run = open_run(out)
    assert not run.complete and run.progress()["capture"] == (3, N_SEQ)

    calls.clear()
    monkeypatch.setattr(TokenPearson, "reduce", lambda self, unit: (calls.append(1), real(self, unit))[1])
    resumed = run_analysis("length", cfg, opts)
    assert len(calls) == N_SEQ - 3, "only the units not done are recomputed"
    for name in RESULTS:
        np.testing.assert_array_equal(resumed.numpy(name), stream_run.numpy(name), err_msg=name)


# ---- pure pieces -----------------------------------------------------------------------------


def test_reducers_merge_like_one_pass():
    """Per-sample units folded in order give the statistics of one pass, and those equal NumPy."""
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(3, 4, 16, 7, generator=g) * 3  # [layer, sample, pos, neuron]
    acts[1, :, :, 2] = 0.5  # a constant neuron
    lengths = torch.randint(1, 8, (4, 16), generator=g)
    logf = torch.rand(4, 16, generator=g, dtype=torch.float64)
    med = float(lengths.double().median())
    groups = torch.where(lengths < med, 0, torch.where(lengths > med, 1, 2))
    reducers = (TokenPearson("a", lengths, logf), GroupHistogram("a", 2, groups, 3, 50, -8.0, 5.0))
    full = torch.full((4,), 16)

    def fold(units):
        states = [[r.reduce(Unit(i, rows, {"a": acts[:, rows.start:rows.stop]}, full[rows.start:rows.stop]))
                   for r in reducers] for i, rows in enumerate(units)]
        merged = states[0]
        for st in states[1:]:
            merged = [r.merge(a, b) for r, a, b in zip(reducers, merged, st)]
        return length.correlations(StreamingPearson.from_state_dict(merged[0]), merged[1]["counts"])

    whole, split = fold([range(0, 4)]), fold([range(s, s + 1) for s in range(4)])
    for k in ("corr", "partial_corr"):
        torch.testing.assert_close(split[k], whole[k], equal_nan=True)
    assert torch.equal(split["median_split_counts"], whole["median_split_counts"])
    assert int(split["constant"].sum()) == 1
    ref = np_statistics(acts.reshape(3, 64, 7).numpy(), acts[2].numpy(), lengths.reshape(-1).numpy(),
                        logf.reshape(-1).numpy())
    # float32 activations take the float32 moment pass: r within 1e-6 of the float64 definition
    np.testing.assert_allclose(whole["corr"].numpy(), ref["corr"], rtol=0, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(whole["partial_corr"].numpy(), ref["partial"], rtol=0, atol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(whole["median_split_counts"].numpy(), ref["split_counts"])


# ---- stimuli and input errors (all before any model work) ------------------------------------------


@pytest.fixture
def no_model(monkeypatch):
    """Fail loudly if anything tries to load a model: input errors must come first."""
    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the input was validated")

    monkeypatch.setattr(runner, "load_model", refuse)


def test_shipped_defaults_validate():
    prep = spec_of("length", opts=RunOptions(weights="random")).state
    assert tuple(prep.batch.tokens.shape) == (16, 512) and length.Config().keep_acts
    tok = gpt2_tokenizer()
    ids = prep.batch.tokens.reshape(-1)[:50].tolist()
    assert prep.token_length.reshape(-1)[:50].tolist() == [len(tok.decode([i])) for i in ids]
    assert prep.median == float(np.median(prep.token_length))
    text = stimulus_path("corpus.txt").read_text(encoding="utf-8")
    assert prep.batch.tokens.reshape(-1).tolist() == tok(text, add_special_tokens=False)["input_ids"][:8192]
    assert not length.Config(n_seq=1024, seq_len=512, store_acts=None).keep_acts


def test_corpus_too_short_says_found_and_needed(ckpt, tmp_path, no_model):
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.", encoding="utf-8")
    n_found = len(gpt2_tokenizer()("Only a few words here.", add_special_tokens=False)["input_ids"])
    with pytest.raises(InputError, match=rf"has {n_found} tokens, but {N_SEQ * SEQ_LEN} are needed"):
        run_analysis("length", _cfg(short), _opts(ckpt, tmp_path / "out"))
    with pytest.raises(InputError, match=r"has \d+ tokens, but 102400 are needed"):  # the shipped corpus
        spec_of("length", length.Config(n_seq=200), RunOptions(weights="random"))
    assert not (tmp_path / "out").exists()


def test_seq_len_longer_than_context(ckpt, corpus, tmp_path, no_model, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "length", "--model", str(ckpt), "--text", str(corpus), "--seq-len", "256",
                  "--block", "1", "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--seq-len 256 is longer than the context" in err and "(128 tokens)" in err
    with pytest.raises(InputError, match=r"--seq-len 4096 .* \(2048 tokens\)"):
        spec_of("length", length.Config(seq_len=4096), RunOptions(weights="random"))
    assert not (tmp_path / "out").exists()


def test_missing_text_file(ckpt, tmp_path, no_model):
    with pytest.raises(InputError, match=r"text file .*nope\.txt' does not exist"):
        run_analysis("length", _cfg(tmp_path / "nope.txt"), _opts(ckpt, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_block_out_of_range_and_bad_options(ckpt, corpus, tmp_path, no_model):
    with pytest.raises(InputError, match=r"--block 4 does not exist: .* has 4 blocks \(0\.\.3\)"):
        run_analysis("length", length.Config(text=str(corpus), n_seq=2, seq_len=8), _opts(ckpt, tmp_path / "out"))
    with pytest.raises(InputError, match="not both"):
        length.Config(text="a.txt", dataset="wikitext")
    with pytest.raises(InputError, match="seq_len=0: must be >= 1"):
        length.Config(seq_len=0)
    assert not (tmp_path / "out").exists()


def test_dataset_offline(ckpt, tmp_path, no_model, monkeypatch):
    """With `datasets` installed, its real offline failure; without it, a stand-in that fails the same way."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    try:
        import datasets

        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    except ImportError:
        import types

        def load_dataset(name, *args, **kwargs):
            raise ConnectionError(f"Couldn't reach '{name}' on the Hub (OfflineModeIsEnabled)")

        monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(OfflineError, match=r"--dataset 'someone/web-text:train' .*HF_HUB_OFFLINE.*--text FILE"):
        run_analysis("length", length.Config(dataset="someone/web-text:train", n_seq=2, seq_len=8, block=1),
                     _opts(ckpt, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_dataset_not_installed(ckpt, tmp_path, no_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(InputError, match=r"needs the optional `datasets` package.*--text FILE"):
        run_analysis("length", length.Config(dataset="someone/web-text", n_seq=2, seq_len=8, block=1),
                     _opts(ckpt, tmp_path / "out"))


def test_dataset_local_folder_concatenates_documents(ckpt, tmp_path, no_model):
    """The real `datasets` streaming path, on a local folder (works offline)."""
    pytest.importorskip("datasets")
    docs = ["First document, short.", "", "Second one: a little longer than the first.", "Third.",
            "Fourth document with more words so that there are enough tokens."]
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    tok = gpt2_tokenizer()
    ids = [i for d in docs for i in tok(d, add_special_tokens=False)["input_ids"]]
    prep = spec_of("length", length.Config(dataset=f"{folder}:train", n_seq=2, seq_len=12, block=1),
                   _opts(ckpt, tmp_path / "out")).state
    assert prep.batch.tokens.reshape(-1).tolist() == ids[:24] and prep.source == f"dataset {folder}:train"
    with pytest.raises(InputError, match=r"has \d+ tokens, but 400 are needed"):
        spec_of("length", length.Config(dataset=str(folder), n_seq=4, seq_len=100, block=1), _opts(ckpt, tmp_path / "o"))
    (folder / "train.jsonl").write_text(json.dumps({"body": "no text field"}) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"has no 'text' field \(its fields are \['body'\]\)"):
        spec_of("length", length.Config(dataset=str(folder), n_seq=2, seq_len=8, block=1), _opts(ckpt, tmp_path / "o"))

