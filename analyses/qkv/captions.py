"""Captions of the qkv figures: per figure stem (a regular expression whose groups fill the ``{fields}``), its
title, what it shows, and what the lecture found (text, or a function of the groups). The report reads them
through ``ANALYSIS.captions`` (:func:`lamina.analyses.captions.run_caption`)."""

from __future__ import annotations

QKV_FOUND = {
    "cosine": "Lecture (GPT-2 small at one block; GPT-2 XL at all 48): the target's cosine distributions are bimodal "
    "near ±1 in early blocks and flatten towards 0 in deep blocks.",
    "correlation": "Lecture: centring the features removes that structure: the correlation collapses to a roughly "
    "Gaussian shape around 0, like the random baseline.",
}

CAPTIONS = (
    (
        r"qkv_block(?P<l>\d+)_(?P<stat>cosine|correlation)",
        "Feature {stat} at block {l}",
        "Density of the {stat} between feature columns of Q|K|V across sentences at block {l}: target (top) and the "
        "token before it (bottom); within-component blocks QQ, KK, VV (left) and across-component blocks QK, QV, KV "
        "(right); dashed: the random-permutation baseline.",
        lambda g: QKV_FOUND[g["stat"]],
    ),
    (
        r"qkv_layers_(?P<stat>cosine|correlation)",
        "Feature {stat} histograms, every block",
        "Count histograms of the feature {stat}, one line per block coloured by depth (dark = early, light = deep), "
        "one panel per role and Q/K/V block.",
        lambda g: QKV_FOUND[g["stat"]],
    ),
    (
        r"qkv_heatmap_QQ_(?P<stat>cosine|correlation)",
        "QQ feature {stat}: block × value",
        "Block × {stat} count heatmaps of QQ for the target, the non-target and the random baseline.",
        lambda g: QKV_FOUND[g["stat"]],
    ),
    (
        r"qkv_mean_variance",
        "Q, K, V mean and variance per block",
        "Mean and variance (ddof 0) over sentences of every Q, K and V feature, averaged within the component; target "
        "solid, non-target dashed.",
        "Context for the similarity figures (not a lecture figure): the scale of Q, K and V per block.",
    ),
)
