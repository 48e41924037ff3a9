"""D. Internal vs terminal punctuation: all-pairs MI, covariance and correlation per hidden state.

>>> url = run(RunOptions(model="gpt2-medium", weights="random"))        # doctest: +SKIP
>>> r = open_run(url); r.numpy("results/mi").shape    # (class, state, pair)  # doctest: +SKIP
(2, 25, 31125)

A long text is tokenised once. From token ``skip`` on, a token that decodes (stripped)
to ``,`` is an *internal* mark; one that decodes to ``.`` is a *terminal* mark unless the
previous token ends or the next token starts with a digit ("3.5", "in 1999."). The
FIRST ``n`` marks of each class whose window ``tokens[loc - before : loc + after]`` lies
inside the text are kept; the mark sits at index ``before`` of its window. The windows run
through the model in one batched forward pass per micro-batch, up to and including the
mark (the model is causal, so later tokens cannot change the state there; ``--full-window``
feeds all of them, as the lecture did), and the ``n_layers + 1`` hidden states at the mark
are stored (HuggingFace ``output_hidden_states`` semantics: state 0 = embeddings, the last
one after ``ln_final``). For every unordered
pair of sequences within a class, and every state, MI (bits, 15 x 15 bins), covariance and
Pearson r are computed after the |z| > 5 outlier rule (see EXPERIMENTS.md D and
:func:`lamina.engine.kernels.pairs.all_pairs_mi_cov_corr`).

Store (dimension names in brackets):
  inputs/tokens     (class, sample, pos) int32   the windows, class = [internal, terminal]
  inputs/lengths    (class, sample) int32        all before + after
  inputs/locations  (class, sample) int64        token position of each mark in the text
  acts/hidden       (class, state, sample, feature) float32, the hidden state at the mark
  results/mi, results/cov, results/corr  (class, state, pair) float64, pairs in
                    ``numpy.triu_indices(n, 1)`` order (31,125 for n = 250)
  results/pairs     (pair, end) int32            the (i, j) sample indices of each pair
  results/mean      (class, state, stat=[mi, cov, corr]) float64 (corr: NaN pairs ignored)
  results/r_cov_mi  (class, state) float64       Pearson r between cov and MI over the pairs
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import torch
import typer

from lamina.engine.distributed import barrier
from lamina.engine.errors import InputError
from lamina.engine.hooks import Capture, hidden_state_hooks
from lamina.engine.inputs import Selector, TokenBatch, from_token_ids
from lamina.engine.kernels.pairs import all_pairs_mi_cov_corr
from lamina.engine.models import peek
from lamina.engine.pipeline import capture_to_store
from lamina.engine.provenance import sha256_texts
from lamina.engine.store import Run

from . import common
from .cli_options import (DeviceOpt, DtypeOpt, FiguresOpt, MicroBatchOpt, ModelOpt, OutOpt, OverwriteOpt,
                          ProgressOpt, SeedOpt, WeightsOpt, run_options)
from .corpus import DEFAULT_CORPUS, read_text, tokenize_document
from .common import RunOptions

EXPERIMENT = "punct"
DEFAULT_MODEL = "gpt2-medium"
CLASSES = ("internal", "terminal")  # the class axis of every array
MARKS = {"internal": ",", "terminal": "."}  # what a mark token decodes to, stripped
STATS = ("mi", "cov", "corr")  # the stat axis of results/mean


@dataclasses.dataclass(frozen=True)
class Config:
    """Options of ``lamina run punct`` (EXPERIMENTS.md D; defaults are the lecture's)."""

    text: Optional[str] = None  # text file tokenised whole as one document; None = the shipped corpus
    n: int = 250  # marks per class: the FIRST n whose window fits (31,125 pairs for 250)
    skip: int = 400  # scan token positions from this one on (ours: the lecture's fixed 400)
    before: int = 20  # window = tokens[loc - before : loc + after]; the mark sits at index `before`
    after: int = 11  # ... so 20 + 11 = 31 tokens, 10 of them after the mark
    state: int = 1  # hidden state drawn in the matrix / histogram / scatter figures
    bins: int = 15  # MI histogram bins per axis
    z_max: float = 5.0  # outlier rule: drop dims where |z| > z_max in either vector (z with ddof=1)
    full_window: bool = False  # feed all before + after tokens (the lecture's literal input); by default
    # the model sees the window up to and including the mark: it is causal, so the tokens after the mark
    # cannot change the state at the mark (bit-identical on CPU here) and a third of the compute is saved

    def __post_init__(self):
        if self.n < 2:
            raise InputError(f"--n must be >= 2 (pairs of sequences are compared), got {self.n}")
        if self.skip < 0:
            raise InputError(f"--skip must be >= 0, got {self.skip}")
        if self.before < 0:
            raise InputError(f"--before must be >= 0, got {self.before}")
        if self.after < 1:
            raise InputError(f"--after must be >= 1 (the window ends after the mark), got {self.after}")
        if self.state < 0:
            raise InputError(f"--state must be >= 0 (0 = embeddings), got {self.state}")
        if self.bins < 1:
            raise InputError(f"--bins must be >= 1, got {self.bins}")
        if not self.z_max > 0:
            raise InputError(f"--z-max must be > 0, got {self.z_max}")

    @property
    def window(self) -> int:
        """Tokens per sequence (31 by default)."""
        return self.before + self.after

    @property
    def fed(self) -> int:
        """Tokens of each window the model runs on (the mark is the last one unless ``full_window``)."""
        return self.window if self.full_window else self.before + 1

    @property
    def n_pairs(self) -> int:
        return self.n * (self.n - 1) // 2

    def text_path(self) -> Path:
        return Path(self.text).expanduser() if self.text else common.stimulus_path(DEFAULT_CORPUS)


# ---------------------------------------------------------------------------------- stimuli


def scan_marks(
    ids: Sequence[int], decode: Callable[[int], str], *, skip: int, before: int, after: int,
    limit: int | None = None,
) -> tuple[list[int], list[int]]:
    """Token positions of the internal and terminal marks, in text order (first ``limit`` of each).

    >>> pieces = {0: "A", 1: ",", 2: " b", 3: ".", 4: " 3", 5: ".", 6: "5"}   # "A, b. 3.5"
    >>> scan_marks(list(range(7)), pieces.__getitem__, skip=0, before=1, after=1)
    ([1], [3])

    A position ``loc >= skip`` counts only when its window ``[loc - before, loc + after)``
    lies inside ``ids``. Terminal: decodes (stripped) to ``.`` and neither the last character
    of the previous token nor the first character of the next token is a digit.
    """
    internal: list[int] = []
    terminal: list[int] = []
    cap = math.inf if limit is None else limit
    for loc in range(max(skip, before), len(ids) - after + 1):
        if len(internal) >= cap and len(terminal) >= cap:
            break
        mark = decode(ids[loc]).strip()
        if mark == MARKS["internal"]:
            if len(internal) < cap:
                internal.append(loc)
        elif mark == MARKS["terminal"] and len(terminal) < cap:
            prev = decode(ids[loc - 1])[-1:] if loc > 0 else ""
            nxt = decode(ids[loc + 1])[:1] if loc + 1 < len(ids) else ""
            if not (prev.isdigit() or nxt.isdigit()):
                terminal.append(loc)
    return internal, terminal


@dataclasses.dataclass(frozen=True)
class Stimuli:
    """The chosen windows of both classes, validated, ready for the model."""

    batches: tuple[TokenBatch, ...]  # per class: tokens [sample, pos], pos = before + after
    locations: np.ndarray  # (class, sample) int64 position of each mark in the text
    text_path: str
    text_sha256: str
    n_text_tokens: int
    n_states: int  # n_layers + 1 hidden states

    @property
    def tokens(self) -> np.ndarray:
        """(class, sample, pos) int32."""
        return np.stack([b.tokens.numpy() for b in self.batches]).astype(np.int32)


def prepare(opts: RunOptions, cfg: Config = Config()) -> Stimuli:
    """Read the text, find the marks and build the windows; every input error before any model work.

    >>> stim = prepare(RunOptions(model="gpt2-medium", weights="random"))   # doctest: +SKIP
    >>> stim.tokens.shape    # (class, sample, pos)                          # doctest: +SKIP
    (2, 250, 31)
    """
    tok, n_ctx, n_layers = peek(opts.model, opts.weights)
    n_states = n_layers + 1
    if cfg.state >= n_states:
        raise InputError(
            f"--state {cfg.state} does not exist: {opts.model} has {n_states} hidden states (0..{n_states - 1})"
        )
    if cfg.window > n_ctx:
        raise InputError(
            f"a window of --before {cfg.before} + --after {cfg.after} = {cfg.window} tokens is longer than the "
            f"context of {opts.model} ({n_ctx}); use smaller --before/--after"
        )
    path = cfg.text_path()
    text = read_text(path)  # missing / unreadable / non-UTF-8 / blank: InputError naming the file
    ids = tokenize_document(tok, text).tolist()  # the whole text as ONE document, no BOS
    pieces: dict[int, str] = {}

    def decode(i: int) -> str:
        if i not in pieces:
            pieces[i] = tok.decode([i])
        return pieces[i]

    found = scan_marks(ids, decode, skip=cfg.skip, before=cfg.before, after=cfg.after, limit=cfg.n)
    if min(len(f) for f in found) < cfg.n:
        counts = ", ".join(f"{len(f)} {c} ({MARKS[c]!r})" for c, f in zip(CLASSES, found))
        raise InputError(
            f"{str(path)!r} has too few punctuation marks: from token {cfg.skip} on (of {len(ids)} tokens), "
            f"counting marks with {cfg.before} tokens before and {cfg.after - 1} after them, it has {counts}; "
            f"--n {cfg.n} of each is needed. Use a longer --text, a smaller --n or a smaller --skip"
        )
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batches = tuple(
        from_token_ids([ids[loc - cfg.before : loc + cfg.after] for loc in locs], pad_id=int(pad), n_ctx=n_ctx,
                       what=f"{c} window")
        for c, locs in zip(CLASSES, found)
    )
    return Stimuli(batches, np.asarray(found, dtype=np.int64), str(path.resolve()), sha256_texts([text]), len(ids),
                   n_states)


# ---------------------------------------------------------------------------------- compute


def compute(
    acts: torch.Tensor, *, bins: int = 15, z_max: float = 5.0, on_step: Callable[[int, int], None] | None = None
) -> dict[str, torch.Tensor]:
    """MI, covariance and correlation of every pair of samples, per class and state.

    >>> out = compute(torch.randn(2, 3, 10, 64))     # (class, state, sample, feature)
    >>> out["mi"].shape                              # (class, state, pair), pair = 10 * 9 / 2
    torch.Size([2, 3, 45])

    Args:
        acts: (class, state, sample, feature) hidden states at the mark, on any device.
        bins, z_max: histogram bins per axis and the outlier rule.
        on_step: called as ``on_step(class_index, state)`` after each (class, state), e.g. a progress bar.

    Returns:
        ``{"mi", "cov", "corr"}``, each (class, state, pair) float64 on ``acts``' device, pairs in
        ``numpy.triu_indices(sample, 1)`` order.
    """
    n_class, n_state, n = acts.shape[:3]
    n_pairs = n * (n - 1) // 2
    out = {k: torch.empty(n_class, n_state, n_pairs, dtype=torch.float64, device=acts.device) for k in STATS}
    for c in range(n_class):
        for s in range(n_state):
            res = all_pairs_mi_cov_corr(acts[c, s], bins=bins, z_max=z_max)  # each (pair,)
            for k in STATS:
                out[k][c, s] = res[k]
            if on_step is not None:
                on_step(c, s)
    return out


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two 1-D arrays (pairs with a NaN in either dropped); NaN when one is constant.

    >>> pearson(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 7.0]))  # doctest: +ELLIPSIS
    0.99...

    "Constant" allows float rounding: at state 0 every vector of a class is the same, so every
    pair has one covariance, but the matrix products behind it may differ in the last bit
    between pairs; a spread below 1e-12 of the magnitude is that, not data.
    """
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size < 2 or any(np.ptp(v) <= 1e-12 * np.abs(v).max() for v in (a, b)):
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / math.sqrt(float((a * a).sum()) * float((b * b).sum())))


def state_stats(mi: np.ndarray, cov: np.ndarray, corr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class and state: means of MI, cov and corr, and Pearson r(cov, MI) over the pairs.

    Args:
        mi, cov, corr: (class, state, pair).

    Returns:
        mean (class, state, stat=[mi, cov, corr]) with NaN pairs ignored; r_cov_mi (class, state).
    """
    mean = np.stack([_nanmean(v) for v in (mi, cov, corr)], axis=-1)
    r = np.array([[pearson(cov[c, s], mi[c, s]) for s in range(mi.shape[1])] for c in range(mi.shape[0])])
    return mean, r


