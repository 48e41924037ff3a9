"""``lamina compare``: runs of one analysis on different models (seeds, dtypes) on a shared relative-depth axis.

>>> cmp = compare(["runs/length-gpt-neo-125M", "runs/length-gpt-neo-1.3B"], out="runs/compare-length")  # doctest: +SKIP
>>> cmp.report                                                                                       # doctest: +SKIP
'runs/compare-length/report.html'

Each run is reduced to its analysis' per-layer curves (``Analysis.curves``, from the run alone);
the curves are drawn against relative depth = block / (n_blocks - 1) (state / (n_states - 1) for
hidden states), so GPT-2 small's 12 blocks and GPT-2 XL's 48 share one axis. Written into ``out``
(a local folder): ``figures/compare_*.png|pdf``, ``key_numbers.csv`` (first / middle / last block
and the mean over blocks of every curve, one column per run), ``comparison.json`` (what the report
shows; ``lamina report OUT`` re-renders from it) and ``report.html``.

Refused, each with one :class:`~lamina.engine.errors.LaminaError` line: fewer than 2 runs, the same
run twice, runs of different analyses, an incomplete run, a run failing
:func:`~lamina.engine.verify.verify`, different stimuli (``stimuli_sha256``) unless
``allow_different_stimuli``, an analysis without curves, and an ``out`` that is a run.
This module never imports an analysis module: the analysis comes from the registry.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

from lamina.engine import destination as dst
from lamina.engine.errors import InputError, StoreNotWritableError
from lamina.engine.labelled import Labelled
from lamina.engine.reader import Run, open_run
from lamina.engine.verify import verify

from . import registry
from .compare_plots import draw_comparison
from .compare_table import key_numbers, write_csv
from .curves import depth_dim, on_model_depth
from .protocol import Analysis
from .report import COMPARISON_DATA as DATA, write_comparison_report
from .stages import stage_call

TABLE = "key_numbers.csv"


@dataclasses.dataclass(frozen=True)
class Comparison:
    """What :func:`compare` wrote: the folder, the runs (URLs and short labels) and the files."""

    out: str
    experiment: str
    runs: tuple[str, ...]
    labels: tuple[str, ...]
    figures: tuple[str, ...]  # PNG and PDF paths
    table: str  # key_numbers.csv
    report: str  # report.html


def compare(runs: Sequence[str | os.PathLike | Run], *, out: str | os.PathLike,
            allow_different_stimuli: bool = False) -> Comparison:
    """Compare complete runs of ONE analysis; write figures, the key-number table and the report into ``out``.

    >>> cmp = lamina.compare(["runs/qkv-gpt2", "runs/qkv-gpt2-xl"], out="runs/compare-qkv")   # doctest: +SKIP
    >>> cmp.labels, cmp.report                                                               # doctest: +SKIP
    (('gpt2', 'gpt2-xl'), 'runs/compare-qkv/report.html')

    ``runs``: URLs (or :class:`~lamina.engine.reader.Run`) of complete runs of one analysis on the same
    stimuli (``allow_different_stimuli=True`` to compare others anyway); ``out``: a local folder.
    """
    folder = _check_out(out)
    analysis, opened = open_runs(runs, allow_different_stimuli=allow_different_stimuli)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreNotWritableError(f"cannot create --out {str(out)!r}: {e.strerror or e}; choose a writable "
                                    "folder") from None
    fn = analysis.curves_function()
    per_run = [on_model_depth(run, dict(stage_call(analysis.name, "curves", fn, run))) for run in opened]
    labels = run_labels(opened)
    try:
        figures = draw_comparison(per_run, labels, folder / dst.FIGURES, experiment=analysis.name,
                                  random=[lab for lab, r in zip(labels, opened) if r.attrs.get("weights") == "random"])
        dst.record_figures(folder / dst.FIGURES, [Path(p).name for p in figures])
        rows = key_numbers(per_run)
        table = write_csv(rows, labels, folder / TABLE)
        data = comparison_data(analysis, opened, labels, per_run, rows, figures, folder,
                               allow_different_stimuli=allow_different_stimuli)
        (folder / DATA).write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
        report = write_comparison_report(folder, data)
    except OSError as e:
        raise StoreNotWritableError(f"cannot write the comparison into {str(folder)!r}: {e.strerror or e}; "
                                    "choose a writable --out") from None
    return Comparison(str(folder), analysis.name, tuple(r.url for r in opened), tuple(labels),
                      tuple(str(p) for p in figures), str(table), str(report))


def open_runs(runs: Sequence[str | os.PathLike | Run], *, allow_different_stimuli: bool = False,
              ) -> tuple[Analysis, list[Run]]:
    """The runs, opened and checked (every refusal of the module docstring), and their analysis."""
    if not isinstance(runs, (str, os.PathLike, Run)):
        runs = list(runs)  # any iterable of runs (a generator too)
    if isinstance(runs, (str, os.PathLike, Run)) or len(runs) < 2:
        n = 1 if isinstance(runs, (str, os.PathLike, Run)) else len(runs)
        raise InputError(f"lamina compare needs at least 2 runs of one analysis, got {n}")
    opened = [r if isinstance(r, Run) else open_run(r) for r in runs]
    seen: dict[str, str] = {}
    for r in opened:
        key = str(dst.local_path(r.url).resolve()) if dst.is_local(r.url) else r.url
        if key in seen:
            raise InputError(f"{r.url!r} is given twice (as {seen[key]!r}); compare different runs")
        seen[key] = r.url
    for r in opened:
        if not r.complete:
            raise InputError(f"{r.url!r} is {r.status}: finish it (run the same command again) before comparing it")
    kinds = {r.experiment for r in opened}
    if len(kinds) > 1:
        what = ", ".join(f"{r.url} ({r.experiment})" for r in opened)
        raise InputError(f"runs of different analyses cannot be compared: {what}")
    if opened[0].experiment == "similarity":  # a `lamina similarity` folder: already a comparison of two runs
        raise InputError(f"{opened[0].url!r} is a lamina similarity folder, already a comparison of two runs; "
                         "lamina compare takes runs of one analysis (e.g. two `lamina run cka` runs)")
    analysis = registry.get(opened[0].experiment)
    if analysis.curves_function() is None:
        raise InputError(f"the analysis {analysis.name!r} has no per-layer curves (Analysis.curves), so its runs "
                         "cannot be compared")
    hashes = {r.attrs.get("stimuli_sha256") for r in opened}
    if len(hashes) > 1 and not allow_different_stimuli:
        what = ", ".join(f"{r.url} ({str(r.attrs.get('stimuli_sha256'))[:12]})" for r in opened)
        raise InputError(f"the runs were made on different stimuli (stimuli_sha256: {what}); pass "
                         "--allow-different-stimuli (Python: allow_different_stimuli=True) to compare them anyway")
    for r in opened:
        verify(r).raise_if_bad("comparing it")
    return analysis, opened


def run_labels(runs: Sequence[Run]) -> list[str]:
    """Short, distinct labels: the model's name, plus whatever else differs (weights, seed, dtype);
    the run's folder name when that is not enough.

    >>> class R:                                                 # a stand-in with only attrs and url
    ...     def __init__(self, url, **a): self.url, self.attrs = url, {"model": {"model": "gpt2"}, **a}
    >>> run_labels([R("a", seed=0), R("b", seed=1)])
    ['gpt2 seed 0', 'gpt2 seed 1']
    """
    def facts(r) -> dict[str, str]:
        a = r.attrs
        return {"model": Path(str((a.get("model") or {}).get("model", "?"))).name,
                "weights": f"{a.get('weights')} weights", "seed": f"seed {a.get('seed')}",
                "dtype": str(a.get("dtype"))}

    all_facts = [facts(r) for r in runs]
    varying = [k for k in all_facts[0] if len({f[k] for f in all_facts}) > 1]
    keys = ["model", *[k for k in varying if k != "model"]]
    labels = [" ".join(f[k] for k in keys) for f in all_facts]
    if len(set(labels)) < len(labels):
        labels = [f"{lab} ({Path(str(r.url).rstrip('/')).name})" for lab, r in zip(labels, runs)]
    if len(set(labels)) < len(labels):
        labels = [f"{lab} #{i + 1}" for i, lab in enumerate(labels)]
    return labels


def n_depth(curves: dict[str, Labelled]) -> tuple[str, int]:
    """(depth dimension, its length) of a run's curves."""
    c = next(iter(curves.values()))
    d = depth_dim(c)
    return d, c.shape[c.dims.index(d)]


