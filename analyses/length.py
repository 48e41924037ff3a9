"""C. MLP pre-activations against token length (EXPERIMENTS.md C), streamed over any corpus.

>>> from lamina.analyses.common import RunOptions
>>> url = run(RunOptions(model="EleutherAI/gpt-neo-125M", weights="random"), Config(n_seq=4, seq_len=128))  # doctest: +SKIP
>>> open_run(url).numpy("results/corr").shape     # (layer, neuron)            # doctest: +SKIP
(12, 3072)

A corpus (text file tokenised whole, or a streamed data set) is cut to exactly
``n_seq x seq_len`` tokens. Every block's ``blocks.{l}.mlp.hook_pre`` (the ``c_fc``
output, before the nonlinearity) is captured at every position, and each work unit
of the capture is reduced ON THE DEVICE to a few partial statistics
(:class:`Partials`): a :class:`StreamingPearson` state per (layer, neuron) with
x = token length and z = log unigram frequency, and the median-split histogram
COUNTS of one block. Each unit's partials are written to the store before the unit
is marked done, and the results come from merging ALL units' stored partials in
unit order, so a resumed or multi-rank run gets the same numbers as one
uninterrupted process (bitwise on CPU). Activations themselves are stored only
with ``store_acts`` (default: corpora of at most 65,536 tokens).

Store schema (dimension names in brackets):
  token_length                 [token] int32   characters of the decoded token, leading space included
  inputs/tokens, inputs/lengths [sample, pos] / [sample] int32
  acts/mlp_pre                 [layer, sample, pos, neuron] float32   only with store_acts
  results/token_frequency      [token] int64   occurrences of the token's id among the analysed tokens
  results/corr                 [layer, neuron] float64   Pearson r(activation, token length)
  results/partial_corr         [layer, neuron] float64   ... controlling for log token frequency
  results/corr_hist            [layer, bin=80] density on [-0.8, 0.8], edges results/corr_bin_edges [edge]
  results/partial_corr_hist    [layer, bin=80] the same for partial_corr
  results/median_split_hist    [split=(below, above, equal), bin=50] density on [-8, 5] (attrs median, block)
  results/median_split_counts  [split, bin] int64, edges results/median_split_bin_edges [edge] float32
  _partials/...                [unit, ...] per-unit partial statistics (hidden; merged at the end)

token = sample * seq_len + pos. Neurons that are constant over all tokens get NaN r
and are counted (``n_constant_neurons`` in the summary).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Annotated, Optional

import numpy as np
import torch
import typer
from torch import Tensor

from lamina.engine.capture import auto_micro_batch
from lamina.engine.distributed import barrier, broadcast_object
from lamina.engine.errors import InputError
from lamina.engine.hooks import Capture, layer_hooks
from lamina.engine.inputs import Selector, TokenBatch
from lamina.engine.kernels.correlation import StreamingPearson
from lamina.engine.kernels.histogram import histogram_edges, uniform_histogram
from lamina.engine.models import peek
from lamina.engine.pipeline import UnitPlan, capture_to_store
from lamina.engine.store import RunStore

from . import common
from .cli_options import (DeviceOpt, DtypeOpt, FiguresOpt, MicroBatchOpt, ModelOpt, OutOpt, OverwriteOpt,
                          ProgressOpt, SeedOpt, WeightsOpt, run_options)
from .common import RunOptions
from .corpus import corpus_tokens, cut
from .length_plots import plot

__all__ = ["EXPERIMENT", "DEFAULT_MODEL", "Config", "Prepared", "Partials", "prepare", "token_lengths",
           "unigram_counts", "unit_partials", "compute", "run", "plot", "add_command"]

EXPERIMENT = "length"
DEFAULT_MODEL = "EleutherAI/gpt-neo-125M"

HOOK = "blocks.{layer}.mlp.hook_pre"
ACTS = "acts/mlp_pre"
PHASE = "capture"
SPLITS = ("below", "above", "equal")  # token length < median, > median, == median
MEDIAN_BINS, MEDIAN_LO, MEDIAN_HI = 50, -8.0, 5.0
CORR_BINS, CORR_LO, CORR_HI = 80, -0.8, 0.8
STORE_ACTS_MAX_TOKENS = 65536  # default of store_acts: keep activations only for corpora this small
_F64_BUDGET = 1 << 25  # float64 elements of one StreamingPearson update (256 MiB): bounds temporaries
_CPU_UNIT_BYTES = 1 << 30  # auto micro-batch on CPU: one unit's captured activations stay under 1 GiB


@dataclasses.dataclass(frozen=True)
class Config:
    """Options of ``lamina run length`` (validated cheaply here; corpus and model checks in :func:`prepare`).

    >>> Config(n_seq=4, seq_len=128).n_tokens, Config().keep_acts, Config(n_seq=256).keep_acts
    (512, True, False)
    """

    text: Optional[str] = None  # corpus file tokenised whole; None (and no dataset) = stimuli/corpus.txt
    dataset: Optional[str] = None  # HuggingFace data set NAME[:split] (or NAME:config:split), streamed
    n_seq: int = 16  # sequences the corpus is cut into
    seq_len: int = 512  # tokens per sequence (at most the model's context)
    block: int = 4  # block whose activations the median-split histograms pool
    store_acts: Optional[bool] = None  # also store acts/mlp_pre; None = when n_seq * seq_len <= 65,536
    unit_tokens: int = 256  # min tokens per work unit, so a unit's partial state (~12/T of its acts) stays small

    def __post_init__(self):
        for name in ("n_seq", "seq_len", "unit_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
        if self.n_seq * self.seq_len < 3:
            raise InputError(
                f"--n-seq {self.n_seq} x --seq-len {self.seq_len} = {self.n_seq * self.seq_len} tokens; "
                "a correlation needs at least 3"
            )
        if isinstance(self.block, bool) or not isinstance(self.block, int) or self.block < 0:
            raise InputError(f"--block must be a block index >= 0, got {self.block!r}")
        if self.text is not None and self.dataset is not None:
            raise InputError("give either --text FILE or --dataset NAME[:split], not both")

    @property
    def n_tokens(self) -> int:
        return self.n_seq * self.seq_len

    @property
    def keep_acts(self) -> bool:
        """store_acts resolved: explicit, or only for corpora of at most 65,536 tokens."""
        return self.n_tokens <= STORE_ACTS_MAX_TOKENS if self.store_acts is None else bool(self.store_acts)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Validated stimuli, ready for the model (made by :func:`prepare`).

    >>> prep.batch.tokens.shape, prep.token_length.shape, prep.median    # doctest: +SKIP
    (torch.Size([16, 512]), (16, 512), 4.0)
    """

    batch: TokenBatch  # tokens [sample, pos], every row exactly seq_len long
    token_length: np.ndarray  # [sample, pos] int32, characters of each decoded token
    token_frequency: np.ndarray  # [sample, pos] int64, occurrences of each token's id in the analysed tokens
    median: float  # median token length over all tokens
    n_layers: int
    source: str  # "text PATH" | "dataset NAME[:split]"

    def options(self, cfg: Config) -> dict:
        """What identifies the run (store key and provenance)."""
        return {"source": self.source, "n_seq": cfg.n_seq, "seq_len": cfg.seq_len, "block": cfg.block,
                "store_acts": cfg.keep_acts, "unit_tokens": cfg.unit_tokens}


