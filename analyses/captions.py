"""Captions of the report: what each figure shows and what the lecture found, per figure stem.

>>> c = run_caption("rsa_against_block", {"weights": "pretrained"})
>>> c["title"], c["warning"]
('RSA between Q, K and V per block', '')
>>> run_caption("qkv_block3_cosine", {"weights": "random"})["warning"][:14]
'RANDOM WEIGHTS'

A stem no pattern knows (a plugin's figure) gets its name as the title and no finding.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from lamina.engine.labelled import Labelled

from .cka.captions import CAPTIONS as CKA_CAPTIONS

RANDOM_CAPTION = ("RANDOM WEIGHTS: this run's model has random weights, so this figure is scientifically "
                  "meaningless (architecture, plumbing and speed only); the lecture finding below does not apply.")

QKV_FOUND = {
    "cosine": "Lecture (GPT-2 small at one block; GPT-2 XL at all 48): the target's cosine distributions are bimodal "
              "near ±1 in early blocks and flatten towards 0 in deep blocks.",
    "correlation": "Lecture: centring the features removes that structure: the correlation collapses to a roughly "
                   "Gaussian shape around 0, like the random baseline.",
}
LENGTH_FOUND = ("Lecture (GPT-Neo 125M and 1.3B): block 0 has positive r, most later blocks weakly negative r, and "
                "the distributions narrow in late blocks; 1.3B's distributions are multimodal (\"is it universal?\").")
PUNCT_TREND = "Across states, mean covariance grows tens-fold with depth while MI declines."
PUNCT_STATE = {
    0: "At state 0 (the embeddings) every sequence of a class has the identical vector: one point per class.",
    1: "At state 1 covariance splits the commas into about 3 clusters while MI does not; r(cov, MI) ≈ −0.13.",
}
PUNCT_CLUSTERS = "The state-1 clusters of the commas merge by states 7–9."
PUNCT_LECTURE = "Lecture (GPT-2 medium): "


def _punct_state(g: Mapping[str, str]) -> str:
    s = int(g["s"])
    return PUNCT_LECTURE + " ".join(x for x in (PUNCT_STATE.get(s, PUNCT_CLUSTERS if s >= 2 else ""), PUNCT_TREND)
                                    if x)


# (pattern, title, what it shows, what the lecture found); {name} fields come from the pattern's groups
Entry = tuple[str, str, str, "str | Callable[[Mapping[str, str]], str]"]
RUN_CAPTIONS: tuple[Entry, ...] = (
    (r"qkv_block(?P<l>\d+)_(?P<stat>cosine|correlation)", "Feature {stat} at block {l}",
     "Density of the {stat} between feature columns of Q|K|V across sentences at block {l}: target (top) and the "
     "token before it (bottom); within-component blocks QQ, KK, VV (left) and across-component blocks QK, QV, KV "
     "(right); dashed: the random-permutation baseline.", lambda g: QKV_FOUND[g["stat"]]),
    (r"qkv_layers_(?P<stat>cosine|correlation)", "Feature {stat} histograms, every block",
     "Count histograms of the feature {stat}, one line per block coloured by depth (dark = early, light = deep), "
     "one panel per role and Q/K/V block.", lambda g: QKV_FOUND[g["stat"]]),
    (r"qkv_heatmap_QQ_(?P<stat>cosine|correlation)", "QQ feature {stat}: block × value",
     "Block × {stat} count heatmaps of QQ for the target, the non-target and the random baseline.",
     lambda g: QKV_FOUND[g["stat"]]),
    (r"qkv_mean_variance", "Q, K, V mean and variance per block",
     "Mean and variance (ddof 0) over sentences of every Q, K and V feature, averaged within the component; target "
     "solid, non-target dashed.", "Context for the similarity figures (not a lecture figure): the scale of Q, K "
                                  "and V per block."),
    (r"rsa_selectivity", "Category selectivity (SI) per block",
     "Selectivity index SI of the final word's Q, K and V (mean within-category / mean between-category cosine) per "
     "block; filled markers: label-permutation p < 0.05; dashed: SI = 1 (no selectivity).",
     "Lecture (GPT-2 large): SI is highest early for Q and K and declines with depth; V's SI rises again in the "
     "deepest third."),
    (r"rsa_against_block", "RSA between Q, K and V per block",
     "RSA: Pearson r between the strict upper triangles of two components' RSMs (QK, QV, KV), per block.",
     "Lecture: RSA stays high (about 0.84–0.96) at every depth."),
    (r"rsa_rsm_grid", "RSMs at the first, middle and last block",
     "Item × item cosine RSMs of Q, K and V (rows) at the first, middle and last block (columns), items grouped by "
     "category (white lines); each panel its own colour range, diagonal masked.",
     "Lecture: category blocks on the diagonal (what SI measures) are clearest early for Q and K."),
    (r"length_median_split_block(?P<b>\d+)", "Block {b} activations split at the median token length",
     "Densities of block {b}'s MLP pre-activations, all neurons pooled, for tokens shorter than, longer than and "
     "equal to the median token length.",
     "The lecture's findings are in the per-neuron correlations (next figures): block 0 positive r, most later "
     "blocks weakly negative r."),
    (r"length_corr_by_block", "Correlation with token length, every block",
     "Density over neurons of Pearson r between each neuron's MLP pre-activation and token length (characters), one "
     "line per block coloured by depth.", LENGTH_FOUND),
    (r"length_corr_heatmap", "Correlation with token length: block × r",
     "The same densities as a block × r heatmap.", LENGTH_FOUND),
    (r"length_partial_corr", "Token-frequency confound: plain vs partial r",
     "Plain r next to the partial r controlling for log token frequency, per block, and the mean of each per block; "
     "r(length, log frequency) in the title.",
     "Beyond the lecture: long tokens are rarer; where the partial r stays close to the plain r, frequency does not "
     "explain the effect. " + LENGTH_FOUND),
    (r"punct_matrices_state(?P<s>\d+)", "Pairwise MI, covariance and correlation at state {s}",
     "MI, covariance and correlation of every pair of sequences at hidden state {s} as upper triangles, internal (,) "
     "and terminal (.) marks.", _punct_state),
    (r"punct_hist_state(?P<s>\d+)", "Histograms of MI, covariance and correlation at state {s}",
     "Count histograms (60 bins) of the pairwise MI, covariance and correlation at hidden state {s}, internal vs "
     "terminal.", _punct_state),
    (r"punct_scatter_state(?P<s>\d+)", "Covariance vs MI at state {s}",
     "Covariance (x) against MI (y) of every pair at hidden state {s}; corrcoef(cov, MI) in the title.",
     _punct_state),
    (r"punct_scatter_grid", "Covariance vs MI, every state",
     "Covariance (x) against MI (y) per hidden state (the first 25), r(cov, MI) internal / terminal in each title.",
     lambda g: PUNCT_LECTURE + " ".join([PUNCT_STATE[0], PUNCT_STATE[1], PUNCT_CLUSTERS])),
    (r"punct_per_state_hist", "Densities of covariance, MI and correlation per state",
     "Densities of the pairwise covariance, MI and correlation, one line per hidden state coloured by depth; "
     "dashed where every pair has the same value (state 0).",
     lambda g: PUNCT_LECTURE + PUNCT_STATE[0] + " " + PUNCT_TREND),
    (r"punct_per_state_means", "Means over pairs per state, and r(cov, MI)",
     "Mean covariance, MI and correlation over all pairs and corrcoef(cov, MI), against the hidden state "
     "(0 = embeddings).", lambda g: PUNCT_LECTURE + PUNCT_TREND + " r(cov, MI) ≈ −0.13 at state 1."),
)
RUN_CAPTIONS += CKA_CAPTIONS  # cka and similarity figures (analyses/cka/captions.py)
ORDER = [re.compile(p) for p, *_ in RUN_CAPTIONS]


def run_caption(stem: str, attrs: Mapping) -> dict[str, str]:
    """``{"title", "shows", "found", "warning"}`` of the run figure ``stem`` (warning: random weights)."""
    warning = RANDOM_CAPTION if attrs.get("weights") == "random" else ""
    for (pattern, title, shows, found), rx in zip(RUN_CAPTIONS, ORDER):
        m = rx.fullmatch(stem)
        if m:
            g = m.groupdict()
            text = found(g) if callable(found) else found
            return {"title": title.format(**g), "shows": shows.format(**g), "found": text.strip(),
                    "warning": warning}
    return {"title": stem, "shows": "Drawn by the analysis' own plot function (lamina has no caption for it).",
            "found": "", "warning": warning}


def figure_order(stem: str) -> tuple[int, int, str]:
    """Sort key: the order of RUN_CAPTIONS (the plot modules' order; cosine before correlation), unknown
    stems last by name.

    >>> sorted(["qkv_layers_cosine", "qkv_block6_correlation", "x", "qkv_block6_cosine"], key=figure_order)
    ['qkv_block6_cosine', 'qkv_block6_correlation', 'qkv_layers_cosine', 'x']
    """
    stat = 1 if "correlation" in stem else 0
    for i, rx in enumerate(ORDER):
        if rx.fullmatch(stem):
            return i, stat, stem
    return len(ORDER), stat, stem


def comparison_caption(stem: str, experiment: str, curves: Mapping[str, Labelled],
                       runs: Sequence[Mapping]) -> dict[str, str]:
    """The caption of a ``lamina compare`` figure, from the curve's own attributes."""
    name = stem.removeprefix(f"compare_{experiment}_")
    c = curves.get(name)
    random = [r["label"] for r in runs if r.get("weights") == "random"]
    warning = (f"RANDOM WEIGHTS: {', '.join(random)} — scientifically meaningless; the lecture finding does not apply "
               "to these runs.") if random else ""
    if c is None:
        return {"title": stem, "shows": "", "found": "", "warning": warning}
    what = str(c.attrs.get("long_name", name))
    depth = "hidden state / (n_states − 1)" if "state" in c.dims else "block / (n_blocks − 1)"
    unit = "states" if "state" in c.dims else "blocks"
    runs_text = ", ".join(f"{r['label']}: {r['n_depth']} {unit}" for r in runs)
    if c.attrs.get("plot") == "heatmap":
        shows = (f"{what}: one depth × value heatmap per run, side by side on one colour scale (runs and their "
                 f"depths: {runs_text}).")
    else:
        panels = " × ".join(d for d in c.dims[:-1])
        shows = (f"{what} against relative depth = {depth}, one line per run ({runs_text})"
                 + (f"; one panel per {panels}." if panels else "."))
    if c.attrs.get("note"):
        shows += " " + str(c.attrs["note"])
    return {"title": what[:1].upper() + what[1:], "shows": shows, "found": str(c.attrs.get("finding", "")),
            "warning": warning}
