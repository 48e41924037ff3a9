"""Capture against an independent plain-HuggingFace reference (forward hooks on the HF modules)."""

from __future__ import annotations

import numpy as np
import torch

from lamina.engine.capture import capture_arrays
from lamina.engine.hooks import Capture, hidden_state_hooks, layer_hooks, qkv_hooks
from lamina.engine.inputs import Selector, encode_texts

from .reference_hf import hf_reference

TEXTS = [
    "The cat sat on the mat, and then it slept.",
    "Hi",
    "A longer sentence with several more words in it to pad the others.",
    "She gave her friend a book.",
    "Numbers like 3.5 and 42 appear too.",
]


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


def test_entries_are_handed_over_final_during_the_forward(tiny_model):
    """``on_entry`` sees each layer entry once per micro-batch, already final (pads zeroed), in layer order."""
    m = tiny_model
    batch = encode_texts(m.tokenizer, TEXTS, n_ctx=m.n_ctx)
    L = m.n_layers
    caps = [Capture("pre", layer_hooks("blocks.{layer}.mlp.hook_pre", range(L)), Selector.every()),
            Capture("qkv", qkv_hooks(range(L)), Selector.last())]
    from lamina.engine.capture import capture_batches, plan

    layouts = plan(m, caps)
    seen = []
    outs = list(capture_batches(m, batch, layouts, rows=range(len(batch)), micro_batch=2,
                                on_entry=lambda name, e, rows, values: seen.append((name, e, rows, values.clone()))))
    assert len(seen) == 2 * L * len(outs)
    for rows, out in outs:
        mine = [(name, e, v) for name, e, r, v in seen if r == rows]
        assert [e for name, e, _ in mine if name == "pre"] == list(range(L))
        for name, e, values in mine:
            torch.testing.assert_close(values, out[name][e], rtol=0, atol=0)
