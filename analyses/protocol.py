"""What an analysis is, as the runner sees it: a Config, a spec, a pure compute, a summary, a plot.

An analysis never opens a store, loads a model, touches ranks or parses a command
line: :mod:`lamina.analyses.runner` does all of that, once, for every analysis.

>>> import dataclasses
>>> @dataclasses.dataclass(frozen=True)
... class Config:
...     n: int = option(250, "samples per class")
>>> [f.name for f in dataclasses.fields(Config)], option_help(dataclasses.fields(Config)[0])
(['n'], 'samples per class')

The parts (see README "Writing an analysis"):

- ``Config``: a frozen dataclass of only what defines the computation (it is part of the
  run's resume key); each field's :func:`option` help becomes its ``--option`` help.
- ``spec(cfg, model) -> Spec``: stimuli to token batches, what to capture where, what to
  reduce; every input error is raised here, before the model is loaded. ``model`` has the
  tokenizer and the architecture's sizes (no weights).
- ``compute(data, spec, cfg, ctx) -> {path: Labelled}``: pure; tensors in (``data.acts(name)``,
  ``data.reduced[reducer]``), labelled results out.
- ``summary(results, spec, cfg) -> dict``: the key numbers ``lamina info`` prints.
- ``plot``: a callable drawing ``(run, folder, **figure_options) -> [paths]`` from the run alone (import
  matplotlib inside it); ``PlotOptions`` (a dataclass) holds the figure-only choices, not part of the key.
- ``curves``: a callable ``(run) -> {name: Labelled}`` of per-layer curves for ``lamina compare``.
- ``captions``: ``(pattern, title, shows, found)`` per figure stem, for the report
  (:mod:`lamina.analyses.captions`); ``schema``: the module declaring every :class:`Result`.
"""

from __future__ import annotations

import dataclasses
import numbers
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from lamina.engine.errors import AnalysisError, InputError
from lamina.engine.labelled import Coord, Labelled
from lamina.engine.model_info import ModelInfo

if TYPE_CHECKING:  # torch loads with the engine, not with the contract: `lamina analyses` / `report` start without it
    import torch

    from lamina.engine.hooks import Capture
    from lamina.engine.inputs import TokenBatch
    from lamina.engine.reducers import Reducer, State

__all__ = ["Analysis", "Compute", "Context", "Data", "ModelInfo", "Pass", "REQUIRED", "Result", "Results", "Spec",
           "SpecFunction", "batch_inputs", "check_options", "option", "option_help"]

REQUIRED: Any = dataclasses.MISSING  # option(REQUIRED, "...") : a field without a default (a required --option)


def option(default: Any, help: str, *, flags: Sequence[str] = (), cli: bool = True, min: float | None = None,
           max: float | None = None, choices: Sequence[Any] | None = None, **metadata: Any):
    """A Config field with its command-line help (``flags``: extra names such as ``-m``; ``cli=False``:
    Python-only, e.g. in-memory texts; ``REQUIRED`` as the default: the option must be given).

    ``min`` / ``max`` (inclusive) and ``choices`` bound the value: shown in ``--help``, and enforced the same
    way from the command line and from Python by :func:`check_options` (the runner calls it; a Config's
    ``__post_init__`` may too, to refuse at construction). None passes (an ``Optional`` field left out)."""
    meta = {"help": help, "flags": tuple(flags), "cli": cli, **metadata}
    meta.update({k: v for k, v in (("min", min), ("max", max)) if v is not None})
    if choices is not None:
        meta["choices"] = tuple(choices)
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple (immutable) as the default of a Config field")
    return dataclasses.field(default=default, metadata=meta)


def option_help(f: dataclasses.Field) -> str:
    """The field's help, with its bounds (``--help`` shows this).

    >>> @dataclasses.dataclass(frozen=True)
    ... class C:
    ...     n: int = option(250, "samples per class", min=2)
    >>> option_help(dataclasses.fields(C)[0])
    'samples per class (>= 2)'
    """
    bounds = option_bounds(f)
    return str(f.metadata.get("help", "")) + (f" ({bounds})" if bounds else "")


def option_bounds(f: dataclasses.Field) -> str:
    """``>= 2``, ``<= 9``, ``1 to 1024`` or ``one of a, b``: what the field accepts, in words ('' if anything)."""
    lo, hi, choices = f.metadata.get("min"), f.metadata.get("max"), f.metadata.get("choices")
    if choices is not None:
        return "one of " + ", ".join(map(str, choices))
    if lo is not None and hi is not None:
        return f"{lo} to {hi}"
    return f">= {lo}" if lo is not None else (f"<= {hi}" if hi is not None else "")


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve: no Literal choices from it
        return {}


