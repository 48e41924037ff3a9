"""B. Laminar profile of RSA and category selectivity: ``lamina run rsa``.

>>> run = lamina.run("rsa", model="gpt2-large", weights="random", permutations=200)   # doctest: +SKIP
>>> run.datatree()["results"].selectivity.sel(component="V")                         # doctest: +SKIP

Definitions (docs/analyses.md, "rsa"): each word of a category list ends a prompt
(``"The next word is {w}"``); the prompt's final token - the word's last token, when a
tokenizer splits the word (lamina's extension) - has its Q, K and V captured at every block.
Per block and component: RSM = cosine between items (rows to unit L2
norm); the selectivity index SI = mean of the per-category within-category means of the
strict upper triangle / mean of the per-category-pair between means; RSA = Pearson r of
the strict upper triangles of two RSMs (QK, QV, KV). Beyond the lecture: user word lists
(``--words``, ``--template``) and a permutation test of SI (labels shuffled).
"""

from __future__ import annotations

import numpy as np
import torch

from lamina.engine.errors import InputError
from lamina.engine.kernels.rsa import (
    check_permutations,
    row_cosine_rsm,
    rsa_pearson,
    selectivity_index,
    selectivity_permutation_pvalue,
)

from ..categories import read_category_prompts, stimulus_path
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
    labels,
    qkv_hooks,
)
from ..plotting import shown_blocks
from . import schema
from .config import DEFAULT_TEMPLATE, Config  # noqa: F401  (re-exported)

COMPONENTS = ("Q", "K", "V")
PAIRS = ("QK", "QV", "KV")
_PAIR_INDEX = ((0, 1), (0, 2), (1, 2))  # component indices of each pair
_PVALUE_SEED_OFFSET = 1  # the permutation test draws from seed + 1 (random weights use seed)


def spec(cfg: Config, model: ModelInfo) -> Spec:
    """The prompts, validated with the model's tokenizer, and Q|K|V of the final token at every block."""
    stim = read_category_prompts(cfg.words or stimulus_path("categories.tsv"), cfg.template, model.tokenizer,
                                 n_ctx=model.n_ctx, bos_token_id=model.bos_token_id)
    check_permutations(cfg.permutations, len(stim.words))  # before the model loads
    cap = Capture(schema.ACTS_FINAL, qkv_hooks(model.layers), Selector.last(), sample_dim="item",
                  layer_labels=tuple(model.layers))  # the blocks of --layers (default: all)
    inputs = {**batch_inputs(stim.batch),
              schema.INPUTS_LABELS: Labelled(stim.labels, ("item",), {"item": labels(stim.words)},
                                        {"categories": list(stim.categories), "words": list(stim.words),
                                         "prompts": list(stim.prompts), "template": cfg.template,
                                         "word_tokens": list(stim.word_tokens),
                                         "long_name": "category index of each item"}),
              schema.INPUTS_CATEGORY: Labelled(np.array(stim.categories, dtype=object), ("category",),
                                          attrs={"long_name": "category names"})}
    return Spec(passes=(Pass(stim.batch, (cap,)),), stimuli_sha256=stim.sha256, inputs=inputs,
                options={"words": stim.path, "layers": list(model.layers)}, state=stim)


