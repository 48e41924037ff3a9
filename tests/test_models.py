"""Model sources, inspection, random weights, meta builds and their errors (engine/models.py and friends)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lamina.engine.errors import InputError, LaminaError, ModelNotFoundError
from lamina.engine.model_configs import SHIPPED_CONFIGS
from lamina.engine.model_init import CHUNK, chunk_seed, random_model
from lamina.engine.models import inspect_model, load_model, peek, resolve_device

from .families import FAMILIES, family_config, make_family_checkpoint, word_tokenizer

# --- random weights -------------------------------------------------------------------------------


def test_random_fill_follows_the_documented_rule():
    """Chunk j of parameter k is randn from a generator seeded chunk_seed(seed, k, j), times std; norms 1, biases 0."""
    cfg = family_config("gpt_neox", hidden_size=128, initializer_range=0.03)
    model = random_model(cfg, seed=7, device=torch.device("cpu"), dtype=torch.float32)
    params = list(model.named_parameters())
    name, first = params[0]  # the embedding (more than one chunk)
    assert first.numel() > CHUNK
    flat = first.detach().reshape(-1)
    for j in (0, 1):
        gen = torch.Generator().manual_seed(chunk_seed(7, 0, j))
        n = min(CHUNK, flat.numel() - j * CHUNK)
        expected = torch.randn(n, generator=gen) * 0.03
        assert torch.equal(flat[j * CHUNK : j * CHUNK + n], expected), name
    for name, p in params:
        if "layernorm" in name or "layer_norm" in name:
            assert torch.all(p == (1.0 if name.endswith("weight") else 0.0)), name
        elif name.endswith("bias"):
            assert not p.any(), name
        else:
            assert abs(float(p.std()) - 0.03) < 0.003, name


@pytest.mark.parametrize("family", FAMILIES)
def test_random_model_matches_hf_construction(family):
    """Same modules, shapes, tied weights and buffers as HF's own from_config; deterministic per seed."""
    from transformers import AutoModelForCausalLM

    cfg = family_config(family)
    ours = random_model(cfg, seed=1, device=torch.device("cpu"), dtype=torch.float32)
    again = random_model(cfg, seed=1, device=torch.device("cpu"), dtype=torch.float32)
    other = random_model(cfg, seed=2, device=torch.device("cpu"), dtype=torch.float32)
    hf = AutoModelForCausalLM.from_config(cfg)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in hf.named_parameters()]
    ours_buffers, hf_buffers = dict(ours.named_buffers()), dict(hf.named_buffers())
    assert ours_buffers.keys() == hf_buffers.keys()
    for k in hf_buffers:
        torch.testing.assert_close(ours_buffers[k], hf_buffers[k], rtol=0, atol=0, msg=k)
    if cfg.tie_word_embeddings:
        assert ours.get_output_embeddings().weight is ours.get_input_embeddings().weight
    sd, sd2, sd3 = ours.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert any(not torch.equal(sd[k], sd3[k]) for k in sd)
    # the weights run in HF's own model class as they are: same output as ours
    hf.load_state_dict(sd)
    x = torch.randint(0, 1000, (2, 9))
    with torch.no_grad():
        a, b = ours.eval()(x).logits, hf.eval()(x).logits
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["EleutherAI/pythia-70m", "gpt2", "facebook/opt-125m", "Qwen/Qwen2.5-0.5B"])
def test_small_shipped_configs_build_at_full_size(name):
    from lamina.engine.capture import capture_arrays
    from lamina.engine.hooks import Capture, hidden_state_hooks, qkv_hooks
    from lamina.engine.inputs import Selector, encode_texts

    published = SHIPPED_CONFIGS[name]
    m = load_model(name, weights="random", seed=0)
    info = m.info
    n_layers = published.get("num_hidden_layers") or published.get("n_layer")
    d_model = published.get("hidden_size") or published.get("n_embd")
    assert (m.n_layers, m.d_model, info.vocab) == (n_layers, d_model, published["vocab_size"])
    assert (info.source, info.config_source, info.tokenizer_source) == ("random", "table", "gpt2-bpe (bundled)")
    batch = encode_texts(m.tokenizer, ["She gave her the book.", "Hi"], n_ctx=m.n_ctx)
    L = m.n_layers
    out = capture_arrays(m, batch, [Capture("qkv", qkv_hooks(range(L)), Selector.last()),
                                    Capture("h", hidden_state_hooks(L), Selector.last(), layer_dim="state")])
    assert out["qkv"].shape == (L, 2, info.q_width + 2 * info.kv_width)
    assert out["h"].shape == (L + 1, 2, d_model)
    assert torch.isfinite(out["qkv"]).all() and torch.isfinite(out["h"]).all()
    prov = m.provenance()
    assert prov["weights"] == "random" and prov["family"] == info.family and "meaningless" in prov["warning"]


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in SHIPPED_CONFIGS if n != "mistralai/Mistral-7B-v0.1"])
def test_shipped_configs_that_fit_build_and_capture(name):
    """Every shipped config that fits 24 GiB in float32 (all but Mistral-7B, 29 GB) builds and runs."""
    import gc

    from lamina.engine.capture import capture_arrays
    from lamina.engine.hooks import Capture, layer_hooks
    from lamina.engine.inputs import Selector, encode_texts

    gc.collect()  # the previous case's model (the bridge holds reference cycles)
    m = load_model(name, weights="random", seed=0)
    batch = encode_texts(m.tokenizer, ["The cat sat on the mat.", "Hi"], n_ctx=m.n_ctx)
    out = capture_arrays(m, batch, [Capture("pre", layer_hooks("blocks.{layer}.mlp.hook_pre", range(m.n_layers)),
                                            Selector.last())])
    assert out["pre"].shape == (m.n_layers, 2, m.info.d_mlp) and torch.isfinite(out["pre"]).all()


