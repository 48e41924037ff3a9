"""SDPA attention inside the TransformerBridge, per family, used whenever no attention pattern is hooked.

TransformerLens computes attention eagerly (scores, mask, softmax, pattern @ V) so that
``hook_attn_scores`` / ``hook_pattern`` can fire. When a capture hooks neither, lamina
runs the same attention through ``torch.nn.functional.scaled_dot_product_attention``
instead - but only for the families whose attention it reproduces exactly (checked per
family against plain HuggingFace in tests/test_parity.py). Everything else stays on the
bridge's own eager attention.

Per HF attention class, what lamina runs when unhooked:

- ``GPT2Attention``: ``reconstruct`` - lamina's SDPA in place of the bridge's
  ``_reconstruct_attention`` (q, k, v already hooked);
- ``GPTNeoXAttention``: ``reconstruct`` with the bridge's own partial rotary
  (``rotary_pct``) applied to q and k first;
- ``GPTNeoSelfAttention``: ``gpt_neo`` - lamina's SDPA in HF's ``_attn`` (local window, no
  scaling, float32);
- ``LlamaAttention``, ``MistralAttention``, ``Qwen2Attention``, ``Gemma3Attention``,
  ``PhiAttention``, ``OPTAttention``: ``hf`` - the HF module's own forward with
  HuggingFace's ``sdpa`` attention function (same mask, rotary, scaling, sliding window,
  Q/K norms).

Not listed - e.g. ``Gemma2Attention`` (attention-logit soft-capping is a non-linearity on
the scores that SDPA kernels cannot apply), or any attention module with soft-capping
set - stays eager. A block goes back to eager for one forward as soon as any hook
point that only the eager path fires is hooked (scores, pattern, rotated q/k, ...), in
training mode, or when a TransformerLens option that needs the eager path is on.

>>> restore_sdpa(model.bridge)            # doctest: +SKIP
12
"""

from __future__ import annotations

import types

import torch

# private TransformerLens methods the reconstruct path calls; if a version lacks one, stay eager
_RECONSTRUCT_NEEDS = ("_reconstruct_attention", "_reshape_qkv_to_heads", "_update_kv_cache", "_reshape_attn_output",
                      "_apply_output_projection", "_normalize_compatibility_mask_sentinel", "hook_attn_scores",
                      "hook_pattern", "config")
_ROTARY_NEEDS = ("_apply_position_embedding_hooks", "_apply_rotary_pos_emb")

# HF attention class -> strategy (see the module docstring)
SDPA_STRATEGY: dict[str, str] = {
    "GPT2Attention": "reconstruct",
    "GPTNeoXAttention": "reconstruct",
    "GPTNeoSelfAttention": "gpt_neo",
    "LlamaAttention": "hf",
    "MistralAttention": "hf",
    "Qwen2Attention": "hf",
    "Gemma3Attention": "hf",
    "PhiAttention": "hf",
    "OPTAttention": "hf",
}
# TransformerLens options under which the bridge's eager path computes something extra
_EAGER_OPTIONS = ("use_attn_result", "use_split_qkv_input", "use_attn_in")
# hook points an attention bridge fires itself on the eager path and in every SDPA path alike
_ALWAYS_FIRED = ("hook_in", "hook_out")


def sdpa_strategy(attn) -> str | None:
    """The SDPA strategy lamina would use for this attention bridge, or None (eager)."""
    hf = getattr(attn, "original_component", None)
    name = type(hf).__name__
    strategy = SDPA_STRATEGY.get(name)
    if strategy is None:
        return None
    hf_cfg = getattr(hf, "config", None)
    if getattr(hf_cfg, "attn_logit_softcapping", None) is not None:  # SDPA cannot soft-cap scores
        return None
    if strategy == "reconstruct":
        needs = _RECONSTRUCT_NEEDS + (_ROTARY_NEEDS if name == "GPTNeoXAttention" else ())
        if not all(hasattr(attn, m) for m in needs):
            return None
    if strategy == "gpt_neo" and not (hasattr(hf, "_attn") and hasattr(hf, "bias")):
        return None
    if strategy == "hf":
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        if hf_cfg is None or "sdpa" not in ALL_ATTENTION_FUNCTIONS or not hasattr(hf_cfg, "_attn_implementation"):
            return None
    return strategy


