"""Where a model comes from: a local checkpoint folder, the HuggingFace cache or hub, or a config.

``resolve(name, weights=, revision=, config=)`` reads configs only - never weights - and
decides:

- a GGUF file (``*.gguf``, or a packaged name such as ``smollm2-135m``): dequantised once into
  a checkpoint folder in lamina's cache (engine/gguf.py), then read as one (``source = "gguf"``);
- a local folder (``name`` exists, starts with ``/ . ~`` or has more than one ``/``):
  its ``config.json``, weights and tokenizer (``source = "checkpoint"``);
- a hub id (``org/name`` or ``name``), ``weights="pretrained"``: the cached snapshot of
  ``revision`` (default ``main``) under ``$HF_HUB_CACHE`` / ``$HF_HOME/hub`` - config,
  weights and tokenizer all from that one snapshot folder, whose name is the commit
  hash recorded as ``revision``. Not cached and the hub reachable (no
  ``HF_HUB_OFFLINE``): ``config.json`` is downloaded first, the architecture checked,
  and only then the weights (``fetch_weights``);
- ``weights="random"``: the config from ``config=PATH`` (a config.json or a folder with
  one), else the GGUF's or the checkpoint folder's own, else lamina's shipped table
  (engine/model_configs.py) unless a ``revision`` is pinned, else the cached snapshot's
  ``config.json``, else the hub's - with the tokenizer of that same source (an untrained
  control tokenises exactly like the trained model).

Every path checks the architecture (engine/model_support.py) before anything else is
loaded.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from .chatter import quiet  # noqa: F401  (re-exported: engine modules silence loading with it)
from .errors import InputError, ModelNotFoundError
from .gguf import dequantised_folder, is_gguf_name
from .model_configs import SHIPPED_CONFIGS, shipped_name
from .model_support import check_architecture

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "tokenizer_config.json")
SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
PYTORCH_BIN = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "merges.txt", "vocab.txt"]


@dataclasses.dataclass(frozen=True)
class ResolvedSource:
    """A model's config and where its weights and tokenizer are (no weights read yet)."""

    name: str  # as given (the table key for shipped names)
    kind: str  # "pretrained" | "random" | "checkpoint" | "gguf"
    config: dict  # config.json contents
    config_source: str  # "table" | "hf-cache" | "hub" | "config-file" | "checkpoint" | "gguf"
    architecture: str
    family: str
    folder: Path | None = None  # checkpoint folder or hub snapshot folder (config, maybe weights and tokenizer)
    revision: str | None = None  # commit hash of the snapshot
    config_path: str | None = None
    tokenizer_dir: Path | None = None  # the model's own tokenizer when it is not in ``folder``
    gguf: dict | None = None  # a GGUF source's provenance (file, sha256, quantisation types, tokenizer)
    local: bool = False  # a checkpoint folder (or GGUF file) the user named: its tokenizer is never guessed

    @property
    def tokenizer_folder(self) -> Path | None:
        """A folder holding the model's own tokenizer files, if one is available offline."""
        if self.tokenizer_dir is not None:
            return self.tokenizer_dir
        if self.folder is not None and has_tokenizer(self.folder):
            return self.folder
        if not self.local:  # random weights of a hub name: its cached tokenizer, if any
            snap = cached_snapshot(self.name, self.revision)
            if snap is not None and has_tokenizer(snap):
                return snap
        return None


