"""``lamina compare`` and ``lamina report``: click commands that :func:`register` adds to the ``lamina`` group.

    lamina compare RUN RUN [RUN...] --out FOLDER [--allow-different-stimuli]
    lamina report STORE          (re)write STORE/report.html (a run, or a comparison folder)

:mod:`lamina.analyses.cli` calls ``register(app)`` at its bottom (this module does not import it back:
no import cycle); user errors are LaminaErrors, which the CLI's ``main`` prints as one line, exit 2.
"""

from __future__ import annotations

import click


@click.command("compare")
@click.argument("runs", nargs=-1, required=True)
@click.option("--out", "-o", required=True, help="Folder for the figures, key_numbers.csv and report.html.")
@click.option("--allow-different-stimuli", is_flag=True,
              help="Compare runs made on different stimuli (stimuli_sha256) anyway.")
def compare_command(runs, out, allow_different_stimuli):
    """Overlay runs of ONE analysis (different models, seeds or dtypes) on a shared relative-depth axis.

    Writes OUT/figures/compare_*.png|pdf, OUT/key_numbers.csv and OUT/report.html.
    """
    from .compare import compare

    result = compare(list(runs), out=out, allow_different_stimuli=allow_different_stimuli)
    click.echo(f"compared {len(result.runs)} {result.experiment} runs: {', '.join(result.labels)}")
    for path in (*[p for p in result.figures if p.endswith(".png")], result.table, result.report):
        click.echo(path)


@click.command("report")
@click.argument("store")
def report_command(store):
    """(Re)write STORE/report.html: provenance, key numbers and every figure with its caption.

    STORE is a complete run or a `lamina compare` folder.
    """
    from .report import report

    click.echo(report(store))


COMMANDS = (compare_command, report_command)


def register(app: click.Group) -> None:
    """Add the commands to ``app`` with its context settings (``-h``, help width)."""
    for cmd in COMMANDS:
        cmd.context_settings = {**(app.context_settings or {}), **cmd.context_settings}
        app.add_command(cmd)
