"""The ``lamina`` command line (click), generated from the registered analyses' Config dataclasses.

    lamina run NAME [OPTIONS]        one analysis (qkv, rsa, length, punct, capture, plugins)
    lamina run all --weights random  the four course analyses with their default models
    lamina capture --hook H --text-file F --out STORE     (= lamina run capture)
    lamina info STORE [--verify]     provenance, status, progress, arrays, key numbers
    lamina verify STORE              metadata and every chunk against the run's manifest
    lamina plot STORE [FIGURE OPTIONS]   redraw a run's figures
    lamina similarity RUN_A RUN_B --out FOLDER   layer x layer CKA of two runs on the same tokens
    lamina analyses                  what is registered (built-ins and plugins)
    lamina hooks MODEL [--json]      every hook point: shape per position, fast path or bridge
    lamina --version                 (--threads N on run and capture: torch.set_num_threads, in the provenance)
    lamina bench [--quick]           benchmarks side by side

User errors print one line ``lamina: error: ...`` and exit 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import dataclasses
import errno
import sys

import click

from lamina.engine.errors import LaminaError

# options, the runner and the analyses' code import torch: they are imported where a command needs them, so that
# `lamina --help`, `info`, `verify`, `analyses`, `report`, `compare` start without torch (tests/test_startup.py)
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


def _run_command(name: str) -> click.Command:
    """``lamina run NAME``: the analysis' Config and PlotOptions plus the options every run takes."""
    from . import registry
    from .cli_config import build, click_options, split
    from .options import RunOptions

    analysis = registry.get(name)
    own = {f.name for f in dataclasses.fields(analysis.Config)}  # e.g. capture's --layers: the analysis' own
    params = [p for p in click_options(RunOptions) if p.name not in own] + click_options(analysis.Config)
    if analysis.PlotOptions is not None:
        params += click_options(analysis.PlotOptions)
    params.append(_THREADS)

    def callback(**values):
        from .runner import execute
        from .summary import describe

        _set_threads(values.pop("threads"))
        run_v, cfg_v, fig_v = split(values, RunOptions, analysis.Config, analysis.PlotOptions)
        opts = build(RunOptions, {k: v for k, v in run_v.items() if k not in own})
        run = execute(analysis, build(analysis.Config, cfg_v), opts, figure_options=fig_v, allow_memory=False,
                      echo=click.echo)
        if run is not None and _is_main():
            click.echo(describe(run.url))

    doc = (analysis.Config.__doc__ or "").strip()
    doc = "" if doc.startswith(analysis.Config.__name__ + "(") else doc.splitlines()[0]  # not dataclass's own
    return click.Command(name, params=params, callback=callback, help=f"{analysis.title}.\n\n{doc}".strip(),
                         short_help=analysis.title, context_settings=CONTEXT)


class _RunGroup(click.Group):
    """Subcommands come from the registry (so plugins appear), plus ``all``."""

    def list_commands(self, ctx):
        from . import registry

        return [*registry.names(), "all"]

    def get_command(self, ctx, name):
        if name == "all":
            return _run_all_command()
        try:
            return _run_command(name)
        except LaminaError:
            return None  # listed by `lamina analyses` as broken; --help and the other analyses keep working

    def resolve_command(self, ctx, args):
        from . import registry

        if args and args[0] != "all" and args[0] in registry.names():
            registry.get(args[0])  # a broken plugin says why, in one line
        return super().resolve_command(ctx, args)


class _App(click.Group):
    """The top-level group. Commands whose module imports torch are imported on first use ("module:attribute", a
    click Command or a function making one), not for ``lamina --help``; one whose package is absent is not listed."""

    LAZY = {"capture": ("Capture named hooks for every text into a run (no statistics).",
                        "lamina.analyses.cli:_capture_command"),
            "similarity": ("Layer x layer CKA of two runs on the same tokens (lamina similarity A B --out F).",
                           "lamina.analyses.similarity.cli:command")}

    def _lazy(self) -> dict[str, tuple[str, str]]:
        import importlib.util

        return {name: v for name, v in self.LAZY.items()
                if importlib.util.find_spec(v[1].partition(":")[0].rsplit(".", 1)[0]) is not None}

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *self._lazy()})

    def get_command(self, ctx, name):
        lazy = self._lazy()
        if name in lazy and name not in self.commands:
            short, target = lazy[name]
            if getattr(self, "_listing", False):  # the help page's one-line summary
                return click.Command(name, short_help=short)
            import importlib

            module, _, attr = target.partition(":")
            obj = getattr(importlib.import_module(module), attr)
            cmd = obj if isinstance(obj, click.Command) else obj()
            cmd.name = name
            cmd.context_settings = {**CONTEXT, **(cmd.context_settings or {})}
            return cmd
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        self._listing = True
        try:
            super().format_commands(ctx, formatter)
        finally:
            self._listing = False


