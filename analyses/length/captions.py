"""Captions of the length figures: per figure stem (a regular expression whose groups fill the ``{fields}``), its
title, what it shows, and what the lecture found (text, or a function of the groups). The report reads them
through ``ANALYSIS.captions`` (:func:`lamina.analyses.captions.run_caption`)."""

from __future__ import annotations

LENGTH_FOUND = (
    "Lecture (GPT-Neo 125M and 1.3B): block 0 has positive r, most later blocks weakly negative r, and "
    'the distributions narrow in late blocks; 1.3B\'s distributions are multimodal ("is it universal?").'
)

CAPTIONS = (
    (
        r"length_median_split_block(?P<b>\d+)",
        "Block {b} activations split at the median token length",
        "Densities of block {b}'s MLP pre-activations, all neurons pooled, for tokens shorter than, longer than and "
        "equal to the median token length.",
        "The lecture's findings are in the per-neuron correlations (next figures): block 0 positive r, most later "
        "blocks weakly negative r.",
    ),
    (
        r"length_corr_by_block",
        "Correlation with token length, every block",
        "Density over neurons of Pearson r between each neuron's MLP pre-activation and token length (characters), one "
        "line per block coloured by depth.",
        LENGTH_FOUND,
    ),
    (
        r"length_corr_heatmap",
        "Correlation with token length: block × r",
        "The same densities as a block × r heatmap.",
        LENGTH_FOUND,
    ),
    (
        r"length_partial_corr",
        "Token-frequency confound: plain vs partial r",
        "Plain r next to the partial r controlling for log token frequency, per block, and the mean of each per block; "
        "r(length, log frequency) in the title.",
        "Beyond the lecture: long tokens are rarer; where the partial r stays close to the plain r, frequency does not "
        "explain the effect. " + LENGTH_FOUND,
    ),
)
