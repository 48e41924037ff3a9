"""Every array ``lamina similarity`` writes into its folder, declared once (the matrices as in ``lamina run cka``).

>>> P_FWER, INTERVAL_DIMS
('results/p_value_fwer', ('bound', 'layer_a', 'layer_b'))
"""

from __future__ import annotations

from ..cka.schema import BEST_LAYER, BEST_VALUE, CKA, CKA_DEBIASED, DEPTH_A, DEPTH_B, DIMS  # noqa: F401

EXPERIMENT = "similarity"  # the folder's `experiment` attribute
MINIBATCH = "results/cka_debiased_minibatch"  # [layer_a, layer_b] Nguyen's minibatch CKA: what p and CI are about
INTERVAL = "results/cka_debiased_minibatch_interval"  # [bound, layer_a, layer_b] bootstrap percentile interval
INTERVAL_DIMS = ("bound", *DIMS)
P_VALUE = "results/p_value"  # [layer_a, layer_b] permutation p-value of the minibatch CKA, per pair
P_FWER = "results/p_value_fwer"  # [layer_a, layer_b] the same, max-statistic (step-down) corrected over all pairs
MUTUAL_KNN = "results/mutual_knn"  # [layer_a, layer_b] mutual 10-NN alignment, mean over the minibatches
TOKENS = "inputs/tokens"  # compared between the two runs
INCLUDE = "inputs/include"  # the tokens that are samples (a cka run's; else every real token)
LENGTHS = "inputs/lengths"
TABLE = "similarity.csv"  # in figures/: one row per layer pair
FIGURE_HEATMAP, FIGURE_BEST, FIGURE_P = "similarity_heatmap", "similarity_best_layer", "similarity_pvalues"