@click.group(cls=_App, context_settings=CONTEXT, help="lamina: layer-wise analyses of language-model representations, "
                                            "streamed to Zarr.")
@click.version_option(package_name="lamina", prog_name="lamina", message="%(prog)s %(version)s")
def app():
    pass


# ---- --threads, lamina hooks -----------------------------------------------------------------------------------
_THREADS = click.Option(["--threads"], type=click.IntRange(min=1), default=None,
                        help="CPU threads for torch (torch.set_num_threads; recorded in the run's provenance). "
                             "Default: torch's own choice.")


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


@app.command("hooks", context_settings=CONTEXT)
@click.argument("model")
@click.option("--config", default=None, help="config.json of the architecture (default: the model's own).")
@click.option("--revision", default=None, help="Hub commit, branch or tag of MODEL.")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def hooks_command(model, config, revision, as_json):
    """Every hook point of MODEL: its shape per token position and whether the capture fast path serves it
    (else the TransformerLens bridge runs it). Built on the meta device from the config: no weights read."""
    from lamina.engine.hook_catalog import format_catalog, hooks

    table = hooks(model, config=config, revision=revision)
    if as_json:
        import json

        click.echo(json.dumps({n: {"shape": list(i.shape), "per_position": i.per_position, "fast": i.fast}
                               for n, i in table.items()}, indent=1))
    else:
        click.echo(format_catalog(table))


@app.group("run", cls=_RunGroup, context_settings=CONTEXT,
           help="Run an analysis into a Zarr run (definitions: docs/analyses.md).")
def run_group():
    pass


def _run_all(out_dir: str, threads: int | None, **values):
    """Run qkv, rsa, length and punct, each with its default model (``--weights random`` works offline)."""
    from . import registry
    from .cli_config import build
    from .options import RunOptions
    from .runner import execute
    from .summary import describe

    _set_threads(threads)
    if values.get("out") is not None:
        raise click.UsageError("lamina run all writes one run per analysis under --out-dir; --out is not used")
    for name in registry.COURSE:
        analysis = registry.get(name)
        opts = build(RunOptions, values).with_model(analysis.default_model)
        url = opts.out_for(name, out_dir)
        click.echo(f"== lamina run {name} --model {opts.model} --weights {opts.weights} -> {url}")
        run = execute(analysis, None, RunOptions(**{**opts.__dict__, "out": url}), allow_memory=False,
                      echo=click.echo)
        if _is_main():
            click.echo(describe(run.url))


def _run_all_command() -> click.Command:
    from .cli_config import click_options
    from .options import RunOptions

    return click.Command("all", callback=_run_all, context_settings=CONTEXT, help=_run_all.__doc__,
                         params=[p for p in click_options(RunOptions) if p.name not in ("model", "out")]
                         + [click.Option(["--out-dir"], default="runs", show_default=True,
                                         help="Folder for the four runs."), _THREADS])


def _capture_command() -> click.Command:
    """``lamina capture`` is ``lamina run capture``."""
    cmd = _run_command("capture")
    cmd.name = "capture"
    return cmd


@app.command(context_settings=CONTEXT)
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print the attributes as JSON.")
@click.option("--verify", "check", is_flag=True, help="Also read every chunk and check its checksum.")
def info(store, as_json, check):
    """What is in a run: provenance, status (and how far an interrupted run got), arrays, key numbers."""
    import json

    from lamina.engine.reader import open_run

    from .summary import describe

    run = open_run(store)
    click.echo(json.dumps(run.attrs, indent=2, default=str) if as_json else describe(store))
    if check:
        _verify(run)


