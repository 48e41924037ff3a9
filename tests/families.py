"""Tiny random checkpoints, one per model family, saved to disk the way ``save_pretrained`` does.

Every family gets a config small enough for a CPU test but with the family's
distinctive attention features switched on (GQA, partial rotary, parallel residual,
sliding windows shorter than the test sentences, soft-capping, a query scale that is
not 1/sqrt(d_head), Q/K norms), and weights drawn from normal(0, 0.2) - biases and
norm scales included (norm scales around 1) - so a wrong slice, scale or mask shows
up far above float32 noise.

>>> make_family_checkpoint(tmp / "llama", "llama")     # doctest: +SKIP
"""

from __future__ import annotations

import torch

# family -> (config class name in transformers, kwargs). Vocabularies are >= 50257 so the
# GPT-2 BPE saved next to the weights is a valid tokenizer for every one of them.
FAMILY_CONFIGS: dict[str, tuple[str, dict]] = {
    "gpt2": ("GPT2Config", dict(n_layer=3, n_embd=64, n_head=4, n_positions=128)),
    "gpt_neo": ("GPTNeoConfig", dict(num_layers=4, hidden_size=64, num_heads=4, max_position_embeddings=128,
                                     attention_types=[[["global", "local"], 2]], window_size=4,
                                     intermediate_size=256)),
    "gpt_neox": ("GPTNeoXConfig", dict(num_hidden_layers=3, hidden_size=64, num_attention_heads=4,
                                       intermediate_size=256, max_position_embeddings=128, vocab_size=50304,
                                       rotary_pct=0.25, rotary_emb_base=10000, use_parallel_residual=True)),
    "llama": ("LlamaConfig", dict(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                  intermediate_size=96, max_position_embeddings=128, vocab_size=50304,
                                  rope_theta=500000.0, tie_word_embeddings=True,
                                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0, "original_max_position_embeddings": 32})),
    "mistral": ("MistralConfig", dict(num_hidden_layers=3, hidden_size=64, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=96, max_position_embeddings=128,
                                      vocab_size=50304, sliding_window=4)),
    "qwen2": ("Qwen2Config", dict(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                  intermediate_size=96, max_position_embeddings=128, vocab_size=50304,
                                  tie_word_embeddings=True, rope_theta=1000000.0)),
    "gemma2": ("Gemma2Config", dict(num_hidden_layers=4, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                    head_dim=16, intermediate_size=96, max_position_embeddings=128, vocab_size=50304,
                                    sliding_window=4, attn_logit_softcapping=2.0, final_logit_softcapping=5.0,
                                    query_pre_attn_scalar=24)),
    "gemma3_text": ("Gemma3TextConfig", dict(num_hidden_layers=3, hidden_size=64, num_attention_heads=4,
                                             num_key_value_heads=2, head_dim=16, intermediate_size=96,
                                             max_position_embeddings=128, vocab_size=50304, sliding_window=4,
                                             query_pre_attn_scalar=24, sliding_window_pattern=2,
                                             layer_types=["sliding_attention", "full_attention",
                                                          "sliding_attention"])),
    "opt": ("OPTConfig", dict(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, ffn_dim=128,
                              max_position_embeddings=128, vocab_size=50272, word_embed_proj_dim=64)),
    "phi": ("PhiConfig", dict(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                              max_position_embeddings=128, vocab_size=51200, partial_rotary_factor=0.5)),
}
FAMILIES = tuple(FAMILY_CONFIGS)


def family_config(family: str, **overrides):
    import transformers

    cls_name, kwargs = FAMILY_CONFIGS[family]
    return getattr(transformers, cls_name).from_dict({**kwargs, **overrides})


def randomise(model: torch.nn.Module, seed: int, std: float = 0.2) -> torch.nn.Module:
    """Every parameter from normal(0, std), in ``named_parameters`` order from one generator; the
    scales of norm layers get +1 (Gemma's norms multiply by (1 + w), so theirs stay around 0)."""
    g = torch.Generator().manual_seed(seed)
    offset_norms = "gemma" in type(model).__name__.lower()
    norm_scales = {id(m.weight) for m in model.modules()
                   if "norm" in type(m).__name__.lower() and isinstance(getattr(m, "weight", None), torch.Tensor)}
    with torch.no_grad():
        for _, p in model.named_parameters():
            values = torch.randn(p.shape, generator=g) * std
            if id(p) in norm_scales and not offset_norms:
                values += 1.0
            p.copy_(values)
    return model


def make_family_checkpoint(folder, family: str, *, seed: int = 0, tokenizer=None, **overrides):
    """Save a tiny random ``family`` checkpoint (config, safetensors, tokenizer) into ``folder``."""
    from transformers import AutoModelForCausalLM

    from lamina.engine.tokenizer import gpt2_tokenizer

    config = family_config(family, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    randomise(model, seed).eval()
    model.save_pretrained(str(folder))
    (tokenizer or gpt2_tokenizer()).save_pretrained(str(folder))
    return folder


def word_tokenizer(words=None, *, add_bos: bool = True):
    """A small word-level tokenizer of its own (not GPT-2's), adding ``<s>`` in front by default."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = words or ("the cat sat on mat and then it slept hi a longer sentence with several more words in to pad "
                      "others she gave her friend book numbers like appear too . , ! ? 3 5 42").split()
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(words) | {w.capitalize() for w in words}))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
