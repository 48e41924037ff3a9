"""Capture side by side: lamina (into a Zarr store) vs the bare forwards, the course's hooks and TL's cache.

>>> spec = CaptureSpec("qkv", "gpt2", n_seq=54)
>>> result = run_capture_case(spec, device="cpu", warmup=1, repeats=3)      # doctest: +SKIP
>>> print(result.table())                                                   # doctest: +SKIP

Variants, all on the same model (same weights, same device), the same token
micro-batches and in one process, one after the other:

- ``lamina``: ``capture_to_store`` of the analysis' hook points into a fresh local
  Zarr store (opened, written, finalised: the whole cost);
- ``hf_body`` (floor): the raw HuggingFace transformer body (``model.transformer``,
  no LM head, no hooks) with the attention kernel lamina runs: HF's ``sdpa`` where HF has
  one, lamina's SDPA ``_attn`` for GPT-Neo (HF has eager only), eager where lamina stays eager;
- ``hf_forward``: the raw HuggingFace causal LM forward (with LM head), no hooks;
- ``tl_forward``: the TransformerBridge forward as TransformerLens ships it (eager
  attention, KV cache built, LM head);
- ``tl_forward_lamina``: the same bridge forward with lamina's boot settings (SDPA when no
  pattern is hooked, no KV cache): what lamina's own overhead is measured against;
- ``course_hooks``: ``register_forward_hook`` on every block keeping FULL outputs as
  NumPy, then NumPy indexing of the positions (the course's way);
- ``tl_cache``: stock ``run_with_cache(names_filter=...)`` then ``.cpu().numpy()`` and
  NumPy indexing.

Every lamina call writes a NEW store (a second call into the same path would resume the
first call's complete staged run and skip the work). lamina's overhead over the floor is
split by three more variants in the same round-robin (in ``params["split"]`` and the
notes, not in the table): ``split_hooks`` (the fast path's hooks that only count and
stop the forward after the deepest one: dispatch minus the early stop's saving),
``split_capture`` (``plan`` + ``capture_batches`` as ``capture_to_store`` calls them: + buffers,
position gather, pad zeroing, finite check), and lamina itself (+ device-to-host copy, Zarr open, writes, finalise);
the device-to-host copy of the captured arrays is also timed on its own, and
``split_bridge`` is lamina with ``LAMINA_FASTPATH=0`` (every hook through the bridge).

The raw HF model is a twin that SHARES the bridge's parameter tensors (built on the
meta device, then ``load_state_dict(assign=True)``), so no weights are copied.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import os
import shutil
import types
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lamina.analyses.textfiles import stimulus_path
from lamina.engine import fastpath
from lamina.engine.capture import auto_micro_batch, capture_batches, plan
from lamina.engine.hooks import Capture, hidden_state_hooks, layer_hooks, qkv_hooks
from lamina.engine.inputs import Selector, TokenBatch, encode_texts
from lamina.engine.models import MODEL_SPECS, LoadedModel, load_model
from lamina.engine.sdpa import gpt_neo_sdpa, restore_sdpa, sdpa_blocks
from lamina.engine.pipeline import capture_to_store
from lamina.engine.reader import open_run
from lamina.engine.store import RunStore

from . import course_style
from .report import CaseResult
from .timing import gpu_peak_flops, measure, measure_many

PUNCT_WINDOW, PUNCT_INDEX = 31, 20  # docs/analyses.md (punct): tokens[loc-20 : loc+11], the mark at index 20


@dataclasses.dataclass(frozen=True)
class CaptureSpec:
    case: str  # "qkv" | "length" | "punct"
    model: str  # a name of the model table (random weights) or a checkpoint directory
    n_seq: int  # sentences / sequences
    seq_len: int = 0  # tokens per sequence (length); punct uses 31, qkv the sentences' own lengths

    @property
    def weights(self) -> str:
        return "random" if self.model in MODEL_SPECS else "pretrained"


def capture_specs(mode: str, model: str | None = None) -> list[CaptureSpec]:
    """The three cases of issue 5 at full size, smaller for ``quick``, minimal for ``tiny``."""
    if mode == "full":
        specs = [CaptureSpec("qkv", "gpt2-xl", 54), CaptureSpec("length", "EleutherAI/gpt-neo-125M", 16, 512),
                 CaptureSpec("punct", "gpt2-medium", 500, PUNCT_WINDOW)]
    elif mode == "quick":
        specs = [CaptureSpec("qkv", "gpt2", 16), CaptureSpec("length", "EleutherAI/gpt-neo-125M", 1, 512),
                 CaptureSpec("punct", "gpt2", 16, PUNCT_WINDOW)]
    else:  # tiny
        specs = [CaptureSpec("qkv", "gpt2", 8), CaptureSpec("length", "gpt2", 2, 32),
                 CaptureSpec("punct", "gpt2", 4, PUNCT_WINDOW)]
    if model is not None:
        specs = [dataclasses.replace(s, model=model) for s in specs]
    return specs


# ---- inputs ------------------------------------------------------------------------------------


def corpus_ids(tok, n_tokens: int) -> np.ndarray:
    """The shipped corpus tokenised whole (no BOS), repeated until there are ``n_tokens``."""
    ids = np.asarray(tok(stimulus_path("corpus.txt").read_text(encoding="utf-8"),
                         add_special_tokens=False)["input_ids"], dtype=np.int64)
    reps = -(-n_tokens // len(ids))
    return np.tile(ids, reps)[:n_tokens]


def prepare(spec: CaptureSpec, model: LoadedModel) -> tuple[TokenBatch, list[Capture], str, list[np.ndarray] | None]:
    """Token batch, lamina captures, course-style kind and positions for one case."""
    tok, L = model.tokenizer, model.n_layers
    if spec.case == "qkv":
        lines = [ln for ln in stimulus_path("her_sentences.txt").read_text(encoding="utf-8").splitlines() if ln.strip()]
        texts = (lines * (-(-spec.n_seq // len(lines))))[: spec.n_seq]
        batch = encode_texts(tok, texts, n_ctx=model.n_ctx)
        her = tok(" her", add_special_tokens=False)["input_ids"][0]
        target = np.array([row.index(her) for row in batch.tokens.tolist()], dtype=np.int64)
        caps = [Capture("acts/target", qkv_hooks(range(L)), Selector.at(target)),
                Capture("acts/nontarget", qkv_hooks(range(L)), Selector.at(target - 1))]
        return batch, caps, "qkv", [target, target - 1]
    if spec.case == "length":
        ids = corpus_ids(tok, spec.n_seq * spec.seq_len).reshape(spec.n_seq, spec.seq_len)
        batch = TokenBatch(torch.from_numpy(ids), torch.full((spec.n_seq,), spec.seq_len), int(tok.eos_token_id))
        caps = [Capture("acts/mlp_pre", layer_hooks("blocks.{layer}.mlp.hook_pre", range(L)), Selector.every())]
        return batch, caps, "mlp_pre", None
    if spec.case == "punct":
        ids = corpus_ids(tok, spec.n_seq * PUNCT_WINDOW).reshape(spec.n_seq, PUNCT_WINDOW)
        batch = TokenBatch(torch.from_numpy(ids), torch.full((spec.n_seq,), PUNCT_WINDOW), int(tok.eos_token_id))
        idx = np.full(spec.n_seq, PUNCT_INDEX, dtype=np.int64)
        caps = [Capture("acts/hidden", hidden_state_hooks(L), Selector.at(idx), layer_dim="state")]
        return batch, caps, "hidden", [idx]
    raise ValueError(f"unknown capture case {spec.case!r}; expected qkv, length or punct")


def micro_batches(batch: TokenBatch, mb: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The micro-batches lamina runs, cropped to each one's longest sample, on the device."""
    out = []
    for s in range(0, len(batch), mb):
        lengths = batch.lengths[s : s + mb]
        width = int(lengths.max())
        mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
        out.append((batch.tokens[s : s + mb, :width].to(device), mask.to(device)))
    return out