def hub_cache_dir() -> Path:
    """The HuggingFace hub cache, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(xdg) / "huggingface" / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() not in ("0", "", "false", "no", "off")


def is_local_path(name: str) -> bool:
    """A folder path rather than a hub id (``org/name``)."""
    if Path(name).expanduser().exists():
        return True
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name or os.sep != "/" and os.sep in name


def has_tokenizer(folder: Path) -> bool:
    return any((folder / f).exists() for f in TOKENIZER_FILES)


def read_config_json(path: Path, what: str) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelNotFoundError(f"{what} {str(path)!r} cannot be read as JSON ({e}); re-save it") from None
    if not isinstance(config, dict):
        raise ModelNotFoundError(f"{what} {str(path)!r} is not a JSON object; re-save it with save_pretrained")
    return config


def cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The cached snapshot folder holding ``config.json`` of ``repo_id`` at ``revision``, or None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json", cache_dir=str(hub_cache_dir()),
                                       revision=revision or "main")
    except Exception:  # an id the hub would reject: simply not cached
        return None
    return Path(found).parent if isinstance(found, str) else None


def weight_files(folder: Path) -> list[Path]:
    """The weight files a checkpoint folder holds (all shards of an index), or [] if any is missing."""
    for single, index in (SAFETENSORS, PYTORCH_BIN):
        if (folder / index).exists():
            try:
                shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError):
                return []
            files = [folder / s for s in shards]
            return files if all(f.exists() for f in files) else []
        if (folder / single).exists():
            return [folder / single]
    return []


def check_weight_files(files: list[Path]) -> None:
    """A truncated or corrupt safetensors file is a ``ModelNotFoundError`` naming it (header read only)."""
    for f in files:
        if f.suffix != ".safetensors":
            continue
        try:
            size = f.stat().st_size
            with open(f, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                if size < 8 or n <= 0 or 8 + n > size:
                    raise ValueError(f"header of {n} bytes does not fit in {size} bytes")
                header = json.loads(fh.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            if 8 + n + end > size:
                raise ValueError(f"{size} bytes, but its header describes {8 + n + end}")
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
            raise ModelNotFoundError(
                f"weights file {str(f)!r} is truncated or corrupt ({e}); download or save it again"
            ) from None


def resolve(name: str, *, weights: str = "pretrained", revision: str | None = None,
            config: str | os.PathLike | None = None) -> ResolvedSource:
    """See the module docstring. Reads configs only; errors are lamina errors with the fix."""
    if weights not in ("pretrained", "random"):
        raise InputError(f"weights must be 'pretrained' or 'random', not {weights!r}")
    if config is not None and weights != "random":
        raise InputError("config= gives the architecture of random weights; use it with --weights random")
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"model name must be a hub id or a folder path, not {name!r}")
    if is_gguf_name(name):
        return _gguf(name, weights, revision, config)
    if is_local_path(name) and config is None:
        return _local(name, weights, revision)
    if weights == "random":
        return _random(name, revision, config)
    return _pretrained(name, revision)


def _local(name: str, weights: str, revision: str | None) -> ResolvedSource:
    path = Path(name).expanduser()
    if path.is_file():
        raise ModelNotFoundError(
            f"--model {str(path)!r} is a file, not a checkpoint folder; pass the folder that holds config.json "
            "and the weights (a model.safetensors file alone is not enough)"
        )
    if not path.is_dir():
        raise ModelNotFoundError(f"checkpoint directory {str(path)!r} does not exist")
    if not (path / "config.json").exists():
        raise ModelNotFoundError(
            f"checkpoint directory {str(path)!r} has no config.json; save it with `model.save_pretrained(path)`"
        )
    if revision is not None:
        raise InputError(f"revision= pins a hub commit, but {name!r} is a local folder; drop the revision")
    cfg = read_config_json(path / "config.json", "config")
    arch, family = check_architecture(cfg, name)
    kind = "random" if weights == "random" else "checkpoint"  # random: the folder's architecture and tokenizer
    return ResolvedSource(name, kind, cfg, "checkpoint", arch, family, folder=path.resolve(),
                          config_path=str((path / "config.json").resolve()), local=True)


def _gguf(name: str, weights: str, revision: str | None, config) -> ResolvedSource:
    """A GGUF file: its dequantised checkpoint folder in lamina's cache (built on first use)."""
    if revision is not None:
        raise InputError(f"revision= pins a hub commit, but {name!r} is a GGUF file; drop the revision")
    if config is not None:
        raise InputError(f"config= gives the architecture of random weights, but the GGUF file {name!r} holds its own "
                         f"config; use --model {name} --weights random without --config")
    folder, prov = dequantised_folder(name)
    cfg = read_config_json(folder / "config.json", "dequantised config")
    arch, family = check_architecture(cfg, name)
    kind = "random" if weights == "random" else "gguf"
    return ResolvedSource(name.strip(), kind, cfg, "gguf", arch, family, folder=folder,
                          config_path=str(folder / "config.json"), gguf=prov, local=True)