def rsa_statistics(acts: torch.Tensor, item_labels: torch.Tensor, *, permutations: int, generator: torch.Generator,
                   widths: tuple[int, int, int] | None = None) -> dict[str, torch.Tensor]:
    """RSMs, SI, its permutation p-value and RSA from Q|K|V of the final token (pure, float64).

    >>> acts = torch.randn(2, 6, 3 * 8)              # [layer, item, feature = 3 * d_model]
    >>> out = rsa_statistics(acts, torch.tensor([0, 0, 0, 1, 1, 1]), permutations=50, generator=torch.Generator())
    >>> {k: tuple(v.shape) for k, v in out.items()}
    {'rsm': (2, 3, 6, 6), 'selectivity': (3, 2), 'selectivity_pvalue': (3, 2), 'rsa': (3, 2)}

    Args:
        acts: [layer, item, feature], Q then K then V (widths (d_q, d_k, d_v); None = equal thirds).
        item_labels: [item] integer category of each item.
    Returns:
        rsm [layer, component, item, item]; selectivity and selectivity_pvalue [component, layer];
        rsa [pair = QK, QV, KV, layer].
    """
    n_layers, n_items, n_feat = acts.shape
    if widths is None:
        if n_feat % 3:
            raise InputError(f"Q|K|V features must be 3*d_model, got {n_feat}")
        widths = (n_feat // 3,) * 3
    x = acts.to(torch.float64)
    parts = torch.split(x, list(widths), dim=-1)  # 3 x [layer, item, d_c]
    rsm = torch.stack([row_cosine_rsm(p) for p in parts], dim=1)  # [layer, component, item, item]
    item_labels = item_labels.to(rsm.device)
    si = selectivity_index(rsm, item_labels)  # [layer, component]
    pvalue = selectivity_permutation_pvalue(rsm, item_labels, n_permutations=permutations, generator=generator)
    rsa = torch.stack([rsa_pearson(rsm[:, a], rsm[:, b]) for a, b in _PAIR_INDEX])  # [pair, layer]
    return {"rsm": rsm, "selectivity": si.T, "selectivity_pvalue": pvalue.T, "rsa": rsa}


def compute(data: Data, spec: Spec, cfg: Config, ctx: Context) -> Results:
    stim = spec.state
    hook_widths = tuple(data.widths[schema.ACTS_FINAL][0])
    res = rsa_statistics(data.acts(schema.ACTS_FINAL), torch.as_tensor(stim.labels, dtype=torch.long),
                         permutations=cfg.permutations, generator=ctx.generator(_PVALUE_SEED_OFFSET),
                         widths=hook_widths if len(set(hook_widths)) > 1 else None)
    res = {k: v.to("cpu", torch.float32).numpy() for k, v in res.items()}
    words = labels(stim.words)
    blocks = np.asarray(spec.passes[0].captures[0].layer_labels, dtype=np.int64)  # the model's block numbers
    c = {"layer": Coord.of(blocks, long_name="block"), "component": labels(COMPONENTS), "pair": labels(PAIRS)}
    test = "one-sided, labels shuffled: (1 + #{SI_perm >= SI}) / (1 + permutations)"
    return {
        schema.RSM: Labelled(res["rsm"], ("layer", "component", "item_a", "item_b"),
                                {"layer": c["layer"], "component": c["component"], "item_a": words, "item_b": words},
                                {"long_name": "cosine between items (rows to unit L2 norm)"}),
        schema.SELECTIVITY: Labelled(res["selectivity"], ("component", "layer"),
                                        {k: c[k] for k in ("component", "layer")},
                                        {"long_name": "selectivity index (within / between category means)"}),
        schema.SELECTIVITY_PVALUE: Labelled(res["selectivity_pvalue"], ("component", "layer"),
                                               {k: c[k] for k in ("component", "layer")},
                                               {"long_name": "permutation p-value of SI",
                                                "permutations": cfg.permutations, "test": test}),
        schema.RSA: Labelled(res["rsa"], ("pair", "layer"), {k: c[k] for k in ("pair", "layer")},
                                {"long_name": "Pearson r of the RSMs' strict upper triangles"}),
    }


def summary(results: dict[str, Labelled], spec: Spec, cfg: Config) -> dict:
    stim = spec.state
    si, p = results[schema.SELECTIVITY].numpy(), results[schema.SELECTIVITY_PVALUE].numpy()
    rsa = results[schema.RSA].numpy()
    out: dict = {"items": len(stim.words),
                 "categories": {c: int((stim.labels == i).sum()) for i, c in enumerate(stim.categories)}}
    split = [f"{w} ({k})" for w, k in zip(stim.words, stim.word_tokens) if k > 1]
    if split:  # lamina's extension: read at the word's last token
        out["words of several tokens (read at their last token)"] = ", ".join(split)
    depths = shown_blocks(si.shape[1])  # positions; named by the model's block numbers (--layers)
    names = [int(Coord.of(results[schema.SELECTIVITY].coords["layer"]).values[j]) for j in depths]
    for i, c in enumerate(COMPONENTS):
        out[f"SI_{c} at blocks {'/'.join(map(str, names))}"] = [round(float(si[i, j]), 4) for j in depths]
        out[f"SI_{c} blocks with p<0.05"] = f"{int((p[i] < 0.05).sum())}/{p.shape[1]} ({cfg.permutations} permutations)"
    for i, pair in enumerate(PAIRS):
        out[f"RSA_{pair} min/mean/max"] = [round(float(f(rsa[i])), 4) for f in (np.min, np.mean, np.max)]
    return out
