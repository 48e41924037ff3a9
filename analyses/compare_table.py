"""The key numbers of ``lamina compare``, side by side: every line curve at the first, middle and last
block and its mean over blocks, one column per run.

>>> rows = key_numbers([curves_a, curves_b])            # doctest: +SKIP
>>> rows[0]["curve"], rows[0]["series"], rows[0]["values"]   # doctest: +SKIP
('cosine_far', 'target · QQ', {'first': [0.61, 0.58], 'middle': [...], 'last': [...], 'mean': [...]})

"middle" is block n // 2 of each run (the block the runs' summaries and figures call the middle one).
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lamina.engine.labelled import Labelled

from .compare_plots import coord_labels, select_series
from .curves import is_heatmap, nan_mean_rows

AT = ("first", "middle", "last", "mean")
AT_NAMES = {"first": "first block", "middle": "middle block (n // 2)", "last": "last block",
            "mean": "mean over blocks"}


def at_depths(y: np.ndarray) -> dict[str, float]:
    """First, middle (n // 2), last value and the mean of the finite values.

    >>> at_depths(np.array([1.0, 2.0, 4.0]))
    {'first': 1.0, 'middle': 2.0, 'last': 4.0, 'mean': 2.3333333333333335}
    """
    y = np.asarray(y, dtype=np.float64)
    return {"first": float(y[0]), "middle": float(y[len(y) // 2]), "last": float(y[-1]),
            "mean": float(nan_mean_rows(y[None])[0])}


def key_numbers(per_run: Sequence[Mapping[str, Labelled]]) -> list[dict]:
    """One row per line curve and label combination: ``{"curve", "quantity", "series", "values": {at: [per run]}}``
    (None where a run lacks the series or the value is not finite)."""
    rows = []
    for name, first in per_run[0].items():
        if is_heatmap(first):
            continue
        extra = first.dims[:-1]
        for names in itertools.product(*(coord_labels(first, d) for d in extra)):
            values: dict[str, list] = {at: [] for at in AT}
            for curves in per_run:
                y = select_series(curves.get(name), extra, names)
                got = at_depths(y) if y is not None else {}
                for at in AT:
                    v = got.get(at)
                    values[at].append(v if v is not None and math.isfinite(v) else None)
            rows.append({"curve": name, "quantity": str(first.attrs.get("long_name", name)),
                         "series": " · ".join(names), "values": values})
    return rows


def write_csv(rows: Sequence[dict], labels: Sequence[str], path: Path) -> Path:
    """``quantity, series, at, <one column per run>``; full float precision, empty where a value is missing."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["curve", "quantity", "series", "at", *labels])
        for row in rows:
            for at in AT:
                w.writerow([row["curve"], row["quantity"], row["series"], AT_NAMES[at],
                            *("" if v is None else repr(v) for v in row["values"][at])])
    return path