def comparison_data(analysis: Analysis, runs: Sequence[Run], labels: Sequence[str], per_run, rows, figures,
                    folder: Path, *, allow_different_stimuli: bool) -> dict:
    """Everything the comparison report shows (saved as comparison.json: ``lamina report OUT`` re-renders it)."""
    from .captions import comparison_caption

    entries = []
    for label, run, curves in zip(labels, runs, per_run):
        a = run.attrs
        dim, n = n_depth(curves)
        report = dst.local_path(run.url) / dst.REPORT if dst.is_local(run.url) else None
        entries.append({
            "label": label, "url": run.url, "depth_dim": dim, "n_depth": n,
            "report": os.path.relpath(report, folder) if report is not None and report.is_file() else None,
            **{k: a.get(k) for k in ("model", "weights", "seed", "dtype", "device", "versions", "stimuli_sha256",
                                     "created", "completed", "world_size", "lamina_version", "revision")}})
    pngs = [Path(p) for p in figures if str(p).endswith(".png")]
    curves0 = per_run[0]
    return {
        "kind": "lamina comparison", "experiment": analysis.name, "title": analysis.title, "runs": entries,
        "allow_different_stimuli": allow_different_stimuli,
        "same_stimuli": len({e["stimuli_sha256"] for e in entries}) == 1,
        "table": rows,
        "figures": [{"stem": p.stem, "png": f"{dst.FIGURES}/{p.name}", "pdf": f"{dst.FIGURES}/{p.stem}.pdf",
                     "caption": comparison_caption(p.stem, analysis.name, curves0, entries)} for p in pngs],
        "table_file": TABLE,
    }


