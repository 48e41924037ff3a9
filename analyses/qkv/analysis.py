"""A. Token similarity within and across Q, K, V: feature cosine / correlation histograms per block.

>>> run = lamina.run("qkv", model="gpt2", weights="random")               # doctest: +SKIP
>>> run.datatree()["results"].cosine_hist.sel(role="target", block="QQ")  # doctest: +SKIP

Definitions (docs/analyses.md, "qkv"): per sentence the *target* position is the FIRST
occurrence of the target word's token and the *non-target* position the token before
it. One batched pass captures Q|K|V (``blocks.{l}.attn.hook_q/k/v`` flattened head-major,
concatenated in that order) of every block at both positions. Per block and role, with
X = (sentence × features): cosine between FEATURES across sentences (columns of X to unit
L2 norm, ``C = Xnᵀ Xn``; correlation: columns centred first); QQ, KK, VV = strict upper
triangle of the diagonal blocks, QK, QV, KV = the full off-diagonal blocks (rectangular
under grouped-query attention); 100 equal bins on [-1, 1] with NumPy's edge rule; a random
baseline from all elements of the target X permuted; mean and variance (ddof 0) of each
feature over sentences, averaged within Q, K and V.
"""

from __future__ import annotations

import numpy as np
import torch

from lamina.engine.errors import InputError
from lamina.engine.kernels.histogram import histogram_edges
from lamina.engine.kernels.moments import component_mean_variance
from lamina.engine.kernels.similarity import QKV_BLOCKS, qkv_block_histograms, random_baseline_histograms
from lamina.engine.provenance import sha256_texts

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
    batch_inputs,
    bins_coord,
    labels,
    qkv_hooks,
)
from ..plotting import shown_blocks
from ..sentences import read_target_sentences, stimulus_path
from . import schema
from .config import Config, PlotOptions  # noqa: F401  (re-exported)

ROLES = ("target", "nontarget")
COMPONENTS = ("Q", "K", "V")
BINS, LO, HI = 100, -1.0, 1.0


def spec(cfg: Config, model: ModelInfo) -> Spec:
    """The sentences, validated with the model's tokenizer, and the Q|K|V captures at both positions."""
    path = cfg.sentences or stimulus_path("her_sentences.txt")
    stim = read_target_sentences(path, cfg.target_text, model.tokenizer, n_ctx=model.n_ctx,
                                 bos_token_id=model.bos_token_id, model=str(model.name))
    hooks, blocks = qkv_hooks(model.layers), tuple(model.layers)  # the blocks of --layers (default: all)
    caps = (Capture(schema.ACTS_TARGET, hooks, Selector.at(stim.target_pos), layer_labels=blocks),
            Capture(schema.ACTS_NONTARGET, hooks, Selector.at(stim.nontarget_pos), layer_labels=blocks))
    pos_attrs = {"target": stim.target_text, "target_id": stim.target_id}
    inputs = {**batch_inputs(stim.batch, pad_id=stim.batch.pad_id, padding="right"),
              schema.INPUTS_TARGET_POS: Labelled(stim.target_pos.numpy().astype(np.int32), ("sample",),
                                            attrs={**pos_attrs, "rule": "first occurrence of the target token"}),
              schema.INPUTS_NONTARGET_POS: Labelled(stim.nontarget_pos.numpy().astype(np.int32), ("sample",),
                                               attrs={**pos_attrs, "rule": "target_pos - 1"})}
    return Spec(passes=(Pass(stim.batch, caps),), stimuli_sha256=sha256_texts(stim.texts), inputs=inputs,
                options={"sentences": stim.path, "target": stim.target_text, "target_id": stim.target_id,
                         "bins": BINS, "range": [LO, HI]}, state=stim)


def histograms(x_target: torch.Tensor, x_nontarget: torch.Tensor, *, generator: torch.Generator,
               widths: tuple[int, int, int] | None = None) -> dict[str, torch.Tensor]:
    """Histograms of the six Q/K/V blocks, the random baseline, and mean / variance per component.

    >>> g = torch.Generator().manual_seed(0)
    >>> out = histograms(torch.randn(2, 54, 3 * 8), torch.randn(2, 54, 3 * 8), generator=g)
    >>> tuple(out["cosine_hist"].shape), tuple(out["baseline_cosine_hist"].shape)
    ((2, 2, 6, 100), (2, 100))

    Args:
        x_target, x_nontarget: [layer, sample, feature = d_q + d_k + d_v], Q|K|V concatenated.
        generator: on the inputs' device; one permutation per layer, shared by the cosine and
            correlation baselines of that layer.
        widths: (d_q, d_k, d_v) when they differ (grouped-query attention); None = equal thirds.

    Returns:
        cosine_hist, correlation_hist [role, layer, block, bin] int64; baseline_cosine_hist,
        baseline_correlation_hist [layer, bin] int64; mean, variance [role, layer, component] float64.
    """
    if x_target.shape != x_nontarget.shape:
        raise InputError(f"target and non-target activations differ in shape: {tuple(x_target.shape)} vs "
                         f"{tuple(x_nontarget.shape)}")
    kw = {"widths": widths} if widths is not None else {}
    roles = (x_target, x_nontarget)
    out: dict[str, torch.Tensor] = {}
    for name, center in (("cosine", False), ("correlation", True)):
        out[f"{name}_hist"] = torch.stack(
            [qkv_block_histograms(x, center=center, bins=BINS, lo=LO, hi=HI, **kw) for x in roles])
    for name, counts in random_baseline_histograms(x_target, generator, bins=BINS, lo=LO, hi=HI).items():
        out[f"baseline_{name}_hist"] = counts  # [layer, bin]
    moments = [component_mean_variance(x, **kw) for x in roles]  # each ([layer, 3], [layer, 3])
    out["mean"] = torch.stack([m for m, _ in moments]).to(torch.float64)
    out["variance"] = torch.stack([v for _, v in moments]).to(torch.float64)
    return out


