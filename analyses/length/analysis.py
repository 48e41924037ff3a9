"""C. MLP pre-activations against token length, streamed over any corpus: ``lamina run length``.

>>> run = lamina.run("length", model="EleutherAI/gpt-neo-125M", weights="random",  # doctest: +SKIP
...                  n_seq=4, seq_len=128)
>>> run.datatree()["results"].corr.sel(layer=0)                                                         # doctest: +SKIP

Definitions (docs/analyses.md, "length"): a corpus (a text file tokenised whole, or a
streamed data set) is cut to exactly ``n_seq × seq_len`` tokens; every block's
``mlp.hook_pre`` is captured at every position and each work unit is REDUCED on the
device (:class:`~lamina.engine.reducers.TokenPearson`: Pearson and partial r of every
neuron with token length, controlling for log unigram frequency;
:class:`~lamina.engine.reducers.GroupHistogram`: median-split counts of one block), so
memory does not grow with the corpus. Activations are stored only with ``store_acts``
(default: corpora of at most 65,536 tokens). token = sample · seq_len + pos.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor

from lamina.engine.errors import InputError
from lamina.engine.kernels.correlation import StreamingPearson
from lamina.engine.kernels.histogram import histogram_edges, uniform_histogram
from lamina.engine.token_text import token_texts

from ..corpus import corpus_tokens, cut
from ..kit import (
    Capture,
    Context,
    Coord,
    Data,
    GroupHistogram,
    Labelled,
    ModelInfo,
    Pass,
    Results,
    Selector,
    Spec,
    TokenBatch,
    TokenPearson,
    batch_inputs,
    bins_coord,
    labels,
    layer_hooks,
)
from . import schema
from .config import STORE_ACTS_MAX_TOKENS, Config  # noqa: F401  (re-exported)

HOOK = "blocks.{layer}.mlp.hook_pre"
ACTS = schema.ACTS_MLP_PRE
SPLITS = ("below", "above", "equal")  # token length < median, > median, == median
MEDIAN_BINS, MEDIAN_LO, MEDIAN_HI = 50, -8.0, 5.0
CORR_BINS, CORR_LO, CORR_HI = 80, -0.8, 0.8
_UNIT_BYTES = 1 << 30  # one work unit's captured activations stay under 1 GiB (CPU)


@dataclasses.dataclass(frozen=True)
class Corpus:
    """The analysed tokens and what is known of each: length, frequency, the median length."""

    batch: TokenBatch  # tokens [sample, pos], every row exactly seq_len long
    token_length: np.ndarray  # [sample, pos] int32, characters of each decoded token
    token_frequency: np.ndarray  # [sample, pos] int64, occurrences of each token's id in the analysed tokens
    median: float
    source: str  # "text PATH" | "dataset NAME[:split]"


def token_lengths(tok, ids: np.ndarray) -> np.ndarray:
    """Characters of each token's text (what it adds to running text, leading space included; for byte-level
    BPE the token decoded alone: docs/analyses.md, "length"), same shape as ``ids``, int32."""
    uniq, inverse = np.unique(ids, return_inverse=True)
    table = np.array([len(t) for t in token_texts(tok, uniq.tolist())], dtype=np.int32)
    return table[inverse].reshape(ids.shape)


def unigram_counts(ids: np.ndarray) -> np.ndarray:
    """For each token, how often its id occurs among ``ids`` (>= 1), same shape, int64.

    >>> unigram_counts(np.array([[5, 7, 5]]))
    array([[2, 1, 2]])
    """
    uniq, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    return counts[inverse].reshape(ids.shape).astype(np.int64)


def read_corpus(cfg: Config, model) -> Corpus:
    """Corpus -> [n_seq, seq_len] tokens with their lengths and frequencies; every input error here.

    A model whose tokenizer starts texts with a BOS token gets it in front of every sequence (the
    statistics leave it out: it is not a corpus token).
    """
    tok, n_ctx, n_layers = model.tokenizer, model.n_ctx, model.n_layers
    bos = model.bos_token_id
    room = n_ctx - (bos is not None)
    if cfg.seq_len > room:
        raise InputError(f"--seq-len {cfg.seq_len} is longer than the context of {model.name} ({room} tokens); "
                         f"use --seq-len {room} or less")
    if cfg.block >= n_layers:
        raise InputError(f"--block {cfg.block} does not exist: {model.name} has {n_layers} blocks "
                         f"(0..{n_layers - 1})")
    ids, source = corpus_tokens(tok, text=cfg.text, dataset=cfg.dataset, n_tokens=cfg.n_tokens)
    rows = cut(ids, n_seq=cfg.n_seq, seq_len=cfg.seq_len, source=source)  # [sample, pos]
    length = token_lengths(tok, rows)
    if length.min() == length.max():
        raise InputError(f"every one of the {length.size} tokens of {source} is {int(length[0, 0])} characters long: "
                         "a correlation with token length is undefined (all NaN); use a corpus of varied text")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    fed = rows if bos is None else np.concatenate([np.full((cfg.n_seq, 1), bos, dtype=rows.dtype), rows], axis=1)
    batch = TokenBatch(torch.from_numpy(fed.astype(np.int64)), torch.full((cfg.n_seq,), fed.shape[1]), int(pad))
    return Corpus(batch, length, unigram_counts(rows), float(np.median(length)), source)


def spec(cfg: Config, model: ModelInfo) -> Spec:
    blocks = tuple(model.layers)  # the blocks of --layers (default: all)
    if cfg.block < model.n_layers and cfg.block not in blocks:
        raise InputError(f"--block {cfg.block} is not among the blocks of --layers ({', '.join(map(str, blocks))}); "
                         "give --block one of them, or add it to --layers")
    corpus = read_corpus(cfg, model)
    offset = corpus.batch.max_len - cfg.seq_len  # 1 with a BOS in front, else 0

    def per_position(t: torch.Tensor) -> torch.Tensor:  # [sample, seq_len] -> [sample, pos]: zeros at a BOS
        return torch.nn.functional.pad(t, (offset, 0))

    length = per_position(torch.as_tensor(corpus.token_length))
    log_freq = per_position(torch.log(torch.as_tensor(corpus.token_frequency, dtype=torch.float64)))
    own = per_position(torch.ones(corpus.token_length.shape, dtype=torch.bool))  # corpus tokens, not the BOS
    groups = torch.full(length.shape, -1, dtype=torch.int64)
    for k, mask in enumerate((length < corpus.median, length > corpus.median, length == corpus.median)):
        groups[mask & own] = k
    reducers = (TokenPearson(ACTS, length, log_freq, name="pearson", include=own if offset else None),
                GroupHistogram(ACTS, blocks.index(cfg.block), groups, len(SPLITS), MEDIAN_BINS, MEDIAN_LO, MEDIAN_HI,
                               name="median_split"))
    capture = Capture(ACTS, layer_hooks(HOOK, blocks), Selector.every(), feature_dim="neuron", layer_labels=blocks)
    spc = min(cfg.n_seq, max(1, -(-cfg.unit_tokens // cfg.seq_len)))
    p = Pass(corpus.batch, (capture,), keep=cfg.keep_acts, reducers=reducers, samples_per_chunk=spc,
             unit_bytes=_UNIT_BYTES)
    token = ("token",)
    inputs = {**batch_inputs(corpus.batch),
              "token_length": Labelled(corpus.token_length.reshape(-1), token,
                                       attrs={"units": "characters", "median": corpus.median,
                                              "long_name": "characters of the decoded token, leading space included"}),
              schema.TOKEN_FREQUENCY: Labelled(corpus.token_frequency.reshape(-1), token,
                                                  attrs={"long_name": "occurrences of this token's id among the "
                                                                      "analysed tokens"})}
    return Spec(passes=(p,), stimuli_sha256=corpus.batch.sha256(), inputs=inputs,
                options={"source": corpus.source, "store_acts": cfg.keep_acts}, state=corpus)


def correlations(pearson: StreamingPearson, split_counts: Tensor) -> dict[str, Tensor]:
    """Results from the merged statistics of the whole corpus (float64 unless said).

    corr, partial_corr [layer, neuron] (NaN for constant neurons); corr_hist, partial_corr_hist
    [layer, bin=80] densities on [-0.8, 0.8]; median_split_counts [split, bin=50] int64 and
    median_split_hist, the same as NumPy ``density=True`` densities; constant [layer, neuron] bool;
    r_length_logfreq: r between token length and log frequency.
    """
    corr, partial = pearson.correlation(), pearson.partial_correlation()
    edges = histogram_edges(MEDIAN_BINS, MEDIAN_LO, MEDIAN_HI).to(torch.float32).to(split_counts.device)
    widths = (edges[1:] - edges[:-1]).to(torch.float64)  # float32 differences, as np.diff on float32 edges
    in_range = split_counts.sum(-1, keepdim=True).to(torch.float64)  # [split, 1]
    sd = pearson.state_dict()
    const_xz = bool(sd["min_x"] == sd["max_x"]) or bool(sd["min_z"] == sd["max_z"])
    r_xz = sd["c_xz"] / torch.sqrt(sd["m2_x"] * sd["m2_z"]) if not const_xz else torch.tensor(float("nan"))
    return {"corr": corr, "partial_corr": partial,
            "corr_hist": uniform_histogram(corr, bins=CORR_BINS, lo=CORR_LO, hi=CORR_HI, density=True),
            "partial_corr_hist": uniform_histogram(partial, bins=CORR_BINS, lo=CORR_LO, hi=CORR_HI, density=True),
            "median_split_counts": split_counts,
            "median_split_hist": split_counts.to(torch.float64) / widths / in_range,
            "constant": pearson.constant_mask, "r_length_logfreq": r_xz}


def compute(data: Data, spec: Spec, cfg: Config, ctx: Context) -> Results:
    corpus = spec.state
    res = correlations(StreamingPearson.from_state_dict(data.reduced["pearson"]),
                       data.reduced["median_split"]["counts"])
    res = {k: v.cpu().numpy() for k, v in res.items()}
    blocks = np.asarray(spec.passes[0].captures[0].layer_labels, dtype=np.int64)  # the model's block numbers
    layer = Coord.of(blocks, long_name="block")
    corr_bin = bins_coord(histogram_edges(CORR_BINS, CORR_LO, CORR_HI).numpy(), long_name="Pearson r")
    split_edges = histogram_edges(MEDIAN_BINS, MEDIAN_LO, MEDIAN_HI).to(torch.float32).numpy()
    split_bin = bins_coord(split_edges, long_name="MLP pre-activation")
    split = labels(SPLITS, long_name="token length vs the median")
    corr = {"x": "token length (characters)", "hook": HOOK, "range": [CORR_LO, CORR_HI]}
    partial = {**corr, "control": "log unigram frequency of the token in the analysed corpus"}
    n_tokens = [int((corpus.token_length < corpus.median).sum()), int((corpus.token_length > corpus.median).sum()),
                int((corpus.token_length == corpus.median).sum())]
    splits = {"median": corpus.median, "block": cfg.block, "hook": HOOK.format(layer=cfg.block), "n_tokens": n_tokens,
              "rule": "token length < median, > median, == median; all neurons pooled",
              "n_values_in_range": [int(v) for v in res["median_split_counts"].sum(-1)],
              "range": [MEDIAN_LO, MEDIAN_HI]}
    return {
        schema.CORR: Labelled(res["corr"], ("layer", "neuron"), {"layer": layer},
                                 {**corr, "long_name": "Pearson r(activation, token length)"}),
        schema.PARTIAL_CORR: Labelled(res["partial_corr"], ("layer", "neuron"), {"layer": layer},
                                         {**partial, "long_name": "partial r controlling for log frequency"}),
        schema.CORR_HIST: Labelled(res["corr_hist"], ("layer", "corr_bin"), {"layer": layer, "corr_bin": corr_bin},
                                      {**corr, "density": True, "long_name": "density of r per block"}),
        schema.PARTIAL_CORR_HIST: Labelled(res["partial_corr_hist"], ("layer", "corr_bin"),
                                              {"layer": layer, "corr_bin": corr_bin},
                                              {**partial, "density": True, "long_name": "density of partial r"}),
        schema.CORR_BIN_EDGES: Labelled(histogram_edges(CORR_BINS, CORR_LO, CORR_HI).numpy(), ("corr_edge",)),
        schema.MEDIAN_SPLIT_HIST: Labelled(res["median_split_hist"], ("split", "split_bin"),
                                              {"split": split, "split_bin": split_bin},
                                              {**splits, "density": True, "long_name": "density of activations"}),
        schema.MEDIAN_SPLIT_COUNTS: Labelled(res["median_split_counts"], ("split", "split_bin"),
                                                {"split": split, "split_bin": split_bin},
                                                {**splits, "units": "count"}),
        schema.MEDIAN_SPLIT_BIN_EDGES: Labelled(split_edges, ("split_edge",)),
        schema.R_LENGTH_LOGFREQ: Labelled(np.asarray(res["r_length_logfreq"], dtype=np.float64), (),
                                             attrs={"long_name": "Pearson r of token length and log frequency"}),
    }


def summary(results: dict[str, Labelled], spec: Spec, cfg: Config) -> dict:
    corpus = spec.state
    corr, partial = results[schema.CORR].numpy(), results[schema.PARTIAL_CORR].numpy()

    def layer_means(a):
        return [round(float(np.nanmean(r)), 4) if np.isfinite(r).any() else None for r in a]

    n_const = [int(np.isnan(r).sum()) for r in corr]
    out = {"n_tokens": cfg.n_tokens, "n_seq": cfg.n_seq, "seq_len": cfg.seq_len, "source": corpus.source,
           "median_token_length": corpus.median, "block": cfg.block, "n_constant_neurons": sum(n_const),
           "r_length_logfreq": round(float(results[schema.R_LENGTH_LOGFREQ].numpy()), 4),
           "mean_corr_per_block": layer_means(corr), "mean_partial_corr_per_block": layer_means(partial),
           "acts_stored": cfg.keep_acts}
    return {**out, "constant_neurons_per_block": n_const} if sum(n_const) else out
