"""Figures and table of a ``lamina similarity`` folder, from the folder alone (it reads like a run).

>>> plot(open_run("runs/similarity-a-b"), "runs/similarity-a-b/figures")     # doctest: +SKIP
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..cka.plots import TITLES, best_layer_figure, heatmaps
from ..plotting import save_figure, start
from .schema import (
    BEST_LAYER,
    BEST_VALUE,
    CKA,
    CKA_DEBIASED,
    FIGURE_BEST,
    FIGURE_HEATMAP,
    FIGURE_P,
    INTERVAL,
    MINIBATCH,
    MUTUAL_KNN,
    P_FWER,
    P_VALUE,
    TABLE,
)


def labels_of(run) -> tuple[str, str]:
    runs = run.attrs.get("runs", {})
    return tuple(f"layer of {k.upper()} ({runs.get(k, {}).get('label', k.upper())})" for k in ("a", "b"))


def write_table(run, path: Path) -> Path:
    """One row per layer pair: every matrix of the folder, the interval and the best match of A's layer."""
    la, lb = run.labels(CKA, "layer_a"), run.labels(CKA, "layer_b")
    cols = {"cka": run.numpy(CKA), "cka_debiased": run.numpy(CKA_DEBIASED), "cka_debiased_minibatch":
            run.numpy(MINIBATCH), "p_value": run.numpy(P_VALUE), "p_value_fwer": run.numpy(P_FWER),
            "mutual_knn": run.numpy(MUTUAL_KNN)}
    ci = run.numpy(INTERVAL)
    best = run.numpy(BEST_LAYER)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["layer_a", "layer_b", *cols, "interval_lo", "interval_hi", "best_layer_b_for_a"])
        for i, a in enumerate(la):
            for j, b in enumerate(lb):
                w.writerow([a, b, *(repr(float(c[i, j])) for c in cols.values()), repr(float(ci[0, i, j])),
                            repr(float(ci[1, i, j])), int(best[i])])
    return path


def plot(run, figdir: str | Path) -> list[Path]:
    figdir, _ = start(run, figdir)
    runs = run.attrs.get("runs", {})
    names = [runs.get(k, {}).get("label", k.upper()) for k in ("a", "b")]
    labels = labels_of(run)
    attrs = dict(run[CKA].attrs)
    how = f"{attrs.get('n_tokens', '?')} tokens, {attrs.get('estimator', '?')}" + (
        f" (minibatches of {attrs['minibatch_size']})" if attrs.get("estimator") == "minibatch" else "")
    mats = [run.numpy(CKA), run.numpy(CKA_DEBIASED)]
    ta, tb = np.asarray(run.labels(CKA, "layer_a")), np.asarray(run.labels(CKA, "layer_b"))
    title = f"CKA: A = {names[0]}  vs  B = {names[1]}\n{how}"
    paths = save_figure(heatmaps(mats, [TITLES[CKA], TITLES[CKA_DEBIASED]], labels, title, ta, tb), figdir,
                        FIGURE_HEATMAP)
    fig = best_layer_figure(run.numpy(BEST_LAYER), run.numpy(BEST_VALUE), labels,
                            f"Best-matching layer of B = {names[1]}\nfor each layer of A = {names[0]}")
    paths += save_figure(fig, figdir, FIGURE_BEST)
    p = run.numpy(P_FWER)
    if np.isfinite(p).any():
        n_perm = int(run.attrs.get("options", {}).get("permutations", 0))
        top = float(np.log10(1 + n_perm)) if n_perm else float(np.nanmax(-np.log10(p))) or 1.0  # smallest p possible
        fig = heatmaps([-np.log10(p)], [f"-log10 p (max-statistic corrected, {n_perm} permutations)"], labels,
                       title, ta, tb, vmin=0.0, vmax=top)
        fig.axes[-1].set_ylabel("-log10 p")
        paths += save_figure(fig, figdir, FIGURE_P)
    return [*paths, write_table(run, figdir / TABLE)]