# ---- stimuli -------------------------------------------------------------------------------


def prepare(opts: RunOptions, cfg: Config = Config()) -> Prepared:
    """Corpus -> [n_seq, seq_len] tokens, token lengths and frequencies; every input error raised here.

    >>> prep = prepare(RunOptions(model="EleutherAI/gpt-neo-125M", weights="random"))   # doctest: +SKIP
    >>> prep.batch.tokens.shape, prep.median                                             # doctest: +SKIP
    (torch.Size([16, 512]), 4.0)

    Only the tokenizer is loaded (``peek``): no weights, no store.
    """
    tok, n_ctx, n_layers = peek(opts.model, opts.weights)
    if cfg.seq_len > n_ctx:
        raise InputError(
            f"--seq-len {cfg.seq_len} is longer than the context of {opts.model} ({n_ctx} tokens); "
            f"use --seq-len {n_ctx} or less"
        )
    if cfg.block >= n_layers:
        raise InputError(
            f"--block {cfg.block} does not exist: {opts.model} has {n_layers} blocks (0..{n_layers - 1})"
        )
    ids, source = corpus_tokens(tok, text=cfg.text, dataset=cfg.dataset, n_tokens=cfg.n_tokens)
    rows = cut(ids, n_seq=cfg.n_seq, seq_len=cfg.seq_len, source=source)  # [sample, pos]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batch = TokenBatch(torch.from_numpy(rows.astype(np.int64)), torch.full((cfg.n_seq,), cfg.seq_len), int(pad))
    length = token_lengths(tok, rows)
    return Prepared(batch, length, unigram_counts(rows), float(np.median(length)), n_layers, source)


