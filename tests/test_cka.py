"""``lamina run cka`` against linear CKA written in NumPy from the definitions, on activations from plain-HF hooks;
streamed over several units equals one unit; a SIGKILLed run resumed equals an uninterrupted one, bitwise."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np

from .cka_reference import cka_matrix, hf_resid_post, minibatch_cka
from .helpers import run_analysis
from lamina.analyses import registry
from lamina.analyses.options import RunOptions
from lamina.engine.reader import open_run


WORDS = "the cat sat on a mat and then it slept while rain fell, softly. again north river mill".split()


def _text(folder) -> str:
    """A fresh random text (the corpus of every run of a test)."""
    path = folder / "text.txt"
    if not path.exists():
        path.write_text(" ".join(np.random.default_rng().choice(WORDS, size=600)))
    return str(path)


def _run(model, out, unit_samples=None, **cfg):
    cfg.setdefault("text", _text(out.parent))
    return run_analysis("cka", registry.get("cka").Config(**cfg),
                        RunOptions(model=str(model), out=str(out), unit_samples=unit_samples, progress=False))


def test_cka_equals_numpy_on_hf_activations_and_streaming_equals_one_unit(tmp_path, gpt2_dir):
    run = _run(gpt2_dir, tmp_path / "units", unit_samples=1, n_seq=5, seq_len=24)
    assert run.attrs["options"]["estimator"] == "moments" and run.progress()["capture"] == (5, 5)
    tokens = run.numpy("inputs/tokens")
    acts = hf_resid_post(gpt2_dir, tokens)  # [layer, sample, pos, d]; GPT-2 has no BOS: every token is a sample
    assert run.numpy("inputs/include").all()
    x = acts.reshape(acts.shape[0], -1, acts.shape[-1])
    for path, debiased in (("results/cka", False), ("results/cka_debiased", True)):
        got = run.numpy(path)
        np.testing.assert_allclose(got, cka_matrix(x, x, debiased), rtol=1e-4, atol=1e-5, err_msg=path)
        np.testing.assert_allclose(np.diagonal(got), 1.0, atol=1e-12)
    one = _run(gpt2_dir, tmp_path / "one", unit_samples=5, n_seq=5, seq_len=24)
    assert one.progress()["capture"] == (1, 1)
    for path in ("results/cka", "results/cka_debiased"):
        np.testing.assert_allclose(run.numpy(path), one.numpy(path), rtol=1e-9, atol=1e-12)
    m = run.numpy("results/cka_debiased").copy()
    np.fill_diagonal(m, -np.inf)
    np.testing.assert_array_equal(run.numpy("results/best_layer"), m.argmax(1))
    tree = run.datatree()["results"]
    np.testing.assert_allclose(tree["depth_a"].values, np.arange(3) / 2)


def test_minibatch_estimator_equals_numpy(tmp_path, gpt2_dir):
    run = _run(gpt2_dir, tmp_path / "mb", unit_samples=1, n_seq=4, seq_len=24, estimator="minibatch", batch_size=8)
    acts = hf_resid_post(gpt2_dir, run.numpy("inputs/tokens"))
    x = acts.reshape(acts.shape[0], -1, acts.shape[-1])  # units of one sequence: 3 minibatches each, none cut
    np.testing.assert_allclose(run.numpy("results/cka_debiased"), minibatch_cka(x, x, 8), rtol=1e-4, atol=1e-5)
    assert run.attrs["summary"]["estimator"] == "minibatch"


def _cmd(model, out):
    return [sys.executable, "-m", "lamina.analyses.cli", "run", "cka", "--model", str(model), "--n-seq", "48",
            "--seq-len", "16", "--unit-samples", "1", "--micro-batch", "1", "--no-progress", "--no-figures",
            "--out", str(out)]


def test_sigkill_then_resume_is_bitwise_identical(tmp_path, gpt2_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    ref, out = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_cmd(gpt2_dir, ref), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(_cmd(gpt2_dir, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    flags = out / "_progress" / "capture" / "c"
    deadline = time.time() + 120
    while (len(list(flags.iterdir())) if flags.exists() else 0) < 8 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done, total = open_run(out).progress()["capture"]
    assert 0 < done < total, (done, total)
    subprocess.run(_cmd(gpt2_dir, out), check=True, env=env, capture_output=True)
    a, b = open_run(ref), open_run(out)
    assert b.complete and b.attrs.get("resumed") and a.arrays() == b.arrays()
    for name in a.arrays():
        np.testing.assert_array_equal(a.numpy(name), b.numpy(name), err_msg=name)


def test_other_hook_mlp_pre_equals_numpy(tmp_path, gpt2_dir):
    import torch

    from lamina.engine.inputs import TokenBatch

    from .reference_hf import hf_reference

    run = _run(gpt2_dir, tmp_path / "pre", hook="blocks.{layer}.mlp.hook_pre", n_seq=3, seq_len=16)
    tokens = torch.as_tensor(run.numpy("inputs/tokens"), dtype=torch.long)
    fc = hf_reference(gpt2_dir, TokenBatch(tokens, torch.full((3,), 16), 0))["fc"].astype(np.float64)
    x = fc.reshape(fc.shape[0], -1, fc.shape[-1])
    assert run.attrs["options"]["estimator"] == "moments"
    np.testing.assert_allclose(run.numpy("results/cka_debiased"), cka_matrix(x, x, True), rtol=1e-4, atol=1e-5)
