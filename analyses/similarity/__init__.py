"""``lamina similarity RUN_A RUN_B --out FOLDER``: linear CKA of every layer of one run with every layer of another.

>>> s = lamina.similarity("runs/cka-smollm2", "runs/cka-smollm2-random", out="runs/sim")   # doctest: +SKIP
>>> xarray.open_datatree(s.out, engine="zarr")["results"].cka_debiased                  # doctest: +SKIP

The two runs must hold per-token activations of the same tokens (``inputs/tokens`` equal): two
``lamina run cka`` runs, two captures, any runs that kept ``acts/...``. Both are read block by block
(:mod:`.reading`) and streamed into one state (:mod:`.compute`), on the device. FOLDER is written
through the run store (a Zarr group that reads like a run: ``results/cka``, ``results/cka_debiased``
and the rest of :mod:`.schema`, figures, ``figures/similarity.csv``, ``report.html``); like ``--out``
of a run, it must be new, empty or an earlier similarity of lamina's, and lamina deletes only what it
wrote there.
"""

from __future__ import annotations

import dataclasses
import os
import time

from lamina.engine import destination as dst
from lamina.engine.errors import InputError
from lamina.engine.models import resolve_device
from lamina.engine.provenance import machine, versions
from lamina.engine.reader import Run, open_run
from lamina.engine.run_folder import check_writable
from lamina.engine.store import RunWriter

from ..protocol import Analysis, option
from ..cka.captions import CAPTIONS as CKA_CAPTIONS
from . import schema
from .compute import Accumulator, estimator, labelled
from .reading import open_pair, sample_mask, token_blocks


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
        for name, low in (("batch_size", 4), ("permutations", 0), ("resamples", 0), ("seed", 0)):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
                raise InputError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {v!r}")
        if not 0 < self.level < 1:
            raise InputError(f"--level must be between 0 and 1, got {self.level!r}")


def _not_runnable(*args, **kwargs):
    raise TypeError("similarity is made by lamina.similarity(), not by lamina run")


def _plot(run, folder, **figure_options):
    """The figures of a similarity folder (:func:`.plots.plot`; matplotlib loads on first use)."""
    from . import plots

    return plots.plot(run, folder, **figure_options)


REPORT_AS = Analysis(name=schema.EXPERIMENT, title="Linear CKA between the layers of two runs on the same tokens",
                     Config=Options, spec=_not_runnable, compute=_not_runnable, plot=_plot,
                     captions=CKA_CAPTIONS)


@dataclasses.dataclass(frozen=True)
class Similarity:
    """What :func:`similarity` wrote: the folder (``lamina.open_run`` or xarray opens it), figures, table, report."""

    out: str
    runs: tuple[str, str]
    figures: tuple[str, ...]
    table: str | None
    report: str | None