@pytest.mark.parametrize("name", list(SHIPPED_CONFIGS))
def test_every_shipped_config_on_meta(name):
    """Hook names and shapes of the full-size architecture, without memory (device='meta')."""
    from lamina.engine.model_probe import hook_shapes

    m = load_model(name, weights="random", device="meta")
    info = m.info
    assert next(m.bridge.parameters()).is_meta
    shapes = hook_shapes(m)
    L, T = info.n_layers, 3
    assert f"blocks.{L - 1}.hook_resid_post" in shapes and f"blocks.{L}.hook_resid_post" not in shapes
    for l in (0, L - 1):
        assert shapes[f"blocks.{l}.attn.hook_q"] == (1, T, info.n_heads, info.d_head)
        assert shapes[f"blocks.{l}.attn.hook_k"] == (1, T, info.n_kv_heads, info.d_head)
        assert shapes[f"blocks.{l}.attn.hook_v"] == (1, T, info.n_kv_heads, info.d_head)
        assert shapes[f"blocks.{l}.mlp.hook_pre"] == (1, T, info.d_mlp)
        assert shapes[f"blocks.{l}.hook_resid_post"] == (1, T, info.d_model)
    assert shapes["blocks.0.hook_resid_pre"] == shapes["ln_final.hook_out"] == (1, T, info.d_model)
    published = SHIPPED_CONFIGS[name]
    kv = published.get("num_key_value_heads") or published.get("num_attention_heads") or published.get("n_head") \
        or published.get("num_heads")
    assert info.n_kv_heads == kv


def test_inspect_reads_no_weights(tmp_path):
    """inspect_model of a checkpoint whose weights are garbage: config and tokenizer only."""
    folder = make_family_checkpoint(tmp_path / "llama", "llama")
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    info = inspect_model(str(folder))
    assert (info.family, info.architecture, info.source) == ("llama", "LlamaForCausalLM", "checkpoint")
    assert (info.n_heads, info.n_kv_heads, info.d_head, info.q_width, info.kv_width) == (4, 2, 16, 64, 32)
    assert info.gated_mlp and info.d_mlp == 96 and info.bos_token_id is None and info.revision is None
    tok, n_ctx, n_layers = peek(str(folder))
    assert (n_ctx, n_layers) == (128, 3) and tok is not None


def test_random_from_a_local_config(tmp_path):
    folder = make_family_checkpoint(tmp_path / "phi", "phi")
    for config in (folder, folder / "config.json"):
        m = load_model("my-phi", weights="random", config=str(config), seed=3)
        assert (m.info.family, m.info.config_source, m.n_layers) == ("phi", "config-file", 3)
        assert m.provenance()["config_source"] == "config-file"


# --- tokenizers -----------------------------------------------------------------------------------


def test_random_llama_without_tokenizer_uses_the_gpt2_bpe(tmp_path):
    """No tokenizer offline and a vocabulary >= 50257: the bundled GPT-2 BPE; smaller: a clear error."""
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "config.json").write_text(family_config("llama", vocab_size=128256).to_json_string())
    info = inspect_model("big-llama", weights="random", config=str(tmp_path / "big"))
    assert info.tokenizer_source == "gpt2-bpe (bundled)" and len(info.tokenizer) == 50257
    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "config.json").write_text(family_config("mistral", vocab_size=32000).to_json_string())
    with pytest.raises(InputError, match=r"vocabulary \(32000 tokens\) is smaller than the bundled GPT-2 BPE"):
        inspect_model("small-mistral", weights="random", config=str(tmp_path / "small"))
    with pytest.raises(InputError, match="no tokenizer of its own"):
        load_model("mistralai/Mistral-7B-v0.1", weights="random")
    assert load_model("mistralai/Mistral-7B-v0.1", weights="random", device="meta").tokenizer is None


