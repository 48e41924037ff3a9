"""Every array a punct run holds, declared once: path, dims, the dims with coordinates, units.

compute, plots and curves name arrays through these (never by a string path); the runner checks compute's
results against them.
"""

from __future__ import annotations

from ..kit import Result

ACTS_CLASS = Result("acts/class", ("class",), coords=("class",))
ACTS_HIDDEN = Result("acts/hidden", ("class", "state", "sample", "feature"), coords=("class", "state"))
ACTS_STATE = Result("acts/state", ("state",), coords=("state",))
INPUTS_CLASS = Result("inputs/class", ("class",), coords=("class",))
INPUTS_LENGTHS = Result("inputs/lengths", ("class", "sample"), coords=("class",))
INPUTS_LOCATIONS = Result("inputs/locations", ("class", "sample"), coords=("class",))
INPUTS_TOKENS = Result("inputs/tokens", ("class", "sample", "pos"), coords=("class",))
CLASS = Result("results/class", ("class",), coords=("class",))
CORR = Result("results/corr", ("class", "state", "pair"), units="1", coords=("class", "state"))
COV = Result("results/cov", ("class", "state", "pair"), units="activation^2", coords=("class", "state"))
MEAN = Result("results/mean", ("class", "state", "stat"), coords=("class", "state", "stat"))
MI = Result("results/mi", ("class", "state", "pair"), units="bits", coords=("class", "state"))
PAIRS = Result("results/pairs", ("pair", "end"))
R_COV_MI = Result("results/r_cov_mi", ("class", "state"), coords=("class", "state"))
STAT = Result("results/stat", ("stat",), coords=("stat",))
STATE = Result("results/state", ("state",), coords=("state",))

BY_STAT = {"mi": MI, "cov": COV, "corr": CORR}  # the stat axis of results/mean
