"""How a run shows itself in a notebook: ``repr(run)`` in one line, ``run._repr_html_()`` as a small page
(provenance, status, a table of arrays, the figures inline).

>>> run = lamina.open_run("runs/rsa-gpt2")          # doctest: +SKIP
>>> run                                              # doctest: +SKIP
<lamina.Run rsa 'runs/rsa-gpt2': complete, gpt2 (pretrained), 9 arrays, 4 figures>
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

from . import destination as dst

MAX_INLINE_BYTES = 2 << 20  # a figure larger than this is linked, not embedded


def figure_files(run) -> list[Path]:
    """The run's PNG figures (local runs), in name order."""
    if not dst.is_local(run.url):
        return []
    folder = Path(run.folder) / "figures"
    return sorted(folder.glob("*.png")) if folder.is_dir() else []


def one_line(run) -> str:
    a = run.attrs
    model = a.get("model") or {}
    name = model.get("model", "?") if isinstance(model, dict) else model
    status = run.status
    if not run.complete and status != "drawing":
        done = [f"{d}/{t} units" for d, t in run.progress().values()]
        status += f" ({', '.join(done)})" if done else ""
    figures = len(figure_files(run))
    return (f"<lamina.Run {run.experiment} {run.url!r}: {status}, {name} ({a.get('weights', '?')}), "
            f"{len(run.arrays())} arrays" + (f", {figures} figures" if figures else "") + ">")


def _rows(pairs) -> str:
    return "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in pairs)


def page(run) -> str:
    """The HTML a notebook shows for ``run``."""
    a = run.attrs
    model = a.get("model") or {}
    model = model if isinstance(model, dict) else {"model": model}
    versions = a.get("versions") or {}
    provenance = [("model", f"{model.get('model')} ({model.get('architecture')}, {model.get('n_layers')} layers, "
                            f"d_model {model.get('d_model')})"),
                  ("weights", a.get("weights") if a.get("weights") != "random" else f"random, seed {a.get('seed')}"),
                  ("dtype / device", f"{a.get('dtype')} / {a.get('device')}"),
                  ("lamina / torch", f"{versions.get('lamina', '?')} / {versions.get('torch', '?')}"),
                  ("stimuli sha256", str(a.get("stimuli_sha256", "?"))[:16]),
                  ("created / completed", f"{a.get('created', '?')} / {a.get('completed', '-')}")]
    status = run.status
    progress = run.progress()
    if not run.complete and progress:
        status += " - " + ", ".join(f"{k}: {d}/{t} units" for k, (d, t) in progress.items()) + \
            " (run the same command again to resume)"
    parts = [f'<div class="lamina-run"><h4>lamina run <code>{html.escape(run.experiment)}</code> - '
             f"{html.escape(str(run.url))}</h4>",
             f'<p class="status">status: <b>{html.escape(status)}</b></p>']
    if model.get("warning"):
        parts.append(f'<p class="warning" style="color:#b00"><b>{html.escape(str(model["warning"]))}</b></p>')
    parts.append(f'<table class="provenance">{_rows(provenance)}</table>')
    arrays = "".join(
        f"<tr><td><code>{html.escape(name)}</code></td><td>{html.escape(', '.join(run.dims(name)))}</td>"
        f"<td>{html.escape(' x '.join(map(str, run[name].shape)))}</td>"
        f"<td>{html.escape(str(run[name].dtype))}</td></tr>"
        for name in run.arrays())
    parts.append('<table class="arrays"><tr><th>array</th><th>dims</th><th>shape</th><th>dtype</th></tr>'
                 f"{arrays}</table>")
    figures = figure_files(run)
    if figures:
        parts.append('<div class="figures">')
        for path in figures:
            if os.path.getsize(path) <= MAX_INLINE_BYTES:
                src = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
            else:
                src = path.as_uri()
            parts.append(f'<figure style="display:inline-block;margin:4px"><img src="{src}" style="max-width:480px">'
                         f"<figcaption>{html.escape(path.name)}</figcaption></figure>")
        parts.append("</div>")
    parts.append("</div>")
    return "\n".join(parts)
