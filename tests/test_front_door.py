"""The README's and the docstrings' front-door examples, run on tiny checkpoints, checked against plain HF."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lamina

from .reference_hf import hf_reference

TEXTS = ["The cat sat.", "A dog ran far away from the old mill.", "Rivers bend twice, then north."]


@pytest.fixture(scope="module")
def model(gpt2_dir):
    return lamina.load_model(str(gpt2_dir))


@pytest.fixture(scope="module")
def reference(model, gpt2_dir):
    from lamina.engine.inputs import encode_texts

    batch = encode_texts(model.tokenizer, TEXTS, n_ctx=model.n_ctx)
    return batch, hf_reference(gpt2_dir, batch)  # qkv, fc: [layer, sample, pos, feature]; hidden: [state, ...]


def test_load_model(model):
    assert model.info.family == "gpt2" and model.n_layers == 3 and model.weights == "checkpoint"
    assert model.provenance()["architecture"] == "GPT2LMHeadModel"


def test_capture_template_last_and_all(model, reference):
    batch, ref = reference
    last = batch.lengths - 1
    d = model.d_model
    acts = lamina.capture(model, TEXTS, hooks="blocks.{layer}.attn.hook_q")
    q = acts["blocks.{layer}.attn.hook_q"].cpu().numpy()  # [layer, sample, feature]
    assert q.shape == (3, 3, d)
    want = ref["qkv"][:, np.arange(3), last.numpy(), :d]
    np.testing.assert_allclose(q, want, atol=1e-5)
    every = lamina.capture(model, TEXTS, hooks="blocks.{layer}.mlp.hook_pre", positions="all")
    pre = every["blocks.{layer}.mlp.hook_pre"].cpu().numpy()  # [layer, sample, pos, feature]
    for s, n in enumerate(batch.lengths.tolist()):
        np.testing.assert_allclose(pre[:, s, :n], ref["fc"][:, s, :n], atol=1e-5)
        assert not pre[:, s, n:].any()  # pads are zero


def test_capture_names_lists_predicates_and_positions(model, reference):
    batch, ref = reference
    by_list = lamina.capture(model, TEXTS, hooks=["blocks.0.hook_resid_post", "blocks.2.hook_resid_post",
                                                  "ln_final.hook_out"], positions=[1, 2, 0])
    assert list(by_list) == ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post", "ln_final.hook_out"]  # as asked
    pos = np.array([1, 2, 0])
    np.testing.assert_allclose(by_list["blocks.0.hook_resid_post"].cpu().numpy(), ref["hidden"][1][np.arange(3), pos],
                               atol=1e-5)  # [sample, feature]: an exact name has no layer axis
    np.testing.assert_allclose(by_list["ln_final.hook_out"].cpu().numpy(), ref["hidden"][-1][np.arange(3), pos],
                               atol=1e-5)
    by_pred = lamina.capture(model, TEXTS, hooks=lambda name: name.endswith("attn.hook_v"))
    assert list(by_pred) == ["blocks.{layer}.attn.hook_v"] and by_pred["blocks.{layer}.attn.hook_v"].shape[0] == 3
    with pytest.raises(lamina.errors.HookError, match="did you mean"):
        lamina.capture(model, TEXTS, hooks="blocks.{layer}.attn.hook_qq")


def test_capture_into_a_run_equals_memory(model, tmp_path):
    run = lamina.capture(model, TEXTS, hooks=["blocks.{layer}.attn.hook_k", "ln_final.hook_out"], positions="all",
                         out=str(tmp_path / "cap"))
    assert isinstance(run, lamina.Run) and run.complete and lamina.verify(run).ok
    mem = lamina.capture(model, TEXTS, hooks=["blocks.{layer}.attn.hook_k", "ln_final.hook_out"], positions="all")
    np.testing.assert_array_equal(run.numpy("acts/attn.hook_k"), mem["blocks.{layer}.attn.hook_k"].cpu().numpy())
    np.testing.assert_array_equal(run.numpy("acts/ln_final.hook_out")[0], mem["ln_final.hook_out"].cpu().numpy())
    assert lamina.open_run(tmp_path / "cap").attrs["experiment"] == "capture"


def test_run_and_read_by_label(gpt2_dir, tmp_path):
    run = lamina.run("rsa", model=str(gpt2_dir), out=str(tmp_path / "rsa"), permutations=20, progress=False)
    assert run.complete and lamina.verify(run).ok
    tree = run.datatree()
    si_v = tree["results"].selectivity.sel(component="V").values
    np.testing.assert_array_equal(si_v, run.numpy("results/selectivity")[2])
    with pytest.raises(lamina.errors.InputError, match="has no group 'nope'; its groups: acts, inputs, results"):
        run.dataset("nope")
    with pytest.raises(lamina.errors.InputError, match="unknown option"):
        lamina.run("rsa", model=str(gpt2_dir), out=str(tmp_path / "x"), permutation=3)
    with pytest.raises(ValueError):  # every lamina error subclasses the built-in a caller would catch
        lamina.run("nope", model=str(gpt2_dir))
    for bad, want in ((dict(seed="x"), "seed='x' must be int"), (dict(permutations="many"), "must be int"),
                      (dict(dtype="float64"), "one of 'float32'"), (dict(micro_batch=2.5), "int or None"),
                      (dict(figures="no"), "must be bool")):
        with pytest.raises(lamina.errors.InputError, match=want):  # before any model work: no run is left
            lamina.run("rsa", model=str(gpt2_dir), out=str(tmp_path / "typed"), **bad)
    assert not (tmp_path / "typed").exists()


def test_errors_module_imports_by_name():
    """``import lamina.errors`` / ``from lamina.errors import ...`` work, and name every error class lamina has."""
    import inspect

    import lamina.engine.errors as engine_errors
    from lamina.errors import InputError, __all__ as names

    assert InputError is engine_errors.InputError
    defined = {n for n, c in inspect.getmembers(engine_errors, inspect.isclass)
               if issubclass(c, engine_errors.LaminaError) and c.__module__ == engine_errors.__name__}
    assert set(names) == defined


def test_errors_are_the_builtins_you_would_catch():
    assert issubclass(lamina.errors.InputError, ValueError)
    assert issubclass(lamina.errors.ModelNotFoundError, FileNotFoundError)
    assert issubclass(lamina.errors.StoreExistsError, FileExistsError)
    assert issubclass(lamina.errors.StoreNotWritableError, PermissionError)
    assert all(issubclass(getattr(lamina.errors, n), lamina.errors.LaminaError)
               for n in dir(lamina.errors) if n.endswith("Error") and n != "LaminaError")
    assert torch.is_tensor(torch.zeros(1))  # keep torch imported for the fixtures' device handling
