"""``lamina capture``: named hooks for the texts of a file, streamed into a store.

>>> capture_texts(RunOptions(model="gpt2", weights="random", out="runs/cap"),
...               hooks=["blocks.{layer}.attn.hook_q"], text_file="texts.txt")   # doctest: +SKIP
"""

from __future__ import annotations


from lamina.engine.hooks import Capture, parse_layers
from lamina.engine.inputs import Selector, encode_texts
from lamina.engine.models import peek
from lamina.engine.pipeline import capture_to_store
from lamina.engine.provenance import sha256_texts

from . import common
from .common import RunOptions


def capture_texts(opts: RunOptions, *, hooks: list[str], text_file: str, layers: str = "all",
                  positions: str = "last", samples_per_chunk: int | None = None) -> str:
    texts = [t for _, t in common.read_lines(text_file, "text", "pass --text-file FILE (one text per line)")]
    tok, n_ctx, n_layers = peek(opts.model, opts.weights)
    batch = encode_texts(tok, texts, n_ctx=n_ctx, what="text")
    layer_list = parse_layers(layers, n_layers)
    if positions == "last":
        select = Selector.last()
    elif positions == "all":
        select = Selector.every()
    else:
        try:
            select = Selector.at([int(positions)] * len(batch))
        except ValueError:
            raise common.InputError(f"--positions must be last, all or an integer, not {positions!r}") from None
        select.positions(batch)  # validate before loading the model
    groups = tuple(tuple(h.format(layer=l) for h in hooks) for l in layer_list) if any(
        "{layer}" in h for h in hooks) else (tuple(hooks),)
    options = {"hooks": hooks, "layers": layer_list, "positions": positions}
    session = common.start("capture", opts, stimuli_sha256=sha256_texts(texts), options=options)
    store = session.store
    common.put_batch(store, batch)
    cap = Capture("acts/capture", groups, select)
    capture_to_store(session.model, batch, [cap], store, micro_batch=opts.micro_batch, world=session.world,
                     samples_per_chunk=samples_per_chunk, progress=opts.progress)
    return common.finish(session, lambda run, figdir: [], {"n_texts": len(texts)})