def _random(name: str, revision: str | None, config) -> ResolvedSource:
    if config is not None:
        path = Path(config).expanduser()
        file = path / "config.json" if path.is_dir() else path
        if not file.is_file():
            raise ModelNotFoundError(
                f"config {str(path)!r} is neither a config.json file nor a folder holding one"
            )
        cfg = read_config_json(file, "config")
        arch, family = check_architecture(cfg, name)
        own = _local_tokenizer(name, file.parent)
        return ResolvedSource(name, "random", cfg, "config-file", arch, family, config_path=str(file.resolve()),
                              tokenizer_dir=own, local=_is_checkpoint(name))
    key = shipped_name(name)
    if key is not None and revision is None:
        cfg = dict(SHIPPED_CONFIGS[key])
        arch, family = check_architecture(cfg, key)
        return ResolvedSource(key, "random", cfg, "table", arch, family)
    snap = cached_snapshot(name, revision)
    if snap is not None:
        cfg = read_config_json(snap / "config.json", "cached config")
        arch, family = check_architecture(cfg, name)
        return ResolvedSource(name, "random", cfg, "hf-cache", arch, family, folder=snap, revision=snap.name,
                              config_path=str(snap / "config.json"))
    if not offline():
        file = _download_config(name, revision)
        cfg = read_config_json(file, "downloaded config")
        arch, family = check_architecture(cfg, name)
        return ResolvedSource(name, "random", cfg, "hub", arch, family, folder=file.parent, revision=file.parent.name,
                              config_path=str(file))
    why = cache_diagnosis(name, revision)
    if why is not None:
        raise ModelNotFoundError(f"model {name!r}{_at(revision)} is in the HuggingFace cache but its config cannot "
                                 f"be read offline: {why}. Pass config=PATH (--config), or a shipped name")
    raise ModelNotFoundError(
        f"model {name!r} has no config here: it is neither a known name (lamina's shipped configs: "
        f"{', '.join(SHIPPED_CONFIGS)}) nor in the HuggingFace cache ({hub_cache_dir()}){_at(revision)}, and the hub "
        "cannot be reached (HF_HUB_OFFLINE). Pass config=PATH (a config.json or a folder holding one) or a shipped "
        "name."
    )


def _local_tokenizer(name: str, config_folder: Path) -> Path | None:
    """With ``config=``: the tokenizer of the folder named as the model, else of the config's own folder."""
    for folder in (Path(name).expanduser(), config_folder):
        if is_local_path(str(folder)) and folder.is_dir() and has_tokenizer(folder):
            return folder.resolve()
    return None


def _is_checkpoint(name: str) -> bool:
    """``name`` is a checkpoint folder (config and weights) on disk."""
    path = Path(name).expanduser()
    return is_local_path(name) and path.is_dir() and bool(weight_files(path))


def _pretrained(name: str, revision: str | None) -> ResolvedSource:
    snap = cached_snapshot(name, revision)
    if snap is not None:
        cfg = read_config_json(snap / "config.json", "cached config")
        arch, family = check_architecture(cfg, name)
        if weight_files(snap) or not offline():
            return ResolvedSource(name, "pretrained", cfg, "hf-cache", arch, family, folder=snap, revision=snap.name,
                                  config_path=str(snap / "config.json"))
    if offline():
        raise ModelNotFoundError(not_cached_message(name, revision))
    file = _download_config(name, revision)
    cfg = read_config_json(file, "downloaded config")
    arch, family = check_architecture(cfg, name)  # before any weights are downloaded
    return ResolvedSource(name, "pretrained", cfg, "hub", arch, family, folder=file.parent, revision=file.parent.name,
                          config_path=str(file))