@app.command(context_settings=CONTEXT)
@click.argument("store")
def verify(store):
    """Check the run's metadata and every chunk against its manifest: present, intact, the chunk the run
    wrote. Exit 2 when not (the same command that made the run repairs it)."""
    _verify(store)


def _verify(run) -> None:
    from lamina.engine.verify import verify as check

    report = check(run)
    click.echo(report.summary())
    report.raise_if_bad("reading it")


@app.command(context_settings={**CONTEXT, "ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("store")
@click.pass_context
def plot(ctx, store):
    """(Re)draw the figures of a complete run into STORE/figures and refresh STORE/report.html; figure
    options as for `lamina run`."""
    from lamina.engine.reader import open_run
    from lamina.engine.verify import verify as check

    from .cli_config import click_options
    from .report import analysis_of
    from .runner import draw, figure_settings

    run = open_run(store)
    analysis = analysis_of(run)  # a `lamina similarity` folder too (no analysis of `lamina run`)
    if not run.complete:
        raise LaminaError(f"{store!r} is {run.status}: finish it (run the same command again) before plotting")
    check(run).raise_if_bad("plotting it")
    params = click_options(analysis.PlotOptions) if analysis.PlotOptions is not None else []
    parser = click.Command(f"plot {analysis.name}", params=params, context_settings=CONTEXT)
    sub = parser.make_context("lamina plot STORE", list(ctx.args), parent=ctx)
    for path in draw(analysis, run, figure_settings(analysis, sub.params)):
        click.echo(str(path))
    from .report import write_report

    click.echo(write_report(analysis, run))  # the page lists every figure the folder now holds


@app.command("analyses", context_settings=CONTEXT)
def list_analyses():
    """The analyses lamina knows: built-ins, then plugins (entry-point group lamina.analyses)."""
    from . import registry

    for name in registry.names():
        try:
            a = registry.get(name)
            click.echo(f"{name:<12} {a.title} (default model {a.default_model})")
        except LaminaError as e:  # a broken plugin is listed as such and does not hide the others
            click.echo(f"{name:<12} BROKEN: {e}")


@app.command(context_settings={**CONTEXT, "ignore_unknown_options": True, "allow_extra_args": True},
             add_help_option=False)
@click.pass_context
def bench(ctx):
    """Benchmarks (runs ``python -m lamina.benchmarks``); ``lamina bench --help`` for options."""
    import subprocess

    sys.exit(subprocess.call([sys.executable, "-m", "lamina.benchmarks", *ctx.args]))


from .cli_compare import register as _register_compare  # noqa: E402  (lamina compare, lamina report)

_register_compare(app)


def _is_main() -> bool:
    from lamina.engine.distributed import world

    return world().is_main


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one clear line and exit 2 (no traceback); Ctrl-C exits 130."""
    from . import cli_errors

    _quiet_asyncio()
    try:
        app.main(args=cli_errors.take_debug(argv), prog_name="lamina", standalone_mode=False)
    except LaminaError as e:
        cli_errors.show(e)
        sys.exit(2)
    except click.exceptions.NoArgsIsHelpError as e:
        click.echo(e.ctx.get_help() if e.ctx else str(e), err=True)
        sys.exit(2)
    except click.ClickException as e:
        hint = f" (see `{e.ctx.command_path} --help`)" if getattr(e, "ctx", None) is not None else ""
        click.secho(f"lamina: error: {e.format_message()}{hint}", err=True, fg="red")
        sys.exit(2)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.secho("lamina: interrupted; the run is left incomplete and consistent: run the same command again to "
                    "resume it", err=True)
        sys.exit(130)


def _quiet_asyncio() -> None:
    """zarr writes through asyncio; when a write fails (disk full) every pending task would log its own
    traceback, and objects finalised after zarr's event loop closed print "Exception ignored ... Event loop
    is closed" at exit. The failure itself is reported once, as a lamina error."""
    import logging
    import warnings

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited", category=RuntimeWarning)
    default = sys.unraisablehook

    def hook(unraisable):
        if isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value):
            return
        if isinstance(unraisable.exc_value, OSError) and unraisable.exc_value.errno in _DISK_ERRNOS:
            return  # the pending writes of a failed run: already reported
        default(unraisable)

    sys.unraisablehook = hook


_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)


if __name__ == "__main__":
    main()
