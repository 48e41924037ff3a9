"""lamina.capture: keys exactly as asked, the three return types, and positions that mean the same in Python and on
the command line - every value against plain HuggingFace forward hooks (tests/reference_hf.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import lamina
from lamina.engine.inputs import encode_texts

from .reference_hf import hf_reference

WORDS = "the cat sat on a mat and then it slept while rain fell softly again near old mills".split()


@pytest.fixture(scope="module")
def setup(gpt2_dir):
    rng = np.random.default_rng()
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) for _ in range(4)]
    model = lamina.load_model(str(gpt2_dir))
    batch = encode_texts(model.tokenizer, texts, n_ctx=model.n_ctx)
    return model, texts, batch, hf_reference(gpt2_dir, batch), rng


def test_exact_name_template_and_list_keys(setup):
    model, texts, batch, ref, rng = setup
    d, n, lengths = model.d_model, len(texts), batch.lengths.numpy()
    q2 = lamina.capture(model, texts, hooks="blocks.2.attn.hook_q", positions=1)
    assert list(q2) == ["blocks.2.attn.hook_q"] and q2["blocks.2.attn.hook_q"].shape == (n, d)
    np.testing.assert_allclose(q2["blocks.2.attn.hook_q"].cpu().numpy(), ref["qkv"][2, :, 1, :d], atol=1e-5)

    layers = sorted(rng.choice(2, size=2, replace=False).tolist())  # blocks whose resid_post is an HF hidden state
    tmpl = "blocks.{layer}.hook_resid_post"
    acts = lamina.capture(model, texts, hooks=tmpl, layers=layers, positions=-1)
    assert list(acts) == [tmpl] and acts[tmpl].shape == (len(layers), n, d)
    want = ref["hidden"][[l + 1 for l in layers]][:, np.arange(n), lengths - 1]
    np.testing.assert_allclose(acts[tmpl].cpu().numpy(), want, atol=1e-5)

    names = ["blocks.1.mlp.hook_pre", "blocks.0.attn.hook_k", "ln_final.hook_out"]
    listed = lamina.capture(model, texts, hooks=names, return_type="numpy")
    assert list(listed) == names and all(isinstance(v, np.ndarray) for v in listed.values())
    np.testing.assert_allclose(listed[names[0]], ref["fc"][1, np.arange(n), lengths - 1], atol=1e-5)
    np.testing.assert_allclose(listed[names[1]], ref["qkv"][0, np.arange(n), lengths - 1, d:2 * d], atol=1e-5)
    np.testing.assert_allclose(listed[names[2]], ref["hidden"][-1][np.arange(n), lengths - 1], atol=1e-5)


def test_positions_per_text_lists_and_xarray(setup):
    model, texts, batch, ref, rng = setup
    n, lengths = len(texts), batch.lengths.numpy()
    per_text = [int(rng.integers(0, l)) for l in lengths]
    several = [sorted(rng.choice(l, size=int(rng.integers(1, 3)), replace=False).tolist()) for l in lengths]
    tmpl = "blocks.{layer}.mlp.hook_pre"
    one = lamina.capture(model, texts, hooks=tmpl, positions=per_text)[tmpl].cpu().numpy()
    np.testing.assert_allclose(one, ref["fc"][:, np.arange(n), per_text], atol=1e-5)
    many = lamina.capture(model, texts, hooks=tmpl, positions=several)[tmpl].cpu().numpy()
    k = max(map(len, several))  # a list of lists keeps its pos axis even when every list has one index
    assert many.shape == (3, n, k, ref["fc"].shape[-1])
    for s, idx in enumerate(several):
        np.testing.assert_allclose(many[:, s, :len(idx)], ref["fc"][:, s, idx], atol=1e-5)
        assert np.isnan(many[:, s, len(idx):]).all()
    singles = lamina.capture(model, texts, hooks=tmpl, positions=[[p] for p in per_text])[tmpl].cpu().numpy()
    np.testing.assert_array_equal(singles[:, :, 0], one)

    ds = lamina.capture(model, texts, hooks=[tmpl, "blocks.0.hook_resid_post"], positions="all", return_type="xarray")
    da = ds[tmpl]
    width = ref["fc"].shape[-1]
    assert da.dims == ("layer", "sample", "pos", f"feature_{width}") and da.attrs["hook"] == tmpl
    assert da.layer.values.tolist() == [0, 1, 2] and ds.length.values.tolist() == lengths.tolist()
    assert ds["blocks.0.hook_resid_post"].dims == ("sample", "pos", f"feature_{model.d_model}")
    s = int(rng.integers(n))
    np.testing.assert_allclose(da.sel(layer=2, sample=s).isel(pos=slice(0, lengths[s])).values,
                               ref["fc"][2, s, :lengths[s]], atol=1e-5)
    picked = lamina.capture(model, texts, hooks=tmpl, positions=per_text, return_type="xarray")
    assert picked.position.values.tolist() == per_text and picked[tmpl].dims == ("layer", "sample", "feature")


def test_positions_mean_the_same_on_the_command_line(setup, tmp_path):
    model, texts, batch, ref, rng = setup
    n, lengths = len(texts), batch.lengths.numpy()
    chosen = [int(rng.integers(0, l)) for l in lengths]
    text_file = tmp_path / "texts.txt"
    text_file.write_text("\n".join(texts) + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    hook = "blocks.{layer}.attn.hook_v"
    for given in (",".join(map(str, chosen)), "1"):
        out = tmp_path / f"cli-{given.replace(',', '_')}"
        subprocess.run([sys.executable, "-m", "lamina.analyses.cli", "capture", "--model", model.name, "--hook", hook,
                        "--text-file", str(text_file), "--positions", given, "--out", str(out), "--no-progress"],
                       check=True, capture_output=True, env=env)
        py = chosen if "," in given else 1
        mem = lamina.capture(model, texts, hooks=hook, positions=py)[hook].cpu().numpy()
        np.testing.assert_array_equal(lamina.open_run(out).numpy("acts/capture"), mem)
        idx = chosen if "," in given else [1] * n
        np.testing.assert_allclose(mem, ref["qkv"][:, np.arange(n), idx, 2 * model.d_model:], atol=1e-5)
        stored = lamina.capture(model, texts, hooks=hook, positions=py, out=str(tmp_path / f"py-{out.name}"))
        cli_key, py_key = (json.loads(lamina.open_run(p).attrs["key"]) for p in (out, stored.url))
        assert py_key["config"]["positions"] == cli_key["config"]["positions"] == given
        assert py_key["stimuli"] == cli_key["stimuli"]  # the same texts hash, however they were given
        for key in (cli_key, py_key):
            key["config"].pop("text_file")
        assert py_key == cli_key  # the same resume key but for where the texts came from


def test_bad_positions_are_one_clear_line(setup):
    model, texts, batch, _, _ = setup
    for bad, needle in ((5.0, "positions must be"), ([0] * (len(texts) + 1), "entries for"),
                        ([[0], []], "positions[1]"), ("every", "must be last | all"), (99, "out of range")):
        with pytest.raises(lamina.errors.InputError) as e:
            lamina.capture(model, texts, hooks="blocks.0.hook_resid_post", positions=bad)
        assert needle in str(e.value), str(e.value)
    with pytest.raises(lamina.errors.InputError, match="in memory only"):
        lamina.capture(model, texts, hooks="blocks.0.hook_resid_post", positions=[[0, 1]] * len(texts),
                       out="memory://x")
    with pytest.raises(lamina.errors.InputError, match="return_type"):
        lamina.capture(model, texts, hooks="blocks.0.hook_resid_post", return_type="pandas")