def _nanmean(v: np.ndarray) -> np.ndarray:
    ok = np.isfinite(v)
    total = np.where(ok, v, 0.0).sum(-1)
    count = ok.sum(-1)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


def summary(mean: np.ndarray, r_cov_mi: np.ndarray, n: int) -> dict:
    """The key numbers ``lamina info`` prints: per class, per state mean MI / cov / corr and r(cov, MI)."""
    out: dict = {"marks per class": n, "pairs per class": n * (n - 1) // 2}
    for c, name in enumerate(CLASSES):
        out[f"{name} mean MI (bits) per state"] = _round(mean[c, :, 0])
        out[f"{name} mean cov per state"] = _round(mean[c, :, 1])
        out[f"{name} mean corr per state"] = _round(mean[c, :, 2])
        out[f"{name} r(cov, MI) per state"] = _round(r_cov_mi[c])
    return out


def _round(v: np.ndarray) -> list:
    return [float(f"{x:.4g}") if np.isfinite(x) else None for x in np.asarray(v, dtype=float)]


# ---------------------------------------------------------------------------------- run


def run(opts: RunOptions, cfg: Config = Config()) -> str:
    """Prepare -> load + open the store -> capture both classes -> all pairs per state -> store -> figures."""
    stim = prepare(opts, cfg)
    options = {**dataclasses.asdict(cfg), "text": stim.text_path}
    session = common.start(EXPERIMENT, opts, stimuli_sha256=stim.text_sha256, options=options)
    store, model, world = session.store, session.model, session.world
    n, n_states, d = cfg.n, model.n_layers + 1, model.d_model
    if world.is_main:
        class_attrs = {"class": list(CLASSES), "marks": [MARKS[c] for c in CLASSES]}
        store.put("inputs/tokens", stim.tokens, dims=("class", "sample", "pos"),
                  attrs={**class_attrs, "mark_index": cfg.before})
        store.put("inputs/lengths", np.full((len(CLASSES), n), cfg.window, dtype=np.int32), dims=("class", "sample"))
        store.put("inputs/locations", stim.locations, dims=("class", "sample"),
                  attrs={**class_attrs, "n_text_tokens": stim.n_text_tokens, "skip": cfg.skip})
    hooks = hidden_state_hooks(model.n_layers)
    acts = store.array("acts/hidden", shape=(len(CLASSES), n_states, n, d), chunks=(1, 1, n, d),
                       dims=("class", "state", "sample", "feature"),
                       attrs={"class": list(CLASSES), "hooks": [list(g) for g in hooks], "position": cfg.before,
                              "tokens_fed": cfg.fed})
    for c, name in enumerate(CLASSES):
        full = stim.batches[c]
        fed = TokenBatch(full.tokens[:, : cfg.fed].contiguous(), full.lengths.clamp(max=cfg.fed), full.pad_id)
        cap = Capture("acts/hidden", hooks, Selector.at([cfg.before] * n), layer_dim="state", prefix=(c,))
        capture_to_store(model, fed, [cap], store, phase=name, micro_batch=opts.micro_batch,
                         samples_per_chunk=n, world=world, progress=opts.progress)
    barrier(world)
    keys: dict = {}
    if world.is_main:
        hidden = torch.from_numpy(np.asarray(acts[...])).to(model.device)  # (class, state, sample, feature)
        res = compute(hidden, bins=cfg.bins, z_max=cfg.z_max, on_step=_progress(opts, len(CLASSES) * n_states))
        res = {k: v.cpu().numpy() for k, v in res.items()}
        pair_attrs = {"class": list(CLASSES), "pairs": "numpy.triu_indices(n, 1) order, see results/pairs"}
        units = {"mi": "bits", "cov": "activation^2", "corr": "Pearson r"}
        for k in STATS:
            store.put(f"results/{k}", res[k], dims=("class", "state", "pair"),
                      attrs={**pair_attrs, "units": units[k], "bins": cfg.bins, "z_max": cfg.z_max})
        store.put("results/pairs", np.stack(np.triu_indices(n, 1), axis=1).astype(np.int32), dims=("pair", "end"))
        mean, r = state_stats(res["mi"], res["cov"], res["corr"])
        store.put("results/mean", mean, dims=("class", "state", "stat"), attrs={"class": list(CLASSES),
                                                                               "stat": list(STATS)})
        store.put("results/r_cov_mi", r, dims=("class", "state"), attrs={"class": list(CLASSES)})
        keys = summary(mean, r, n)
    return common.finish(session, plot, keys)


def _progress(opts: RunOptions, total: int):
    if not opts.progress:
        return None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="pairs (class x state)", unit="state", leave=False)

    def step(c: int, s: int) -> None:
        bar.update(1)
        if bar.n >= total:
            bar.close()

    return step


