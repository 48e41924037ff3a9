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
        if arch in SUPPORTED_ARCHITECTURES and not_causal_reason({"model_type": model_type}) is None:
            out.setdefault(arch, model_type)
    return out


@functools.lru_cache(maxsize=1)
def supported_families() -> list[str]:
    """The ``model_type`` names lamina accepts (their causal LM is bridgeable), sorted."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    supported = supported_architectures()
    return sorted(t for t, arch in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items()
                  if arch in supported and not_causal_reason({"model_type": t}) is None)


def architecture_candidates(config: dict) -> list[str]:
    """Architecture classes named by a config: ``architectures``, then the causal LM of its ``model_type``."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = [a for a in (config.get("architectures") or []) if isinstance(a, str)]
    mapped = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.get("model_type") or "")
    if mapped and mapped not in names:
        names.append(mapped)
    return names


def not_causal_reason(config: dict) -> str | None:
    """Why a config is not a decoder-only causal LM that lamina runs without foreign code, or None.

    Read from the config alone (docs/models.md, "What is refused"): ``auto_map`` (the model's
    own code, ``trust_remote_code``); an encoder-decoder (``is_encoder_decoder``, or a
    ``model_type`` transformers maps to a sequence-to-sequence LM); a bidirectional
    masked-LM family (a ``model_type`` transformers maps to a masked LM, e.g. BERT - its
    ``BertLMHeadModel`` is BERT's weights read left to right, not a causal LM); and a config
    whose ``architectures`` names only classes that are not causal LMs (``BertForMaskedLM``,
    ``...ForSequenceClassification``, ``...ForConditionalGeneration``).

    >>> not_causal_reason({"architectures": ["BertForMaskedLM"], "model_type": "bert"})[:40]
    'it is a bidirectional masked language mo'
    >>> not_causal_reason({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}) is None
    True
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    )

    if config.get("auto_map"):
        return ("its config has 'auto_map': it needs the model's own code (trust_remote_code), which lamina does "
                "not run")
    model_type = config.get("model_type") or ""
    if config.get("is_encoder_decoder") or model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        return "it is an encoder-decoder model, and lamina runs decoder-only causal language models only"
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return (f"it is a bidirectional masked language model (model_type {model_type!r}), and lamina runs "
                "decoder-only causal language models only")
    named = [a for a in (config.get("architectures") or []) if isinstance(a, str)]
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if named and not any(a in causal for a in named):
        return (f"{', '.join(named)} is not a causal language model (config.json 'architectures'), and lamina runs "
                "decoder-only causal language models only")
    return None


def check_architecture(config: dict, where: str) -> tuple[str, str]:
    """(architecture, family) for a config lamina can hook; else one clear ``InputError``.

    ``where`` names the model (name or path) in the message.
    """
    supported = supported_architectures()
    candidates = architecture_candidates(config)
    named = ", ".join(a for a in config.get("architectures") or [] if isinstance(a, str)) \
        or f"model_type {config.get('model_type')!r}"
    refused = not_causal_reason(config)
    if refused is not None:
        raise InputError(f"model {where!r} ({named}) is refused: {refused}. Use a decoder-only causal LM "
                         "(AutoModelForCausalLM), e.g. a GPT-2, Llama, Qwen2 or Pythia checkpoint.")
    for arch in candidates:
        if arch in supported:
            family = config.get("model_type") or supported[arch]
            return arch, family
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    families = ", ".join(supported_families())
    bridged = [a for a in candidates if a in SUPPORTED_ARCHITECTURES]
    if bridged:
        why = (f"TransformerLens can bridge {bridged[0]}, but lamina runs decoder-only language models "
               "(AutoModelForCausalLM) only")
    else:
        why = "the installed TransformerLens has no architecture adapter for it, so its layers cannot be hooked"
    raise InputError(
        f"model {where!r} has architecture {named} (config.json 'architectures'): {why}. "
        f"Supported families (config.json model_type): {families}."
    )