def similarity(run_a: str | os.PathLike | Run, run_b: str | os.PathLike | Run, *, out: str | os.PathLike,
               options: Options = Options(), device: str = "auto", overwrite: bool = False,
               figures: bool = True) -> Similarity:
    """CKA of every layer of ``run_a`` with every layer of ``run_b`` (same tokens), written to the folder ``out``.

    >>> s = lamina.similarity("runs/cka-a", "runs/cka-b", out="runs/sim-a-b")     # doctest: +SKIP
    >>> lamina.open_run(s.out).numpy("results/cka_debiased").shape                # doctest: +SKIP
    (30, 30)

    Refused in one line (InputError, exit 2 on the command line) before any reading: different tokens, an
    incomplete run, a run without per-token activations, an ``out`` holding anything lamina did not write.
    """
    dest = dst.check_destination(out, overwrite=overwrite, complete_ok=True)
    check_writable(dest.url)
    a, b = open_pair(run_a, run_b, options.acts_a, options.acts_b)
    for side in (a, b):
        if os.path.realpath(str(side.run.url)) == os.path.realpath(dest.url):
            raise InputError(f"--out {str(out)!r} is the run {side.run.url!r} being compared; give another folder")
    dev = resolve_device(device)
    mask = sample_mask(a, b)
    n_tokens = int(mask.sum())
    sa, sb = a.run[a.acts].shape, b.run[b.acts].shape
    kind = estimator(sa[0], sa[-1], sb[0], sb[-1], options.estimator)
    batch = options.batch_size or max(4, min(256, n_tokens // 8))
    from ..compare import run_labels

    labels = run_labels([a.run, b.run])
    runs = {k: {"url": s.run.url, "label": lab, "acts": s.acts, "model": (s.run.attrs.get("model") or {}).get("model"),
                "weights": s.run.attrs.get("weights"), "experiment": s.run.experiment}
            for k, s, lab in (("a", a, labels[0]), ("b", b, labels[1]))}
    opts = {**dataclasses.asdict(options), "estimator": kind, "batch_size": batch}
    key = {"experiment": schema.EXPERIMENT, "runs": [r["url"] for r in runs.values()], "acts": [a.acts, b.acts],
           "options": opts, "stimuli": a.run.attrs.get("stimuli_sha256")}
    def both(key: str, field: str | None = None) -> str:
        values = [(s.run.attrs.get(key) or {}).get(field) if field else s.run.attrs.get(key) for s in (a, b)]
        return str(values[0]) if values[0] == values[1] else f"{values[0]} vs {values[1]}"

    model = {"model": f"{labels[0]} vs {labels[1]}",
             **{k: both("model", k) for k in ("architecture", "n_layers", "d_model")}}
    prov = {"model": model, "runs": runs, "options": opts, "device": str(dev), "dtype": both("dtype"),
            "weights": " vs ".join(str(r["weights"]) for r in runs.values()), "seed": options.seed,
            "stimuli_sha256": a.run.attrs.get("stimuli_sha256"), "versions": versions(), "machine": machine()}
    store = RunWriter.open(dest, experiment=schema.EXPERIMENT, key=key, provenance=prov, overwrite=overwrite)
    staged = store.write_url  # a replacement is built beside the old folder, then swapped in
    try:
        t0 = time.perf_counter()
        acc = Accumulator(kind, batch_size=batch, permutations=options.permutations, seed=options.seed)
        for xa, xb in token_blocks(a, b, mask, dev):
            acc.add(xa, xb)
        res = acc.finish(resamples=options.resamples, level=options.level)
        attrs = {"estimator": kind, "n_tokens": n_tokens, "minibatch_size": batch}
        results = labelled(res, _layers(a.layers), _layers(b.layers), attrs, options.level)
        timings = {"compute_s": round(time.perf_counter() - t0, 3)}
        for path, value in results.items():
            store.put_labelled(path, value)
        store.finalise(drawing=figures, summary=_summary(results, kind, n_tokens, batch, len(acc.per_batch)),
                       timings=timings)
        paths, report = [], None
        if figures:
            from ..report import write_report
            from .plots import plot

            paths = store.publish_figures(lambda folder: plot(open_run(store.write_url), folder))
            report = write_report(REPORT_AS, open_run(store.write_url), publish=store.publish_report,
                                  status="complete")
            store.complete()
        url = store.publish()
    except InputError:
        store.discard()
        raise
    finally:
        store.close()
    moved = [str(p).replace(staged, url) for p in paths]
    table = next((p for p in moved if p.endswith(".csv")), None)
    return Similarity(url, (a.run.url, b.run.url), tuple(p for p in moved if not p.endswith(".csv")), table,
                      None if report is None else str(report).replace(staged, url))


def _layers(labels: list) -> list[int]:
    return [int(v) for v in labels] if all(isinstance(v, int) for v in labels) else list(range(len(labels)))


def _summary(results: dict, kind: str, n_tokens: int, batch: int, batches: int) -> dict:
    import numpy as np

    m = results[schema.CKA_DEBIASED].numpy()
    p = results[schema.P_FWER].numpy()
    out = {"estimator": kind, "n_tokens": n_tokens, "minibatch_size": batch, "minibatches": batches,
           "shape": list(m.shape), "mean_cka_debiased": round(float(np.nanmean(m)), 4),
           "best_layer_b": [int(v) for v in results[schema.BEST_LAYER].numpy()],
           "pairs_p_fwer_below_0.05": int(np.sum(p < 0.05))}
    if m.shape[0] == m.shape[1]:
        out["diagonal_cka_debiased"] = [round(float(v), 4) for v in np.diagonal(m)]
    return out
