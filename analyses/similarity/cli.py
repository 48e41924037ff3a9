"""``lamina similarity RUN_A RUN_B --out FOLDER``: the click command (its options come from :class:`Options`).

>>> command.name
'similarity'
"""

from __future__ import annotations

import click

from ..cli_config import build, click_options
from . import Options


def _callback(run_a, run_b, out, device, overwrite, figures, **values):
    from . import similarity

    result = similarity(run_a, run_b, out=out, options=build(Options, values), device=device, overwrite=overwrite,
                        figures=figures)
    click.echo(f"similarity of {result.runs[0]} (A) and {result.runs[1]} (B) -> {result.out}")
    for path in (*[p for p in result.figures if p.endswith(".png")], result.table, result.report):
        if path:
            click.echo(path)


command = click.Command(
    "similarity", callback=_callback,
    help="Linear CKA (biased, debiased) of every layer of RUN_A with every layer of RUN_B, made on the same tokens; "
         "permutation p-values, bootstrap intervals, best-matching layers, figures, a table and report.html in "
         "FOLDER (a Zarr group that reads like a run).",
    params=[click.Argument(["run_a"]), click.Argument(["run_b"]),
            click.Option(["--out", "-o"], required=True, help="Folder written (new, empty, or an earlier similarity)."),
            click.Option(["--device"], default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ..."),
            click.Option(["--overwrite"], is_flag=True, help="Replace an earlier similarity in FOLDER."),
            click.Option(["--figures/--no-figures"], default=True, show_default=True,
                         help="Draw the figures and report.html."),
            *click_options(Options)])
