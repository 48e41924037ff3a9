"""The two runs of ``lamina similarity``: opened, checked to hold the same tokens, read chunk by chunk.

>>> a, b = open_pair("runs/cka-gpt2", "runs/cka-gpt2-random")        # doctest: +SKIP
>>> next(token_blocks(a, b, "cpu"))[0].shape                        # doctest: +SKIP
torch.Size([12, 1024, 768])
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from lamina.engine import destination as dst
from lamina.engine.errors import InputError, LaminaError
from lamina.engine.reader import Run, open_run
from lamina.engine.verify import verify

from .schema import EXPERIMENT, INCLUDE, LENGTHS, TOKENS


@dataclasses.dataclass(frozen=True)
class Side:
    """One run and its activations: the array, its layer labels, and which tokens are samples."""

    run: Run
    acts: str
    layers: list


def _acts_of(run: Run, acts: str | None, flag: str) -> str:
    names = [n for n in run.arrays() if n.startswith("acts/") and run.dims(n)[:2] == ("layer", "sample")]
    if acts is not None:
        name = acts if acts.startswith("acts/") else f"acts/{acts}"
        if name not in names:
            raise InputError(f"{run.url!r} has no per-layer activations {name!r} (it has: {', '.join(names) or 'none'})"
                             f"; give {flag} with one of those")
        return name
    if len(names) != 1:
        what = ", ".join(names) or "none: make it with its activations kept (lamina run cka, no --no-store-acts)"
        raise InputError(f"{run.url!r} holds {len(names)} activation arrays ({what}); "
                         + (f"give {flag} NAME" if names else "lamina similarity needs per-token activations"))
    return names[0]


def _open(url: str | os.PathLike) -> Run:
    """``open_run``, with a path inside a run (``RUN/acts``) answered with the run's folder."""
    try:
        return open_run(url)
    except LaminaError:
        above = dst.enclosing_group(dst.local_path(str(url))) if dst.is_local(str(url)) else None
        if above is not None and dst.is_run(dst.read_attrs(str(above))):
            raise InputError(f"{str(url)!r} is inside the lamina run {str(above)!r}; give the run's folder "
                             f"({str(above)!r})") from None
        raise


def open_pair(run_a: str | os.PathLike | Run, run_b: str | os.PathLike | Run, acts_a: str | None = None,
              acts_b: str | None = None) -> tuple[Side, Side]:
    """Both runs opened and checked: complete, not the same run, the same ``inputs/tokens``, activations of the
    same samples."""
    for side, r in (("run_a", run_a), ("run_b", run_b)):
        if not isinstance(r, (str, os.PathLike, Run)) or not str(r).strip():
            raise InputError(f"{side} must be the folder (or URL) of a lamina run, or a lamina Run; got {r!r}")
    runs = [r if isinstance(r, Run) else _open(r) for r in (run_a, run_b)]
    if os.path.realpath(str(runs[0].url)) == os.path.realpath(str(runs[1].url)):
        raise InputError(f"{runs[0].url!r} is given twice; compare two different runs")
    for r in runs:
        if r.experiment == EXPERIMENT:
            raise InputError(f"{r.url!r} is a lamina similarity folder (a comparison), not a run; give the two runs "
                             "it compared (`lamina info` shows them) or other runs with activations")
        if not r.complete:
            raise InputError(f"{r.url!r} is {r.status}: finish it (run the same command again) before comparing it")
        if TOKENS not in r:
            raise InputError(f"{r.url!r} has no {TOKENS}: lamina similarity compares runs made on the same tokens")
    ta, tb = runs[0].numpy(TOKENS), runs[1].numpy(TOKENS)
    if ta.shape != tb.shape or not np.array_equal(ta, tb):
        raise InputError(f"{runs[0].url!r} and {runs[1].url!r} were made on different tokens (inputs/tokens "
                         f"{ta.shape} vs {tb.shape}{'' if ta.shape != tb.shape else ', different ids'}); run both on "
                         "the same text and model tokenizer")
    sides = [Side(r, name, r.labels(name, "layer")) for r, name in zip(runs, (_acts_of(runs[0], acts_a, "--acts-a"),
                                                                          _acts_of(runs[1], acts_b, "--acts-b")))]
    for s in sides:  # what is read must be what lamina wrote (a damaged chunk would be read as data)
        verify(s.run, arrays=[n for n in (TOKENS, INCLUDE, LENGTHS, s.acts) if n in s.run]).raise_if_bad(
            "comparing it")
    sa, sb = (s.run[s.acts].shape for s in sides)
    if len(sa) != len(sb) or sa[1:-1] != sb[1:-1]:
        raise InputError(f"{sides[0].acts} {tuple(sa)} of {runs[0].url!r} and {sides[1].acts} {tuple(sb)} of "
                         f"{runs[1].url!r} do not hold the same samples and positions; capture both the same way")
    return sides[0], sides[1]


def sample_mask(a: Side, b: Side) -> np.ndarray:
    """[sample, pos] bool (or [sample] for one-position captures): the tokens that are samples, the same in both
    runs (``inputs/include`` of a cka run, else every real token)."""
    shape = a.run[a.acts].shape
    if len(shape) == 3:
        return np.ones(shape[1], dtype=bool)
    masks = [s.run.numpy(INCLUDE).astype(bool) for s in (a, b) if INCLUDE in s.run]
    if len(masks) == 2 and not np.array_equal(*masks):
        raise InputError(f"{a.run.url!r} and {b.run.url!r} count different tokens as samples ({INCLUDE}); compare "
                         "runs made the same way")
    if masks:
        return masks[0]
    lengths = a.run.numpy(LENGTHS)
    return np.arange(shape[2])[None, :] < lengths[:, None]


def token_blocks(a: Side, b: Side, mask: np.ndarray, device: torch.device,
                 samples: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """(A [La, t, p], B [Lb, t, q]) float32 on ``device``: the sample tokens of consecutive blocks of samples (the
    arrays' own chunks along samples, or ``samples``), in (sample, pos) order."""
    arr_a, arr_b = a.run[a.acts], b.run[b.acts]
    n = arr_a.shape[1]
    step = samples or max(arr_a.chunks[1], 1)
    for s0 in range(0, n, step):
        s1 = min(s0 + step, n)
        keep = torch.from_numpy(mask[s0:s1]).to(device)
        xa = torch.from_numpy(np.asarray(arr_a[:, s0:s1], dtype=np.float32)).to(device)
        xb = torch.from_numpy(np.asarray(arr_b[:, s0:s1], dtype=np.float32)).to(device)
        if bool(keep.any()):
            yield xa[:, keep], xb[:, keep]
