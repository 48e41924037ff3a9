"""Engine-level bad input: each fails early with a message naming the input and the fix."""

from __future__ import annotations

import pytest
import torch

from lamina.engine.capture import capture_arrays
from lamina.engine.errors import HookError, InputError, ModelNotFoundError, NonFiniteError
from lamina.engine.hooks import Capture, layer_hooks, parse_layers, qkv_hooks
from lamina.engine.inputs import Selector, encode_texts, from_token_ids
from lamina.engine.models import load_model, peek


def test_unknown_model_name():
    with pytest.raises(ModelNotFoundError, match="neither a known name"):
        load_model("gpt5-ultra")


def test_known_model_not_cached_offline_suggests_random(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-hf-cache")
    with pytest.raises(ModelNotFoundError, match="--weights random"):
        load_model("gpt2-medium")


def test_missing_checkpoint_directory(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        peek(str(tmp_path / "empty"))


def test_random_weights_of_a_checkpoint_folder_are_its_architecture(gpt2_dir):
    """Once refused ("needs a known architecture name"); now the folder's untrained control (tests/test_controls.py)."""
    trained, control = load_model(str(gpt2_dir)), load_model(str(gpt2_dir), weights="random", seed=2)
    assert (control.weights, control.info.config_source, control.n_layers) == ("random", "checkpoint", trained.n_layers)
    assert control.tokenizer("a sofa")["input_ids"] == trained.tokenizer("a sofa")["input_ids"]


def test_bad_dtype_and_device():
    from lamina.engine.models import resolve_device, resolve_dtype

    with pytest.raises(InputError, match="dtype 'float8'"):
        resolve_dtype("float8")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda")


def test_empty_input_and_too_long_text(tiny_model):
    m = tiny_model
    with pytest.raises(InputError, match="empty"):
        encode_texts(m.tokenizer, [], n_ctx=m.n_ctx)
    with pytest.raises(InputError, match="sentence 2 is empty"):
        encode_texts(m.tokenizer, ["fine", "   "], n_ctx=m.n_ctx)
    with pytest.raises(InputError, match=r"sentence 2 has \d+ tokens, longer than the model's context of 128"):
        encode_texts(m.tokenizer, ["fine", "word " * 200], n_ctx=m.n_ctx)


def test_invalid_hook_and_layer(tiny_model):
    m = tiny_model
    batch = from_token_ids([[1, 2, 3]], pad_id=0, n_ctx=m.n_ctx)
    with pytest.raises(HookError, match="no hook point 'blocks.0.attn.hook_qq'.*did you mean"):
        capture_arrays(m, batch, [Capture("x", (("blocks.0.attn.hook_qq",),), Selector.last())])
    with pytest.raises(HookError, match=f"layer 99, but the model has {m.n_layers} blocks"):
        capture_arrays(m, batch, [Capture("x", qkv_hooks([99]), Selector.last())])
    with pytest.raises(HookError, match="do not exist"):
        parse_layers("0-50", m.n_layers)
    with pytest.raises(HookError, match="not a layer number"):
        parse_layers("six", m.n_layers)


def test_position_out_of_range(tiny_model):
    m = tiny_model
    batch = from_token_ids([[1, 2, 3], [4, 5]], pad_id=0, n_ctx=m.n_ctx)
    with pytest.raises(InputError, match="position 2 of sample 2 is out of range: that sample has 2 tokens"):
        capture_arrays(m, batch, [Capture("x", qkv_hooks([0]), Selector.at([1, 2]))])


def test_nan_in_activations_names_layer_and_position(tmp_path):
    from .conftest import make_nan_checkpoint

    m = load_model(str(make_nan_checkpoint(tmp_path / "nan", n_layers=3, layer=1, neuron=5)))
    batch = from_token_ids([[1, 2, 3], [4, 5, 6]], pad_id=0, n_ctx=m.n_ctx)
    caps = [Capture("acts/pre", layer_hooks("blocks.{layer}.mlp.hook_pre", range(3)), Selector.every())]
    with pytest.raises(NonFiniteError, match=r"blocks.1.mlp.hook_pre \(layer 1\) at sample 1, position 0"):
        capture_arrays(m, batch, caps)


def test_random_architecture_is_full_size():
    m = load_model("gpt2", weights="random", seed=3)
    assert (m.n_layers, m.d_model, m.n_heads, m.d_mlp, m.n_ctx) == (12, 768, 12, 3072, 1024)
    prov = m.provenance()
    assert prov["weights"] == "random" and prov["seed"] == 3 and "meaningless" in prov["warning"]


@pytest.mark.slow
def test_gpt2_xl_random_captures_qkv():
    """Issue 2: gpt2-xl at full size with random weights, offline; q|k|v for a few sentences."""
    m = load_model("gpt2-xl", weights="random", seed=0)
    assert (m.n_layers, m.d_model) == (48, 1600)
    batch = encode_texts(m.tokenizer, ["She gave her the book.", "They told her a story"], n_ctx=m.n_ctx)
    out = capture_arrays(m, batch, [Capture("qkv", qkv_hooks(range(48)), Selector.last())])
    assert out["qkv"].shape == (48, 2, 4800)
    assert torch.isfinite(out["qkv"]).all()


def test_info_on_a_path_without_a_run_is_one_clear_line(tmp_path, capsys):
    from lamina.analyses.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["info", str(tmp_path / "nothing-here")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "is not a lamina run" in err and "Traceback" not in err
