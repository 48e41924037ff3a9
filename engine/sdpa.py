"""SDPA attention inside the TransformerBridge, used whenever no attention pattern is hooked.

>>> restore_sdpa(model.bridge)            # doctest: +SKIP
12
"""

from __future__ import annotations

import torch

# private TransformerLens methods the GPT-2 SDPA path calls; if a version lacks one, stay eager
_GPT2_NEEDS = ("_reconstruct_attention", "_reshape_qkv_to_heads", "_update_kv_cache", "_reshape_attn_output",
               "_apply_output_projection", "_normalize_compatibility_mask_sentinel", "hook_attn_scores",
               "hook_pattern", "config")


def restore_sdpa(bridge, enabled: bool = True) -> int:
    """Run attention with ``scaled_dot_product_attention`` while no pattern/score hook is attached.

    TransformerLens computes attention eagerly (scores, mask, softmax, pattern @ V) so that
    ``hook_attn_scores`` / ``hook_pattern`` can fire: GPT-2's JointQKVAttentionBridge rebuilds
    attention itself (``config._attn_implementation`` does not reach it) and HF's GPT-Neo has
    eager attention only. This wraps, per block, GPT-2's ``_reconstruct_attention`` and
    GPT-Neo's ``_attn`` with an SDPA path taken only when neither hook of that block has a
    hook, the module is in eval mode and (GPT-2) no TransformerLens option that needs the eager
    path is on. Otherwise the original eager code runs unchanged, so patterns and scores can
    still be hooked, cached or patched. ``output_attentions`` is no reason to go eager:
    ``run_with_cache`` always sets it, and the bridge returns logits, not weights (the SDPA
    path returns ``None`` weights). Same masks (HF 4D mask, GPT-Neo's local window), scale and
    rules for queries that see no real key, so every activation, pad positions included,
    agrees with eager to ~1e-6 in float32.

    Called again with ``enabled=False`` it switches every block back to eager (benchmarks use
    that for the stock TransformerLens baseline). Returns the number of blocks patched.
    """
    import types

    import torch.nn.functional as F
    from transformer_lens.model_bridge.generalized_components.joint_qkv_attention import (
        JointQKVAttentionBridge,
    )

    def hooked(attn) -> bool:
        return attn.hook_attn_scores.has_hooks() or attn.hook_pattern.has_hooks()

    def gpt2(attn) -> bool:
        if not all(hasattr(attn, m) for m in _GPT2_NEEDS):  # another TransformerLens: stay eager
            return False
        eager = attn._reconstruct_attention
        cfg = attn.config

        def reconstruct(self, q, k, v, **kwargs):
            mask = kwargs.get("attention_mask")
            if (not self._lamina_sdpa or self.training or hooked(self)
                    or (mask is not None and mask.ndim != 4) or getattr(self, "_reorder_and_upcast_attn", False)
                    or getattr(cfg, "use_attn_result", False)
                    or (getattr(cfg, "n_key_value_heads", None) or cfg.n_heads) != cfg.n_heads):
                return eager(q, k, v, **kwargs)
            q, k, v, b, s, d = self._reshape_qkv_to_heads(q, k, v, cfg.n_heads, cfg.n_heads)  # (B, nh, T, hs)
            k, v = self._update_kv_cache(k, v, **kwargs)
            scale = d**-0.5
            if getattr(cfg, "scale_attn_by_inverse_layer_idx", False) and self._layer_idx is not None:
                scale /= float(self._layer_idx + 1)
            kv = k.shape[-2]
            if mask is None:
                causal = None if kv == s else torch.ones(s, kv, dtype=torch.bool, device=q.device).tril(kv - s)
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=causal, is_causal=causal is None, scale=scale)
            else:  # HF's 4D mask is authoritative (causal + padding), as in the eager path
                mask = mask[..., -s:, :kv]  # (B, 1, T, kv)
                if mask.dtype != torch.bool:
                    mask = self._normalize_compatibility_mask_sentinel(mask).to(q.dtype)
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
                if self.compatibility_mode:  # a query that sees no key gets a zero pattern, not NaN
                    dead = ~mask.any(-1) if mask.dtype == torch.bool else torch.isneginf(mask).all(-1)
                    out = out.masked_fill(dead.unsqueeze(-1), 0.0)  # unconditional: no GPU sync per block
            out = self._reshape_attn_output(out, b, s, cfg.n_heads, d)  # (B, T, nh*hs)
            return self._apply_output_projection(out), None

        attn._reconstruct_attention = types.MethodType(reconstruct, attn)
        return True

    def gpt_neo(attn) -> bool:
        hf = attn.original_component
        if not (hasattr(hf, "_attn") and hasattr(hf, "bias")):  # another transformers: stay eager
            return False
        eager = hf._attn

        def _attn(self, query, key, value, attention_mask=None):
            if not attn._lamina_sdpa or self.training or hooked(attn):
                return eager(query, key, value, attention_mask)
            t, kv = query.shape[-2], key.shape[-2]
            allowed = self.bias[:, :, kv - t : kv, :kv]  # (1, 1, T, kv) causal, or the local window
            if attention_mask is not None:  # eager's arithmetic: where(allowed, w, min) + mask, so a pad
                am = attention_mask.to(torch.float32)  # query with no real key in its window matches too
                allowed = torch.where(allowed, am, am + torch.finfo(torch.float32).min)  # (B, 1, T, kv)
            # GPT-Neo does not scale scores and computes them in float32
            out = F.scaled_dot_product_attention(query.float(), key.float(), value.float(), attn_mask=allowed,
                                                 scale=1.0)
            return out.to(value.dtype), None

        hf._attn = types.MethodType(_attn, hf)
        return True

    n = 0
    for block in bridge.blocks:
        attn = block.attn
        if not hasattr(attn, "_lamina_sdpa"):
            if isinstance(attn, JointQKVAttentionBridge):
                patched = gpt2(attn)
            elif type(attn.original_component).__name__ == "GPTNeoSelfAttention":
                patched = gpt_neo(attn)
            else:
                patched = False
            if not patched:
                continue
        attn._lamina_sdpa = enabled
        n += 1
    return n
