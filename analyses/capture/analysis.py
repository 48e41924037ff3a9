"""``lamina capture``: named hooks for a list of texts, streamed into a run (no statistics).

>>> lamina.run("capture", model="gpt2", weights="random", out="runs/cap",
...            hooks=("blocks.{layer}.attn.hook_q",), text_file="texts.txt")   # doctest: +SKIP

From the command line (``--hook`` repeated) the hooks of one layer are concatenated along
the feature axis into ``acts/capture`` [layer, sample, (pos,) feature] (e.g. q, k and v);
from Python (:func:`lamina.capture` with ``out=``) each hook gets its own array, named as asked:
``acts/<template without 'blocks.{layer}.'>`` for a template, ``acts/<name>`` for an exact name.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional

from lamina.engine.errors import InputError
from lamina.engine.hooks import Capture, normalize_hooks, parse_layers
from lamina.engine.positions import HELP as POSITIONS_HELP
from lamina.engine.positions import canonical, is_multi, per_text
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
    option,
)
from ..textfiles import read_lines
from . import schema

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


@dataclasses.dataclass(frozen=True)
class Config:
    """Options of ``lamina capture`` / ``lamina run capture``."""

    hooks: tuple[str, ...] = option((), "Hook name; '{layer}' expands over --layers. Repeat to concatenate "
                                        "features (e.g. q, k, v).", flags=("--hook",))
    text_file: Optional[str] = option(None, "Texts, one per line.")
    layers: str = option("all", "Layers: all, 6, 0,3,5 or 2-7.")
    positions: str = option("last", POSITIONS_HELP + ".")
    chunk_samples: Optional[int] = option(None, "Samples per store chunk (default: chunks of >= 1 MiB).")
    concat: bool = option(True, "Concatenate the hooks of a layer into one array (acts/capture).", cli=False)
    texts: tuple[str, ...] = option((), "Texts given directly (Python only).", cli=False)
    tokens: Any = option(None, "A TokenBatch given directly (Python only).", cli=False)

    def __post_init__(self):
        if not self.hooks:
            raise InputError("no hooks: pass --hook NAME (e.g. 'blocks.{layer}.attn.hook_q'), once or more")
        if self.chunk_samples is not None and (isinstance(self.chunk_samples, bool) or self.chunk_samples < 1):
            raise InputError(f"--chunk-samples must be a positive number of samples, got {self.chunk_samples}")
        given = sum(x is not None and x != () for x in (self.text_file, self.texts or None, self.tokens))
        if given != 1:
            raise InputError("give the texts once: --text-file FILE (or, from Python, texts= or a token batch)")
        object.__setattr__(self, "positions", canonical(self.positions))  # "0, 1" and [0, 1] -> "0,1": one key
        if is_multi(self.positions):
            raise InputError(f"--positions {self.positions}: several positions per text are kept in memory only "
                             "(lamina.capture(..., out=None)); in a run, capture --positions all and select")


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
