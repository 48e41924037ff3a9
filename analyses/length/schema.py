"""Every array a length run holds, declared once: path, dims, the dims with coordinates, units.

compute, plots and curves name arrays through these (never by a string path); the runner checks compute's
results against them.
"""

from __future__ import annotations

from ..kit import Result

ACTS_LAYER = Result("acts/layer", ("layer",), coords=("layer",))
ACTS_MLP_PRE = Result("acts/mlp_pre", ("layer", "sample", "pos", "neuron"), coords=("layer",))
INPUTS_LENGTHS = Result("inputs/lengths", ("sample",))
INPUTS_TOKENS = Result("inputs/tokens", ("sample", "pos"))
CORR = Result("results/corr", ("layer", "neuron"), coords=("layer",))
CORR_BIN = Result("results/corr_bin", ("corr_bin",), coords=("corr_bin",))
CORR_BIN_BOUNDS = Result("results/corr_bin_bounds", ("corr_bin", "nv"), coords=("corr_bin",))
CORR_BIN_EDGES = Result("results/corr_bin_edges", ("corr_edge",))
CORR_HIST = Result("results/corr_hist", ("layer", "corr_bin"), coords=("layer", "corr_bin"))
LAYER = Result("results/layer", ("layer",), coords=("layer",))
MEDIAN_SPLIT_BIN_EDGES = Result("results/median_split_bin_edges", ("split_edge",))
MEDIAN_SPLIT_COUNTS = Result(
    "results/median_split_counts", ("split", "split_bin"), units="count", coords=("split", "split_bin")
)
MEDIAN_SPLIT_HIST = Result("results/median_split_hist", ("split", "split_bin"), coords=("split", "split_bin"))
PARTIAL_CORR = Result("results/partial_corr", ("layer", "neuron"), coords=("layer",))
PARTIAL_CORR_HIST = Result("results/partial_corr_hist", ("layer", "corr_bin"), coords=("layer", "corr_bin"))
R_LENGTH_LOGFREQ = Result("results/r_length_logfreq", ())
SPLIT = Result("results/split", ("split",), coords=("split",))
SPLIT_BIN = Result("results/split_bin", ("split_bin",), coords=("split_bin",))
SPLIT_BIN_BOUNDS = Result("results/split_bin_bounds", ("split_bin", "nv"), coords=("split_bin",))
TOKEN_FREQUENCY = Result("results/token_frequency", ("token",))
