"""The one runner: everything an analysis does not do, done once for every analysis.

validate (options, ``--out``, stimuli, bounds: all before the model loads; a complete run
of the same command is verified, and repaired when damaged) -> load the model -> check
the hooks -> open, resume, repair or stage the run (locked) -> write inputs -> capture /
reduce, unit by unit, on every rank -> barrier -> compute on rank 0 -> write results with
dims and coordinates -> finalise (summary, timings, consolidated metadata) -> figures and
report -> status "complete" -> swap a staged run into place -> unlock, on success or
failure. The runner writes only through the store (a RunWriter on rank 0, a ChunkWriter on
the others); a command refused after the run was made leaves nothing behind.

>>> from lamina.analyses import registry
>>> run = execute(registry.get("qkv"), opts=RunOptions(model="gpt2", weights="random"))   # doctest: +SKIP
>>> run.status                                                                           # doctest: +SKIP
'complete'
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from lamina.engine import destination as dst
from lamina.engine import partials
from lamina.engine.capture import plan
from lamina.engine.chunk_writer import ChunkWriter
from lamina.engine.distributed import World, barrier, broadcast_object, device_for, world as get_world
from lamina.engine.errors import HookError, InputError, NonFiniteError
from lamina.engine.labelled import Coord
from lamina.engine.models import RANDOM_WEIGHTS_WARNING, LoadedModel, load_model, resolve_device, resolve_dtype
from lamina.engine.pipeline import capture_to_store
from lamina.engine.provenance import machine, versions
from lamina.engine.reader import Run, open_run
from lamina.engine.run_folder import check_writable, publish_figures
from lamina.engine.store import RunWriter

from . import registry
from .model_info import inspect
from .options import RunOptions
from .protocol import Analysis, Context, Data, Spec, check_options
from .report import write_report
from .stages import check_results, check_spec, stage_call

_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.")
_REFUSED = (InputError, HookError, NonFiniteError)  # a command refused for its input: its new run is removed

Echo = Callable[[str], None]


def execute(
    analysis: Analysis,
    cfg: Any = None,
    opts: RunOptions = RunOptions(),
    *,
    figure_options: Mapping[str, Any] | None = None,
    model: LoadedModel | None = None,
    allow_memory: bool = True,
    echo: Echo = print,
) -> Run:
    """Run ``analysis`` with ``cfg`` (default: its Config()) and ``opts``; returns the complete run.

    ``model``: an already loaded model (``opts.model`` etc. are then taken from it).
    ``allow_memory``: accept ``memory://`` URLs (the command line does not: nothing would be kept).
    """
    cfg = analysis.Config() if cfg is None else cfg
    if not isinstance(cfg, analysis.Config):
        raise TypeError(f"{analysis.name}: cfg must be a {analysis.Config.__qualname__}, not {type(cfg).__name__}")
    figs = figure_settings(analysis, figure_options or {})
    for declared in (cfg, opts, figs):  # every option's bounds, the same from the CLI and from Python
        if declared is not None:
            check_options(declared)
    if model is not None:
        opts = dataclasses.replace(opts, model=model.name, weights="random" if model.is_random else "pretrained",
                                   dtype=str(model.dtype).removeprefix("torch."), device=str(model.device))
    opts = opts.with_model(analysis.default_model)
    world = get_world()
    url = opts.out_for(analysis.name)
    dest = _on_main(world, lambda: _check_out(url, opts, allow_memory))
    if model is None:
        _check_device(world, opts)
    info = inspect(opts, model)
    info = dataclasses.replace(info, layers=opts.select_layers(info.n_layers))  # --layers, before any weights load
    spec = stage_call(analysis.name, "spec", analysis.spec, cfg, info)  # every input error before the model loads
    check_spec(analysis.name, spec)
    _check_bounds(spec, opts)
    _check_layer_subset(analysis.name, spec, info, opts)
    key = run_key(analysis, cfg, opts, spec, info.layers if len(info.layers) < info.n_layers else None)
    mode = _on_main(world, lambda: _mode(dest, key, opts, echo))

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if model is None:
        model = load_model(opts.model, weights=opts.weights, seed=opts.seed, device=device_for(world, opts.device),
                           dtype=opts.dtype, revision=opts.revision, config=opts.config, tokenizer=opts.tokenizer)
    timings["load_s"] = time.perf_counter() - t0
    if model.is_random and world.is_main and opts.progress:
        echo(f"lamina: {RANDOM_WEIGHTS_WARNING}")
    for p in spec.passes:  # hooks the model lacks: refused before the run is made
        plan(model, p.captures)
    prov = provenance(analysis, model, cfg, opts, spec, world, info.layers)
    store = _open_store(world, dest, analysis.name, key, prov, opts.overwrite, repair=mode in ("complete", "repair"))
    noted = mode in ("complete", "repair")  # the repair was announced; the units' line is not repeated
    try:
        if _on_main(world, lambda: store.status) not in ("drawing", "complete"):
            _fill(analysis, cfg, opts, spec, model, store, world, timings, None if noted else echo)
        barrier(world)
        if world.is_main:
            if store.status == "drawing":  # the data is final; complete only once figures and report are there
                if opts.figures:
                    t = time.perf_counter()
                    draw(analysis, open_run(store.write_url), figs, publish=store.publish_figures)
                    store.set_attrs(timings={**store.attrs.get("timings", {}),
                                             "figures_s": round(time.perf_counter() - t, 3)})
                    write_report(analysis, open_run(store.write_url), publish=store.publish_report, status="complete")
                store.complete()
            store.publish()
    except _REFUSED:
        if world.size == 1 and isinstance(store, RunWriter):
            store.discard()
        raise
    finally:
        store.close()
    barrier(world)
    return open_run(url)


def _mode(dest, key: str, opts: RunOptions, echo: Echo) -> str:
    """What the command does at ``dest`` (:func:`~lamina.engine.destination.check_resumable`); a complete run of
    the same command is verified: intact, it is refused as existing; damaged, it is repaired (said in one line)."""
    mode = dst.check_resumable(dest, key, overwrite=opts.overwrite)
    if mode == "complete":
        from lamina.engine.verify import verify

        report = verify(dest.url)
        if report.ok:
            raise dst.exists_error(dest)
        more = f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        echo(f"lamina: {dest.url} is damaged: {report.problems[0]}{more}; repairing it (what is damaged is "
             "computed again)")
    elif mode == "repair":
        echo(f"lamina: {dest.url} is damaged: its root zarr.json is {dest.damage}; repairing it")
    return mode


def _check_bounds(spec: Spec, opts: RunOptions) -> None:
    """Numeric options against the data, before the model loads."""
    n = max((len(p.batch) for p in spec.passes), default=0)
    if opts.unit_samples is not None and n and opts.unit_samples > n:
        raise InputError(f"--unit-samples {opts.unit_samples} is more than the {n} samples of this run; give at most "
                         f"{n} (or leave it out)")


def _check_layer_subset(name: str, spec: Spec, info, opts: RunOptions) -> None:
    """A subset of blocks (``--layers``) is refused by an analysis that does not take it (one capturing every
    block whatever ``model.layers`` says, or capturing nothing): every ``blocks.N.`` hook it asks for must be in a
    selected block (block 0's ``hook_resid_pre``, the embeddings, aside)."""
    if len(info.layers) == info.n_layers:
        return
    hooks = [h for p in spec.passes for c in p.captures for h in c.hook_names]
    used = {int(m.group(1)) for h in hooks if h != "blocks.0.hook_resid_pre" and (m := _BLOCK_HOOK.match(h))}
    if not hooks or not used <= set(info.layers):
        raise InputError(f"{{layers}}: {name} does not analyse a subset of blocks (it would read blocks "
                         f"{sorted(used)}); leave --layers out", params={"layers": opts.layers})


def _fill(analysis, cfg, opts, spec: Spec, model, store: ChunkWriter, world: World, timings: dict,
          echo: Echo | None) -> None:
    """Inputs, every pass, then (rank 0) compute, results and finalise."""
    if world.is_main:
        for path, value in spec.inputs.items():
            store.put_labelled(path, value)
        for path, coord in spec.coords.items():
            store.put_coord(path, path.rsplit("/", 1)[-1], coord)
    barrier(world)
    widths: dict[str, tuple] = {}
    t = time.perf_counter()
    for p in spec.passes:
        spc, mb = p.samples_per_chunk, opts.micro_batch
        if opts.unit_samples is not None:  # whole chunks of unit_samples, one micro-batch at most per unit
            spc, mb = opts.unit_samples, min(mb or opts.unit_samples, opts.unit_samples)
        if mb is not None:
            mb = min(mb, max(len(p.batch), 1))  # a micro-batch larger than the data is the whole data
        done = capture_to_store(model, p.batch, p.captures, store, phase=p.phase, micro_batch=mb,
                                samples_per_chunk=spc, world=world, keep=p.keep, reducers=p.reducers,
                                unit_bytes=p.unit_bytes, progress=opts.progress, on_repair=echo)
        for lay in done.layouts:
            widths[lay.capture.name] = lay.widths
            if world.is_main and p.keep:
                c = lay.capture
                labels = list(c.layer_labels if c.layer_labels is not None else range(lay.n_entries))
                coord = Coord.of(np.asarray(labels, dtype=np.int64) if all(isinstance(v, int) for v in labels)
                                 else [str(v) for v in labels], long_name=c.layer_dim)
                store.put_coord(f"{c.name.rsplit('/', 1)[0]}/{c.layer_dim}", c.layer_dim, coord)
    timings["capture_s"] = time.perf_counter() - t
    barrier(world)
    if not world.is_main:
        return
    reduced = {r.name: partials.fold(store, r, _n_units(store, p.phase), model.device)
               for p in spec.passes for r in p.reducers}
    stored = [n for p in spec.passes if p.keep for n in dict.fromkeys(c.name for c in p.captures)]
    data = Data(lambda name: torch.from_numpy(store.read(name)).to(model.device), reduced, widths, stored=stored)
    ctx = Context(model.device, opts.seed, opts.progress)
    t = time.perf_counter()
    results = stage_call(analysis.name, "compute", analysis.compute, data, spec, cfg, ctx)
    timings["compute_s"] = time.perf_counter() - t
    check_results(analysis, results)
    t = time.perf_counter()
    for path, value in results.items():
        store.put_labelled(path, value)
    timings["write_s"] = time.perf_counter() - t
    summary = stage_call(analysis.name, "summary", analysis.summary, results, spec, cfg)
    store.finalise(drawing=opts.figures, summary=dict(summary), timings={k: round(v, 3) for k, v in timings.items()})


def _n_units(store: ChunkWriter, phase: str) -> int:
    done = store.done_units(phase)
    if not done.all():
        missing = [u for u in range(len(done)) if not done[u]]
        raise RuntimeError(f"phase {phase!r}: units {missing[:10]} of {len(done)} were not captured")
    return len(done)


def run_key(analysis: Analysis, cfg, opts: RunOptions, spec: Spec,
            layers: tuple[int, ...] | None = None) -> str:
    """What makes two runs "the same command" (resume only continues the same command); ``layers``: the blocks of
    ``--layers`` when they are not all of them (every block: the key of a run without ``--layers``)."""
    key = {"experiment": analysis.name, "model": opts.model, "revision": opts.revision,
           "model_config": opts.config, **({"tokenizer": opts.tokenizer} if opts.tokenizer else {}),
           **({"layers": list(layers)} if layers is not None else {}),
           "weights": opts.weights, "seed": opts.seed, "dtype": opts.dtype,
           "config": _config_dict(cfg), "options": dict(spec.options), "stimuli": spec.stimuli_sha256}
    return json.dumps(key, sort_keys=True, default=str)


def provenance(analysis: Analysis, model: LoadedModel, cfg, opts: RunOptions, spec: Spec, world: World,
               layers: tuple[int, ...] | None = None) -> dict:
    """What the run records of itself; ``layers``: the blocks analysed (of the model's ``model.n_layers``)."""
    return {"lamina_version": versions().get("lamina"), "analysis": registry.source(analysis),
            "layers": list(range(model.n_layers) if layers is None else layers),
            "model": model.provenance(), "weights": model.weights,
            "seed": opts.seed, "dtype": opts.dtype, "device": str(model.device),
            "options": {**_config_dict(cfg), **dict(spec.options)}, "stimuli_sha256": spec.stimuli_sha256,
            "versions": versions(), "machine": machine(), "world_size": world.size}


def _config_dict(cfg) -> dict:
    """The Config's fields that define the computation (Python-only fields such as in-memory texts are
    represented by the stimuli hash instead)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.metadata.get("cli", True)}


def figure_settings(analysis: Analysis, values: Mapping[str, Any]):
    """The analysis' PlotOptions from ``values`` (unknown names are an InputError)."""
    if analysis.PlotOptions is None:
        if values:
            raise InputError(f"{analysis.name} has no figure options (got {', '.join(values)})")
        return None
    names = {f.name for f in dataclasses.fields(analysis.PlotOptions)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise InputError(f"{analysis.name}: unknown figure option(s) {unknown}; known: {sorted(names)}")
    return analysis.PlotOptions(**values)


def draw(analysis: Analysis, run: Run, figs=None, *, publish: Callable | None = None) -> list[str]:
    """The analysis' figures of ``run`` into ``RUN/figures``, through the store (``publish``: the run writer's;
    default: :func:`~lamina.engine.run_folder.publish_figures` at the run's URL)."""
    fn = analysis.plot_function()
    if fn is None:
        return []
    if figs is None and analysis.PlotOptions is not None:
        figs = analysis.PlotOptions()
    kwargs = dataclasses.asdict(figs) if figs is not None else {}
    publish = publish or (lambda drawer: publish_figures(run.url, drawer))
    return publish(lambda folder: stage_call(analysis.name, "plot", fn, run, folder, **kwargs))


# ---- ranks ---------------------------------------------------------------------------------


def _on_main(world: World, fn: Callable[[], Any]) -> Any:
    """``fn()`` on rank 0; its result, or the exception it raised, on every rank (no rank hangs)."""
    result: Any = None
    if world.is_main:
        try:
            result = ("ok", fn())
        except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
            result = ("err", e)
    result = broadcast_object(world, result)
    if result[0] == "err":
        raise result[1]
    return result[1]


def _check_out(url: str, opts: RunOptions, allow_memory: bool):
    dest = dst.check_destination(url, overwrite=opts.overwrite, allow_memory=allow_memory, complete_ok=True)
    check_writable(dest.url)
    return dest


def _check_device(world: World, opts: RunOptions) -> None:
    """--device and --dtype, before anything loads (one line for 'tpu', 'cpu:7', a missing 'cuda:9')."""
    resolve_device(device_for(world, opts.device))
    resolve_dtype(opts.dtype)


def _open_store(world: World, dest, experiment: str, key: str, prov: dict, overwrite: bool,
                repair: bool) -> ChunkWriter:
    """Rank 0 opens the run (locks, creates, resumes, repairs or stages) as its RunWriter; the others attach a
    ChunkWriter to where it writes."""
    store = None

    def open_main():
        nonlocal store
        store = RunWriter.open(dest, experiment=experiment, key=key, provenance=prov, overwrite=overwrite,
                               repair=repair)
        return store.write_url

    write_url = _on_main(world, open_main)
    if not world.is_main:
        store = ChunkWriter.attach(dest.url, write_url)
    barrier(world)
    return store
