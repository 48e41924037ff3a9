"""Every array a capture run holds, declared once: path, dims, the dims with coordinates, units.

compute, plots and curves name arrays through these (never by a string path); the runner checks compute's
results against them.
"""

from __future__ import annotations

from ..kit import Result

ACTS_CAPTURE = Result("acts/capture", ("layer", "sample", "pos", "feature"), coords=("layer",))
ACTS_LAYER = Result("acts/layer", ("layer",), coords=("layer",))
INPUTS_LENGTHS = Result("inputs/lengths", ("sample",))
INPUTS_TOKENS = Result("inputs/tokens", ("sample", "pos"))