def test_checkpoint_with_its_own_tokenizer_and_bos(tmp_path):
    tok = word_tokenizer()
    folder = make_family_checkpoint(tmp_path / "llama", "llama", vocab_size=128, tokenizer=tok)
    info = inspect_model(str(folder))
    assert info.tokenizer_source == "model" and info.bos_token_id == tok.convert_tokens_to_ids("<s>")
    assert info.tokenizer("the cat")["input_ids"] == tok("the cat")["input_ids"]
    plain = make_family_checkpoint(tmp_path / "plain", "llama", vocab_size=128, tokenizer=word_tokenizer(add_bos=False))
    assert inspect_model(str(plain)).bos_token_id is None
    assert inspect_model("gpt2", weights="random").bos_token_id is None  # GPT-2 adds no BOS


# --- the HuggingFace cache ------------------------------------------------------------------------


def _put_snapshot(hub, repo, commit, files: dict[str, bytes], main: bool):
    """Lay files out as huggingface_hub does: blobs by hash, snapshots/COMMIT/* symlinks, refs/main."""
    import hashlib

    root = hub / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    (root / "blobs").mkdir(exist_ok=True)
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / name).symlink_to(f"../../blobs/{blob.name}")
    if main:
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / "main").write_text(commit)
    return snap


def _checkpoint_files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """An HF_HOME with someorg/tiny-llama at two commits (main = NEW) and an unsupported someorg/tiny-xlnet."""
    home = tmp_path / "hf-home"
    hub = home / "hub"
    old = make_family_checkpoint(tmp_path / "old", "llama", seed=1, vocab_size=128, tokenizer=word_tokenizer())
    new = make_family_checkpoint(tmp_path / "new", "llama", seed=2, vocab_size=128, tokenizer=word_tokenizer())
    commits = {"old": "a" * 40, "new": "b" * 40}
    _put_snapshot(hub, "someorg/tiny-llama", commits["old"], _checkpoint_files(old), main=False)
    _put_snapshot(hub, "someorg/tiny-llama", commits["new"], _checkpoint_files(new), main=True)
    xlnet = {"architectures": ["XLNetLMHeadModel"], "model_type": "xlnet", "d_model": 64, "n_layer": 2}
    _put_snapshot(hub, "someorg/tiny-xlnet", "c" * 40, {"config.json": json.dumps(xlnet).encode(),
                                                        "model.safetensors": b"garbage"}, main=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return {"old": old, "new": new, "commits": commits, "hub": hub}


def test_hub_id_from_the_cache_with_its_own_tokenizer(hf_home):
    from transformers import AutoModelForCausalLM

    from lamina.engine.capture import capture_arrays
    from lamina.engine.hooks import Capture, hidden_state_hooks
    from lamina.engine.inputs import Selector, encode_texts

    m = load_model("someorg/tiny-llama")
    new = hf_home["commits"]["new"]
    assert (m.weights, m.info.family, m.info.revision) == ("pretrained", "llama", new)
    prov = m.provenance()
    assert prov["revision"] == new and prov["config_source"] == "hf-cache" and prov["tokenizer"] == "model"
    assert (prov["n_kv_heads"], prov["d_head"]) == (2, 16)
    own = word_tokenizer()
    assert m.tokenizer("the cat sat")["input_ids"] == own("the cat sat")["input_ids"]
    assert m.info.bos_token_id == own.convert_tokens_to_ids("<s>")
    # the weights are that snapshot's: hidden states equal plain HF on the same folder
    batch = encode_texts(m.tokenizer, ["the cat sat on the mat", "hi"], n_ctx=m.n_ctx)
    out = capture_arrays(m, batch, [Capture("h", hidden_state_hooks(m.n_layers), Selector.last(), layer_dim="state")])
    hf = AutoModelForCausalLM.from_pretrained(str(hf_home["new"])).eval()
    with torch.no_grad():
        res = hf(batch.tokens, attention_mask=batch.attention_mask(), output_hidden_states=True)
    ref = torch.stack(res.hidden_states)
    last = batch.lengths - 1
    np.testing.assert_allclose(out["h"].numpy(), ref[:, torch.arange(2), last].numpy(), atol=1e-5)


def test_revision_pins_a_cached_commit(hf_home):
    old = hf_home["commits"]["old"]
    m_old = load_model("someorg/tiny-llama", revision=old)
    m_new = load_model("someorg/tiny-llama")
    assert m_old.provenance()["revision"] == old and m_old.info.revision == old
    w_old = m_old.bridge.original_model.model.embed_tokens.weight
    w_new = m_new.bridge.original_model.model.embed_tokens.weight
    assert not torch.equal(w_old, w_new)
    with pytest.raises(ModelNotFoundError, match="at revision 'dddd"):
        load_model("someorg/tiny-llama", revision="d" * 40)


def test_random_weights_from_a_cached_config(hf_home):
    info = inspect_model("someorg/tiny-llama")
    m = load_model("someorg/tiny-llama", weights="random", seed=5)
    assert (m.weights, m.info.config_source, m.info.revision) == ("random", "hf-cache", hf_home["commits"]["new"])
    assert (m.n_layers, m.d_model, m.info.n_kv_heads, m.info.vocab) == (info.n_layers, info.d_model, 2, 128)
    assert m.info.tokenizer_source == "model"  # the snapshot's own tokenizer
    pre = load_model("someorg/tiny-llama").bridge.original_model.model.embed_tokens.weight
    assert not torch.equal(m.bridge.original_model.model.embed_tokens.weight, pre)


def test_unsupported_architecture_is_refused_before_loading(hf_home, tmp_path):
    for name in ("someorg/tiny-xlnet",):
        with pytest.raises(InputError) as err:
            load_model(name)  # its model.safetensors is garbage: reading it would be a ModelNotFoundError
        msg = str(err.value)
        assert "XLNetLMHeadModel" in msg and "Supported families" in msg and "llama" in msg and "gpt_neox" in msg
        assert "\n" not in msg
    t5 = tmp_path / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"architectures": ["T5ForConditionalGeneration"], "model_type": "t5"}))
    with pytest.raises(InputError, match=r"T5ForConditionalGeneration\) is refused: it is an encoder-decoder model, "
                                         "and lamina runs decoder-only"):
        inspect_model(str(t5))


