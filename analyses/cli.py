"""The ``lamina`` command line (typer): run, capture, info, plot, bench.

    lamina run qkv|rsa|length|punct [OPTIONS]   one analysis of EXPERIMENTS.md
    lamina run all --weights random             the four with their defaults
    lamina capture --model M --hook 'blocks.{layer}.attn.hook_q' --text-file F --out STORE
    lamina info STORE                           provenance, status, progress, arrays, key numbers
    lamina plot STORE                           (re)draw a run's figures
    lamina bench [--quick]                      benchmarks side by side
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Annotated, Optional

import typer

from lamina.engine.errors import LaminaError

from .cli_options import (DeviceOpt, DtypeOpt, FiguresOpt, MicroBatchOpt, ModelOpt, OverwriteOpt,
                          ProgressOpt, SeedOpt, WeightsOpt, run_options)

ANALYSES = ("qkv", "rsa", "length", "punct")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="lamina: layer-wise analyses of language-model representations, streamed to Zarr.")
run_app = typer.Typer(no_args_is_help=True, help="Run an analysis of EXPERIMENTS.md into a Zarr run store.")
app.add_typer(run_app, name="run")


def analysis(name: str):
    return importlib.import_module(f"lamina.analyses.{name}")


for _name in ANALYSES:
    analysis(_name).add_command(run_app)


@run_app.command("all")
def run_all(
    weights: WeightsOpt = "pretrained", seed: SeedOpt = 0, device: DeviceOpt = "auto", dtype: DtypeOpt = "float32",
    out_dir: Annotated[str, typer.Option("--out-dir", help="Folder for the four runs.")] = "runs",
    overwrite: OverwriteOpt = False, micro_batch: MicroBatchOpt = None, figures: FiguresOpt = True,
    progress: ProgressOpt = True,
):
    """Run qkv, rsa, length and punct, each with its default model (``--weights random`` works offline)."""
    for name in ANALYSES:
        mod = analysis(name)
        opts = run_options(None, mod.DEFAULT_MODEL, weights, seed, device, dtype, None, overwrite, micro_batch,
                           figures, progress)
        opts = type(opts)(**{**opts.__dict__, "out": f"{out_dir}/" + opts.out_for(name).split("/", 1)[1]})
        typer.echo(f"== lamina run {name} --model {opts.model} --weights {weights} -> {opts.out}")
        url = mod.run(opts, mod.Config())
        typer.echo(_summary_text(url))


@app.command()
def capture(
    hook: Annotated[list[str], typer.Option("--hook", help="Hook name; '{layer}' expands over --layers. Repeat to concatenate features (e.g. q, k, v).")],
    text_file: Annotated[str, typer.Option("--text-file", help="One text per line.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Run store.")],
    model: ModelOpt = None, weights: WeightsOpt = "pretrained", seed: SeedOpt = 0, device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    layers: Annotated[str, typer.Option("--layers", help="all, 6, 0,3,5 or 2-7")] = "all",
    positions: Annotated[str, typer.Option("--positions", help="last | all | an index for every text")] = "last",
    overwrite: OverwriteOpt = False, micro_batch: MicroBatchOpt = None, progress: ProgressOpt = True,
    chunk_samples: Annotated[Optional[int], typer.Option("--chunk-samples", help="Samples per store chunk (default: chunks of >= 1 MiB).")] = None,
):
    """Capture named hooks for every text of a file into a store (acts/capture: layer, sample, [pos,] feature)."""
    from .generic import capture_texts

    opts = run_options(model, "gpt2", weights, seed, device, dtype, out, overwrite, micro_batch, False, progress)
    url = capture_texts(opts, hooks=hook, text_file=text_file, layers=layers, positions=positions,
                        samples_per_chunk=chunk_samples)
    typer.echo(_summary_text(url))


@app.command()
def info(store: Annotated[str, typer.Argument(help="A run store.")],
         as_json: Annotated[bool, typer.Option("--json", help="Print the attributes as JSON.")] = False):
    """What is in a run: provenance, status (and how far an interrupted run got), arrays, key numbers."""
    from lamina.engine.store import open_run

    run = open_run(store)
    if as_json:
        typer.echo(json.dumps(run.attrs, indent=2, default=str))
        return
    typer.echo(_summary_text(store))


@app.command()
def plot(store: Annotated[str, typer.Argument(help="A complete run store.")]):
    """(Re)draw the figures of a run into STORE/figures."""
    from lamina.engine.store import open_run

    from .common import figures_dir

    run = open_run(store)
    exp = run.attrs.get("experiment")
    if exp not in ANALYSES:
        raise LaminaError(f"{store!r} is a {exp!r} run; only {', '.join(ANALYSES)} runs have figures")
    if not run.complete:
        raise LaminaError(f"{store!r} is {run.status}: finish it (run the same command again) before plotting")
    for p in analysis(exp).plot(run, figures_dir(store)):
        typer.echo(str(p))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context):
    """Benchmarks (same as ``python -m lamina.benchmarks``); ``lamina bench --help`` for options."""
    from lamina.benchmarks.__main__ import main as bench_main

    bench_main(list(ctx.args))


def _summary_text(url: str) -> str:
    from .summary import describe

    return describe(url)


def main(argv: list[str] | None = None) -> None:
    """Entry point: lamina errors print one clear line and exit 2 (no traceback)."""
    try:
        app(args=argv, standalone_mode=False)
    except LaminaError as e:
        typer.secho(f"lamina: error: {e}", err=True, fg="red")
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        typer.secho("lamina: interrupted; run the same command again to resume", err=True)
        sys.exit(130)
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