def restore_sdpa(bridge, enabled: bool = True) -> int:
    """Run attention with SDPA in every block whose family lamina reproduces exactly (see module doc).

    Called again with ``enabled=False`` it switches every patched block back to eager
    (benchmarks use that for the stock TransformerLens baseline). Returns the number of
    blocks patched. ``output_attentions`` is no reason to go eager: ``run_with_cache``
    always sets it, and the bridge returns logits, not weights (SDPA paths return ``None``
    weights).
    """
    n = 0
    for block in bridge.blocks:
        attn = block.attn
        if not hasattr(attn, "_lamina_sdpa"):
            strategy = sdpa_strategy(attn)
            if strategy is None:
                continue
            _PATCHERS[strategy](attn)
            attn._lamina_sdpa_strategy = strategy
        attn._lamina_sdpa = enabled
        n += 1
    return n


def sdpa_blocks(bridge) -> list[str | None]:
    """Per block, the SDPA strategy in use (None: eager attention)."""
    return [getattr(b.attn, "_lamina_sdpa_strategy", None) if getattr(b.attn, "_lamina_sdpa", False) else None
            for b in bridge.blocks]


def _eager_only_hooks(attn, fired_by_sdpa: tuple[str, ...]):
    """The attention bridge's own hook points that the SDPA path would not fire."""
    from transformer_lens.hook_points import HookPoint

    return [m for name, m in attn.named_children() if isinstance(m, HookPoint) and name not in fired_by_sdpa]


def _can_skip_eager(attn) -> bool:
    if not attn._lamina_sdpa or attn.training:
        return False
    cfg = attn.config
    if cfg is not None and any(getattr(cfg, o, False) for o in _EAGER_OPTIONS):
        return False
    return not any(h.has_hooks() for h in attn._lamina_eager_hooks)


def _dead_rows_to_zero(out, mask):
    """A query that sees no key gets a zero output (the bridge's compatibility-mode pattern), not NaN."""
    dead = ~mask.any(-1) if mask.dtype == torch.bool else torch.isneginf(mask).all(-1)
    return out.masked_fill(dead.unsqueeze(-1), 0.0)  # unconditional: no GPU sync per block