# ---- the raw HF twin and the stock TransformerLens settings ------------------------------------


def raw_hf_twin(model: LoadedModel, *, lamina_kernel: bool = True):
    """A plain HuggingFace model that shares the bridge's weights, no KV cache; HF's default attention
    (``sdpa`` where the class has it), and with ``lamina_kernel`` the kernel lamina runs where that differs
    (GPT-Neo: HF has only eager attention, lamina runs SDPA in its ``_attn``: ``engine/sdpa.py``)."""
    from transformer_lens.model_bridge.generalized_components.base import (
        GeneralizedComponent,
    )
    from transformers import AutoModelForCausalLM

    bridged = model.bridge.original_model
    config = copy.deepcopy(bridged.config)
    config.use_cache = False
    impl = "sdpa" if getattr(type(bridged), "_supports_sdpa", False) else "eager"
    with torch.device("meta"):
        raw = AutoModelForCausalLM.from_config(config, attn_implementation=impl, dtype=model.dtype)

    def resolve(name: str) -> torch.Tensor:
        obj = bridged
        for part in name.split("."):
            if isinstance(obj, GeneralizedComponent) and obj.original_component is not None:
                obj = obj.original_component
            obj = getattr(obj, part)
            if isinstance(obj, GeneralizedComponent) and obj.original_component is not None:
                obj = obj.original_component
        return obj

    raw.load_state_dict({k: resolve(k) for k in raw.state_dict()}, assign=True, strict=True)
    for name, buf in list(raw.named_buffers()):  # non-persistent buffers (e.g. GPT-Neo's causal masks)
        if buf.is_meta:
            owner, _, leaf = name.rpartition(".")
            raw.get_submodule(owner).register_buffer(leaf, resolve(name), persistent=False)
    if lamina_kernel and set(sdpa_blocks(model.bridge)) == {"gpt_neo"}:
        for module in raw.modules():
            if type(module).__name__ == "GPTNeoSelfAttention":
                module._attn = types.MethodType(gpt_neo_sdpa, module)
    return raw.eval()


