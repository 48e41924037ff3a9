"""D. Internal vs terminal punctuation: all-pairs MI, covariance and correlation per hidden state.

>>> run = lamina.run("punct", model="gpt2-medium", weights="random")            # doctest: +SKIP
>>> run.datatree()["results"]["mean"].sel({"class": "internal", "stat": "mi"})  # doctest: +SKIP

Definitions (docs/analyses.md, "punct"): the first ``n`` commas (internal) and periods
(terminal, not between digits) from token ``skip`` on whose window fits; the windows run
through the model up to and including the mark (the model is causal: the tokens after
it cannot change the state there; ``--full-window`` feeds them all, as the lecture did);
the ``n_layers + 1`` hidden states at the mark (HuggingFace ``output_hidden_states``
semantics: state 0 = embeddings, the last after the final norm). For every unordered pair
of sequences within a class, and every state: MI in bits (15 × 15 bins), covariance and
Pearson r after the |z| > 5 outlier rule (:func:`~lamina.engine.kernels.pairs.all_pairs_mi_cov_corr`).
"""

from __future__ import annotations

import numpy as np
import torch

from lamina.engine.kernels.pairs import all_pairs_mi_cov_corr

from ..corpus import DEFAULT_CORPUS
from ..kit import (
    Capture,
    Context,
    Coord,
    Data,
    Labelled,
    ModelInfo,
    Pass,
    Results,
    Selector,
    Spec,
    TokenBatch,
    hidden_state_hooks,
    labels,
)
from ..marks import CLASSES, MARKS, read_mark_windows
from ..textfiles import stimulus_path
from . import schema
from .config import MAX_BINS, Config, PlotOptions  # noqa: F401  (re-exported)
from .stats import state_stats

STATS = ("mi", "cov", "corr")  # the stat axis of results/mean


def spec(cfg: Config, model: ModelInfo) -> Spec:
    """The marks' windows (with the model's BOS in front when its tokenizer adds one) and the hidden states."""
    path = cfg.text or stimulus_path(DEFAULT_CORPUS)
    bos = model.bos_token_id
    stim = read_mark_windows(path, model.tokenizer, n=cfg.marks, skip=cfg.skip, before=cfg.before, after=cfg.after,
                             n_ctx=model.n_ctx - (bos is not None), model=str(model.name))
    tokens = stim.tokens  # [class, sample, pos]
    if bos is not None:
        tokens = np.concatenate([np.full((*tokens.shape[:2], 1), bos, dtype=tokens.dtype), tokens], axis=2)
    mark, fed = cfg.before + (bos is not None), cfg.fed + (bos is not None)
    # --layers: state 0 (the embeddings) and the output state b + 1 of each selected block b (all: every state)
    states = (0, *(b + 1 for b in model.layers))
    every = hidden_state_hooks(model.n_layers)
    hooks = tuple(every[s] for s in states)
    passes = []
    for c, name in enumerate(CLASSES):
        batch = TokenBatch(torch.from_numpy(tokens[c, :, :fed].astype(np.int64)), torch.full((cfg.marks,), fed),
                           stim.batches[c].pad_id)
        cap = Capture(schema.ACTS_HIDDEN, hooks, Selector.at([mark] * cfg.marks), layer_dim="state", prefix=(c,),
                      outer=(("class", len(CLASSES)),), layer_labels=states)
        passes.append(Pass(batch, (cap,), phase=name, samples_per_chunk=cfg.marks))
    classes = {"class": labels(CLASSES)}
    marks = {"marks": [MARKS[c] for c in CLASSES]}
    inputs = {
        schema.INPUTS_TOKENS: Labelled(tokens, ("class", "sample", "pos"), classes,
                                  {**marks, "mark_index": mark, "long_name": "token windows"}),
        schema.INPUTS_LENGTHS: Labelled(np.full((len(CLASSES), cfg.marks), tokens.shape[2], dtype=np.int32),
                                   ("class", "sample"), classes),
        schema.INPUTS_LOCATIONS: Labelled(stim.locations, ("class", "sample"), classes,
                                     {**marks, "n_text_tokens": stim.n_text_tokens, "skip": cfg.skip,
                                      "long_name": "token position of each mark in the text"}),
    }
    return Spec(passes=tuple(passes), stimuli_sha256=stim.text_sha256, inputs=inputs,
                coords={schema.ACTS_CLASS: labels(CLASSES)}, options={"text": stim.text_path, "tokens_fed": fed},
                state=stim)


