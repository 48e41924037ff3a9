"""spec, pure compute and summary of ``lamina run cka`` (the package's docstring has the definitions); imported on
first use by :data:`lamina.analyses.cka.ANALYSIS`."""

from __future__ import annotations

import numpy as np
import torch

from lamina.engine.errors import InputError
from lamina.engine.hooks import Capture, layer_hooks
from lamina.engine.inputs import Selector, TokenBatch
from lamina.engine.labelled import Labelled

from ..corpus import corpus_tokens, cut
from ..kit import Pass, Spec, batch_inputs
from . import schema
from .compute import CKAState, estimator, finish, matrix_results
from .config import Config

_UNIT_BYTES = 1 << 30


def hook_width(hook: str, model) -> int | None:
    """Features of ``hook`` known before the capture (residual stream and block outputs: d_model; MLP: d_mlp);
    None for other hooks, whose ``auto`` estimator is then the minibatch one."""
    if hook.endswith(("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")):
        return model.d_model
    if hook.endswith(("mlp.hook_pre", "mlp.hook_post")):
        return model.d_mlp
    return None


def spec(cfg: Config, model) -> Spec:
    tok, bos = model.tokenizer, model.bos_token_id
    room = model.n_ctx - (bos is not None)
    if cfg.seq_len > room:
        raise InputError(f"--seq-len {cfg.seq_len} is longer than the context of {model.name} ({room} tokens); "
                         f"use --seq-len {room} or less")
    ids, source = corpus_tokens(tok, text=cfg.text, dataset=None, n_tokens=cfg.n_tokens)
    rows = cut(ids, n_seq=cfg.n_seq, seq_len=cfg.seq_len, source=source)  # [sample, seq_len]
    fed = rows if bos is None else np.concatenate([np.full((cfg.n_seq, 1), bos, dtype=rows.dtype), rows], axis=1)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batch = TokenBatch(torch.from_numpy(fed.astype(np.int64)), torch.full((cfg.n_seq,), fed.shape[1]), int(pad))
    include = torch.ones(fed.shape, dtype=torch.bool)
    if bos is not None:
        include[:, 0] = False  # the BOS in front is no corpus token (and its activations are outliers)
    width = hook_width(cfg.hook, model)
    kind = "minibatch" if cfg.estimator == "auto" and width is None else estimator(len(model.layers), width,
                                                                                   cfg.estimator)
    batch_size = cfg.batch_size or cfg.seq_len
    if kind == "minibatch" and batch_size > cfg.n_tokens:
        raise InputError(f"--batch-size {batch_size} is more than the {cfg.n_tokens} tokens; give a smaller one")
    reducer = CKAState(schema.ACTS, include, kind, batch_size)
    blocks = tuple(model.layers)  # the blocks of --layers (default: all)
    capture = Capture(schema.ACTS, layer_hooks(cfg.hook, blocks), Selector.every(), layer_labels=blocks)
    spc = min(cfg.n_seq, max(1, -(-cfg.unit_tokens // cfg.seq_len)))
    p = Pass(batch, (capture,), keep=cfg.store_acts, reducers=(reducer,), samples_per_chunk=spc,
             unit_bytes=_UNIT_BYTES)
    inputs = {**batch_inputs(batch), schema.INCLUDE: Labelled(include.numpy(), ("sample", "pos"),
                                                              attrs={"long_name": "token is a CKA sample"})}
    options = {"source": source, "estimator": kind, "batch_size": batch_size if kind == "minibatch" else None}
    return Spec(passes=(p,), stimuli_sha256=batch.sha256(), inputs=inputs, options=options,
                state={"reducer": reducer, "source": source, "n_samples": int(include.sum()),
                       "n_blocks": model.n_layers})


def compute(data, spec: Spec, cfg: Config, ctx) -> dict[str, Labelled]:
    reducer = spec.state["reducer"]
    cka, cka_u = finish(data.reduced[schema.REDUCER], reducer.kind)
    layers = [int(b) for b in spec.passes[0].captures[0].layer_labels]  # the model's block numbers
    attrs = {"hook": cfg.hook, "estimator": reducer.kind, "n_tokens": spec.state["n_samples"],
             **({"batch_size": reducer.batch_size} if reducer.kind == "minibatch" else {})}
    return matrix_results(cka, cka_u, layers, layers, attrs, exclude_self=True, n_blocks=spec.state["n_blocks"])


def summary(results: dict[str, Labelled], spec: Spec, cfg: Config) -> dict:
    m, mu = results[schema.CKA].numpy(), results[schema.CKA_DEBIASED].numpy()
    n = m.shape[0]
    off = ~np.eye(n, dtype=bool)

    def r(v) -> float | None:
        return round(float(v), 4) if np.isfinite(v) else None

    return {"estimator": spec.state["reducer"].kind, "n_tokens": spec.state["n_samples"], "n_layers": n,
            "source": spec.state["source"], "mean_cka_offdiag": r(np.nanmean(m[off])) if n > 1 else None,
            "mean_cka_debiased_offdiag": r(np.nanmean(mu[off])) if n > 1 else None,
            "cka_first_last": r(m[0, -1]), "cka_debiased_first_last": r(mu[0, -1]),
            "cka_debiased_adjacent": [r(mu[i, i + 1]) for i in range(n - 1)],
            "best_layer": [int(v) for v in results[schema.BEST_LAYER].numpy()],
            # layers whose tokens are all the same vector: CKA undefined (a NaN row and column, best_layer -1)
            "constant_layers": [int(spec.passes[0].captures[0].layer_labels[i])  # block numbers
                                for i in np.flatnonzero(np.isnan(mu).all(1))]}
