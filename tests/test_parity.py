"""Per-family exactness: lamina's captures equal plain HuggingFace forward hooks.

For every family a tiny random checkpoint (tests/families.py, weights normal(0, 0.2))
runs a right-padded batch of random token sequences of unequal lengths (longer than the
sliding windows). The reference is HuggingFace alone - eager attention, forward hooks on
the projection modules, ``output_hidden_states`` - and lamina's capture must match it at
every real position, once with lamina's SDPA restoration (where the family has one) and
once on the bridge's own eager attention.

Reference per hook kind (what TransformerLens' hooks are, per family):
- ``attn.hook_q/k/v``: the outputs of the query/key/value projections, BEFORE rotary
  (``q_proj``/``k_proj``/``v_proj``; GPT-2's ``c_attn`` split in thirds; GPT-NeoX's
  ``query_key_value`` split per head as [q|k|v]). Under GQA K and V are
  ``n_kv_heads * d_head`` wide.
- ``mlp.hook_pre``: the MLP's input projection before the activation (``c_fc``,
  ``dense_h_to_4h``, ``fc1``); for gated MLPs the GATE projection ``gate_proj``
  (the one the activation is applied to), not ``up_proj``.
- hidden states: ``output_hidden_states`` (state 0 embeddings - scaled by sqrt(d_model)
  for Gemma, with positions for GPT-2/OPT -, the last after the final norm).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lamina.engine.capture import capture_arrays
from lamina.engine.hooks import Capture, hidden_state_hooks, layer_hooks
from lamina.engine.inputs import Selector, from_token_ids
from lamina.engine.sdpa import restore_sdpa, sdpa_blocks

from .families import FAMILIES, make_family_checkpoint

# family -> (block list, how q/k/v come out of HF, the MLP input projection inside a block)
HF_MODULES = {
    "gpt2": ("transformer.h", ("joint", "attn.c_attn"), "mlp.c_fc"),
    "gpt_neo": ("transformer.h", ("separate", "attn.attention"), "mlp.c_fc"),
    "gpt_neox": ("gpt_neox.layers", ("per_head", "attention.query_key_value"), "mlp.dense_h_to_4h"),
    "llama": ("model.layers", ("separate", "self_attn"), "mlp.gate_proj"),
    "mistral": ("model.layers", ("separate", "self_attn"), "mlp.gate_proj"),
    "qwen2": ("model.layers", ("separate", "self_attn"), "mlp.gate_proj"),
    "gemma2": ("model.layers", ("separate", "self_attn"), "mlp.gate_proj"),
    "gemma3_text": ("model.layers", ("separate", "self_attn"), "mlp.gate_proj"),
    "opt": ("model.decoder.layers", ("separate", "self_attn"), "fc1"),
    "phi": ("model.layers", ("separate", "self_attn"), "mlp.fc1"),
}
# families whose attention lamina runs with SDPA when unhooked (engine/sdpa.py); the rest stay eager
SDPA_FAMILIES = {"gpt2", "gpt_neo", "gpt_neox", "llama", "mistral", "qwen2", "gemma3_text", "opt", "phi"}
KINDS = ("q", "k", "v", "pre", "hidden")


def hf_reference(folder, family: str, tokens: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """{kind: [layer or state, sample, pos, feature]} from plain HF (eager attention) forward hooks."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager").eval()
    blocks_path, (qkv_kind, qkv_path), fc_path = HF_MODULES[family]
    blocks = hf.get_submodule(blocks_path)
    n_heads = hf.config.num_attention_heads
    b, t = tokens.shape
    got: dict[str, list] = {k: [None] * len(blocks) for k in ("q", "k", "v", "pre")}

    def keep(kind, layer):
        def fn(module, inputs, output):
            got[kind][layer] = output.detach().reshape(b, t, -1).clone()
        return fn

    def split(layer):
        def fn(module, inputs, output):
            if qkv_kind == "joint":  # GPT-2 c_attn: [q | k | v]
                parts = output.chunk(3, dim=-1)
            else:  # GPT-NeoX: per head [q_h | k_h | v_h]
                parts = [p.reshape(b, t, -1) for p in output.view(b, t, n_heads, -1).chunk(3, dim=-1)]
            for kind, p in zip("qkv", parts):
                got[kind][layer] = p.detach().clone()
        return fn

    handles = []
    for l, blk in enumerate(blocks):
        if qkv_kind == "separate":
            att = blk.get_submodule(qkv_path)
            handles += [getattr(att, f"{c}_proj").register_forward_hook(keep(c, l)) for c in "qkv"]
        else:
            handles.append(blk.get_submodule(qkv_path).register_forward_hook(split(l)))
        handles.append(blk.get_submodule(fc_path).register_forward_hook(keep("pre", l)))
    with torch.no_grad():
        out = hf(tokens, attention_mask=mask, output_hidden_states=True)
    for h in handles:
        h.remove()
    ref = {k: torch.stack(v) for k, v in got.items()}
    ref["hidden"] = torch.stack(out.hidden_states)
    return ref


