"""Loading a TransformerLens hooked model (TransformerBridge) three ways.

- a known name (``gpt2`` ... ``EleutherAI/gpt-neo-1.3B``) with pretrained weights
  from the HuggingFace cache; offline and uncached this fails at once;
- a local HuggingFace checkpoint directory (config + weights + tokenizer);
- ``weights="random"``: the named architecture at full size with random weights
  (seeded) and the real GPT-2 tokenizer, built offline. Scientifically meaningless,
  and labelled so in every output.

>>> m = load_model("gpt2", weights="random", seed=0)        # doctest: +SKIP
>>> m.n_layers, m.d_model
(12, 768)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any, Literal

import torch

from .errors import InputError, ModelNotFoundError
from .sdpa import restore_sdpa
from .tokenizer import configure_padding, gpt2_tokenizer, gpt2_tokenizer_dir

Weights = Literal["pretrained", "random"]
RANDOM_WEIGHTS_WARNING = "RANDOM WEIGHTS: results are scientifically meaningless (architecture and speed only)"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One row of the model table in EXPERIMENTS.md."""

    name: str
    family: Literal["gpt2", "gpt_neo"]
    n_layers: int
    d_model: int
    n_heads: int
    d_mlp: int
    n_ctx: int
    vocab: int = 50257

    def hf_config(self):
        """A HuggingFace config for this architecture at full size."""
        if self.family == "gpt2":
            from transformers import GPT2Config

            return GPT2Config(
                n_layer=self.n_layers, n_embd=self.d_model, n_head=self.n_heads,
                n_inner=self.d_mlp, n_positions=self.n_ctx, vocab_size=self.vocab,
            )
        from transformers import GPTNeoConfig

        return GPTNeoConfig(
            num_layers=self.n_layers, hidden_size=self.d_model, num_heads=self.n_heads,
            intermediate_size=self.d_mlp, max_position_embeddings=self.n_ctx, vocab_size=self.vocab,
            attention_types=[[["global", "local"], self.n_layers // 2]], window_size=256,
        )


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
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass
class LoadedModel:
    """A hooked model with its tokenizer and the facts provenance needs."""

    bridge: Any  # transformer_lens.model_bridge.TransformerBridge in compatibility mode
    tokenizer: Any
    name: str  # table name or checkpoint path
    weights: str  # "pretrained" | "random" | "checkpoint"
    seed: int | None
    device: torch.device
    dtype: torch.dtype

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
        if self.is_random:
            out["warning"] = RANDOM_WEIGHTS_WARNING
        return out


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} was asked for but CUDA is not available here; use --device cpu or auto")
    return dev


def resolve_dtype(dtype: str | torch.dtype = "float32") -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise InputError(f"dtype {dtype!r} is not one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def check_model_source(name: str, weights: str) -> None:
    """Cheap validation (no I/O beyond a stat): is ``name`` a known model or a checkpoint folder?"""
    if weights not in ("pretrained", "random"):
        raise InputError(f"weights must be 'pretrained' or 'random', not {weights!r}")
    if name in MODEL_SPECS:
        return
    path = Path(name).expanduser()
    looks_like_path = os.sep in name or name.startswith(".") or path.exists()
    if weights == "random":
        raise InputError(
            f"--weights random needs a known architecture name, one of {', '.join(MODEL_SPECS)}; got {name!r}"
        )
    if not looks_like_path:
        raise ModelNotFoundError(
            f"model {name!r} is neither a known name ({', '.join(MODEL_SPECS)}) nor a local checkpoint "
            "directory. Pass one of the names, a folder with config.json + weights + tokenizer, "
            "or use --weights random for an offline run."
        )
    if not path.is_dir():
        raise ModelNotFoundError(f"checkpoint directory {str(path)!r} does not exist")
    if not (path / "config.json").exists():
        raise ModelNotFoundError(
            f"checkpoint directory {str(path)!r} has no config.json; save it with `model.save_pretrained(path)`"
        )


def peek(name: str, weights: Weights = "pretrained"):
    """(tokenizer, n_ctx, n_layers) without loading weights: enough to validate stimuli first."""
    check_model_source(name, weights)
    if name in MODEL_SPECS:
        spec = MODEL_SPECS[name]
        return gpt2_tokenizer(), spec.n_ctx, spec.n_layers
    import json

    from transformers import AutoTokenizer

    cfg = json.loads((Path(name) / "config.json").read_text())
    n_ctx = cfg.get("n_positions") or cfg.get("max_position_embeddings") or cfg.get("n_ctx")
    n_layers = cfg.get("n_layer") or cfg.get("num_layers") or cfg.get("num_hidden_layers")
    has_tok = any((Path(name) / f).exists() for f in ("tokenizer.json", "vocab.json", "tokenizer_config.json"))
    tok = configure_padding(AutoTokenizer.from_pretrained(str(Path(name).resolve()))) if has_tok else gpt2_tokenizer()
    return tok, int(n_ctx), int(n_layers)


def load_model(
    name: str,
    *,
    weights: Weights = "pretrained",
    seed: int = 0,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "float32",
) -> LoadedModel:
    """Load ``name`` as a TransformerBridge with classic hook names on raw HF numerics."""
    check_model_source(name, weights)
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    if weights == "random":
        hf_model, tok, source, kind = _random_model(MODEL_SPECS[name], seed, dev, dt), gpt2_tokenizer(), None, "random"
    elif name in MODEL_SPECS:
        hf_model, tok, source, kind = _pretrained_from_cache(name, dt), gpt2_tokenizer(), None, "pretrained"
    else:
        hf_model, tok, source, kind = _from_checkpoint(Path(name), dt), None, str(Path(name).resolve()), "checkpoint"
        from transformers import AutoTokenizer

        has_tok = any((Path(name) / f).exists() for f in ("tokenizer.json", "vocab.json", "tokenizer_config.json"))
        tok = configure_padding(AutoTokenizer.from_pretrained(source)) if has_tok else gpt2_tokenizer()
    hf_model = hf_model.to(device=dev, dtype=dt).eval()
    bridge = _boot_bridge(source or _config_dir(hf_model, name), hf_model, tok, dev, dt)
    return LoadedModel(bridge, tok, name, kind, seed if kind == "random" else None, dev, dt)


def _boot_bridge(model_name: str, hf_model, tok, dev: torch.device, dt: torch.dtype):
    from transformer_lens.model_bridge import TransformerBridge

    with _quiet():
        bridge = TransformerBridge.boot_transformers(model_name, hf_model=hf_model, tokenizer=tok, device=dev, dtype=dt)
        bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    bridge.eval()
    for p in bridge.parameters():
        p.requires_grad_(False)
    # A capture never decodes: without this every forward builds a KV cache (a copy of K and V per block).
    hf_model.config.use_cache = False
    restore_sdpa(bridge)
    return bridge


def _config_dir(hf_model, name: str) -> str:
    """A local folder with this model's config and the tokenizer, so booting never asks the hub."""
    folder = gpt2_tokenizer_dir().parent / "configs" / name.replace("/", "__")
    folder.mkdir(parents=True, exist_ok=True)
    hf_model.config.save_pretrained(str(folder))
    for f in gpt2_tokenizer_dir().iterdir():
        target = folder / f.name
        if not target.exists():
            target.write_bytes(f.read_bytes())
    return str(folder)


def _random_model(spec: ModelSpec, seed: int, dev: torch.device, dt: torch.dtype):
    from transformers import AutoModelForCausalLM

    config = spec.hf_config()
    torch.manual_seed(seed)
    # Initialise on the target device when it is a GPU: a 1.5B-parameter init is much faster there.
    ctx = torch.device(dev) if dev.type == "cuda" else contextlib.nullcontext()
    with ctx, _quiet():
        model = AutoModelForCausalLM.from_config(config, dtype=dt)
    return model


def _pretrained_from_cache(name: str, dt: torch.dtype):
    from transformers import AutoModelForCausalLM

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        with _quiet():
            return AutoModelForCausalLM.from_pretrained(name, dtype=dt, local_files_only=True)
    except OSError:
        if offline:
            raise ModelNotFoundError(_not_cached_message(name)) from None
    try:  # not cached: try the hub once (users with network)
        with _quiet():
            return AutoModelForCausalLM.from_pretrained(name, dtype=dt)
    except OSError as e:
        raise ModelNotFoundError(_not_cached_message(name) + f" (download failed: {str(e).splitlines()[0]})") from None


def _not_cached_message(name: str) -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    return (
        f"pretrained weights for {name!r} are not in the HuggingFace cache ({HF_HUB_CACHE}) and cannot be "
        f"downloaded here. Use --weights random (full-size architecture, random weights, offline) or "
        f"--model PATH to a local checkpoint directory."
    )


def _from_checkpoint(path: Path, dt: torch.dtype):
    from transformers import AutoModelForCausalLM

    try:
        with _quiet():
            return AutoModelForCausalLM.from_pretrained(str(path), dtype=dt, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"could not load a checkpoint from {str(path)!r}: {str(e).splitlines()[0]}") from None


@contextlib.contextmanager
def _quiet():
    """Silence transformers' and TransformerLens' chatter (progress bars, notices) while loading."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tl_logger = logging.getLogger("transformer_lens")
    old = tl_logger.level
    tl_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()
        tl_logger.setLevel(old)