def token_lengths(tok, ids: np.ndarray) -> np.ndarray:
    """Characters of each token decoded ALONE (leading space included), same shape as ``ids``, int32.

    >>> token_lengths(tok, np.array([[607, 13]]))   # " her", "."      # doctest: +SKIP
    array([[4, 1]], dtype=int32)
    """
    uniq, inverse = np.unique(ids, return_inverse=True)
    table = np.array([len(tok.decode([int(t)], clean_up_tokenization_spaces=False)) for t in uniq], dtype=np.int32)
    return table[inverse].reshape(ids.shape)


def unigram_counts(ids: np.ndarray) -> np.ndarray:
    """For each token, how often its id occurs among ``ids`` (>= 1), same shape, int64.

    >>> unigram_counts(np.array([[5, 7, 5]]))
    array([[2, 1, 2]])
    """
    uniq, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    return counts[inverse].reshape(ids.shape).astype(np.int64)


# ---- compute (pure) -----------------------------------------------------------------------

_NEURON_STATS = ("mean_act", "m2_act", "min_act", "max_act", "c_ax", "c_az")  # each [layer, neuron]
_TOKEN_STATS = ("count", "mean_x", "m2_x", "min_x", "max_x", "mean_z", "m2_z", "min_z", "max_z", "c_xz")  # scalars


