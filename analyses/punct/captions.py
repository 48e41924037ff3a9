"""Captions of the punct figures: per figure stem (a regular expression whose groups fill the ``{fields}``), its
title, what it shows, and what the lecture found (text, or a function of the groups). The report reads them
through ``ANALYSIS.captions`` (:func:`lamina.analyses.captions.run_caption`)."""

from __future__ import annotations

from collections.abc import Mapping

PUNCT_TREND = "Across states, mean covariance grows tens-fold with depth while MI declines."
PUNCT_STATE = {
    0: "At state 0 (the embeddings) every sequence of a class has the identical vector: one point per class.",
    1: "At state 1 covariance splits the commas into about 3 clusters while MI does not; r(cov, MI) ≈ −0.13.",
}
PUNCT_CLUSTERS = "The state-1 clusters of the commas merge by states 7–9."
PUNCT_LECTURE = "Lecture (GPT-2 medium): "


def _punct_state(g: Mapping[str, str]) -> str:
    s = int(g["s"])
    return PUNCT_LECTURE + " ".join(x for x in (PUNCT_STATE.get(s, PUNCT_CLUSTERS if s >= 2 else ""), PUNCT_TREND) if x)


CAPTIONS = (
    (
        r"punct_matrices_state(?P<s>\d+)",
        "Pairwise MI, covariance and correlation at state {s}",
        "MI, covariance and correlation of every pair of sequences at hidden state {s} as upper triangles, "
        "internal (,) and terminal (.) marks.",
        _punct_state,
    ),
    (
        r"punct_hist_state(?P<s>\d+)",
        "Histograms of MI, covariance and correlation at state {s}",
        "Count histograms (60 bins) of the pairwise MI, covariance and correlation at hidden state {s}, internal vs "
        "terminal.",
        _punct_state,
    ),
    (
        r"punct_scatter_state(?P<s>\d+)",
        "Covariance vs MI at state {s}",
        "Covariance (x) against MI (y) of every pair at hidden state {s}; corrcoef(cov, MI) in the title.",
        _punct_state,
    ),
    (
        r"punct_scatter_grid",
        "Covariance vs MI, every state",
        "Covariance (x) against MI (y) per hidden state (the first 25), r(cov, MI) internal / terminal in each title.",
        lambda g: PUNCT_LECTURE + " ".join([PUNCT_STATE[0], PUNCT_STATE[1], PUNCT_CLUSTERS]),
    ),
    (
        r"punct_per_state_hist",
        "Densities of covariance, MI and correlation per state",
        "Densities of the pairwise covariance, MI and correlation, one line per hidden state coloured by depth; "
        "dashed where every pair has the same value (state 0).",
        lambda g: PUNCT_LECTURE + PUNCT_STATE[0] + " " + PUNCT_TREND,
    ),
    (
        r"punct_per_state_means",
        "Means over pairs per state, and r(cov, MI)",
        "Mean covariance, MI and correlation over all pairs and corrcoef(cov, MI), against the hidden state "
        "(0 = embeddings).",
        lambda g: PUNCT_LECTURE + PUNCT_TREND + " r(cov, MI) ≈ −0.13 at state 1.",
    ),
)