def _literal(hints: Mapping[str, Any], f: dataclasses.Field) -> tuple[Any, ...] | None:
    """The values of a ``Literal[...]`` (or ``Optional[Literal[...]]``) field: its choices."""
    tp = hints.get(f.name)
    args = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) is typing.Union else [tp]
    tp = args[0] if len(args) == 1 else tp
    return typing.get_args(tp) if typing.get_origin(tp) is typing.Literal else None


def check_options(obj: Any) -> None:
    """Every field of the dataclass instance ``obj`` against its :func:`option` bounds; one InputError naming
    the parameter as its caller spells it (``marks=1`` / ``--marks 1``) otherwise.

    >>> @dataclasses.dataclass(frozen=True)
    ... class C:
    ...     marks: int = option(250, "marks per class", min=2)
    >>> check_options(C(marks=1))
    Traceback (most recent call last):
    ...
    lamina.engine.errors.InputError: marks=1: must be >= 2
    """
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        lo, hi, choices = f.metadata.get("min"), f.metadata.get("max"), f.metadata.get("choices", _literal(hints, f))
        v = getattr(obj, f.name)
        if v is None or (lo is None and hi is None and choices is None):
            continue
        params = {f.name: v}
        if choices is not None:
            if v not in choices:
                raise InputError(f"{{{f.name}}}: must be one of {', '.join(map(str, choices))}", params=params)
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise InputError(f"{{{f.name}}}: must be a number ({option_bounds(f)})", params=params)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise InputError(f"{{{f.name}}}: must be {option_bounds(f)}", params=params)


class Result(str):
    """One array an analysis stores, declared once in its ``schema`` module: the path in the run (the string
    itself, so it keys results and reads runs: ``run.numpy(schema.MEAN)``), its dims, the dims that carry
    coordinates, and its units. The runner checks every result compute returns against it.

    >>> MEAN = Result("results/mean", ("layer", "feature"), units="1", coords=("layer",))
    >>> MEAN, MEAN.dims, {MEAN: 0}
    ('results/mean', ('layer', 'feature'), {'results/mean': 0})
    """

    dims: tuple[str, ...]
    units: str | None
    coords: tuple[str, ...]

    def __new__(cls, path: str, dims: Sequence[str], *, units: str | None = None, coords: Sequence[str] = ()):
        self = super().__new__(cls, path)
        self.dims, self.units, self.coords = tuple(dims), units, tuple(coords)
        return self

    def __reduce__(self):  # pickles (and copies) as the plain path
        return (str, (str(self),))


def results_of(schema: Any) -> dict[str, Result]:
    """{path: Result} of every Result a schema module (or mapping) declares, nested dicts included."""
    items = schema.items() if isinstance(schema, Mapping) else vars(schema).items()
    out: dict[str, Result] = {}
    for _, v in items:
        if isinstance(v, Result):
            out[str(v)] = v
        elif isinstance(v, Mapping):
            out.update({str(r): r for r in v.values() if isinstance(r, Result)})
    return out


@dataclasses.dataclass(frozen=True)
class Pass:
    """One batched hooked pass over ``batch``: its captures, stored (``keep``) and/or reduced.

    ``samples_per_chunk``: store chunking along samples (default: chunks of >= 1 MiB);
    ``unit_bytes``: cap on one work unit's captured activations (bounds memory for long corpora).
    """

    batch: TokenBatch
    captures: tuple[Capture, ...]
    phase: str = "capture"
    keep: bool = True
    reducers: tuple[Reducer, ...] = ()
    samples_per_chunk: int | None = None
    unit_bytes: int | None = None


@dataclasses.dataclass(frozen=True)
class Spec:
    """Everything the runner needs before the model loads.

    passes: the hooked passes, in order; inputs: arrays written at the start ({path: Labelled},
    e.g. ``inputs/tokens``); coords: extra coordinate variables ({path: Coord}, e.g. ``acts/class``);
    stimuli_sha256: hash of the stimuli (provenance and resume key); options: resolved facts that
    define the run beyond the Config (absolute paths, token ids); state: the analysis' own prepared
    stimuli, handed back to compute and summary.
    """

    passes: tuple[Pass, ...]
    stimuli_sha256: str
    inputs: Mapping[str, Labelled] = dataclasses.field(default_factory=dict)
    coords: Mapping[str, Coord] = dataclasses.field(default_factory=dict)
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    state: Any = None


