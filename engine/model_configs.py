"""The configs that ship with lamina: published ``config.json`` values of well-known checkpoints.

They let ``weights="random"`` build these architectures at full size offline, with
nothing in the HuggingFace cache. Each entry is the architecture part of the model's
``config.json`` on the hub (the keys HF reads to build the model; training-only keys
such as dropout rates are kept where the hub file has them). ``transformers`` reads
them exactly as it reads the hub file (legacy keys like ``rotary_pct`` or
``rope_scaling`` are converted by the config class).

>>> SHIPPED_CONFIGS["EleutherAI/pythia-70m"]["hidden_size"]
512
>>> shipped_name("eleutherai/Pythia-70M")
'EleutherAI/pythia-70m'
"""

from __future__ import annotations


def _gpt2(n_layer: int, n_embd: int, n_head: int) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
        "n_layer": n_layer, "n_embd": n_embd, "n_head": n_head, "n_ctx": 1024, "n_positions": 1024,
        "vocab_size": 50257, "layer_norm_epsilon": 1e-05, "initializer_range": 0.02, "attn_pdrop": 0.1,
        "embd_pdrop": 0.1, "resid_pdrop": 0.1, "bos_token_id": 50256, "eos_token_id": 50256,
    }


def _gpt_neo(num_layers: int, hidden_size: int, num_heads: int) -> dict:
    return {
        "architectures": ["GPTNeoForCausalLM"], "model_type": "gpt_neo", "activation_function": "gelu_new",
        "num_layers": num_layers, "hidden_size": hidden_size, "num_heads": num_heads,
        "attention_types": [[["global", "local"], num_layers // 2]], "window_size": 256,
        "intermediate_size": None, "max_position_embeddings": 2048, "vocab_size": 50257,
        "layer_norm_epsilon": 1e-05, "initializer_range": 0.02, "attention_dropout": 0, "embed_dropout": 0,
        "resid_dropout": 0, "bos_token_id": 50256, "eos_token_id": 50256,
    }


def _pythia(num_hidden_layers: int, hidden_size: int, num_attention_heads: int) -> dict:
    return {
        "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "hidden_act": "gelu",
        "num_hidden_layers": num_hidden_layers, "hidden_size": hidden_size,
        "num_attention_heads": num_attention_heads, "intermediate_size": 4 * hidden_size,
        "max_position_embeddings": 2048, "rotary_pct": 0.25, "rotary_emb_base": 10000,
        "use_parallel_residual": True, "vocab_size": 50304, "layer_norm_eps": 1e-05, "initializer_range": 0.02,
        "attention_dropout": 0.0, "hidden_dropout": 0.0, "tie_word_embeddings": False,
        "bos_token_id": 0, "eos_token_id": 0,
    }


def _qwen25(num_hidden_layers: int, hidden_size: int, num_attention_heads: int, intermediate_size: int,
            max_position_embeddings: int) -> dict:
    return {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
        "num_hidden_layers": num_hidden_layers, "hidden_size": hidden_size,
        "num_attention_heads": num_attention_heads, "num_key_value_heads": 2, "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings, "sliding_window": max_position_embeddings,
        "use_sliding_window": False, "max_window_layers": num_hidden_layers, "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-06, "vocab_size": 151936, "tie_word_embeddings": True, "initializer_range": 0.02,
        "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151643,
    }


def _opt(num_hidden_layers: int, hidden_size: int, num_attention_heads: int) -> dict:
    return {
        "architectures": ["OPTForCausalLM"], "model_type": "opt", "activation_function": "relu",
        "num_hidden_layers": num_hidden_layers, "hidden_size": hidden_size,
        "num_attention_heads": num_attention_heads, "ffn_dim": 4 * hidden_size, "word_embed_proj_dim": hidden_size,
        "max_position_embeddings": 2048, "do_layer_norm_before": True, "enable_bias": True,
        "layer_norm_elementwise_affine": True, "vocab_size": 50272, "init_std": 0.02, "dropout": 0.1,
        "attention_dropout": 0.0, "activation_dropout": 0.0, "layerdrop": 0.0,
        "bos_token_id": 2, "eos_token_id": 2, "pad_token_id": 1,
    }


SHIPPED_CONFIGS: dict[str, dict] = {
    "gpt2": _gpt2(12, 768, 12),
    "gpt2-medium": _gpt2(24, 1024, 16),
    "gpt2-large": _gpt2(36, 1280, 20),
    "gpt2-xl": _gpt2(48, 1600, 25),
    "EleutherAI/gpt-neo-125M": _gpt_neo(12, 768, 12),
    "EleutherAI/gpt-neo-1.3B": _gpt_neo(24, 2048, 16),
    "EleutherAI/pythia-70m": _pythia(6, 512, 8),
    "EleutherAI/pythia-160m": _pythia(12, 768, 12),
    "EleutherAI/pythia-410m": _pythia(24, 1024, 16),
    "EleutherAI/pythia-1b": _pythia(16, 2048, 8),
    "EleutherAI/pythia-1.4b": _pythia(24, 2048, 16),
    "meta-llama/Llama-3.2-1B": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "num_hidden_layers": 16, "hidden_size": 2048, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 64, "intermediate_size": 8192, "max_position_embeddings": 131072, "rope_theta": 500000.0,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rms_norm_eps": 1e-05, "vocab_size": 128256, "tie_word_embeddings": True, "attention_bias": False,
        "mlp_bias": False, "attention_dropout": 0.0, "pretraining_tp": 1, "initializer_range": 0.02,
        "bos_token_id": 128000, "eos_token_id": 128001,
    },
    "mistralai/Mistral-7B-v0.1": {
        "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_act": "silu",
        "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
        "intermediate_size": 14336, "max_position_embeddings": 32768, "sliding_window": 4096,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-05, "vocab_size": 32000, "tie_word_embeddings": False,
        "initializer_range": 0.02, "bos_token_id": 1, "eos_token_id": 2,
    },
    "Qwen/Qwen2.5-0.5B": _qwen25(24, 896, 14, 4864, 32768),
    "Qwen/Qwen2.5-1.5B": _qwen25(28, 1536, 12, 8960, 131072),
    "google/gemma-2-2b": {
        "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh", "num_hidden_layers": 26, "hidden_size": 2304,
        "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "intermediate_size": 9216,
        "max_position_embeddings": 8192, "query_pre_attn_scalar": 256, "sliding_window": 4096,
        "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "rope_theta": 10000.0,
        "rms_norm_eps": 1e-06, "vocab_size": 256000, "tie_word_embeddings": True, "attention_bias": False,
        "attention_dropout": 0.0, "initializer_range": 0.02, "cache_implementation": "hybrid",
        "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
    },
    "facebook/opt-125m": _opt(12, 768, 12),
    "facebook/opt-1.3b": _opt(24, 2048, 32),
    "microsoft/phi-2": {
        "architectures": ["PhiForCausalLM"], "model_type": "phi", "hidden_act": "gelu_new",
        "num_hidden_layers": 32, "hidden_size": 2560, "num_attention_heads": 32, "num_key_value_heads": 32,
        "intermediate_size": 10240, "max_position_embeddings": 2048, "partial_rotary_factor": 0.4,
        "rope_theta": 10000.0, "layer_norm_eps": 1e-05, "qk_layernorm": False, "vocab_size": 51200,
        "tie_word_embeddings": False, "resid_pdrop": 0.1, "embd_pdrop": 0.0, "attention_dropout": 0.0,
        "initializer_range": 0.02, "bos_token_id": 50256, "eos_token_id": 50256,
    },
}

# The names lamina knew before issue 12: GPT-2 BPE vocabulary, tokenizer bundled (engine/tokenizer.py).
GPT2_BPE_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "EleutherAI/gpt-neo-125M", "EleutherAI/gpt-neo-1.3B")
# hub aliases of the same checkpoints
ALIASES = {f"openai-community/{n}": n for n in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}


def shipped_name(name: str) -> str | None:
    """The table key for ``name`` (case-insensitive, hub aliases included), or None."""
    name = ALIASES.get(name, name)
    if name in SHIPPED_CONFIGS:
        return name
    lowered = {k.lower(): k for k in SHIPPED_CONFIGS}
    key = lowered.get(name.lower())
    if key is None:
        key = ALIASES.get(next((a for a in ALIASES if a.lower() == name.lower()), ""), None)
    return key
