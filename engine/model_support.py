"""Which architectures lamina can hook: the installed TransformerLens' adapter registry.

TransformerLens 4 bridges a HuggingFace model when an *architecture adapter* is
registered for its architecture class (``transformer_lens.factories.
architecture_adapter_factory.SUPPORTED_ARCHITECTURES``; the class is read from
``config.json`` ``architectures``, or from ``model_type`` when that is missing - the
same rule as TransformerLens' ``determine_architecture_from_hf_config``). lamina runs
decoder-only language models loaded with ``AutoModelForCausalLM`` and no remote code,
so it accepts an architecture when it is in that registry AND is the causal-LM class
``transformers`` maps a ``model_type`` to. Everything is decided from the config alone,
before any weights are downloaded or read.

>>> check_architecture({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, "m")
('LlamaForCausalLM', 'llama')
"""

from __future__ import annotations

import functools

from .errors import InputError


@functools.lru_cache(maxsize=1)
def supported_architectures() -> dict[str, str]:
    """{architecture class: model_type} of every causal LM the installed TransformerLens can bridge."""
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    out: dict[str, str] = {}
    for model_type, arch in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items():
        if arch in SUPPORTED_ARCHITECTURES:
            out.setdefault(arch, model_type)
    return out


@functools.lru_cache(maxsize=1)
def supported_families() -> list[str]:
    """The ``model_type`` names lamina accepts (their causal LM is bridgeable), sorted."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    supported = supported_architectures()
    return sorted(t for t, arch in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items() if arch in supported)


def architecture_candidates(config: dict) -> list[str]:
    """Architecture classes named by a config: ``architectures``, then the causal LM of its ``model_type``."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = [a for a in (config.get("architectures") or []) if isinstance(a, str)]
    mapped = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.get("model_type") or "")
    if mapped and mapped not in names:
        names.append(mapped)
    return names


def check_architecture(config: dict, where: str) -> tuple[str, str]:
    """(architecture, family) for a config lamina can hook; else one clear ``InputError``.

    ``where`` names the model (name or path) in the message.
    """
    supported = supported_architectures()
    candidates = architecture_candidates(config)
    for arch in candidates:
        if arch in supported:
            family = config.get("model_type") or supported[arch]
            return arch, family
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    named = ", ".join(config.get("architectures") or []) or f"model_type {config.get('model_type')!r}"
    families = ", ".join(supported_families())
    bridged = [a for a in candidates if a in SUPPORTED_ARCHITECTURES]
    if config.get("auto_map"):
        why = "it needs the model's own code (trust_remote_code), which lamina does not run"
    elif bridged:
        why = (f"TransformerLens can bridge {bridged[0]}, but lamina runs decoder-only language models "
               "(AutoModelForCausalLM) only")
    else:
        why = "the installed TransformerLens has no architecture adapter for it, so its layers cannot be hooked"
    raise InputError(
        f"model {where!r} has architecture {named} (config.json 'architectures'): {why}. "
        f"Supported families (config.json model_type): {families}."
    )
