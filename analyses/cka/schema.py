"""Every array ``lamina run cka`` writes, declared once: compute, plots and summary import these names.

>>> CKA, DIMS
('results/cka', ('layer_a', 'layer_b'))
"""

from __future__ import annotations

HOOK = "blocks.{layer}.hook_resid_post"  # default --hook: one capture per block
ACTS = "acts/resid"  # the captured activations [layer, sample, pos, feature] (kept by default)
INCLUDE = "inputs/include"  # [sample, pos] bool: the tokens that are CKA samples (real tokens, no BOS)
REDUCER = "cka"  # the streamed state: _partials/cka/...

CKA = "results/cka"  # [layer_a, layer_b] linear CKA (Kornblith et al. 2019)
CKA_DEBIASED = "results/cka_debiased"  # [layer_a, layer_b] CKA from Song's unbiased HSIC
BEST_LAYER = "results/best_layer"  # [layer_a] the other layer (b != a) with the highest debiased CKA
BEST_VALUE = "results/best_value"  # [layer_a] that CKA
DEPTH_A, DEPTH_B = "results/depth_a", "results/depth_b"  # relative depth = layer / (n_layers - 1)

DIMS = ("layer_a", "layer_b")
MATRICES = (CKA, CKA_DEBIASED)
ESTIMATORS = ("moments", "minibatch")  # exact streamed moments, or Nguyen et al.'s minibatch sums
FIGURE_HEATMAP = "cka_heatmap"  # figures/cka_heatmap.png|pdf: both estimators side by side
FIGURE_BEST = "cka_best_layer"
