"""Independent reference: activations from plain HuggingFace forward hooks (no lamina, no TransformerLens)."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM


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
