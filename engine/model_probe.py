"""Hook names and shapes from one tiny forward - on the meta device, without memory.

>>> m = load_model("mistralai/Mistral-7B-v0.1", weights="random", device="meta")   # doctest: +SKIP
>>> hook_shapes(m)["blocks.0.attn.hook_k"]                                           # doctest: +SKIP
(1, 3, 8, 128)
"""

from __future__ import annotations

import torch

# hook points that fire only under TransformerLens options lamina leaves off
_OPTIONAL = ("hook_mlp_in", "hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input", "hook_result")


def hook_shapes(model, names=None, n_tokens: int = 3) -> dict[str, tuple[int, ...]]:
    """{hook name: shape} of every hook point (or of ``names``) that fires on a 1 x ``n_tokens`` input.

    Works on any device; on ``meta`` nothing is computed or allocated. Attention mask and
    positions are passed explicitly, so no step of the forward needs to read a value.
    """
    bridge = model.bridge
    if names is None:
        names = [n for n in bridge.hook_dict if not n.endswith(_OPTIONAL)]
    dev = model.device
    tokens = torch.zeros((1, n_tokens), dtype=torch.long, device=dev)
    mask = torch.ones((1, n_tokens), dtype=torch.long, device=dev)
    positions = torch.arange(n_tokens, device=dev)[None]
    out: dict[str, tuple[int, ...]] = {}

    def grab(name):  # keyed by the name asked for: an alias (hook_resid_post) fires as its target
        def fn(t, hook):
            if isinstance(t, torch.Tensor):
                out[name] = tuple(t.shape)
            return t
        return fn

    with torch.inference_mode():
        bridge.run_with_hooks(tokens, attention_mask=mask, position_ids=positions,
                              fwd_hooks=[(n, grab(n)) for n in names])
    return out


def materialize_fused_qkv(hf_model, adapter) -> None:
    """Give fused Q|K|V projections (GPT-2 ``c_attn``, GPT-NeoX ``query_key_value``) real, uninitialised storage.

    TransformerLens splits them into Q, K and V when it boots the bridge, which needs
    readable values; everything else stays on meta (the caller moves the bridge back).
    """
    from transformer_lens.model_bridge.generalized_components.joint_qkv_attention import JointQKVAttentionBridge

    blocks = adapter.component_mapping.get("blocks")
    if blocks is None:
        return
    for sub in blocks.submodules.values():
        if not (isinstance(sub, JointQKVAttentionBridge) and "qkv" in sub.submodules):
            continue
        path = f"{sub.name}.{sub.submodules['qkv'].name}"
        for block in hf_model.get_submodule(blocks.name):
            module = block.get_submodule(path)
            for key, p in module._parameters.items():
                if p is not None and p.is_meta:
                    module._parameters[key] = torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype),
                                                                 requires_grad=False)
