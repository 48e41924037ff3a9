"""Capture against an independent plain-HuggingFace reference (forward hooks on the HF modules)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from lamina.engine.capture import capture_arrays
from lamina.engine.hooks import Capture, hidden_state_hooks, layer_hooks, qkv_hooks
from lamina.engine.inputs import Selector, encode_texts

TEXTS = [
    "The cat sat on the mat, and then it slept.",
    "Hi",
    "A longer sentence with several more words in it to pad the others.",
    "She gave her friend a book.",
    "Numbers like 3.5 and 42 appear too.",
]


def hf_reference(folder, batch):
    """q|k|v, c_fc and hidden states from plain HF forward hooks: {name: [layer, sample, pos, feature]}."""
    hf = AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager").eval()
    blocks = hf.transformer.h
    got: dict[str, list] = {"qkv": [None] * len(blocks), "fc": [None] * len(blocks)}
    handles = []
    for l, blk in enumerate(blocks):
        if hasattr(blk.attn, "c_attn"):  # GPT-2: one c_attn = [q|k|v]
            handles.append(blk.attn.c_attn.register_forward_hook(lambda m, i, o, l=l: got["qkv"].__setitem__(l, o)))
            fc = blk.mlp.c_fc
        else:  # GPT-Neo: separate projections
            att = blk.attn.attention
            parts = {}

            def grab(key, l=l, parts=parts):
                def fn(m, i, o):
                    parts[key] = o
                    if len(parts) == 3:
                        got["qkv"][l] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=-1)
                return fn

            for key in "qkv":
                handles.append(getattr(att, f"{key}_proj").register_forward_hook(grab(key)))
            fc = blk.mlp.c_fc
        handles.append(fc.register_forward_hook(lambda m, i, o, l=l: got["fc"].__setitem__(l, o)))
    mask = batch.attention_mask()
    with torch.no_grad():
        out = hf(batch.tokens, attention_mask=mask, output_hidden_states=True)
    for h in handles:
        h.remove()
    return {
        "qkv": torch.stack(got["qkv"]).numpy(),
        "fc": torch.stack(got["fc"]).numpy(),
        "hidden": torch.stack(out.hidden_states).numpy(),
    }


def test_capture_matches_huggingface(tiny_dir, tiny_model):
    m = tiny_model
    batch = encode_texts(m.tokenizer, TEXTS, n_ctx=m.n_ctx)
    ref = hf_reference(tiny_dir, batch)
    rng = np.random.default_rng()
    idx = torch.tensor([int(rng.integers(0, n)) for n in batch.lengths.tolist()])
    L = m.n_layers
    caps = [
        Capture("qkv_idx", qkv_hooks(range(L)), Selector.at(idx)),
        Capture("qkv_last", qkv_hooks(range(L)), Selector.last()),
        Capture("pre_all", layer_hooks("blocks.{layer}.mlp.hook_pre", range(L)), Selector.every()),
        Capture("hidden", hidden_state_hooks(L), Selector.last(), layer_dim="state"),
    ]
    out = {k: v.numpy() for k, v in capture_arrays(m, batch, caps, micro_batch=2).items()}
    rows = np.arange(len(batch))
    last = batch.lengths.numpy() - 1
    np.testing.assert_allclose(out["qkv_idx"], ref["qkv"][:, rows, idx.numpy()], atol=1e-4)
    np.testing.assert_allclose(out["qkv_last"], ref["qkv"][:, rows, last], atol=1e-4)
    np.testing.assert_allclose(out["hidden"], ref["hidden"][:, rows, last], atol=1e-4)
    assert out["hidden"].shape[0] == L + 1
    for i, n in enumerate(batch.lengths.tolist()):
        np.testing.assert_allclose(out["pre_all"][:, i, :n], ref["fc"][:, i, :n], atol=1e-4)
        assert not out["pre_all"][:, i, n:].any(), "pad positions must be zero"


def test_micro_batch_size_does_not_change_results(tiny_model):
    m = tiny_model
    batch = encode_texts(m.tokenizer, TEXTS, n_ctx=m.n_ctx)
    caps = [Capture("qkv", qkv_hooks(range(m.n_layers)), Selector.last())]
    one = capture_arrays(m, batch, caps, micro_batch=len(TEXTS))["qkv"]
    many = capture_arrays(m, batch, caps, micro_batch=1)["qkv"]
    torch.testing.assert_close(one, many, atol=1e-5, rtol=1e-5)