def _patch_reconstruct(attn) -> None:
    """GPT-2 / GPT-NeoX: SDPA in place of the bridge's ``_reconstruct_attention`` (q, k, v already hooked)."""
    import torch.nn.functional as F

    eager = attn._reconstruct_attention
    cfg = attn.config
    rotary = type(attn.original_component).__name__ == "GPTNeoXAttention"
    # scores and pattern fire inside _reconstruct_attention only; cos/sin fire in both paths
    attn._lamina_eager_hooks = [attn.hook_attn_scores, attn.hook_pattern]

    def reconstruct(self, q, k, v, **kwargs):
        mask = kwargs.get("attention_mask")
        if (not _can_skip_eager(self) or (mask is not None and mask.ndim != 4)
                or getattr(self, "_reorder_and_upcast_attn", False)):
            return eager(q, k, v, **kwargs)
        nh = cfg.n_heads
        nkv = getattr(cfg, "n_key_value_heads", None) or nh
        q, k, v, b, s, d = self._reshape_qkv_to_heads(q, k, v, nh, nkv)  # (B, heads, T, d_head)
        if rotary:
            pe = kwargs.get("position_embeddings")
            if isinstance(pe, tuple):  # the eager path's rotary, hooks included
                cos, sin = self._apply_position_embedding_hooks(pe)
                q, k = self._apply_rotary_pos_emb(q, k, cos, sin)
        k, v = self._update_kv_cache(k, v, **kwargs)
        if nkv != nh:
            k = k.repeat_interleave(nh // nkv, dim=1)
            v = v.repeat_interleave(nh // nkv, dim=1)
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
            if self.compatibility_mode:
                out = _dead_rows_to_zero(out, mask)
        out = self._reshape_attn_output(out, b, s, nh, d)  # (B, T, heads*d_head)
        return self._apply_output_projection(out), None

    attn._reconstruct_attention = types.MethodType(reconstruct, attn)


def _patch_gpt_neo(attn) -> None:
    """GPT-Neo: SDPA in HF's ``_attn`` (the bridge delegates to the HF module)."""
    hf = attn.original_component
    eager = hf._attn
    attn._lamina_eager_hooks = [attn.hook_attn_scores, attn.hook_pattern]

    def _attn(self, query, key, value, attention_mask=None):
        if not _can_skip_eager(attn):
            return eager(query, key, value, attention_mask)
        return gpt_neo_sdpa(self, query, key, value, attention_mask)

    hf._attn = types.MethodType(_attn, hf)


def gpt_neo_sdpa(self, query, key, value, attention_mask=None):
    """GPT-Neo's ``_attn`` (``self``: the HF ``GPTNeoSelfAttention``) with SDPA; also the capture fast path's."""
    import torch.nn.functional as F

    t, kv = query.shape[-2], key.shape[-2]
    allowed = self.bias[:, :, kv - t : kv, :kv]  # (1, 1, T, kv) causal, or the local window
    if attention_mask is not None:  # eager's arithmetic: where(allowed, w, min) + mask, so a pad
        am = attention_mask.to(torch.float32)  # query with no real key in its window matches too
        allowed = torch.where(allowed, am, am + torch.finfo(torch.float32).min)  # (B, 1, T, kv)
    # GPT-Neo does not scale scores and computes them in float32
    out = F.scaled_dot_product_attention(query.float(), key.float(), value.float(), attn_mask=allowed, scale=1.0)
    return out.to(value.dtype), None


class _SdpaConfig:
    """The HF module's config, except that it asks for HuggingFace's ``sdpa`` attention function."""

    def __init__(self, config):
        object.__setattr__(self, "_lamina_base", config)

    _attn_implementation = "sdpa"

    def __getattr__(self, name):
        return getattr(object.__getattribute__(self, "_lamina_base"), name)


def _patch_hf(attn) -> None:
    """Families whose HF attention module has an ``sdpa`` path: run that module's own forward.

    The HF module's projections (and Q/K norms) are the bridge's wrapped submodules, so
    ``hook_q/k/v`` (projection outputs, before rotary) and ``hook_z`` fire as on the eager
    path; the mask is the one HF built for the whole model (causal, padding, sliding window).
    """
    hf = attn.original_component
    sdpa_config = _SdpaConfig(hf.config)
    delegating = type(attn).forward is _attention_bridge_forward()  # OPT: the bridge already calls HF
    attn._lamina_eager_hooks = _eager_only_hooks(attn, _ALWAYS_FIRED)
    eager_forward = attn.forward

    if delegating:
        def forward(self, *args, **kwargs):
            if not _can_skip_eager(self):
                return eager_forward(*args, **kwargs)
            real = hf.config
            hf.config = sdpa_config
            try:
                return eager_forward(*args, **kwargs)  # hook_in -> HF forward (sdpa) -> hook_out
            finally:
                hf.config = real
    else:
        def forward(self, *args, **kwargs):
            if not _can_skip_eager(self):
                return eager_forward(*args, **kwargs)
            if "hidden_states" in kwargs:
                kwargs["hidden_states"] = self.hook_in(kwargs["hidden_states"])
            else:
                args = (self.hook_in(args[0]),) + tuple(args[1:])
            real = hf.config
            hf.config = sdpa_config
            try:
                out = hf(*args, **kwargs)
            finally:
                hf.config = real
            return self.hook_out(out[0]), None

    object.__setattr__(attn, "forward", types.MethodType(forward, attn))  # not forwarded to the HF module


def _attention_bridge_forward():
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    return AttentionBridge.forward


_PATCHERS = {"reconstruct": _patch_reconstruct, "gpt_neo": _patch_gpt_neo, "hf": _patch_hf}
