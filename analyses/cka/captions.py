"""Report captions of the cka and similarity figures: (pattern, title, what it shows, what to look for).

>>> [c[0] for c in CAPTIONS][:2]
['cka_heatmap', 'cka_best_layer']
"""

from __future__ import annotations

READING = ("CKA is 1 for representations equal up to rotation and isotropic scaling and near 0 for unrelated ones; "
           "the debiased (unbiased-HSIC) value is the one to read for few tokens or wide layers, where the biased "
           "one is pulled towards 1.")

CAPTIONS = (
    ("cka_heatmap", "CKA between every pair of blocks",
     "Linear CKA of the captured hook of every block (rows) with every block (columns), over all analysed tokens: "
     "biased HSIC (left) and Song's unbiased HSIC (right), one colour scale; the diagonal is 1.", READING),
    ("cka_best_layer", "Most similar other block",
     "For every block, the other block with the highest debiased CKA (colour: that CKA); dashed: the same block.",
     "Neighbouring blocks are usually the most similar: points near the dashed line."),
    ("similarity_heatmap", "CKA between the layers of run A and run B",
     "Linear CKA of every layer of A (rows) with every layer of B (columns) on the same tokens: biased (left) and "
     "debiased (right); the title gives the estimator and the number of tokens.", READING),
    ("similarity_best_layer", "Best-matching layer of B for each layer of A",
     "For every layer of A, the layer of B with the highest debiased CKA (colour: that CKA); dashed: the same "
     "layer number.", "Two copies of one model match along the diagonal; an untrained model does not."),
    ("similarity_pvalues", "Permutation p-values (max-statistic corrected)",
     "-log10 of the family-wise corrected permutation p-value of every layer pair (B's tokens shuffled within each "
     "minibatch); the smallest possible p is 1/(1 + permutations).", ""),
)
