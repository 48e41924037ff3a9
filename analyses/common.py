"""What every analysis shares: run options, opening the store with provenance, figures folder.

An analysis module holds four things (see README "Writing an analysis"):
  a ``Config`` (frozen dataclass, cheap validation only), ``prepare`` (stimuli ->
  token batch, every input error raised here before any model work), ``compute``
  (pure torch kernels) and ``plot`` (reads a run, writes figures); ``run`` wires them.

>>> opts = RunOptions(model="gpt2", weights="random")
>>> opts.out_for("qkv")
'runs/qkv-gpt2-random'
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lamina.engine.distributed import World, device_for, world as get_world
from lamina.engine.errors import InputError
from lamina.engine.inputs import TokenBatch
from lamina.engine.models import RANDOM_WEIGHTS_WARNING, LoadedModel, load_model
from lamina.engine.provenance import machine, versions
from lamina.engine.store import RunStore, check_writable, open_run


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """Options every ``lamina run`` command takes."""

    model: str  # table name (gpt2, ..., EleutherAI/gpt-neo-1.3B) or a checkpoint directory
    weights: str = "pretrained"  # "pretrained" | "random" (full-size architecture, random weights)
    seed: int = 0  # seed of the random weights and of every random baseline / permutation
    device: str = "auto"  # "auto" -> cuda when available, else cpu
    dtype: str = "float32"  # model dtype; statistics always accumulate in float32/float64
    out: str | None = None  # store path/URL; default runs/{experiment}-{model}[-random]
    overwrite: bool = False  # replace a complete run at ``out``
    micro_batch: int | None = None  # samples per forward; None = fits the device
    figures: bool = True  # write PNG + PDF figures into {out}/figures
    progress: bool = True  # progress bars

    def __post_init__(self):
        if self.weights not in ("pretrained", "random"):
            raise InputError(f"--weights must be 'pretrained' or 'random', not {self.weights!r}")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise InputError(f"--micro-batch must be >= 1, got {self.micro_batch}")

    def out_for(self, experiment: str) -> str:
        if self.out:
            return self.out
        slug = re.sub(r"[^A-Za-z0-9.]+", "-", Path(self.model).name if os.sep in self.model else self.model)
        return f"runs/{experiment}-{slug.strip('-')}" + ("-random" if self.weights == "random" else "")


@dataclasses.dataclass
class Session:
    """A loaded model plus the open store of one run."""

    model: LoadedModel
    store: RunStore
    world: World
    opts: RunOptions

    @property
    def device(self) -> torch.device:
        return self.model.device

    def generator(self, offset: int = 0) -> torch.Generator:
        """A seeded generator on the model's device (random baselines, permutations)."""
        g = torch.Generator(device=self.device)
        g.manual_seed(self.opts.seed + offset)
        return g


def start(
    experiment: str, opts: RunOptions, *, stimuli_sha256: str, options: Mapping[str, Any]
) -> Session:
    """Load the model and open (or resume) the store, with provenance. Inputs are validated before this."""
    w = get_world()
    out = opts.out_for(experiment)
    if w.is_main:
        check_writable(out)
    model = load_model(opts.model, weights=opts.weights, seed=opts.seed, device=device_for(w, opts.device),
                       dtype=opts.dtype)
    if model.is_random and w.is_main and opts.progress:
        print(f"lamina: {RANDOM_WEIGHTS_WARNING}")
    prov = {
        "lamina_version": versions().get("lamina"),
        "model": model.provenance(),
        "weights": model.weights,
        "seed": opts.seed,
        "dtype": opts.dtype,
        "device": str(model.device),
        "options": dict(options),
        "stimuli_sha256": stimuli_sha256,
        "versions": versions(),
        "machine": machine(),
        "world_size": w.size,
    }
    key = {"experiment": experiment, "model": opts.model, "weights": opts.weights, "seed": opts.seed,
           "dtype": opts.dtype, "options": dict(options), "stimuli": stimuli_sha256}
    store = _open_store(out, experiment, key, prov, opts.overwrite, w)
    return Session(model, store, w, opts)


def _open_store(out, experiment, key, prov, overwrite, w: World) -> RunStore:
    from lamina.engine.distributed import barrier, broadcast_object

    err = None
    store = None
    if w.is_main:
        try:
            store = RunStore.open(out, experiment=experiment, key=key, provenance=prov, overwrite=overwrite)
        except Exception as e:  # every rank must fail the same way, not hang in a barrier
            err = e
    err = broadcast_object(w, err)
    if err is not None:
        raise err
    if not w.is_main:
        store = RunStore.open(out, experiment=experiment, key=key, provenance=prov, rank=w.rank)
    barrier(w)
    return store


def figures_dir(store_url: str) -> Path:
    path = Path(store_url) / "figures"
    path.mkdir(parents=True, exist_ok=True)
    return path


def title_suffix(attrs: Mapping[str, Any]) -> str:
    """'gpt2, random weights (meaningless)' for figure titles."""
    model = attrs.get("model", {})
    name = Path(str(model.get("model", "?"))).name
    kind = attrs.get("weights", "?")
    return f"{name}, {kind} weights" + (" (MEANINGLESS)" if kind == "random" else "")


def finish(session: Session, plot_fn, summary: Mapping[str, Any]) -> str:
    """Finalise the store (status complete), then draw figures from what was stored."""
    from lamina.engine.distributed import barrier

    barrier(session.world)
    url = session.store.url
    if not session.world.is_main:
        return url
    session.store.finalise(summary=_jsonable(summary))
    if session.opts.figures:
        plot_fn(open_run(url), figures_dir(url))
    return url


def _jsonable(obj):
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def read_text_file(path: str | os.PathLike, what: str, fix: str) -> str:
    """The whole of a user's UTF-8 file; missing, not a file, unreadable or not UTF-8 is an
    InputError naming the file (``what`` file ...) and the ``fix``."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{what} file {str(p)!r} does not exist; {fix}")
    if not p.is_file():
        raise InputError(f"{what} file {str(p)!r} is not a file; {fix}")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{what} file {str(p)!r} is not UTF-8 text (byte {e.start}: {e.reason}); convert it, e.g. "
                         f"`iconv -t utf-8 {p.name} > {p.stem}.utf8{p.suffix}`") from None
    except OSError as e:
        raise InputError(f"{what} file {str(p)!r} cannot be read: {e.strerror}") from None


def read_lines(path: str | os.PathLike, what: str, fix: str) -> list[tuple[int, str]]:
    """(1-based line number, line) for every non-blank line of a user's file."""
    text = read_text_file(path, what, fix)
    return [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip()]


def put_batch(store: RunStore, batch: TokenBatch, **attrs: Any) -> None:
    """``inputs/tokens`` (sample, pos) and ``inputs/lengths`` (sample), int32: what the model was fed."""
    store.put("inputs/tokens", batch.tokens.numpy().astype(np.int32), dims=("sample", "pos"), attrs=attrs or None)
    store.put("inputs/lengths", batch.lengths.numpy().astype(np.int32), dims=("sample",))


def stimulus_path(name: str) -> Path:
    """A file shipped in lamina/analyses/stimuli/."""
    return Path(__file__).parent / "stimuli" / name
