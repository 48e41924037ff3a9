"""The capture fast path (engine/fastpath.py) against the bridge's own ``run_with_cache``, per family.

For every family of tests/families.py, lamina's capture of q/k/v, ``mlp.hook_pre``,
``hook_resid_pre``/``hook_resid_post`` and ``ln_final.hook_out`` runs on the bridge-free
twin (checked: the bridge is not run), and must equal what TransformerLens' own hooks
see in ``run_with_cache`` at every real position, bitwise or to float32 noise. A capture
that adds a hook the fast path does not map (``attn.hook_z``) runs on the bridge and is
right too; so is one on a bridge that carries a hook of its own (which must act).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lamina.engine import fastpath
from lamina.engine.capture import capture_arrays
from lamina.engine.hooks import Capture, layer_hooks
from lamina.engine.inputs import Selector, from_token_ids
from lamina.engine.sdpa import restore_sdpa, sdpa_blocks

from .families import FAMILIES, make_family_checkpoint

MAPPED = ("blocks.{layer}.attn.hook_q", "blocks.{layer}.attn.hook_k", "blocks.{layer}.attn.hook_v",
          "blocks.{layer}.mlp.hook_pre", "blocks.{layer}.hook_resid_pre", "blocks.{layer}.hook_resid_post")
UNMAPPED = "blocks.{layer}.attn.hook_z"  # the input of the output projection: not a module output


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request, tmp_path_factory):
    from lamina.engine.models import load_model

    folder = make_family_checkpoint(tmp_path_factory.mktemp(f"fast-{request.param}"), request.param)
    return request.param, load_model(str(folder))


def random_batch(n_ctx: int, vocab: int = 50257, seed: int | None = None):
    rng = np.random.default_rng(seed)
    lengths = [int(x) for x in rng.integers(1, 16, size=4)] + [int(rng.integers(12, 20))]
    rng.shuffle(lengths)
    return from_token_ids([rng.integers(0, vocab, size=n).tolist() for n in lengths], pad_id=50256, n_ctx=n_ctx)


def captures(L: int, templates) -> list[Capture]:
    caps = [Capture(t.split(".", 2)[-1], layer_hooks(t, range(L)), Selector.every()) for t in templates]
    return caps + [Capture("ln_final", (("ln_final.hook_out",),), Selector.every())]


def bridge_cache(model, batch, names: list[str]) -> dict[str, torch.Tensor]:
    """TransformerLens' own hook values: {name: [sample, pos, features]} from run_with_cache on the bridge."""
    wanted = set(names)
    with torch.inference_mode():
        _, cache = model.bridge.run_with_cache(batch.tokens, attention_mask=batch.attention_mask(),
                                               names_filter=lambda n: n in wanted)
    b, t = batch.tokens.shape
    return {n: cache[n].reshape(b, t, -1).float() for n in names}


def assert_equal_to_cache(out: dict, caps: list[Capture], ref: dict, lengths: list[int], what: str) -> None:
    """Every real position equal to float32 noise: max |diff| <= 2e-5 x max |value| of that hook (both run the
    same HF modules; the GEMM split of a joint Q|K|V, the LayerNorm formula or the SDPA mask layout may differ).
    Pad positions are zero."""
    for cap in caps:
        for entry, (name,) in enumerate(cap.hooks):
            mine, theirs = out[cap.name][entry], ref[name]
            diff = max(float((mine[i, :n] - theirs[i, :n]).abs().max()) for i, n in enumerate(lengths))
            scale = max(float(theirs[i, :n].abs().max()) for i, n in enumerate(lengths))
            assert diff <= 2e-5 * scale, f"{what}: {name}: max |diff| {diff} (max |value| {scale})"
            for i, n in enumerate(lengths):
                assert not mine[i, n:].any(), f"{what}: {name}: pad positions must be zero"