def random_batch(n_ctx: int, vocab: int = 50257):
    """Fresh random token sequences of unequal lengths (some longer than every sliding window)."""
    rng = np.random.default_rng()
    lengths = [int(x) for x in rng.integers(1, 16, size=5)] + [int(rng.integers(12, 20))]
    rng.shuffle(lengths)
    ids = [rng.integers(0, vocab, size=n).tolist() for n in lengths]
    return from_token_ids(ids, pad_id=50256, n_ctx=n_ctx)


def lamina_capture(model, batch, micro_batch: int) -> dict[str, torch.Tensor]:
    L = model.n_layers
    caps = [Capture(c, layer_hooks("blocks.{layer}.attn.hook_" + c, range(L)), Selector.every()) for c in "qkv"]
    caps.append(Capture("pre", layer_hooks("blocks.{layer}.mlp.hook_pre", range(L)), Selector.every()))
    caps.append(Capture("hidden", hidden_state_hooks(L), Selector.every(), layer_dim="state"))
    return capture_arrays(model, batch, caps, micro_batch=micro_batch)


def relative_diffs(out: dict, ref: dict, lengths) -> dict[str, float]:
    """Per hook kind, max |lamina - HF| over real positions, relative to max |HF| there."""
    res = {}
    for kind in KINDS:
        a, r = out[kind], ref[kind]
        assert a.shape[:2] == r.shape[:2] and a.shape[-1] == r.shape[-1], (kind, a.shape, r.shape)
        num = max(float((a[:, i, :n] - r[:, i, :n]).abs().max()) for i, n in enumerate(lengths))
        den = max(float(r[:, i, :n].abs().max()) for i, n in enumerate(lengths))
        res[kind] = num / den
    return res


def count_sdpa_calls(monkeypatch) -> list[int]:
    import torch.nn.functional as F

    calls = [0]
    real = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    return calls


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request, tmp_path_factory):
    from lamina.engine.models import load_model

    folder = make_family_checkpoint(tmp_path_factory.mktemp(request.param), request.param)
    return request.param, folder, load_model(str(folder))


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_family_matches_huggingface(family_model, attention, monkeypatch):
    family, folder, m = family_model
    restore_sdpa(m.bridge, enabled=attention == "sdpa")
    try:
        batch = random_batch(m.n_ctx)
        ref = hf_reference(folder, family, batch.tokens, batch.attention_mask())
        calls = count_sdpa_calls(monkeypatch)
        out = lamina_capture(m, batch, micro_batch=4)
    finally:
        restore_sdpa(m.bridge, enabled=True)
    lengths = batch.lengths.tolist()
    diffs = relative_diffs(out, ref, lengths)
    assert max(diffs.values()) <= 1e-5, f"{family} ({attention}): relative max |diff| per hook kind {diffs}"
    uses_sdpa = attention == "sdpa" and family in SDPA_FAMILIES
    assert (calls[0] > 0) == uses_sdpa, f"{family} ({attention}): {calls[0]} SDPA calls"
    # GQA: K and V are n_kv_heads * d_head wide
    assert out["k"].shape[-1] == m.info.kv_width and out["q"].shape[-1] == m.info.q_width
    for kind in ("q", "pre"):  # pad positions are zero
        for i, n in enumerate(lengths):
            assert not out[kind][:, i, n:].any()


def test_sdpa_choice_per_family(family_model):
    family, _, m = family_model
    strategies = sdpa_blocks(m.bridge)
    assert all(s is not None for s in strategies) == (family in SDPA_FAMILIES), strategies
    assert m.provenance()["attention"] == ("sdpa" if family in SDPA_FAMILIES else "eager")


def test_pattern_hook_goes_back_to_eager(family_model, monkeypatch):
    """A hooked pattern makes that block eager for the forward (the pattern fires, sums to 1)."""
    family, _, m = family_model
    batch = random_batch(m.n_ctx)
    seen = []

    def grab(t, hook):
        seen.append(t.detach().clone())
        return t

    calls = count_sdpa_calls(monkeypatch)
    with torch.inference_mode():
        m.bridge.run_with_hooks(batch.tokens[:, :4], fwd_hooks=[("blocks.0.attn.hook_pattern", grab)])
    assert seen and torch.allclose(seen[0].sum(-1), torch.ones(()), atol=1e-5)
    n_sdpa_blocks = m.n_layers - 1 if family in SDPA_FAMILIES else 0
    assert calls[0] == n_sdpa_blocks