def pair_statistics(acts: torch.Tensor, *, bins: int = 15, z_max: float = 5.0, step=None) -> dict[str, torch.Tensor]:
    """MI, covariance and correlation of every pair of samples, per class and state.

    >>> out = pair_statistics(torch.randn(2, 3, 10, 64))     # [class, state, sample, feature]
    >>> out["mi"].shape                                      # [class, state, pair], pair = 10 * 9 / 2
    torch.Size([2, 3, 45])

    Returns ``{"mi", "cov", "corr"}``, each [class, state, pair] float64 on ``acts``' device, pairs in
    ``numpy.triu_indices(sample, 1)`` order; ``step()`` is called after each (class, state).
    """
    n_class, n_state, n = acts.shape[:3]
    out = {k: torch.empty(n_class, n_state, n * (n - 1) // 2, dtype=torch.float64, device=acts.device) for k in STATS}
    for c in range(n_class):
        for s in range(n_state):
            res = all_pairs_mi_cov_corr(acts[c, s], bins=bins, z_max=z_max)  # each [pair]
            for k in STATS:
                out[k][c, s] = res[k]
            if step is not None:
                step()
    return out


def compute(data: Data, spec: Spec, cfg: Config, ctx: Context) -> Results:
    hidden = data.acts(schema.ACTS_HIDDEN)  # [class, state, sample, feature]
    steps = ctx.progress(hidden.shape[0] * hidden.shape[1], "pairs (class x state)")
    res = {k: v.cpu().numpy() for k, v in pair_statistics(hidden, bins=cfg.bins, z_max=cfg.z_max, step=steps).items()}
    mean, r = state_stats(res["mi"], res["cov"], res["corr"])
    states = np.asarray(spec.passes[0].captures[0].layer_labels, dtype=np.int64)  # 0 and 1 + each selected block
    coords = {"class": labels(CLASSES), "state": Coord.of(states, long_name="hidden state"),
              "stat": labels(STATS)}
    units = {"mi": "bits", "cov": "activation^2", "corr": "1"}
    names = {"mi": "mutual information", "cov": "covariance", "corr": "Pearson r"}
    dims = ("class", "state", "pair")
    out = {schema.BY_STAT[k]: Labelled(res[k], dims, {d: coords[d] for d in dims[:2]},
                                    {"units": units[k], "long_name": f"{names[k]} of each pair of sequences",
                                     "pairs": "numpy.triu_indices(n, 1) order, see results/pairs", "bins": cfg.bins,
                                     "z_max": cfg.z_max}) for k in STATS}
    out[schema.PAIRS] = Labelled(np.stack(np.triu_indices(cfg.marks, 1), axis=1).astype(np.int32), ("pair", "end"),
                                    attrs={"long_name": "the (i, j) samples of each pair"})
    out[schema.MEAN] = Labelled(mean, ("class", "state", "stat"), coords, {"long_name": "mean over the pairs"})
    out[schema.R_COV_MI] = Labelled(r, ("class", "state"), {k: coords[k] for k in ("class", "state")},
                                       {"long_name": "Pearson r between covariance and MI over the pairs"})
    return out


def summary(results: dict[str, Labelled], spec: Spec, cfg: Config) -> dict:
    mean, r = results[schema.MEAN].numpy(), results[schema.R_COV_MI].numpy()

    def rounded(v):
        return [float(f"{x:.4g}") if np.isfinite(x) else None for x in np.asarray(v, dtype=float)]

    out: dict = {"marks per class": cfg.marks, "pairs per class": cfg.marks * (cfg.marks - 1) // 2}
    for c, name in enumerate(CLASSES):
        out[f"{name} mean MI (bits) per state"] = rounded(mean[c, :, 0])
        out[f"{name} mean cov per state"] = rounded(mean[c, :, 1])
        out[f"{name} mean corr per state"] = rounded(mean[c, :, 2])
        out[f"{name} r(cov, MI) per state"] = rounded(r[c])
    return out
