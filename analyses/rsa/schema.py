"""Every array a rsa run holds, declared once: path, dims, the dims with coordinates, units.

compute, plots and curves name arrays through these (never by a string path); the runner checks compute's
results against them.
"""

from __future__ import annotations

from ..kit import Result

ACTS_FINAL = Result("acts/final", ("layer", "item", "feature"), coords=("layer",))
ACTS_LAYER = Result("acts/layer", ("layer",), coords=("layer",))
INPUTS_CATEGORY = Result("inputs/category", ("category",), coords=("category",))
INPUTS_ITEM = Result("inputs/item", ("item",), coords=("item",))
INPUTS_LABELS = Result("inputs/labels", ("item",), coords=("item",))
INPUTS_LENGTHS = Result("inputs/lengths", ("sample",))
INPUTS_TOKENS = Result("inputs/tokens", ("sample", "pos"))
COMPONENT = Result("results/component", ("component",), coords=("component",))
ITEM_A = Result("results/item_a", ("item_a",), coords=("item_a",))
ITEM_B = Result("results/item_b", ("item_b",), coords=("item_b",))
LAYER = Result("results/layer", ("layer",), coords=("layer",))
PAIR = Result("results/pair", ("pair",), coords=("pair",))
RSA = Result("results/rsa", ("pair", "layer"), coords=("pair", "layer"))
RSM = Result(
    "results/rsm", ("layer", "component", "item_a", "item_b"), coords=("layer", "component", "item_a", "item_b")
)
SELECTIVITY = Result("results/selectivity", ("component", "layer"), coords=("component", "layer"))
SELECTIVITY_PVALUE = Result("results/selectivity_pvalue", ("component", "layer"), coords=("component", "layer"))