class Data:
    """What compute reads: stored captures (loaded onto the device on first use) and folded reducer states."""

    def __init__(self, load: Callable[[str], torch.Tensor], reduced: Mapping[str, State],
                 widths: Mapping[str, tuple[tuple[int, ...], ...]], stored: Sequence[str] | None = None):
        self._load = load
        self._cache: dict[str, torch.Tensor] = {}
        self.reduced = dict(reduced)  # {reducer name: merged state}
        self.widths = dict(widths)  # {capture: per layer entry, the width of each hook concatenated}
        self.stored = tuple(widths if stored is None else stored)  # the captures acts() can load

    def acts(self, name: str) -> torch.Tensor:
        """The stored capture ``name`` as a float32 tensor on the device ([*outer, layer, sample, (pos,) feature]).

        >>> Data(lambda n: None, {}, {}, stored=["acts/a"]).acts("acts/b")
        Traceback (most recent call last):
        ...
        lamina.engine.errors.AnalysisError: data.acts('acts/b'): no such capture; the stored captures are: acts/a
        """
        if name not in self.stored:
            have = ", ".join(self.stored) or "none (every Pass has keep=False)"
            reducers = f" (reducer states are in data.reduced: {', '.join(self.reduced)})" if self.reduced else ""
            raise AnalysisError(f"data.acts({name!r}): no such capture; the stored captures are: {have}{reducers}")
        if name not in self._cache:
            self._cache[name] = self._load(name)
        return self._cache[name]


@dataclasses.dataclass
class Context:
    """The run's device and seed, seeded generators, and a progress callback factory."""

    device: torch.device
    seed: int
    show_progress: bool = False

    def generator(self, offset: int = 0) -> torch.Generator:
        """A generator on the device seeded with ``seed + offset`` (baselines, permutations)."""
        import torch

        g = torch.Generator(device=self.device)
        g.manual_seed(self.seed + offset)
        return g

    def progress(self, total: int, desc: str) -> Callable[[], None] | None:
        """A ``step()`` callable advancing a progress bar of ``total`` steps, or None when quiet."""
        if not self.show_progress:
            return None
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, leave=False)

        def step() -> None:
            bar.update(1)
            if bar.n >= total:
                bar.close()

        return step


Results = Mapping[str, Labelled]  # what compute returns: {path (a schema Result): labelled array}


class SpecFunction(Protocol):
    """``spec(cfg, model) -> Spec``: stimuli to token batches, captures and reducers; every input error raised
    here, before the model loads (``model``: the tokenizer and the architecture's sizes, no weights)."""

    def __call__(self, cfg: Any, model: ModelInfo, /) -> Spec: ...


class Compute(Protocol):
    """``compute(data, spec, cfg, ctx) -> Results``: pure; tensors in (``data.acts``, ``data.reduced``),
    labelled results out, on ``ctx.device``."""

    def __call__(self, data: Data, spec: Spec, cfg: Any, ctx: Context, /) -> Results: ...


@dataclasses.dataclass(frozen=True)
class Analysis:
    """One registered analysis (see the module docstring for the parts, README "Writing an analysis").

    >>> ANALYSIS = lamina.Analysis(name="resid_stats", title="Residual-stream variance per block",   # doctest: +SKIP
    ...                            Config=Config, spec=spec, compute=compute, plot=plot)
    >>> lamina.register(ANALYSIS); lamina.run("resid_stats", model="gpt2", text_file="corpus.txt")  # doctest: +SKIP
    """

    name: str
    title: str
    Config: type
    spec: SpecFunction
    compute: Compute
    summary: Callable[..., Mapping[str, Any]] = lambda results, spec, cfg: {}
    plot: Callable[..., Sequence[Any]] | None = None
    PlotOptions: type | None = None
    default_model: str = "gpt2"
    curves: Callable[..., Mapping[str, Labelled]] | None = None  # (run) -> per-layer curves for `lamina compare`
    captions: Sequence[tuple[str, str, str, Any]] = ()  # (stem pattern, title, shows, found) per figure
    schema: Any = None  # the module (or mapping) declaring every Result the analysis stores

    def __post_init__(self):
        for part in ("spec", "compute", "summary", "plot", "curves"):
            value = getattr(self, part)
            if value is not None and not callable(value):
                raise TypeError(f"Analysis {self.name!r}: {part} must be a callable, not {type(value).__name__} "
                                f"{value!r}")

    def plot_function(self) -> Callable | None:
        """The plot callable (None: the analysis draws no figures)."""
        return self.plot

    def curves_function(self) -> Callable | None:
        """The per-layer curves callable of ``lamina compare`` (None: the analysis cannot be compared)."""
        return self.curves


def batch_inputs(batch: TokenBatch, **attrs: Any) -> dict[str, Labelled]:
    """``inputs/tokens`` [sample, pos] and ``inputs/lengths`` [sample] (int32): what the model was fed."""
    tokens = batch.tokens.numpy().astype("int32")
    lengths = batch.lengths.numpy().astype("int32")
    return {"inputs/tokens": Labelled(tokens, ("sample", "pos"), attrs={"long_name": "token ids", **attrs}),
            "inputs/lengths": Labelled(lengths, ("sample",), attrs={"long_name": "real tokens per sample"})}