@dataclasses.dataclass
class Partials:
    """What a stretch of tokens contributes: merge these in unit order for the whole corpus.

    >>> a = unit_partials(torch.randn(2, 1, 8, 5), torch.randint(1, 6, (1, 8)), torch.rand(1, 8), median=3.0, block=0)
    >>> b = unit_partials(torch.randn(2, 1, 8, 5), torch.randint(1, 6, (1, 8)), torch.rand(1, 8), median=3.0, block=0)
    >>> a.merge(Partials.unpack(*b.pack())).pearson.count
    16

    pearson: StreamingPearson over (layer, neuron), x = token length, z = log token frequency.
    split_counts: [split, bin] int64 counts of one block's activations (all neurons pooled).
    """

    pearson: StreamingPearson
    split_counts: Tensor

    def merge(self, other: Partials) -> Partials:
        self.pearson.merge(other.pearson)
        self.split_counts = self.split_counts + other.split_counts.to(self.split_counts.device)
        return self

    def pack(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(neuron_stats [stat=6, layer, neuron] f64, token_stats [stat=10] f64, split_counts [split, bin] i64)."""
        sd = self.pearson.state_dict()
        neuron = torch.stack([sd[k] for k in _NEURON_STATS]).cpu().numpy()
        token = np.array([float(sd[k]) for k in _TOKEN_STATS], dtype=np.float64)  # count < 2**53: exact
        return neuron, token, self.split_counts.cpu().numpy()

    @classmethod
    def unpack(cls, neuron: np.ndarray, token: np.ndarray, counts: np.ndarray) -> Partials:
        sd = {k: torch.from_numpy(np.array(neuron[i])) for i, k in enumerate(_NEURON_STATS)}
        sd.update({k: torch.tensor(float(token[i]), dtype=torch.float64) for i, k in enumerate(_TOKEN_STATS)})
        sd["count"] = torch.tensor(int(token[0]), dtype=torch.int64)
        return cls(StreamingPearson.from_state_dict(sd), torch.from_numpy(np.array(counts)))


def unit_partials(acts: Tensor, length: Tensor, log_freq: Tensor, *, median: float, block: int) -> Partials:
    """Partial statistics of one work unit, on the activations' device.

    >>> p = unit_partials(torch.randn(2, 3, 8, 5), torch.randint(1, 6, (3, 8)), torch.rand(3, 8),
    ...                   median=3.0, block=1)
    >>> p.pearson.count, tuple(p.split_counts.shape)
    (24, (3, 50))

    Args:
        acts: [layer, sample, pos, neuron] MLP pre-activations (every position is a real token).
        length: [sample, pos] token length in characters.
        log_freq: [sample, pos] log unigram frequency of each token (float64 for precision).
        median: median token length over the WHOLE corpus (not this unit).
        block: layer index whose activations the median-split counts pool.
    """
    L, S, P, N = acts.shape
    flat = acts.reshape(L, S * P, N)  # [layer, token, neuron]
    x = length.reshape(S * P)  # [token]
    z = log_freq.reshape(S * P)  # [token]
    step = max(1, _F64_BUDGET // max(L * N, 1))  # tokens per update: float64 temporaries stay bounded
    sp = StreamingPearson()
    for a in range(0, S * P, step):
        sp.update(flat[:, a:a + step], x[a:a + step], z[a:a + step])
    return Partials(sp, split_counts(acts[block], length, median))


def split_counts(block_acts: Tensor, length: Tensor, median: float) -> Tensor:
    """Counts [split=(below, above, equal), bin=50] of every neuron's activation on [-8, 5].

    Args:
        block_acts: [sample, pos, neuron]; length: [sample, pos].
    """
    rows = []
    for mask in (length < median, length > median, length == median):
        values = block_acts[mask.to(block_acts.device)]  # [token, neuron]
        rows.append(uniform_histogram(values.reshape(-1), bins=MEDIAN_BINS, lo=MEDIAN_LO, hi=MEDIAN_HI))
    return torch.stack(rows)


def median_split_edges() -> Tensor:
    """[edge=51] float32: the edges NumPy uses for float32 activations on [-8, 5]."""
    return histogram_edges(MEDIAN_BINS, MEDIAN_LO, MEDIAN_HI).to(torch.float32)


def compute(total: Partials) -> dict[str, Tensor]:
    """Results from the partials of the whole corpus.

    >>> res = compute(unit_partials(torch.randn(2, 3, 8, 5), torch.randint(1, 6, (3, 8)), torch.rand(3, 8),
    ...                             median=3.0, block=1))
    >>> tuple(res["corr"].shape), tuple(res["corr_hist"].shape), tuple(res["median_split_hist"].shape)
    ((2, 5), (2, 80), (3, 50))

    Returns (float64 unless said):
        corr, partial_corr: [layer, neuron]; NaN for constant neurons.
        corr_hist, partial_corr_hist: [layer, bin=80] densities on [-0.8, 0.8] (NaN values dropped).
        median_split_counts: [split, bin=50] int64; median_split_hist: the same as densities
            (counts / in-range total / bin width, NumPy's ``density=True``; NaN for an empty split).
        constant: [layer, neuron] bool; r_length_logfreq: () r between token length and log frequency.
    """
    sp = total.pearson
    corr = sp.correlation()  # [layer, neuron]
    partial = sp.partial_correlation()  # [layer, neuron]
    counts = total.split_counts  # [split, bin]
    edges = median_split_edges().to(counts.device)
    widths = (edges[1:] - edges[:-1]).to(torch.float64)  # float32 differences, as np.diff on float32 edges
    in_range = counts.sum(-1, keepdim=True).to(torch.float64)  # [split, 1]
    sd = sp.state_dict()
    const_xz = bool(sd["min_x"] == sd["max_x"]) or bool(sd["min_z"] == sd["max_z"])
    r_xz = sd["c_xz"] / torch.sqrt(sd["m2_x"] * sd["m2_z"]) if not const_xz else torch.tensor(float("nan"))
    return {
        "corr": corr,
        "partial_corr": partial,
        "corr_hist": uniform_histogram(corr, bins=CORR_BINS, lo=CORR_LO, hi=CORR_HI, density=True),
        "partial_corr_hist": uniform_histogram(partial, bins=CORR_BINS, lo=CORR_LO, hi=CORR_HI, density=True),
        "median_split_counts": counts,
        "median_split_hist": counts.to(torch.float64) / widths / in_range,
        "constant": sp.constant_mask,
        "r_length_logfreq": r_xz,
    }


# ---- run -----------------------------------------------------------------------------------


def run(opts: RunOptions, cfg: Config = Config()) -> str:
    """prepare -> load model, open store -> stream capture + partials -> merge -> results -> figures.

    >>> run(RunOptions(model="EleutherAI/gpt-neo-125M", weights="random", out="runs/len"))   # doctest: +SKIP
    'runs/len'
    """
    prep = prepare(opts, cfg)
    session = common.start(EXPERIMENT, opts, stimuli_sha256=prep.batch.sha256(), options=prep.options(cfg))
    try:
        return _run(session, prep, cfg)
    except BaseException:
        session.store.close()  # an interrupted run stays incomplete and resumable, and unlocked
        raise


def _run(session: common.Session, prep: Prepared, cfg: Config) -> str:
    model, store, world = session.model, session.store, session.world
    L, N = model.n_layers, model.d_mlp
    units = _unit_plan(session, cfg)
    if world.is_main:
        common.put_batch(store, prep.batch)
        store.put("token_length", prep.token_length.reshape(-1), dims=("token",),
                  attrs={"unit": "characters of the decoded token, leading space included", "median": prep.median})
        store.put("results/token_frequency", prep.token_frequency.reshape(-1), dims=("token",),
                  attrs={"meaning": "occurrences of this token's id among the analysed tokens"})
        _PartialStore.create(store, units, L, N)
    barrier(world)  # every rank sees the partial arrays before any unit is done
    partials = _PartialStore.open(store)
    dev = model.device
    length = torch.as_tensor(prep.token_length, device=dev)  # [sample, pos]
    log_freq = torch.log(torch.as_tensor(prep.token_frequency, dtype=torch.float64, device=dev))  # [sample, pos]

    def consume(unit: int, rows: range, tensors: dict[str, Tensor]) -> None:
        part = unit_partials(tensors[ACTS], length[rows.start:rows.stop], log_freq[rows.start:rows.stop],
                             median=prep.median, block=cfg.block)
        partials.write(store, unit, part)  # before the pipeline marks the unit done

    capture = Capture(ACTS, layer_hooks(HOOK, range(L)), Selector.every(), feature_dim="neuron")
    capture_to_store(model, prep.batch, [capture], store, phase=PHASE, micro_batch=units.micro_batch,
                     samples_per_chunk=units.samples_per_chunk, world=world, keep=cfg.keep_acts,
                     consumer=consume, progress=session.opts.progress)
    barrier(world)  # every rank's partials are written
    summary: dict = {}
    if world.is_main:
        res = compute(partials.merged(store, units.n_units))
        _put_results(store, res, prep, cfg, model.d_mlp)
        summary = _summary(res, prep, cfg, units)
    return common.finish(session, plot, summary)


def _unit_plan(session: common.Session, cfg: Config) -> UnitPlan:
    """Work units of whole chunks of >= unit_tokens tokens; the same on every rank."""
    model, n = session.model, cfg.n_seq
    spc = min(n, max(1, math.ceil(cfg.unit_tokens / cfg.seq_len)))
    mb = session.opts.micro_batch
    if mb is None:
        mb = auto_micro_batch(model, cfg.seq_len, n)
        per_sample = 4 * cfg.seq_len * model.n_layers * model.d_mlp  # one sample's captured activations
        if model.device.type == "cuda":
            budget = torch.cuda.mem_get_info(model.device)[0] // 8
        else:
            budget = _CPU_UNIT_BYTES
        mb = max(1, min(mb, budget // per_sample))
        mb = math.ceil(n / math.ceil(n / mb))  # equal units rather than one short straggler
        mb = int(broadcast_object(session.world, mb))  # auto sizes can differ between ranks
    return UnitPlan(n, spc, mb)


class _PartialStore:
    """Per-unit partials in the store: ``_partials/{neuron_stats, token_stats, split_counts}`` [unit, ...].

    One chunk per unit and array, written by the rank that ran the unit, before the unit is marked done.
    ``_partials/plan`` records the unit plan; under another plan the engine resets the progress flags, so
    every unit is recomputed.
    """

    NAMES = ("_partials/neuron_stats", "_partials/token_stats", "_partials/split_counts")
    PLAN = "_partials/plan"

    def __init__(self, arrays):
        self.arrays = arrays

    @classmethod
    def create(cls, store: RunStore, units: UnitPlan, n_layers: int, n_neurons: int) -> None:
        plan = np.array([units.n_samples, units.unit_samples, units.n_units], dtype=np.int64)
        store.put(cls.PLAN, plan, dims=("field",), attrs={"fields": ["n_samples", "unit_samples", "n_units"]})
        shapes = {
            cls.NAMES[0]: ((len(_NEURON_STATS), n_layers, n_neurons), ("stat", "layer", "neuron"), "float64"),
            cls.NAMES[1]: ((len(_TOKEN_STATS),), ("stat",), "float64"),
            cls.NAMES[2]: ((len(SPLITS), MEDIAN_BINS), ("split", "bin"), "int64"),
        }
        for name, (shape, dims, dtype) in shapes.items():
            stats = _NEURON_STATS if name == cls.NAMES[0] else _TOKEN_STATS if name == cls.NAMES[1] else SPLITS
            store.array(name, shape=(units.n_units, *shape), dims=("unit", *dims), chunks=(1, *shape), dtype=dtype,
                        attrs={"labels": list(stats)})

    @classmethod
    def open(cls, store: RunStore) -> _PartialStore:
        return cls([store.group[name] for name in cls.NAMES])

    def write(self, store: RunStore, unit: int, part: Partials) -> None:
        for arr, data in zip(self.arrays, part.pack()):
            store.write(arr, (slice(unit, unit + 1),), data[None])

    def merged(self, store: RunStore, n_units: int) -> Partials:
        """All units' partials folded in unit order (the same order whoever wrote them, whenever)."""
        done = store.done_units(PHASE)
        if len(done) != n_units or not done.all():
            missing = [u for u in range(n_units) if u >= len(done) or not done[u]]
            raise RuntimeError(f"units {missing[:10]} of {n_units} were not captured; run the same command again")
        total = None
        for u in range(n_units):
            part = Partials.unpack(*(np.asarray(arr[u]) for arr in self.arrays))
            total = part if total is None else total.merge(part)
        assert total is not None
        return total


def _put_results(store: RunStore, res: dict[str, Tensor], prep: Prepared, cfg: Config, d_mlp: int) -> None:
    np_ = {k: v.cpu().numpy() for k, v in res.items() if isinstance(v, Tensor)}
    hook = HOOK.format(layer=cfg.block)
    n_split = np_["median_split_counts"].sum(-1)
    split_attrs = {"splits": list(SPLITS), "median": prep.median, "block": cfg.block, "hook": hook,
                   "rule": "token length < median, > median, == median; all neurons pooled",
                   "n_tokens": [int((prep.token_length < prep.median).sum()), int((prep.token_length > prep.median).sum()),
                                int((prep.token_length == prep.median).sum())],
                   "n_values_in_range": [int(v) for v in n_split], "range": [MEDIAN_LO, MEDIAN_HI]}
    corr_attrs = {"x": "token length (characters)", "hook": HOOK, "range": [CORR_LO, CORR_HI]}
    store.put("results/corr", np_["corr"], dims=("layer", "neuron"), attrs=corr_attrs)
    store.put("results/partial_corr", np_["partial_corr"], dims=("layer", "neuron"),
              attrs={**corr_attrs, "control": "log unigram frequency of the token in the analysed corpus"})
    store.put("results/corr_hist", np_["corr_hist"], dims=("layer", "bin"), attrs={**corr_attrs, "density": True})
    store.put("results/partial_corr_hist", np_["partial_corr_hist"], dims=("layer", "bin"),
              attrs={**corr_attrs, "density": True})
    store.put("results/corr_bin_edges", histogram_edges(CORR_BINS, CORR_LO, CORR_HI).numpy(), dims=("edge",))
    store.put("results/median_split_hist", np_["median_split_hist"], dims=("split", "bin"),
              attrs={**split_attrs, "density": True})
    store.put("results/median_split_counts", np_["median_split_counts"], dims=("split", "bin"), attrs=split_attrs)
    store.put("results/median_split_bin_edges", median_split_edges().numpy(), dims=("edge",))


def _summary(res: dict[str, Tensor], prep: Prepared, cfg: Config, units: UnitPlan) -> dict:
    corr, partial = res["corr"].cpu().numpy(), res["partial_corr"].cpu().numpy()

    def layer_means(a):
        return [round(float(np.nanmean(r)), 4) if np.isfinite(r).any() else None for r in a]

    const = res["constant"].cpu().numpy()
    out = {
        "n_tokens": cfg.n_tokens, "n_seq": cfg.n_seq, "seq_len": cfg.seq_len, "source": prep.source,
        "median_token_length": prep.median, "block": cfg.block,
        "n_constant_neurons": int(const.sum()),
        "r_length_logfreq": round(float(res["r_length_logfreq"]), 4),
        "mean_corr_per_block": layer_means(corr),
        "mean_partial_corr_per_block": layer_means(partial),
        "acts_stored": cfg.keep_acts, "work_units": units.n_units,
    }
    if const.any():
        out["constant_neurons_per_block"] = [int(c) for c in const.sum(-1)]
    return out


# ---- command line --------------------------------------------------------------------------


def add_command(app: typer.Typer) -> None:
    """Register ``lamina run length``."""

    @app.command("length")
    def length_command(
        model: ModelOpt = None, weights: WeightsOpt = "pretrained", seed: SeedOpt = 0, device: DeviceOpt = "auto",
        dtype: DtypeOpt = "float32", out: OutOpt = None, overwrite: OverwriteOpt = False,
        micro_batch: MicroBatchOpt = None, figures: FiguresOpt = True, progress: ProgressOpt = True,
        text: Annotated[Optional[str], typer.Option("--text", help="Corpus text file, tokenised whole as one document. Default: the corpus shipped with lamina.")] = None,
        dataset: Annotated[Optional[str], typer.Option("--dataset", help="HuggingFace data set NAME[:split] (or NAME:config:split) streamed instead of --text; needs `datasets` and network.")] = None,
        n_seq: Annotated[int, typer.Option("--n-seq", help="Number of sequences the corpus is cut into.")] = 16,
        seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per sequence (at most the model's context).")] = 512,
        block: Annotated[int, typer.Option("--block", help="Block of the median-split histograms.")] = 4,
        store_acts: Annotated[Optional[bool], typer.Option("--store-acts/--no-store-acts", help="Also store acts/mlp_pre (layer, sample, pos, neuron). Default: only when n-seq x seq-len <= 65536.")] = None,
        unit_tokens: Annotated[int, typer.Option("--unit-tokens", help="Minimum tokens per work unit (the resume / multi-rank granularity); bounds the per-unit partial statistics.")] = 256,
    ):
        """C. MLP pre-activations vs token length: median split, per-neuron r and partial r (streamed)."""
        from lamina.engine.distributed import world

        from .summary import describe

        opts = run_options(model, DEFAULT_MODEL, weights, seed, device, dtype, out, overwrite, micro_batch,
                           figures, progress)
        url = run(opts, Config(text=text, dataset=dataset, n_seq=n_seq, seq_len=seq_len, block=block,
                               store_acts=store_acts, unit_tokens=unit_tokens))
        if world().is_main:  # under torchrun, one summary, not one per rank
            typer.echo(describe(url))