def compute(data: Data, spec: Spec, cfg: Config, ctx: Context) -> Results:
    """Run :func:`histograms` on the stored captures and label the results."""
    hook_widths = data.widths[schema.ACTS_TARGET][0]  # (d_q, d_k, d_v) of block 0
    widths = tuple(hook_widths) if len(set(hook_widths)) > 1 else None
    res = {k: v.cpu().numpy() for k, v in histograms(data.acts(schema.ACTS_TARGET), data.acts(schema.ACTS_NONTARGET),
                                                        generator=ctx.generator(), widths=widths).items()}
    edges = histogram_edges(BINS, LO, HI).numpy()
    blocks = np.asarray(spec.passes[0].captures[0].layer_labels, dtype=np.int64)  # the model's block numbers
    block = Coord.of(blocks, long_name="block")
    coords = {"role": labels(ROLES), "layer": block, "block": labels(QKV_BLOCKS),
              "bin": bins_coord(edges, long_name="bin centre"), "component": labels(COMPONENTS)}

    def lab(name, dims, **attrs):
        return Labelled(res[name], dims, {d: coords[d] for d in dims}, attrs)

    masks = "QQ/KK/VV strict upper triangle of the diagonal block; QK/QV/KV full block"
    base = ("all elements of acts/target[layer] permuted (one permutation per layer, shared by cosine and "
            "correlation), strict upper triangle of the whole matrix")
    out = {schema.HIST[stat]: lab(f"{stat}_hist", ("role", "layer", "block", "bin"), units="count",
                                       long_name=f"{stat} of feature columns over sentences", masks=masks)
           for stat in ("cosine", "correlation")}
    out.update({schema.BASELINE_HIST[stat]: lab(f"baseline_{stat}_hist", ("layer", "bin"), units="count",
                                                     long_name=f"random-permutation baseline of the {stat}",
                                                     method=base, role="target")
                for stat in ("cosine", "correlation")})
    out[schema.BIN_EDGES] = Labelled(edges, ("edge",), attrs={"long_name": "bin edges (np.linspace(-1, 1, 101))"})
    for name, what in (("mean", "mean"), ("variance", "variance (ddof 0)")):
        out[schema.MOMENTS[name]] = lab(name, ("role", "layer", "component"), long_name=f"{what} over sentences per "
                                     "feature, averaged within the component")
    return out


def summary(results: dict[str, Labelled], spec: Spec, cfg: Config) -> dict:
    """Share of |cosine| >= 0.9 and spreads at the first, middle and last block."""
    edges = histogram_edges(BINS, LO, HI).numpy()
    centres = (edges[:-1] + edges[1:]) / 2
    far = np.abs(centres) > 0.9  # the bins of [-1, -0.9) and [0.9, 1]

    def frac(h):
        return round(float(h[..., far].sum() / max(h.sum(), 1)), 4)

    def sd(h):
        p = h / max(h.sum(), 1)
        mu = float((p * centres).sum())
        return round(float(np.sqrt((p * (centres - mu) ** 2).sum())), 4)

    cos, cor = (results[schema.HIST[s]].numpy() for s in ("cosine", "correlation"))
    base = results[schema.BASELINE_CORRELATION_HIST].numpy()
    n_layers, qq = cos.shape[1], QKV_BLOCKS.index("QQ")
    shown = shown_blocks(n_layers)  # positions; named by the model's block numbers (--layers)
    at = [int(Coord.of(results[schema.HIST["cosine"]].coords["layer"]).values[l]) for l in shown]
    stim = spec.state
    return {"target": f"{stim.target_text!r} (token {stim.target_id})", "sentences": len(stim.texts),
            f"QQ target cosine, share |c| >= 0.9 at blocks {at}": [frac(cos[0, l, qq]) for l in shown],
            f"QQ non-target cosine, share |c| >= 0.9 at blocks {at}": [frac(cos[1, l, qq]) for l in shown],
            f"QQ target correlation sd at blocks {at}": [sd(cor[0, l, qq]) for l in shown],
            f"baseline correlation sd at blocks {at}": [sd(base[l]) for l in shown]}
