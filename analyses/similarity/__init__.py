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
from lamina.engine.provenance import machine, versions
from lamina.engine.reader import Run, open_run
from lamina.engine.run_folder import check_writable
from lamina.engine.store import RunWriter

from . import schema
from .analysis import REPORT_AS, Options


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
    from lamina.engine.models import resolve_device  # torch loads here, not with the package (`lamina report`)

    from .compute import Accumulator, estimator, labelled
    from .reading import open_pair, sample_mask, token_blocks

    if not isinstance(out, (str, os.PathLike)) or not str(out).strip():
        raise InputError(f"out must be the folder (or URL) to write the similarity into, got {out!r}")
    if not isinstance(options, Options):
        raise InputError(f"options must be lamina.analyses.similarity.Options(...), got {type(options).__name__}")
    dev = resolve_device(device)
    if dev.type == "meta":
        raise InputError("--device meta holds no values: lamina similarity computes CKA; use --device cpu or cuda")
    dest = dst.check_destination(out, overwrite=overwrite, complete_ok=True)
    check_writable(dest.url)
    a, b = open_pair(run_a, run_b, options.acts_a, options.acts_b)
    for side in (a, b):
        if os.path.realpath(str(side.run.url)) == os.path.realpath(dest.url):
            raise InputError(f"--out {str(out)!r} is the run {side.run.url!r} being compared; give another folder")
    mask = sample_mask(a, b)
    n_tokens = int(mask.sum())
    sa, sb = a.run[a.acts].shape, b.run[b.acts].shape
    kind = estimator(sa[0], sa[-1], sb[0], sb[-1], options.estimator)
    batch = options.batch_size or max(4, min(256, n_tokens // 8))
    _check_sizes(n_tokens, batch, sa, sb, kind, options)
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


WORK_BYTES = 4 << 30  # the permutation null and the bootstrap replicates are held whole


def _check_sizes(n_tokens: int, batch: int, shape_a: tuple, shape_b: tuple, kind: str, options: Options) -> None:
    """Refuse, before anything is read, what cannot make one minibatch or would not fit in memory (``shape_*``: the
    acts arrays' [layer, sample, ..., feature])."""
    (la, p), (lb, q) = (shape_a[0], shape_a[-1]), (shape_b[0], shape_b[-1])
    moments = 8 * (la * p * lb * q + (la * p) ** 2 + (lb * q) ** 2)  # the cross and both self moment blocks
    if kind == "moments" and moments > 4 * WORK_BYTES:
        raise InputError(f"--estimator moments needs {moments / 2**30:.1f} GiB for {la} x {p} against {lb} x {q} "
                         "features (more than 16 GiB); use --estimator minibatch (or auto)")
    if n_tokens < batch:
        raise InputError(f"only {n_tokens} sample tokens: fewer than one minibatch of {batch}; give "
                         f"--batch-size {max(4, n_tokens // 2)} or less (at least 4)")
    minibatches = n_tokens // batch
    need = {"--permutations": 8 * options.permutations * (3 * batch + 2 * la * lb),
            "--resamples": 8 * options.resamples * (minibatches + 4 * la * lb)}
    for flag, size in need.items():
        if size > WORK_BYTES:
            raise InputError(f"{flag} {getattr(options, flag[2:])} needs {size / 2**30:.1f} GiB for {la} x {lb} "
                             f"layer pairs ({minibatches} minibatches of {batch} tokens), more than "
                             f"{WORK_BYTES >> 30} GiB; give fewer")


def _layers(labels: list) -> list[int]:
    return [int(v) for v in labels] if all(isinstance(v, int) for v in labels) else list(range(len(labels)))


def _mean(m) -> float | None:
    """The mean of the defined values, None where there are none (every layer constant)."""
    import numpy as np

    return round(float(np.nanmean(m)), 4) if np.isfinite(m).any() else None


def _summary(results: dict, kind: str, n_tokens: int, batch: int, batches: int) -> dict:
    import numpy as np

    m = results[schema.CKA_DEBIASED].numpy()
    p = results[schema.P_FWER].numpy()
    out = {"estimator": kind, "n_tokens": n_tokens, "minibatch_size": batch, "minibatches": batches,
           "shape": list(m.shape), "mean_cka_debiased": _mean(m),
           "best_layer_b": [int(v) for v in results[schema.BEST_LAYER].numpy()],
           "pairs_p_fwer_below_0.05": int(np.sum(p < 0.05)),
           # a layer whose tokens are all the same vector: its CKA is undefined (NaN row / column), not an error
           "constant_layers_a": [int(i) for i in np.flatnonzero(np.isnan(m).all(1))],
           "constant_layers_b": [int(i) for i in np.flatnonzero(np.isnan(m).all(0))]}
    if m.shape[0] == m.shape[1]:
        out["diagonal_cka_debiased"] = [round(float(v), 4) for v in np.diagonal(m)]
    return out
