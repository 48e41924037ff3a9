"""``report.html``: one self-contained page per run (and per comparison) — provenance, key numbers, figures.

>>> write_report(registry.get("qkv"), open_run("runs/qkv-gpt2"))     # doctest: +SKIP
'runs/qkv-gpt2/report.html'

``lamina run`` writes it after the figures (``opts.figures``), ``lamina compare`` into its folder,
``lamina report STORE`` rewrites it. The page has no network dependency (inline CSS, one small
inline script that flags a missing figure file) and opens from ``file://``. Figures are referenced
by RELATIVE path (``figures/x.png``), not embedded: the page stays small (a few kB beside figures
of MBs) and always shows the figures as they are now; keep it beside its ``figures/`` folder.
Random weights put a warning at the TOP and in every caption. On an fsspec URL (``s3://...``) the
page is written through fsspec next to the figures (``runner.draw`` puts them there the same way).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lamina.engine import destination as dst
from lamina.engine.errors import InputError, StoreNotWritableError
from lamina.engine.reader import Run, open_run
from lamina.engine.run_folder import publish_file

from . import registry
from .captions import figure_order, run_caption
from .protocol import Analysis
from .summary import gguf_text, tokenizer_text

TEMPLATES = Path(__file__).parent / "templates"
RANDOM = "RANDOM WEIGHTS: results are scientifically meaningless (architecture and speed only)"
COMPARISON_DATA = "comparison.json"  # what `lamina compare` saves for its report (re-rendered by `lamina report`)


def write_report(analysis: Analysis | None, run: Run, *, publish: Callable[[str], str] | None = None,
                 status: str | None = None) -> str:
    """Render ``run``'s report into ``RUN/report.html`` through the store (``publish``: the run writer's; default
    :func:`~lamina.engine.run_folder.publish_file` at the run's URL); ``analysis``: None = the run's own; ``status``:
    the status to show (the runner writes the report last, for the run as it is once complete). Returns its
    path/URL."""
    if analysis is None:
        analysis = analysis_of(run)
    html = render_run(analysis, run, status=status)
    if publish is not None:
        return publish(html)
    return publish_file(run.url, dst.REPORT, html.encode("utf-8"))


def _write(path: Path, html: str) -> None:
    try:
        path.write_text(html, encoding="utf-8")
    except OSError as e:
        raise StoreNotWritableError(f"cannot write {str(path)!r}: {e.strerror or e}; copy the folder somewhere "
                                    "writable and run `lamina report` there") from None


def report(store: str | os.PathLike) -> str:
    """Regenerate the report of a complete run, or of a ``lamina compare`` folder; returns its path.

    >>> report("runs/qkv-gpt2")          # doctest: +SKIP
    'runs/qkv-gpt2/report.html'

    A run must be complete and pass :func:`~lamina.engine.verify.verify` (the report shows its numbers)."""
    folder = dst.local_path(store) if dst.is_local(store) else None
    if folder is not None and (folder / COMPARISON_DATA).is_file() and not (folder / "zarr.json").exists():
        try:
            data = json.loads((folder / COMPARISON_DATA).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InputError(f"{str(folder / COMPARISON_DATA)!r} cannot be read ({e}); run the `lamina compare` "
                             "that made it again") from None
        if not isinstance(data, dict) or data.get("kind") != "lamina comparison" or not isinstance(data.get("runs"), list):
            raise InputError(f"{str(folder / COMPARISON_DATA)!r} is not a lamina comparison; give a run or the --out "
                             "folder of `lamina compare`")
        return str(write_comparison_report(folder, data))
    from lamina.engine.verify import verify

    run = open_run(store)
    if not run.complete:
        raise InputError(f"{str(store)!r} is {run.status}: finish it (run the same command again) before writing its "
                         "report")
    verify(run).raise_if_bad("reporting it")
    return write_report(analysis_of(run), run)


def render_run(analysis: Analysis, run: Run, *, status: str | None = None) -> str:
    """The report of ``run`` as HTML text (``status``: shown instead of the run's own)."""
    a = {**run.attrs, **({"status": status} if status else {})}
    model = a.get("model") or {}
    figures = [_figure(stem, pdf, a, analysis.captions) for stem, pdf in _figure_stems(run, analysis.captions)]
    return _env().get_template("run_report.html.j2").render(
        **_common(), page_title=f"lamina {analysis.name}: {Path(str(model.get('model', '?'))).name}",
        warning=(model.get("warning") or RANDOM) if a.get("weights") == "random" else None, status=a.get("status"),
        experiment=analysis.name, title=analysis.title, model_name=model.get("model", "?"),
        weights=a.get("weights"), dtype=a.get("dtype"), url=shown_url(run.url), provenance=provenance_rows(a),
        summary=[(str(k), fmt(v)) for k, v in (a.get("summary") or {}).items()], figures=figures,
        figures_hint="drawn by `lamina run` or `lamina plot`")


def write_comparison_report(folder: str | os.PathLike, data: Mapping[str, Any]) -> Path:
    """Render a comparison (``comparison.json`` content, see :mod:`~lamina.analyses.compare`) into ``folder``."""
    folder = Path(folder)
    runs = data["runs"]
    random = [r["label"] for r in runs if r.get("weights") == "random"]
    warning = (f"RANDOM WEIGHTS in {', '.join(random)}: "
               "their results are scientifically meaningless (architecture and speed only).") if random else None
    dims = {r.get("depth_dim") for r in runs}
    depth_text = ("hidden state / (n_states − 1), state 0 = embeddings" if dims == {"state"}
                  else "block / (n_blocks − 1)")
    rows = [("model", [(r.get("model") or {}).get("model", "?") for r in runs]),
            ("architecture", [(r.get("model") or {}).get("architecture", "?") for r in runs]),
            ("blocks" if dims != {"state"} else "hidden states", [r.get("n_depth") for r in runs]),
            ("d_model", [(r.get("model") or {}).get("d_model", "?") for r in runs]),
            ("weights", [_weights(r) for r in runs]),
            ("revision", [r.get("revision") or (r.get("model") or {}).get("revision") or "—" for r in runs]),
            ("dtype", [r.get("dtype") for r in runs]), ("device", [r.get("device") for r in runs]),
            ("stimuli sha256", [str(r.get("stimuli_sha256"))[:16] + "…" for r in runs]),
            ("lamina / torch / transformers", [" / ".join(str((r.get("versions") or {}).get(k, "?"))
                                                          for k in ("lamina", "torch", "transformers"))
                                                for r in runs]),
            ("created → completed", [f"{r.get('created')} → {r.get('completed')}" for r in runs]),
            ("run", [r.get("url") for r in runs])]
    figures = [{**f, "pdf": f["pdf"] if (folder / f["pdf"]).is_file() else None} for f in data.get("figures", [])]
    html = _env().get_template("compare_report.html.j2").render(
        **_common(), page_title=f"lamina compare {data['experiment']}", warning=warning, experiment=data["experiment"],
        title=data.get("title", ""), runs=runs, provenance=rows, depth_text=depth_text,
        same_stimuli=data.get("same_stimuli", True), table=data.get("table", []),
        table_file=data.get("table_file", "key_numbers.csv"), figures=figures, figures_hint="")
    path = folder / dst.REPORT
    _write(path, html)
    return path


# ---- content -------------------------------------------------------------------------------


def shown_url(url: str) -> str:
    """The run's URL as users know it: a run being staged by ``--overwrite`` (``.NAME.lamina-new``, swapped
    into place right after the report is written) shows as ``NAME``.

    >>> shown_url("runs/.qkv-gpt2.lamina-new"), shown_url("runs/qkv-gpt2")
    ('runs/qkv-gpt2', 'runs/qkv-gpt2')
    """
    if dst.is_local(url):
        p = dst.local_path(url)
        m = re.fullmatch(r"\.(.+)\.lamina-new", p.name)
        if m:
            return str(p.parent / m.group(1))
    return url


def provenance_rows(a: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(name, text) rows of a run's provenance attributes, in reading order."""
    model = a.get("model") or {}
    sizes = ", ".join(f"{k} {model[k]}" for k in ("n_layers", "d_model", "n_heads", "d_mlp", "n_ctx") if k in model)
    rows = [("model", f"{model.get('model', '?')} ({model.get('architecture', '?')}; {sizes})"),
            ("weights", _weights(a))]
    if model.get("gguf"):
        rows.append(("GGUF file", gguf_text(model["gguf"])))
    if model.get("tokenizer"):
        rows.append(("tokenizer", tokenizer_text(model)))
    revision = a.get("revision") or model.get("revision")
    if revision:
        rows.append(("revision", str(revision)))
    rows += [("dtype", str(a.get("dtype"))), ("device", str(a.get("device"))),
             ("processes (world size)", str(a.get("world_size", 1))),
             ("stimuli sha256", str(a.get("stimuli_sha256"))),
             ("options", fmt(a.get("options") or {})),
             ("created", str(a.get("created"))), ("completed", str(a.get("completed", "—"))),
             ("status", str(a.get("status"))),
             ("timings (s)", fmt(a.get("timings") or {})),
             ("versions", fmt(a.get("versions") or {})),
             ("machine", fmt(a.get("machine") or {}))]
    return rows


def fmt(v: Any) -> str:
    """A key number as text: floats in full (``repr``: they read back exactly), lists comma-separated,
    mappings as ``key: value`` pairs, None as n/a.

    >>> fmt([0.0222, 1, None]), fmt({"a": 1.5})
    ('0.0222, 1, n/a', 'a: 1.5')
    """
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt(x) for x in v)
    if isinstance(v, Mapping):
        return "; ".join(f"{k}: {fmt(x)}" for k, x in v.items())
    return str(v)


def num(v: Any) -> str:
    """A table cell: 4 significant digits, n/a for a missing value.

    >>> num(0.123456), num(None), num(-1234.5)
    ('0.1235', 'n/a', '-1234')
    """
    return "n/a" if v is None else f"{float(v):.4g}"


def _weights(a: Mapping[str, Any]) -> str:
    kind = str(a.get("weights"))
    if kind == "random":
        return f"random (seed {a.get('seed')}) — scientifically meaningless"
    if kind == "checkpoint":
        return "checkpoint (a local folder's weights)"
    if kind == "gguf":
        return "gguf (a GGUF file's weights, dequantised to float32)"
    return kind


def _figure_stems(run: Run, captions=()) -> list[tuple[str, bool]]:
    """(stem, has a PDF) of every PNG in RUN/figures, in the plot modules' order."""
    if dst.is_local(run.url):
        folder = Path(run.folder) / dst.FIGURES
        names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    else:
        import fsspec

        fs, root = fsspec.core.url_to_fs(run.url)
        target = f"{root.rstrip('/')}/{dst.FIGURES}"
        names = [Path(p).name for p in fs.ls(target, detail=False)] if fs.exists(target) else []
    stems = sorted({n[:-4] for n in names if n.endswith(".png")}, key=figure_order(captions))
    return [(s, f"{s}.pdf" in names) for s in stems]


def _figure(stem: str, has_pdf: bool, attrs: Mapping, captions=()) -> dict:
    return {"stem": stem, "png": f"{dst.FIGURES}/{stem}.png", "pdf": f"{dst.FIGURES}/{stem}.pdf" if has_pdf else None,
            "caption": run_caption(stem, attrs, captions)}


def analysis_of(run: Run) -> Analysis:
    """The analysis that made ``run``: the registry's, or for a ``lamina similarity`` folder (no analysis of
    ``lamina run``) how it is reported and drawn."""
    from .similarity.analysis import REPORT_AS

    return REPORT_AS if run.experiment == REPORT_AS.name else registry.get(run.experiment)


def _common() -> dict:
    from lamina.engine.provenance import versions

    return {"lamina_version": versions().get("lamina", "?"),
            "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def _env():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["num"] = num
    return env