def test_fast_path_equals_run_with_cache(family_model, monkeypatch):
    family, m = family_model
    batch = random_batch(m.n_ctx)
    caps = captures(m.n_layers, MAPPED)
    names = [h for c in caps for h in c.hook_names]
    route = fastpath.fast_route(m, names)
    assert route is not None, f"{family}: every mapped hook should take the fast path"
    ref = bridge_cache(m, batch, names)

    def no_bridge(*args, **kwargs):
        raise AssertionError("the fast path ran the bridge")

    with monkeypatch.context() as mp:
        mp.setattr(type(m.bridge), "run_with_hooks", no_bridge)
        mp.setattr(type(m.bridge), "forward", no_bridge)
        out = capture_arrays(m, batch, caps, micro_batch=3)
    assert_equal_to_cache(out, caps, ref, batch.lengths.tolist(), f"{family} fast path")


def test_unmapped_hook_falls_back_to_the_bridge(family_model):
    family, m = family_model
    batch = random_batch(m.n_ctx)
    caps = captures(m.n_layers, (*MAPPED[:2], UNMAPPED))
    names = [h for c in caps for h in c.hook_names]
    assert fastpath.fast_route(m, names) is None
    assert fastpath.fast_route(m, [n for n in names if "hook_z" not in n]) is not None
    ref = bridge_cache(m, batch, names)
    out = capture_arrays(m, batch, caps, micro_batch=2)
    assert_equal_to_cache(out, caps, ref, batch.lengths.tolist(), f"{family} fallback")


def test_hooked_bridge_falls_back_and_its_hook_acts(family_model):
    """A hook someone put on the bridge (here: doubling block 0's output) is honoured: no fast path."""
    family, m = family_model
    batch = random_batch(m.n_ctx, seed=1)
    caps = captures(m.n_layers, MAPPED[-1:])
    names = [h for c in caps for h in c.hook_names]
    plain = capture_arrays(m, batch, caps, micro_batch=2)["hook_resid_post"][0]
    with m.bridge.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda t, hook: t * 2.0)]):
        assert fastpath.fast_route(m, names) is None
        doubled = capture_arrays(m, batch, caps, micro_batch=2)["hook_resid_post"][0]
    assert fastpath.fast_route(m, names) is not None
    torch.testing.assert_close(doubled, 2.0 * plain, rtol=0, atol=2e-5 * float(plain.abs().max()))


def test_twin_shares_weights_and_follows_the_attention_choice(family_model):
    family, m = family_model
    tw = fastpath.twin(m)
    assert tw is not None and fastpath.twin(m) is tw  # built once, cached
    hf_params = {p.data_ptr() for p in m.bridge.original_model.parameters()}
    assert {p.data_ptr() for p in tw.model.parameters()} <= hf_params  # no weight was copied
    batch = random_batch(m.n_ctx, seed=2)
    caps = captures(m.n_layers, MAPPED[:1])
    names = [h for c in caps for h in c.hook_names]
    had_sdpa = any(sdpa_blocks(m.bridge))
    restore_sdpa(m.bridge, enabled=False)  # the bridge on eager attention: a twin on eager attention
    try:
        eager = fastpath.twin(m)
        assert (eager is not tw) == had_sdpa and eager.config._attn_implementation == "eager"
        out = capture_arrays(m, batch, caps, micro_batch=5)
        ref = bridge_cache(m, batch, names)
    finally:
        restore_sdpa(m.bridge, enabled=True)
    assert_equal_to_cache(out, caps, ref, batch.lengths.tolist(), f"{family} eager twin")


def test_switched_off_and_uncovered_families_use_the_bridge(family_model, monkeypatch):
    family, m = family_model
    names = ["blocks.0.attn.hook_q"]
    monkeypatch.setenv("LAMINA_FASTPATH", "0")
    assert fastpath.fast_route(m, names) is None
    monkeypatch.delenv("LAMINA_FASTPATH")
    monkeypatch.setattr(fastpath, "FAMILIES", frozenset())
    assert fastpath.fast_route(m, names) is None