def plot(run: Run, figdir: Path) -> list[Path]:
    """All figures of a punct run (PNG + PDF): see :mod:`lamina.analyses.punct_plots`."""
    from .punct_plots import plot_all

    return plot_all(run, figdir)


# ---------------------------------------------------------------------------------- CLI


def add_command(app: typer.Typer) -> None:
    @app.command(EXPERIMENT)
    def punct_command(
        model: ModelOpt = None, weights: WeightsOpt = "pretrained", seed: SeedOpt = 0, device: DeviceOpt = "auto",
        dtype: DtypeOpt = "float32", out: OutOpt = None, overwrite: OverwriteOpt = False,
        micro_batch: MicroBatchOpt = None, figures: FiguresOpt = True, progress: ProgressOpt = True,
        text: Annotated[Optional[str], typer.Option("--text", help="Text file, tokenised whole as one document. Default: the shipped corpus.")] = None,
        n: Annotated[int, typer.Option("--n", help="Marks per class: the first N commas and the first N periods.")] = 250,
        skip: Annotated[int, typer.Option("--skip", help="Scan token positions from this one on.")] = 400,
        before: Annotated[int, typer.Option("--before", help="Window tokens before the mark (the mark's index).")] = 20,
        after: Annotated[int, typer.Option("--after", help="Window = tokens loc-BEFORE up to (not including) loc+AFTER: the mark plus AFTER-1 tokens.")] = 11,
        state: Annotated[int, typer.Option("--state", help="Hidden state of the matrix, histogram and scatter figures (0 = embeddings).")] = 1,
        full_window: Annotated[bool, typer.Option("--full-window", help="Feed all BEFORE+AFTER tokens, not just up to the mark (same states: the model is causal; 1/3 slower).")] = False,
    ):
        """D: internal (,) vs terminal (.) marks: MI, covariance and correlation of all pairs, per hidden state."""
        from .summary import describe

        opts = run_options(model, DEFAULT_MODEL, weights, seed, device, dtype, out, overwrite, micro_batch, figures,
                           progress)
        url = run(opts, Config(text=text, n=n, skip=skip, before=before, after=after, state=state,
                                 full_window=full_window))
        typer.echo(describe(url))
