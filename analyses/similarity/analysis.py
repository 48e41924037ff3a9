"""What defines a ``lamina similarity`` folder besides its two runs (:class:`Options`), and how ``lamina report`` /
``lamina plot`` treat one (:data:`REPORT_AS`); apart from the package so that the report imports no cycle.

>>> REPORT_AS.name, Options().permutations
('similarity', 99)
"""

from __future__ import annotations

import dataclasses

from lamina.engine.errors import InputError

from ..cka.captions import CAPTIONS as CKA_CAPTIONS
from ..kit import Analysis, option
from .schema import EXPERIMENT

MAX_PERMUTATIONS = 100_000  # per minibatch; the p-value cannot go below 1 / (1 + permutations) anyway
MAX_RESAMPLES = 1_000_000


@dataclasses.dataclass(frozen=True)
class Options:
    """What defines a similarity besides its two runs (the folder's resume key)."""

    acts_a: str | None = option(None, "Activations of run A (default: its only acts/ array).")
    acts_b: str | None = option(None, "Activations of run B (default: its only acts/ array).")
    estimator: str = option("auto", "moments (exact), minibatch, or auto (moments while 8·La·p·Lb·q B <= 64 MiB).")
    batch_size: int | None = option(None, "Tokens per minibatch (default: 256, fewer for < 2048 tokens).")
    permutations: int = option(99, "Permutations per minibatch for the p-values (0: none).")
    resamples: int = option(1000, "Bootstrap resamples of the minibatches (0: no interval).")
    level: float = option(0.95, "Level of the bootstrap interval.")
    seed: int = option(0, "Seed of permutations and bootstrap weights.")

    def __post_init__(self):
        if self.estimator not in ("auto", "moments", "minibatch"):
            raise InputError(f"--estimator must be auto, moments or minibatch, got {self.estimator!r}")
        for name, low, high in (("batch_size", 4, None), ("permutations", 0, MAX_PERMUTATIONS),
                                ("resamples", 0, MAX_RESAMPLES), ("seed", 0, None)):
            v = getattr(self, name)
            flag = f"--{name.replace('_', '-')}"
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
                raise InputError(f"{flag} must be an integer >= {low}, got {v!r}")
            if high is not None and v > high:
                raise InputError(f"{flag} {v} is more than lamina draws ({high} at most); give {flag} {high} or less")
        for name in ("acts_a", "acts_b"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v.strip()):
                raise InputError(f"--{name.replace('_', '-')} must name an acts/ array, got {v!r}")
        if isinstance(self.level, bool) or not isinstance(self.level, (int, float)) or not 0 < self.level < 1:
            raise InputError(f"--level must be between 0 and 1, got {self.level!r}")


def _not_runnable(*args, **kwargs):
    raise TypeError("similarity is made by lamina.similarity(), not by lamina run")


def _plot(run, folder, **figure_options):
    """The figures of a similarity folder (:func:`.plots.plot`; matplotlib loads on first use)."""
    from . import plots

    return plots.plot(run, folder, **figure_options)


REPORT_AS = Analysis(name=EXPERIMENT, title="Linear CKA between the layers of two runs on the same tokens",
                     Config=Options, spec=_not_runnable, compute=_not_runnable, plot=_plot,
                     captions=CKA_CAPTIONS)