@contextlib.contextmanager
def stock_transformer_lens(model: LoadedModel):
    """The bridge as TransformerLens ships it: eager attention, a KV cache built by every forward."""
    config = model.bridge.original_model.config
    old = config.use_cache
    restore_sdpa(model.bridge, enabled=False)
    config.use_cache = True
    try:
        yield
    finally:
        restore_sdpa(model.bridge, enabled=True)
        config.use_cache = old


# ---- the case ---------------------------------------------------------------------------------


def run_capture_case(spec: CaptureSpec, *, device: str, warmup: int, repeats: int, tmp_dir: str | None = None,
                     model: LoadedModel | None = None) -> CaseResult:
    """Time every variant of one capture case; check lamina's arrays against the course's."""
    model = model or load_model(spec.model, weights=spec.weights, device=device)
    dev = model.device
    batch, caps, kind, positions = prepare(spec, model)
    mb = auto_micro_batch(model, batch.max_len, len(batch))
    mbs = micro_batches(batch, mb, dev)
    raw = raw_hf_twin(model)
    tokens = int(batch.lengths.sum())
    processed = sum(int(t.numel()) for t, _ in mbs)
    hook_names = sorted({h for c in caps for h in c.hook_names})
    result = CaseResult("capture", spec.case, {
        "model": spec.model, "weights": model.weights, "device": str(dev), "dtype": str(model.dtype).removeprefix("torch."),
        "n_seq": len(batch), "max_len": batch.max_len, "tokens": tokens, "micro_batch": mb, "n_hooks": len(hook_names),
        "captures": [c.name for c in caps]})
    if model.is_random:
        result.notes.append("random weights: speed only")
    root = Path(tempfile.mkdtemp(prefix="lamina-bench-", dir=tmp_dir))
    calls = itertools.count()
    last: dict[str, Any] = {}

    def lamina():
        # a new store per call: the same path again would resume the previous call's complete run
        url = last["store_url"] = str(root / f"{spec.case}-{next(calls)}.zarr")
        store = RunStore.open(url, experiment="bench-capture", key={"case": spec.case}, provenance={},
                              overwrite=True)
        try:
            capture_to_store(model, batch, caps, store, micro_batch=mb, progress=False)
            store.finalise()
        finally:
            store.close()

    def split_capture():  # what capture_to_store computes before its writes: the same calls, no store
        layouts = plan(model, caps)
        last["captured"] = [out for _, out in capture_batches(model, batch, layouts, rows=range(len(batch)),
                                                                micro_batch=mb)]

    def split_bridge():
        old = os.environ.get("LAMINA_FASTPATH")
        os.environ["LAMINA_FASTPATH"] = "0"
        try:
            lamina()
        finally:
            if old is None:
                del os.environ["LAMINA_FASTPATH"]
            else:
                os.environ["LAMINA_FASTPATH"] = old

    route = fastpath.fast_route(model, hook_names)
    split_hooks = _hooks_only(route, mbs, hook_names) if route is not None else None

    def hf_body():
        with torch.inference_mode():
            for t, m in mbs:
                raw.transformer(t, attention_mask=m)

    def hf_forward():
        with torch.inference_mode():
            for t, m in mbs:
                raw(t, attention_mask=m)

    def tl_forward():
        with torch.inference_mode():
            for t, m in mbs:
                model.bridge(t, attention_mask=m)

    def course():
        with torch.inference_mode():
            last["course"] = course_style.hf_hook_capture(raw, mbs, kind, positions)

    def tl_cache():
        names = set(hook_names)
        parts: list[dict[str, np.ndarray]] = []
        with torch.inference_mode():
            for t, m in mbs:
                _, cache = model.bridge.run_with_cache(t, attention_mask=m, names_filter=lambda n: n in names)
                parts.append({h: cache[h].cpu().numpy() for h in hook_names})
        last["tl_cache"] = _index_cache(parts, caps, positions)

    def stock(fn):
        def run():
            with stock_transformer_lens(model):
                fn()
        return run

    variants = {  # name: (label, role, function)
        "lamina": ("lamina capture_to_store (Zarr, local)", "lamina", lamina),
        "hf_body": ("HF transformer body, no hooks, no LM head", "floor", hf_body),
        "hf_forward": ("HF causal-LM forward, no hooks", "baseline", hf_forward),
        "tl_forward": ("TL bridge forward (stock: eager, KV cache)", "baseline", stock(tl_forward)),
        "tl_forward_lamina": ("TL bridge forward, lamina boot (SDPA, no cache)", "extra", tl_forward),
        "course_hooks": ("course: HF hooks, full outputs, NumPy index", "baseline", course),
        "tl_cache": ("TL run_with_cache(names_filter) -> NumPy", "baseline", stock(tl_cache)),
    }
    splits = {"split_capture": split_capture, "split_bridge": split_bridge}
    if split_hooks is not None:
        splits["split_hooks"] = split_hooks
    try:
        flops_per_token = 2 * _body_params(raw)
        peak = gpu_peak_flops(torch.cuda.get_device_name(dev), result.params["dtype"]) if dev.type == "cuda" else None
        timings = measure_many({**{n: v[2] for n, v in variants.items()}, **splits}, device=dev, warmup=warmup,
                               repeats=repeats)
        for name, (label, role, _) in variants.items():
            t = timings[name]
            extra = {"tokens_per_s": round(tokens / t.seconds, 1)}
            if peak:
                extra["mfu"] = round(flops_per_token * processed / t.seconds / peak, 4)
            result.add(name, label, role, t, **extra)
        run = open_run(last["store_url"])
        result.checks.update(_agreement(run, caps, last, kind, batch.lengths.numpy()))
        result.params["flops_per_token"] = flops_per_token
        result.params["fast_path"] = route is not None
        result.params["split"] = _split(timings, last.pop("captured"), dev, warmup, repeats, result.notes)
        result.params["store"] = _store_bandwidth(run, caps, root, dev, warmup, repeats, result.seconds("lamina"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return result


def _hooks_only(route, mbs, hook_names):
    """The fast path's forward with its hooks registered but doing nothing except counting and stopping
    the forward after the deepest one: what hook dispatch (and the early stop) cost alone."""
    from lamina.engine.capture import _StopForward

    taps = {(route.taps[h].module, route.taps[h].kind) for h in hook_names}

    def run():
        with torch.inference_mode():
            for t, m in mbs:
                fired: set = set()

                def make(key):
                    def fn(*args, **kwargs):
                        fired.add(key)
                        if len(fired) == len(taps):
                            raise _StopForward
                    return fn

                try:
                    route.run(t, m, [(mod, kind, make((mod, kind))) for mod, kind in taps])
                except _StopForward:
                    pass
    return run


def _split(timings, captured: list[dict[str, torch.Tensor]], dev, warmup: int, repeats: int, notes: list[str]
           ) -> dict[str, Any]:
    """lamina's time over the floor, split: hooks (+ early stop), gather, device-to-host copy, store."""
    floor, lamina_s = timings["hf_body"].seconds, timings["lamina"].seconds
    capture = timings["split_capture"].seconds
    hooks = timings["split_hooks"].seconds if "split_hooks" in timings else None

    def d2h():
        for part in captured:
            for v in part.values():
                v.cpu()

    d2h_s = measure(d2h, device=dev, warmup=warmup, repeats=repeats).seconds if dev.type == "cuda" else 0.0
    out = {
        "floor_s": round(floor, 4),
        "hooks_s": None if hooks is None else round(hooks - floor, 4),
        "gather_s": None if hooks is None else round(capture - hooks, 4),
        "d2h_s": round(d2h_s, 4),
        "store_s": round(lamina_s - capture, 4),
        "capture_ratio": round(capture / floor, 4),
        "lamina_ratio": round(lamina_s / floor, 4),
        "bridge_path_ratio": round(timings["split_bridge"].seconds / floor, 4),
    }

    def pct(x):
        return "n/a" if x is None else f"{100 * x / floor:+.1f}%"

    notes.append(f"lamina / floor {out['lamina_ratio']:.3f} = capture {out['capture_ratio']:.3f} + store; over the "
                 f"floor: hooks+early stop {pct(out['hooks_s'])}, gather {pct(out['gather_s'])}, "
                 f"D2H {pct(d2h_s) if dev.type == 'cuda' else 'none (CPU)'} (in the writer thread), "
                 f"store {pct(out['store_s'])}; all hooks on the bridge: {out['bridge_path_ratio']:.3f}")
    return out


def _body_params(raw) -> int:
    """Parameters of the transformer blocks and final LayerNorm (embeddings and LM head excluded)."""
    body = raw.transformer
    return sum(p.numel() for p in body.h.parameters()) + sum(p.numel() for p in body.ln_f.parameters())


def _index_cache(parts: list[dict[str, np.ndarray]], caps: list[Capture], positions) -> dict[str, np.ndarray]:
    """TL cache entries ([b, T, ...]) -> the capture layout, by NumPy indexing, like the course."""
    out: dict[str, np.ndarray] = {}
    for c_i, cap in enumerate(caps):
        rows, start = [], 0
        for p in parts:
            n = next(iter(p.values())).shape[0]
            per_layer = [np.concatenate([p[h].reshape(n, p[h].shape[1], -1) for h in group], axis=-1)
                         for group in cap.hooks]  # [b, T, F] per layer entry
            full = np.stack(per_layer)  # [layer, b, T, F]
            if positions is None:
                rows.append(full)
            else:
                rows.append(full[:, np.arange(n), positions[c_i][start : start + n]])
            start += n
        if positions is None:
            width = max(r.shape[2] for r in rows)
            rows = [np.pad(r, ((0, 0), (0, 0), (0, width - r.shape[2]), (0, 0))) for r in rows]
        out[cap.name] = np.concatenate(rows, axis=1)
    return out


def _agreement(run, caps: list[Capture], last: dict, kind: str, lengths: np.ndarray) -> dict[str, float]:
    """Largest |lamina - baseline| over the captured arrays (real positions only: lamina zeroes pads)."""
    checks = {}
    for i, cap in enumerate(caps):
        mine = run.numpy(cap.name)
        course = last.get("course", {}).get("all" if kind == "mlp_pre" else f"out{i}")
        for label, theirs in (("course", course), ("tl_cache", last.get("tl_cache", {}).get(cap.name))):
            if theirs is None:
                continue
            if mine.ndim == 4:  # [layer, sample, pos, feature]
                real = np.arange(mine.shape[2])[None, :] < lengths[:, None]  # [sample, pos]
                diff = np.abs(mine - theirs[:, :, : mine.shape[2]])[:, real]
            else:
                diff = np.abs(mine - theirs)
            checks[f"max_abs_diff_vs_{label}[{cap.name}]"] = float(diff.max())
    return checks


def _store_bandwidth(run, caps: list[Capture], root: Path, dev, warmup: int, repeats: int,
                     lamina_s: float | None) -> dict[str, Any]:
    """Bytes lamina stored, and the write bandwidth of the same arrays and chunks into a fresh store."""
    arrays = {c.name: (run.numpy(c.name), run[c.name].chunks, run.dims(c.name)) for c in caps}
    nbytes = sum(a.nbytes for a, _, _ in arrays.values())
    url = str(root / "write.zarr")

    def write():
        store = RunStore.open(url, experiment="bench-write", key={}, provenance={}, overwrite=True)
        try:
            for name, (data, chunks, dims) in arrays.items():
                arr = store.array(name, shape=data.shape, chunks=chunks, dims=dims)
                store.write(arr, (), data)
            store.finalise()
        finally:
            store.close()

    t = measure(write, device="cpu", warmup=warmup, repeats=repeats)
    return {"bytes": nbytes, "write_s": round(t.seconds, 4), "write_gb_per_s": round(nbytes / t.seconds / 1e9, 3),
            "capture_gb_per_s": round(nbytes / lamina_s / 1e9, 3) if lamina_s else None}
