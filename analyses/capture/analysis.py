"""``lamina capture``: named hooks for a list of texts, streamed into a run (no statistics).

>>> lamina.run("capture", model="gpt2", weights="random", out="runs/cap",
...            hooks=("blocks.{layer}.attn.hook_q",), text_file="texts.txt")   # doctest: +SKIP

From the command line (``--hook`` repeated) the hooks of one layer are concatenated along
the feature axis into ``acts/capture`` [layer, sample, (pos,) feature] (e.g. q, k and v);
from Python (:func:`lamina.capture` with ``out=``) each hook gets its own array, named as asked:
``acts/<template without 'blocks.{layer}.'>`` for a template, ``acts/<name>`` for an exact name.
"""

from __future__ import annotations

import re

from lamina.engine.errors import InputError
from lamina.engine.hooks import Capture, normalize_hooks, parse_layers
from lamina.engine.positions import per_text
from lamina.engine.provenance import sha256_texts

from ..kit import (
    Context,
    Data,
    ModelInfo,
    Pass,
    Results,
    Selector,
    Spec,
    TokenBatch,
    batch_inputs,
    encode_texts,
)
from ..textfiles import read_lines
from . import schema
from .config import Config

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def _selector(positions: str, batch: TokenBatch) -> Selector:
    chosen = per_text(positions, batch.lengths.tolist())  # out-of-range positions fail here, before the model loads
    if isinstance(chosen, str):
        return Selector.last() if chosen == "last" else Selector.every()
    return Selector.at([idx[0] for idx in chosen])


def array_name(template: str) -> str:
    """``acts/attn.hook_q`` for ``blocks.{layer}.attn.hook_q``; other names as they are."""
    return "acts/" + template.replace("blocks.{layer}.", "")


def spec(cfg: Config, model: ModelInfo) -> Spec:
    if cfg.tokens is not None:
        batch, stimuli = cfg.tokens, cfg.tokens.sha256()
    else:
        texts = list(cfg.texts) or [t for _, t in read_lines(cfg.text_file, "text",
                                                             "pass --text-file FILE (one text per line)")]
        batch = encode_texts(model.tokenizer, texts, n_ctx=model.n_ctx, what="text", bos_token_id=model.bos_token_id)
        stimuli = sha256_texts(texts)
    if cfg.chunk_samples is not None and cfg.chunk_samples > len(batch):
        raise InputError(f"--chunk-samples {cfg.chunk_samples} is more than the {len(batch)} texts; give at most "
                         f"{len(batch)} (or leave it out)")
    layer_list = parse_layers(cfg.layers, model.n_layers)
    select = _selector(cfg.positions, batch)
    names = [h.format(layer=layer_list[0]) if "{layer}" in h else h for h in cfg.hooks]
    groups = normalize_hooks(list(cfg.hooks), names, model.n_layers, layer_list)  # names checked after load
    if cfg.concat:
        per_layer = list(zip(*groups.values()))  # [layer entry][template] -> one group of hooks each
        if len({len(g) for g in groups.values()}) > 1:
            raise InputError(f"--hook {list(cfg.hooks)}: hooks with and without '{{layer}}' cannot be concatenated")
        hooks = tuple(tuple(h for g in entry for h in g) for entry in per_layer)
        caps = (Capture(schema.ACTS_CAPTURE, hooks, select, layer_labels=_labels(hooks)),)
    else:  # one array per template; hooks outside the blocks are labelled by name on a 'hook' axis of their own
        caps, outside = [], 0
        groups = {h: groups[h] if "{layer}" in h else ((h,),) for h in cfg.hooks}  # each as asked
        for t, g in groups.items():
            if "{layer}" in t:
                caps.append(Capture(array_name(t), g, select, layer_labels=_labels(g)))
            else:
                outside += 1
                caps.append(Capture(array_name(t), g, select, layer_dim="hook" if outside == 1 else f"hook{outside}",
                                    layer_labels=tuple(h for entry in g for h in entry)))
        caps = tuple(caps)
    return Spec(passes=(Pass(batch, caps, samples_per_chunk=cfg.chunk_samples),), stimuli_sha256=stimuli,
                inputs=batch_inputs(batch), options={"layers": layer_list}, state=len(batch))


def _labels(hooks) -> tuple[int, ...]:
    """Block number of each layer entry (-1 for hooks outside the blocks)."""
    return tuple(int(m.group(1)) if (m := _BLOCK.match(g[0])) else -1 for g in hooks)


def compute(data: Data, spec: Spec, cfg: Config, ctx: Context) -> Results:
    return {}


def summary(results, spec: Spec, cfg: Config) -> dict:
    return {"n_texts": spec.state, "hooks": list(cfg.hooks), "positions": cfg.positions}
