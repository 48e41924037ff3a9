"""The Python front door's verbs, re-exported by ``import lamina``: ``run`` and ``capture``.

>>> run = lamina.run("rsa", model="gpt2-large", weights="random", permutations=200)   # doctest: +SKIP
>>> run.numpy("results/selectivity").shape                                          # doctest: +SKIP
(3, 36)
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Sequence
from typing import Any

import torch

from lamina.engine.capture import capture_arrays
from lamina.engine.errors import InputError
from lamina.engine.fastpath import hook_points
from lamina.engine.hooks import Capture, HookSpec
from lamina.engine.inputs import TokenBatch, encode_texts
from lamina.engine.positions import canonical
from lamina.engine.models import LoadedModel
from lamina.engine.reader import Run

from . import registry
from .capture_memory import RETURN_TYPES, finish, plan_positions, requested
from .cli_config import check_values
from .options import RunOptions


def run(analysis: str, *, model: str | LoadedModel | None = None, out: str | None = None, **config: Any) -> Run:
    """Run a registered analysis, exactly as ``lamina run NAME`` does; returns the complete run.

    Keyword arguments are the options every run takes (``weights``, ``seed``, ``device``, ``dtype``,
    ``overwrite``, ``micro_batch``, ``figures``, ``progress``), the analysis' Config fields and its
    figure options, by name. ``model`` may also be a model already loaded with :func:`lamina.load_model`.

    >>> run = lamina.run("qkv", model="gpt2", weights="random", out="runs/qkv", layer=3)  # doctest: +SKIP
    """
    a = registry.get(analysis)
    fields = {cls: {f.name for f in dataclasses.fields(cls)} for cls in (RunOptions, a.Config, a.PlotOptions) if cls}
    unknown = sorted(set(config) - set().union(*fields.values()))
    if unknown:
        known = sorted(set().union(*fields.values()) - {"model", "out"})
        raise InputError(f"lamina.run({analysis!r}): unknown option(s) {unknown}; known: {known}")

    def pick(cls):
        chosen = {k: v for k, v in config.items() if cls is not None and k in fields[cls]
                  and (cls is a.Config or k not in fields[a.Config])}  # a Config's own option (capture's layers)
        if cls is not None:
            check_values(cls, chosen, f"lamina.run({analysis!r})")
        return chosen

    loaded = model if isinstance(model, LoadedModel) else None
    opts = RunOptions(model=None if loaded else model, out=out, **pick(RunOptions))
    from .runner import execute

    return execute(a, a.Config(**pick(a.Config)), opts, figure_options=pick(a.PlotOptions), model=loaded,
                   echo=lambda s: None)


def capture(
    model: LoadedModel,
    texts: Sequence[str] | TokenBatch,
    *,
    hooks: HookSpec,
    positions: str | int | Sequence[int] | Sequence[Sequence[int]] = "last",
    layers: Sequence[int] | None = None,
    out: str | None = None,
    overwrite: bool = False,
    micro_batch: int | None = None,
    return_type: str = "torch",
) -> dict[str, torch.Tensor] | dict[str, Any] | Any | Run:
    """Activations of ``hooks`` for ``texts`` (one batched hooked pass per micro-batch), keyed exactly as asked.

    >>> acts = lamina.capture(model, ["The cat sat.", "A dog ran."],                      # doctest: +SKIP
    ...                       hooks="blocks.{layer}.attn.hook_q")
    >>> acts["blocks.{layer}.attn.hook_q"].shape                 # [layer, sample, feature]   # doctest: +SKIP
    torch.Size([12, 2, 768])
    >>> q2 = lamina.capture(model, texts, hooks="blocks.2.attn.hook_q", positions=1)    # doctest: +SKIP
    >>> q2["blocks.2.attn.hook_q"].shape                         # [sample, feature]          # doctest: +SKIP
    torch.Size([2, 768])

    Args:
        model: from :func:`lamina.load_model`.
        texts: strings (tokenised without special tokens, with the model's BOS in front when its tokenizer
            adds one, right-padded) or a TokenBatch.
        hooks: a hook name (key: that name, [sample, (pos,) feature]), a ``{layer}`` template (key: the template,
            [layer, sample, (pos,) feature]), a list of those (each its own key), or a predicate on names (each
            name it picks). ``lamina hooks MODEL`` lists them.
        positions: ``"last"`` (last real token), ``"all"`` (every position, [.., sample, pos, feature], pads
            zero), one index for every text (``1``; ``-1`` = last), one index per text (``[3, 5]``), or a list
            of indices per text (``[[0, 1], [2]]``: [.., sample, pos, feature], missing ones NaN; in memory
            only). The same as ``--positions`` (``last``, ``all``, ``1``, ``3,5``, ``0+1,2``).
        layers: blocks a ``{layer}`` template expands over (default all).
        out: None -> arrays in memory; a path/URL -> streamed into a run, which is returned.
        return_type: ``"torch"`` (float32 on the model's device), ``"numpy"``, or ``"xarray"`` (a Dataset: one
            variable per key with dims (layer,) sample, (pos,) feature, and coordinates layer, sample, length,
            position).

    Returns:
        ``{key: array}``, an ``xarray.Dataset``, or (``out=``) the Run.
    """
    _check_capture_args(model, texts, layers, micro_batch)
    if return_type not in RETURN_TYPES:
        raise InputError(f"lamina.capture(return_type=...): must be one of {', '.join(RETURN_TYPES)}, not "
                         f"{return_type!r}")
    try:
        spec = canonical(positions)
    except InputError as e:
        raise InputError(f"lamina.capture(positions=...): {e}") from None
    batch = texts if isinstance(texts, TokenBatch) else encode_texts(
        model.tokenizer, list(texts), n_ctx=model.n_ctx, what="text", bos_token_id=model.info.bos_token_id)
    groups = requested(hooks, hook_points(model.bridge).keys(), model.n_layers, layers)
    if out is not None:
        from .capture import ANALYSIS, Config
        from .runner import execute

        stimuli = {"texts": tuple(texts)} if not isinstance(texts, TokenBatch) else {"tokens": batch}
        cfg = Config(hooks=_as_asked(groups, layers, model.n_layers), layers=_layers_spec(layers), positions=spec,
                     concat=False, **stimuli)
        return execute(ANALYSIS, cfg, RunOptions(out=out, overwrite=overwrite, micro_batch=micro_batch,
                                                 figures=False, progress=False), model=model, echo=lambda s: None)
    items = positions.tolist() if hasattr(positions, "tolist") else positions
    nested = not isinstance(items, (str, numbers.Integral)) and any(not isinstance(p, numbers.Integral) for p in items)
    select, table = plan_positions(spec, batch, nested)  # a list of lists always has its pos axis
    caps = [Capture(key, g, select) for key, g in groups.items()]
    arrays = capture_arrays(model, batch, caps, micro_batch=micro_batch)
    return finish(arrays, groups, batch, spec, table, return_type)


def _check_capture_args(model, texts, layers, micro_batch) -> None:
    """One InputError naming the parameter for each argument of :func:`capture` that cannot be used as given."""
    if not isinstance(model, LoadedModel):
        hint = f"; load it first: model = lamina.load_model({str(model)!r})" if isinstance(model, (str, os.PathLike)) \
            else ""
        raise InputError(f"lamina.capture(model=...): model must be a model from lamina.load_model, not a "
                         f"{type(model).__name__}{hint}")
    if not isinstance(texts, TokenBatch):
        if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
            raise InputError(f"lamina.capture(texts=...): texts must be a list of strings (one per text), not a "
                             f"{type(texts).__name__}; for one text write texts=[{str(texts)[:30]!r}]")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InputError(f"lamina.capture(texts=...): texts[{i}] is {t!r}, not a string")
    if micro_batch is not None and (isinstance(micro_batch, bool) or not isinstance(micro_batch, numbers.Integral)
                                    or micro_batch < 1):
        raise InputError(f"lamina.capture(micro_batch=...): micro_batch must be a positive integer (samples per "
                         f"forward pass) or None for automatic, not {micro_batch!r}")
    if layers is not None:
        if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
            raise InputError(f"lamina.capture(layers=...): layers must be a list of block numbers or None (all), not "
                             f"{layers!r}")
        if len(layers) == 0:
            raise InputError("lamina.capture(layers=...): layers is empty; give at least one block number, or "
                             "layers=None for every block")
        bad = [v for v in layers if isinstance(v, bool) or not isinstance(v, numbers.Integral)]
        if bad:
            raise InputError(f"lamina.capture(layers=...): layers must be integers (block numbers), not {bad[0]!r}")


def _as_asked(groups: dict, layers: Sequence[int] | None, n_layers: int) -> tuple[str, ...]:
    """The hooks for the run's Config: templates as they are, unless (a predicate's) picked fewer blocks than
    ``layers``: then its exact names."""
    want = [f"{int(l)}" for l in (range(n_layers) if layers is None else layers)]
    out: list[str] = []
    for key, g in groups.items():
        names = [h for entry in g for h in entry]
        full = "{layer}" not in key or [n.split(".")[1] for n in names] == want
        out.extend([key] if full else names)
    return tuple(out)


def _layers_spec(layers: Sequence[int] | None) -> str:
    return "all" if layers is None else ",".join(str(int(l)) for l in layers)
