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
from lamina.engine.hooks import Capture, HookSpec, normalize_hooks
from lamina.engine.inputs import Selector, TokenBatch, encode_texts
from lamina.engine.models import LoadedModel
from lamina.engine.reader import Run

from . import registry
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
        chosen = {k: v for k, v in config.items() if cls is not None and k in fields[cls]}
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
    positions: str | Sequence[int] = "last",
    layers: Sequence[int] | None = None,
    out: str | None = None,
    overwrite: bool = False,
    micro_batch: int | None = None,
) -> dict[str, torch.Tensor] | Run:
    """Activations of ``hooks`` for ``texts`` (one batched hooked pass per micro-batch).

    >>> acts = lamina.capture(model, ["The cat sat.", "A dog ran far."], hooks="blocks.{layer}.attn.hook_q")  # doctest: +SKIP
    >>> acts["blocks.{layer}.attn.hook_q"].shape                 # [layer, sample, feature]   # doctest: +SKIP
    torch.Size([12, 2, 768])

    Args:
        model: from :func:`lamina.load_model`.
        texts: strings (tokenised without special tokens, with the model's BOS in front when its tokenizer
            adds one, right-padded) or a TokenBatch.
        hooks: a hook name, a ``{layer}`` template, a list of those, or a predicate on names.
        positions: ``"last"`` (last real token), ``"all"`` (every position: [layer, sample, pos, feature],
            pads zero) or one index per text.
        layers: blocks a ``{layer}`` template expands over (default all).
        out: None -> tensors in memory; a path/URL -> streamed into a run, which is returned.

    Returns:
        ``{template: Tensor[layer, sample, (pos,) feature]}`` float32 on the model's device, or the Run.
    """
    _check_capture_args(model, texts, positions, layers, micro_batch)
    batch = texts if isinstance(texts, TokenBatch) else encode_texts(
        model.tokenizer, list(texts), n_ctx=model.n_ctx, what="text", bos_token_id=model.info.bos_token_id)
    if out is not None:
        from .capture import ANALYSIS, Config
        from .runner import execute

        if not isinstance(positions, str):
            raise InputError("lamina.capture(out=...): positions must be 'last', 'all' or an index (the same for "
                             "every text); per-text indices work in memory (out=None)")
        if callable(hooks):  # a predicate: the names it picks, as a list
            groups = normalize_hooks(hooks, model.bridge.hook_dict.keys(), model.n_layers, layers)
            hooks = [name for g in groups.values() for entry in g for name in entry]
        cfg = Config(hooks=tuple([hooks] if isinstance(hooks, str) else hooks), layers=_layers_spec(layers),
                     positions=positions, concat=False, tokens=batch)
        return execute(ANALYSIS, cfg, RunOptions(out=out, overwrite=overwrite, micro_batch=micro_batch,
                                                 figures=False, progress=False), model=model, echo=lambda s: None)
    if isinstance(positions, str):
        select = {"last": Selector.last(), "all": Selector.every()}.get(positions)
        if select is None:
            raise InputError(f"positions must be 'last', 'all' or one index per text, not {positions!r}")
    else:
        select = Selector.at(list(positions))
    groups = normalize_hooks(hooks, model.bridge.hook_dict.keys(), model.n_layers, layers)
    caps = [Capture(template, g, select) for template, g in groups.items()]
    return capture_arrays(model, batch, caps, micro_batch=micro_batch)


def _check_capture_args(model, texts, positions, layers, micro_batch) -> None:
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
    if not isinstance(positions, str):
        if isinstance(positions, (bytes, numbers.Number)) or not isinstance(positions, Sequence):
            raise InputError(f"lamina.capture(positions=...): positions must be 'last', 'all' or a list of one "
                             f"integer position per text, not {positions!r}")
        bad = [p for p in positions if isinstance(p, bool) or not isinstance(p, numbers.Integral)]
        if bad:
            raise InputError(f"lamina.capture(positions=...): positions must be integers (token indices), not "
                             f"{bad[0]!r}")
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


def _layers_spec(layers: Sequence[int] | None) -> str:
    return "all" if layers is None else ",".join(str(int(l)) for l in layers)