def test_hook_whose_module_does_not_fire_goes_to_the_bridge(family_model):
    """A mapped HF module that the twin's forward never calls is found by plan()'s probe and unmapped."""
    from lamina.engine.capture import plan

    family, m = family_model
    caps = captures(m.n_layers, MAPPED[:1])
    names = [h for c in caps for h in c.hook_names]
    tw = fastpath.twin(m)
    tw.widths.clear()
    tw._taps["blocks.0.attn.hook_q"] = fastpath.Tap(torch.nn.Identity(), "out")  # never called
    try:
        layouts = plan(m, caps)
        assert fastpath.fast_route(m, names) is None
        assert layouts[0].n_features == m.info.q_width
    finally:
        tw._taps.clear()
        tw.widths.clear()
    assert fastpath.fast_route(m, names) is not None


@pytest.mark.parametrize("family", ["gpt_neox", "gpt2", "llama"])
@pytest.mark.parametrize("where", ["bridge", "hf"])
def test_weights_edited_after_load_run_on_the_bridge(family, where, tmp_path):
    """An in-place edit of a weight (TransformerLens' own q/k/v copy, or the HF module's weight) after load:
    the fast path steps aside and the capture equals the bridge's own hooks. (GPT-NeoX's bridge keeps
    split q/k/v copies of the joint projection: a twin would otherwise miss the first edit.)"""
    from lamina.engine.models import load_model

    m = load_model(str(make_family_checkpoint(tmp_path / family, family)))
    caps = captures(m.n_layers, MAPPED[-1:])
    names = [h for c in caps for h in c.hook_names]
    assert fastpath.fast_route(m, names) is not None
    owner = m.bridge.blocks[0].attn if where == "bridge" else m.bridge.original_model
    name, weight = next((n, p) for n, p in owner.named_parameters() if p.ndim == 2 and "attn" in f"attn.{n}")
    with torch.no_grad():
        weight.mul_(3.0)
    assert fastpath.fast_route(m, names) is None, f"{family}: {name} edited, the fast path must step aside"
    batch = random_batch(m.n_ctx, seed=4)
    out = capture_arrays(m, batch, caps, micro_batch=2)
    assert_equal_to_cache(out, caps, bridge_cache(m, batch, names), batch.lengths.tolist(), f"{family} edited")


def test_joint_projection_output_is_not_offered(family_model):
    """The joint Q|K|V projection's own hook_out never fires on the bridge (it runs its split q/k/v):
    refused on both paths alike, never a value only the fast path has."""
    from lamina.engine.errors import InputError

    family, m = family_model
    name = "blocks.0.attn.qkv.hook_out"
    if name not in fastpath.hook_points(m.bridge):
        pytest.skip(f"{family} has no joint Q|K|V projection")
    assert fastpath.fast_route(m, [name]) is None
    with pytest.raises(InputError, match="did not fire"):
        capture_arrays(m, random_batch(m.n_ctx), [Capture("x", ((name,),), Selector.every())])


def test_hooks_without_one_value_per_position_are_refused(family_model):
    """Attention patterns/scores and head-major tensors ([batch, head, pos, d], e.g. Gemma 3's normed k)
    are one clear InputError at planning, never reshaped into wrong rows."""
    from lamina.engine.errors import InputError

    family, m = family_model
    points = fastpath.hook_points(m.bridge)
    names = [n for n in ("blocks.0.attn.hook_pattern", "blocks.0.attn.hook_attn_scores",
                         "blocks.0.attn.hook_k_normed", "blocks.0.attn.hook_q_normed") if n in points]
    assert names, f"{family}: expected an attention pattern hook"
    for name in names:
        with pytest.raises(InputError, match="not one value per token position"):
            capture_arrays(m, random_batch(m.n_ctx), [Capture("x", ((name,),), Selector.every())])


def test_norm_hooks_on_flattened_tokens_are_captured(family_model):
    """Norm hooks the bridge fires on [batch * pos, feature] (OPT's MLP side) are per position too."""
    family, m = family_model
    name = "blocks.0.ln2.hook_normalized"
    if name not in fastpath.hook_points(m.bridge):
        pytest.skip(f"{family} has no {name}")
    batch = random_batch(m.n_ctx, seed=5)
    caps = [Capture("ln2", ((name,),), Selector.every())]
    out = capture_arrays(m, batch, caps, micro_batch=2)
    assert_equal_to_cache(out, caps, bridge_cache(m, batch, [name]), batch.lengths.tolist(), f"{family} ln2")