def fetch_weights(src: ResolvedSource) -> list[Path]:
    """The weight files of a checkpoint or hub snapshot, downloading the snapshot when needed and allowed."""
    assert src.folder is not None
    files = weight_files(src.folder)
    if not files and src.kind == "pretrained" and not offline():
        from huggingface_hub import snapshot_download

        try:
            with quiet():
                folder = Path(snapshot_download(src.name, revision=src.revision, cache_dir=str(hub_cache_dir()),
                                                allow_patterns=_DOWNLOAD_PATTERNS))
                if not weight_files(folder):  # an older repo with PyTorch .bin weights only
                    folder = Path(snapshot_download(src.name, revision=src.revision, cache_dir=str(hub_cache_dir()),
                                                    allow_patterns=["pytorch_model*.bin", "pytorch_model*.json"]))
        except Exception as e:
            raise ModelNotFoundError(not_cached_message(src.name, src.revision)
                                     + f" (download failed: {str(e).splitlines()[0] if str(e) else type(e).__name__})"
                                     ) from None
        files = weight_files(folder)
    if not files:
        where = "checkpoint directory" if src.local else "cached snapshot"
        if src.kind == "pretrained" and offline():
            raise ModelNotFoundError(not_cached_message(src.name, src.revision))
        raise ModelNotFoundError(
            f"{where} {str(src.folder)!r} has a config.json but no weights (model.safetensors, "
            "model.safetensors.index.json with its shards, or pytorch_model.bin); save or download them again"
        )
    check_weight_files(files)
    return files


def _download_config(name: str, revision: str | None) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        with quiet():
            return Path(hf_hub_download(name, "config.json", revision=revision, cache_dir=str(hub_cache_dir())))
    except Exception as e:  # not found, gated, no network
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelNotFoundError(
            f"model {name!r}{_at(revision)} could not be fetched from the HuggingFace hub ({first}). Check the id "
            "(org/name) and your access; or use --weights random (offline) or --model PATH to a local checkpoint."
        ) from None


def _at(revision: str | None) -> str:
    return f" at revision {revision!r}" if revision else ""


def cache_diagnosis(name: str, revision: str | None = None) -> str | None:
    """Why a repo that IS in the HuggingFace cache cannot be used at ``revision`` offline; None when the
    cache holds no folder for it."""
    from huggingface_hub.file_download import repo_folder_name

    repo = hub_cache_dir() / repo_folder_name(repo_id=name, repo_type="model")
    if not repo.is_dir():
        return None
    rev = revision or "main"
    refs = {p.name: p.read_text().strip() for p in (repo / "refs").glob("*") if p.is_file()}
    snaps = sorted(p.name for p in (repo / "snapshots").glob("*") if p.is_dir())
    commit = refs.get(rev, rev)
    snap = repo / "snapshots" / commit
    if not snap.is_dir():
        if rev in refs:
            return f"its refs/{rev} points at snapshot {commit}, which is not in {str(repo / 'snapshots')!r}"
        have = ", ".join([f"refs {sorted(refs)}"] * bool(refs) + [f"snapshots {snaps}"] * bool(snaps)) or "nothing"
        return f"revision {rev!r} is not cached (the cache holds {have}); pass a cached --revision"
    if not (snap / "config.json").is_file():
        return f"the cached snapshot {str(snap)!r} has no config.json"
    if not weight_files(snap):
        return f"the cached snapshot {str(snap)!r} has a config.json but no (complete) weights"
    return None


def not_cached_message(name: str, revision: str | None = None) -> str:
    why = cache_diagnosis(name, revision)
    if why is not None:
        return (f"model {name!r}{_at(revision)} is in the HuggingFace cache but cannot be loaded offline: {why}. "
                f"Download it again when online (`huggingface-cli download {name}`), or use --weights random "
                "(full-size architecture, random weights, offline)")
    known = shipped_name(name) is not None
    what = f"pretrained weights for {name!r}" if known else f"model {name!r} is neither a known name nor a local " \
        "checkpoint directory, and its pretrained weights"
    return (
        f"{what}{_at(revision)} are not in the HuggingFace cache ({hub_cache_dir()}) and cannot be downloaded here "
        "(HF_HUB_OFFLINE). Use --weights random (full-size architecture, random weights, offline) or --model PATH "
        "to a local checkpoint directory."
    )
