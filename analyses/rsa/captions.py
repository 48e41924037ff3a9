"""Captions of the rsa figures: per figure stem (a regular expression whose groups fill the ``{fields}``), its
title, what it shows, and what the lecture found (text, or a function of the groups). The report reads them
through ``ANALYSIS.captions`` (:func:`lamina.analyses.captions.run_caption`)."""

from __future__ import annotations

CAPTIONS = (
    (
        r"rsa_selectivity",
        "Category selectivity (SI) per block",
        "Selectivity index SI of the final word's Q, K and V (mean within-category / mean between-category cosine) per "
        "block; filled markers: label-permutation p < 0.05; dashed: SI = 1 (no selectivity).",
        "Lecture (GPT-2 large): SI is highest early for Q and K and declines with depth; V's SI rises again in the "
        "deepest third.",
    ),
    (
        r"rsa_against_block",
        "RSA between Q, K and V per block",
        "RSA: Pearson r between the strict upper triangles of two components' RSMs (QK, QV, KV), per block.",
        "Lecture: RSA stays high (about 0.84–0.96) at every depth.",
    ),
    (
        r"rsa_rsm_grid",
        "RSMs at the first, middle and last block",
        "Item × item cosine RSMs of Q, K and V (rows) at the first, middle and last block (columns), items grouped by "
        "category (white lines); each panel its own colour range, diagonal masked.",
        "Lecture: category blocks on the diagonal (what SI measures) are clearest early for Q and K.",
    ),
)