def test_hub_id_not_cached_offline(hf_home):
    with pytest.raises(ModelNotFoundError, match=r"'someorg/absent'.*not in the HuggingFace cache.*--weights random"):
        load_model("someorg/absent")
    with pytest.raises(ModelNotFoundError, match=r"config=PATH"):
        load_model("someorg/absent", weights="random")


def test_cache_problems_are_named(hf_home):
    """A repo that is in the cache but unusable offline says what is wrong with it, not 'not cached'."""
    hub = hf_home["hub"]
    files = _checkpoint_files(hf_home["new"])
    _put_snapshot(hub, "someorg/noweights", "e" * 40, {"config.json": files["config.json"]}, main=True)
    _put_snapshot(hub, "someorg/noconfig", "f" * 40, {k: v for k, v in files.items() if k != "config.json"}, main=True)
    dangling = hub / "models--someorg--dangling" / "refs"
    dangling.mkdir(parents=True)
    (dangling / "main").write_text("9" * 40)
    cases = [("someorg/noweights", None, "has a config.json but no \\(complete\\) weights"),
             ("someorg/noconfig", None, "has no config.json"),
             ("someorg/dangling", None, "refs/main points at snapshot 9999"),
             ("someorg/tiny-llama", "d" * 40, "revision 'dddd.*is not cached.*refs \\['main'\\].*snapshots")]
    for name, rev, why in cases:
        with pytest.raises(ModelNotFoundError, match=f"{name}'.*is in the HuggingFace cache but.*{why}"):
            load_model(name, revision=rev)
    with pytest.raises(ModelNotFoundError, match="its config cannot be read offline: .*has no config.json"):
        load_model("someorg/noconfig", weights="random")


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu:7", "tpu", "cuda:9", "banana"])
def test_bad_devices_are_one_clear_line(device):
    if device == "cuda:9" and torch.cuda.device_count() > 9:
        pytest.skip("this machine has a cuda:9")
    with pytest.raises(InputError) as err:
        resolve_device(device)
    assert repr(device) in str(err.value) and "\n" not in str(err.value)


def test_model_path_that_is_a_file(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="is a file, not a checkpoint folder"):
        load_model(str(f))


def test_truncated_safetensors_names_the_file(tmp_path):
    folder = make_family_checkpoint(tmp_path / "gpt2", "gpt2")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelNotFoundError, match=r"model\.safetensors' is truncated or corrupt"):
        load_model(str(folder))
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(ModelNotFoundError, match=r"model\.safetensors' is truncated or corrupt"):
        load_model(str(folder))


def test_checkpoint_without_weights(tmp_path):
    folder = make_family_checkpoint(tmp_path / "gpt2", "gpt2")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="has a config.json but no weights"):
        load_model(str(folder))


def test_meta_needs_random_weights_and_options_are_checked(tmp_path):
    with pytest.raises(InputError, match="use it with --weights random"):
        load_model("gpt2", device="meta")
    with pytest.raises(InputError, match="config= gives the architecture of random weights"):
        inspect_model("gpt2", config=str(tmp_path))
    with pytest.raises(InputError, match="weights must be"):
        inspect_model("gpt2", weights="trained")
    with pytest.raises(LaminaError, match="neither a config.json file nor a folder"):
        inspect_model("x", weights="random", config=str(tmp_path / "nope"))
