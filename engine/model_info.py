"""What a model is, read from its config alone (no weights): ``ModelInfo``.

Sizes are TransformerLens' own view of the config (the architecture adapter's
``cfg``), so they are the widths the hooks will have: under grouped-query attention
``hook_k``/``hook_v`` are ``n_kv_heads * d_head`` wide (``kv_width``), ``hook_q`` is
``n_heads * d_head`` (``q_width``), and ``d_mlp`` is the width of ``mlp.hook_pre``
(for a gated MLP: the gate projection).
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """A model's identity and shapes, known before any weights are read."""

    name: str
    source: str  # "pretrained" | "random" | "checkpoint" | "gguf"
    architecture: str  # e.g. "GPT2LMHeadModel"
    family: str  # config.json model_type: "gpt2", "llama", "gpt_neox", ...
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    n_ctx: int
    vocab: int
    gated_mlp: bool
    tokenizer: Any
    bos_token_id: int | None  # the BOS the tokenizer adds by default (tok("a") starts with it), else None
    revision: str | None  # resolved commit hash of the hub snapshot, when known
    config_source: str = ""  # "table" | "hf-cache" | "hub" | "config-file" | "checkpoint"
    tokenizer_source: str = ""  # "model" (its own) | "gguf" (the GGUF's own) | "--tokenizer" | "gpt2-bpe (bundled)"
    tokenizer_path: str | None = None  # the folder the tokenizer was loaded from (None: the bundled GPT-2 BPE)
    gguf: dict | None = None  # a GGUF source: file, sha256, quantisation types, tokenizer (engine/gguf.py)
    config_path: str | None = None  # the config.json the architecture was read from (absolute), when a file
    config_sha256: str | None = None  # of that file's bytes
    layers: tuple[int, ...] = ()  # the blocks a run analyses (``--layers``), ascending; () = every block

    def __post_init__(self):
        if not self.layers:
            object.__setattr__(self, "layers", tuple(range(self.n_layers)))

    @property
    def q_width(self) -> int:
        return self.n_heads * self.d_head

    @property
    def kv_width(self) -> int:
        return self.n_kv_heads * self.d_head

    def as_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "tokenizer"}
        out.update(q_width=self.q_width, kv_width=self.kv_width)
        return out


def hf_config(config: dict, where: str):
    """The ``transformers`` config object for a ``config.json`` dict (legacy keys converted)."""
    from transformers import CONFIG_MAPPING

    from .errors import InputError

    model_type = config.get("model_type")
    if not model_type or model_type not in CONFIG_MAPPING:
        raise InputError(
            f"config of {where!r} has model_type {model_type!r}, which the installed transformers does not know; "
            "pass a config.json written by save_pretrained (it names model_type), or upgrade transformers"
        )
    return CONFIG_MAPPING[model_type].from_dict(dict(config))


def adapter_for(hf_cfg, architecture: str):
    """TransformerLens' architecture adapter for this config (built from the config alone)."""
    import torch
    from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_config_from_hf

    from .model_source import quiet

    with quiet():
        bridge_cfg = build_bridge_config_from_hf(hf_cfg, architecture, getattr(hf_cfg, "name_or_path", "") or "model",
                                                 torch.float32)
        return ArchitectureAdapterFactory.select_architecture_adapter(bridge_cfg)


def shapes(hf_cfg, architecture: str) -> dict:
    """TransformerLens' sizes for this config: n_layers, d_model, heads, d_head, d_mlp, n_ctx, vocab, gated_mlp."""
    cfg = adapter_for(hf_cfg, architecture).cfg
    n_heads = int(cfg.n_heads)
    return dict(
        n_layers=int(cfg.n_layers), d_model=int(cfg.d_model), n_heads=n_heads,
        n_kv_heads=int(getattr(cfg, "n_key_value_heads", None) or n_heads), d_head=int(cfg.d_head),
        d_mlp=int(cfg.d_mlp), n_ctx=int(cfg.n_ctx), vocab=int(cfg.d_vocab),
        gated_mlp=bool(getattr(cfg, "gated_mlp", False)),
    )