def _check_out(out: str | os.PathLike) -> Path:
    """``out`` as a local folder path that is not a run (not created yet)."""
    if out is None or not str(out).strip():
        raise InputError("lamina compare needs --out FOLDER (where the figures, table and report go)")
    if not dst.is_local(out):
        raise InputError(f"--out {str(out)!r}: lamina compare writes a local folder (copy it afterwards); the runs "
                         "themselves may be URLs")
    folder = dst.local_path(out)
    if (folder / "zarr.json").exists():
        raise InputError(f"--out {str(out)!r} is a Zarr group (a run?); give a new or a comparison folder")
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--out {str(out)!r} is a file; give a folder")
    above = dst.enclosing_group(folder)
    if above is not None:
        raise InputError(f"--out {str(out)!r} is inside the Zarr group {str(above)!r} (a run?); give a folder "
                         "outside any run")
    if folder.is_dir() and any(folder.iterdir()):
        foreign = _foreign_in_comparison(folder)
        if foreign:
            raise InputError(f"--out {str(out)!r} holds entries lamina did not write ({', '.join(foreign[:5])}); "
                             "give a new or empty folder, or the folder of an earlier comparison (lamina deletes and "
                             "replaces only what it wrote)")
    return folder


def _foreign_in_comparison(folder: Path) -> list[str]:
    """What a comparison folder holds that an earlier ``lamina compare`` did not write."""
    try:
        ours = json.loads((folder / DATA).read_text(encoding="utf-8")).get("kind") == "lamina comparison"
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        return sorted(p.name for p in folder.iterdir())
    return dst.foreign_entries(folder, own=(DATA, TABLE, dst.REPORT), nodes=False)
