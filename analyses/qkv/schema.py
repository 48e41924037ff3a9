"""Every array a qkv run holds, declared once: path, dims, the dims with coordinates, units.

compute, plots and curves name arrays through these (never by a string path); the runner checks compute's
results against them.
"""

from __future__ import annotations

from ..kit import Result

ACTS_LAYER = Result("acts/layer", ("layer",), coords=("layer",))
ACTS_NONTARGET = Result("acts/nontarget", ("layer", "sample", "feature"), coords=("layer",))
ACTS_TARGET = Result("acts/target", ("layer", "sample", "feature"), coords=("layer",))
INPUTS_LENGTHS = Result("inputs/lengths", ("sample",))
INPUTS_NONTARGET_POS = Result("inputs/nontarget_pos", ("sample",))
INPUTS_TARGET_POS = Result("inputs/target_pos", ("sample",))
INPUTS_TOKENS = Result("inputs/tokens", ("sample", "pos"))
BASELINE_CORRELATION_HIST = Result(
    "results/baseline_correlation_hist", ("layer", "bin"), units="count", coords=("layer", "bin")
)
BASELINE_COSINE_HIST = Result("results/baseline_cosine_hist", ("layer", "bin"), units="count", coords=("layer", "bin"))
BIN = Result("results/bin", ("bin",), coords=("bin",))
BIN_BOUNDS = Result("results/bin_bounds", ("bin", "nv"), coords=("bin",))
BIN_EDGES = Result("results/bin_edges", ("edge",))
BLOCK = Result("results/block", ("block",), coords=("block",))
COMPONENT = Result("results/component", ("component",), coords=("component",))
CORRELATION_HIST = Result(
    "results/correlation_hist",
    ("role", "layer", "block", "bin"),
    units="count",
    coords=("role", "layer", "block", "bin"),
)
COSINE_HIST = Result(
    "results/cosine_hist", ("role", "layer", "block", "bin"), units="count", coords=("role", "layer", "block", "bin")
)
LAYER = Result("results/layer", ("layer",), coords=("layer",))
MEAN = Result("results/mean", ("role", "layer", "component"), coords=("role", "layer", "component"))
ROLE = Result("results/role", ("role",), coords=("role",))
VARIANCE = Result("results/variance", ("role", "layer", "component"), coords=("role", "layer", "component"))

HIST = {"cosine": COSINE_HIST, "correlation": CORRELATION_HIST}  # by statistic
BASELINE_HIST = {"cosine": BASELINE_COSINE_HIST, "correlation": BASELINE_CORRELATION_HIST}
MOMENTS = {"mean": MEAN, "variance": VARIANCE}
