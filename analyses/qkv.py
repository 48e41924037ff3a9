"""A. Token similarity within and across Q, K, V: feature cosine / correlation histograms per block.

>>> url = run(RunOptions(model="gpt2", weights="random"))                  # doctest: +SKIP
>>> r = open_run(url); r.numpy("results/cosine_hist").shape   # (role, layer, block, bin)  # doctest: +SKIP
(2, 12, 6, 100)

Each sentence holds the target word (default ``" her"``, one token). Per sentence the
*target* position is the FIRST occurrence of the target token and the *non-target*
position the token just before it. One batched forward pass (right padding, pad = EOS)
captures Q|K|V (``blocks.{l}.attn.hook_q/k/v`` flattened head-major and concatenated,
3·d_model features, GPT-2's ``c_attn`` order) of every block at both positions. Per
block and role, with X = (sentence × 3·d_model):

- cosine between FEATURES across sentences: columns of X scaled to unit L2 norm,
  ``C = Xnᵀ Xn``; correlation: columns centred first;
- QQ, KK, VV: strict upper triangle of the d_model × d_model diagonal block of C;
  QK, QV, KV: the full off-diagonal block; 100 equal bins on [-1, 1] (NumPy's edge rule);
- random baseline: all elements of the target X permuted at random (one permutation per
  block, shared by the cosine and correlation baselines), reshaped, strict upper triangle
  of the whole 3·d_model × 3·d_model matrix;
- mean and variance (ddof=0) of each feature over the sentences, averaged within Q, K, V.

Store (dimension names in brackets; label lists in each array's attrs under the dim name):
  inputs/tokens         (sample, pos) int32, right-padded with EOS
  inputs/lengths        (sample) int32
  inputs/target_pos     (sample) int32       first occurrence of the target token
  inputs/nontarget_pos  (sample) int32       target_pos - 1
  acts/target, acts/nontarget   (layer, sample, feature=3·d_model) float32, Q|K|V
  results/cosine_hist, results/correlation_hist   (role, layer, block, bin) int64 counts,
                        role = [target, nontarget], block = [QQ, KK, VV, QK, QV, KV]
  results/bin_edges     (edge) float64, the 101 edges (np.linspace(-1, 1, 101))
  results/mean, results/variance   (role, layer, component=[Q, K, V]) float64
  results/baseline_cosine_hist, results/baseline_correlation_hist   (layer, bin) int64
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import torch
import typer

from lamina.engine.distributed import barrier
from lamina.engine.errors import InputError
from lamina.engine.hooks import Capture, qkv_hooks
from lamina.engine.inputs import Selector, TokenBatch, from_token_ids
from lamina.engine.kernels.histogram import histogram_edges, uniform_histogram
from lamina.engine.kernels.moments import component_mean_variance
from lamina.engine.kernels.similarity import QKV_BLOCKS, qkv_block_histograms, random_baseline_values
from lamina.engine.models import peek
from lamina.engine.pipeline import capture_to_store
from lamina.engine.provenance import sha256_texts
from lamina.engine.store import Run

from . import common
from .cli_options import (DeviceOpt, DtypeOpt, FiguresOpt, MicroBatchOpt, ModelOpt, OutOpt, OverwriteOpt,
                          ProgressOpt, SeedOpt, WeightsOpt, run_options)
from .common import RunOptions

EXPERIMENT = "qkv"
DEFAULT_MODEL = "gpt2"
DEFAULT_SENTENCES = "her_sentences.txt"  # shipped in analyses/stimuli/: 54 sentences with " her"
ROLES = ("target", "nontarget")  # the role axis
BLOCKS = QKV_BLOCKS  # the block axis: ("QQ", "KK", "VV", "QK", "QV", "KV")
COMPONENTS = ("Q", "K", "V")  # the component axis
BINS, LO, HI = 100, -1.0, 1.0  # histogram bins on [LO, HI]
LABELS = {"role": list(ROLES), "block": list(BLOCKS), "component": list(COMPONENTS)}


@dataclasses.dataclass(frozen=True)
class Config:
    """Options of ``lamina run qkv`` (EXPERIMENTS.md A; defaults are the lecture's).

    >>> Config(target="him").target_text
    ' him'
    """

    sentences: Optional[str] = None  # one sentence per line; None = the shipped 54 " her" sentences
    target: str = " her"  # the target word; must be ONE token with its leading space (added if missing)
    layer: int = 6  # block drawn in the single-block figure; clipped to the model's last block

    def __post_init__(self):
        if not isinstance(self.target, str) or not self.target.strip():
            raise InputError(f"--target must be a word, got {self.target!r}")
        if self.layer < 0:
            raise InputError(f"--layer must be >= 0 (a block index), got {self.layer}")

    @property
    def target_text(self) -> str:
        """The target as it is tokenised inside a sentence: with one leading space."""
        return self.target if self.target[:1].isspace() else " " + self.target

    def sentences_path(self) -> Path:
        return Path(self.sentences).expanduser() if self.sentences else common.stimulus_path(DEFAULT_SENTENCES)


# ---------------------------------------------------------------------------------- stimuli


@dataclasses.dataclass(frozen=True)
class Stimuli:
    """Validated sentences, their token batch and the target / non-target positions."""

    texts: tuple[str, ...]
    batch: TokenBatch  # tokens [sample, pos] right-padded with EOS, lengths [sample]
    target_pos: torch.Tensor  # [sample] int64, first occurrence of the target token (>= 1)
    target_id: int
    target_text: str
    path: str
    n_layers: int
    layer: int  # the single-block figure's block, clipped to n_layers - 1

    @property
    def nontarget_pos(self) -> torch.Tensor:
        """[sample] int64: the token just before the target."""
        return self.target_pos - 1


def _short(text: str, width: int = 80) -> str:
    return repr(text if len(text) <= width else text[: width - 3] + "...")


def _where(k: int, line: int, path: Path) -> str:
    return f"sentence {k + 1} (line {line} of {str(path)!r})"


def _others(bad: list[int]) -> str:
    if len(bad) <= 1:
        return ""
    more = ", ".join(str(k + 1) for k in bad[1:6]) + (", ..." if len(bad) > 6 else "")
    return f" ({len(bad) - 1} more: sentence {more})"


def prepare(opts: RunOptions, cfg: Config = Config()) -> Stimuli:
    """Read and validate the sentences with the model's tokenizer; every input error before any model work.

    >>> stim = prepare(RunOptions(model="gpt2", weights="random"))    # doctest: +SKIP
    >>> stim.batch.tokens.shape, stim.target_id                        # doctest: +SKIP
    (torch.Size([54, 33]), 607)

    Raises InputError for: a target that is not one token (names its tokens); a missing,
    empty or non-UTF-8 sentences file; fewer than 2 sentences; a sentence longer than the
    context; a sentence without the target or with the target at position 0 (names the
    sentence number, its line and text).
    """
    tok, n_ctx, n_layers = peek(opts.model, opts.weights)
    word = cfg.target_text
    ids = tok(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = [tok.decode([i]) for i in ids]
        raise InputError(
            f"target {word!r} is not one token: with its leading space it tokenises to {len(ids)} tokens {pieces} "
            f"(ids {ids}); pass a --target that is a single token, e.g. ' her' or ' him'"
        )
    target_id = int(ids[0])
    path = cfg.sentences_path()
    lines = common.read_lines(path, "sentences", "pass --sentences FILE (one sentence per line)")
    if not lines:
        raise InputError(
            f"sentences file {str(path)!r} has no sentences (it is empty or only blank lines); "
            f"write one sentence per line, each containing {word!r}"
        )
    if len(lines) < 2:
        raise InputError(
            f"sentences file {str(path)!r} has only 1 sentence; feature similarities across sentences need at "
            "least 2 (the lecture used 54)"
        )
    token_ids = [tok(text, add_special_tokens=False, verbose=False)["input_ids"] for _, text in lines]
    too_long = [k for k, row in enumerate(token_ids) if len(row) > n_ctx]
    if too_long:
        k = too_long[0]
        raise InputError(
            f"{_where(k, lines[k][0], path)} has {len(token_ids[k])} tokens, longer than the context of "
            f"{opts.model} ({n_ctx}): {_short(lines[k][1])}{_others(too_long)}; shorten or split it"
        )
    first = [row.index(target_id) if target_id in row else -1 for row in token_ids]
    missing = [k for k, t in enumerate(first) if t < 0]
    if missing:
        k = missing[0]
        raise InputError(
            f"{_where(k, lines[k][0], path)} has no {word!r} token (id {target_id}): {_short(lines[k][1])}"
            f"{_others(missing)}. Every sentence needs the target as a word after another token (the word "
            f"capitalised, {word.strip().capitalize()!r}, or inside a longer word is another token); fix or remove "
            "the line"
        )
    at_zero = [k for k, t in enumerate(first) if t == 0]
    if at_zero:
        k = at_zero[0]
        raise InputError(
            f"{_where(k, lines[k][0], path)} has its first {word!r} at position 0, so there is no token before it "
            f"to be the non-target: {_short(lines[k][1])}{_others(at_zero)}; put a word before it"
        )
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batch = from_token_ids(token_ids, pad_id=int(pad), n_ctx=n_ctx, what="sentence")
    return Stimuli(
        texts=tuple(text for _, text in lines), batch=batch, target_pos=torch.tensor(first, dtype=torch.long),
        target_id=target_id, target_text=word, path=str(path.resolve()), n_layers=n_layers,
        layer=min(cfg.layer, n_layers - 1),
    )


# ---------------------------------------------------------------------------------- compute


def compute(
    x_target: torch.Tensor, x_nontarget: torch.Tensor, *, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Histograms of the six Q/K/V blocks, the random baseline, and mean / variance per component.

    >>> g = torch.Generator().manual_seed(0)
    >>> out = compute(torch.randn(2, 54, 3 * 8), torch.randn(2, 54, 3 * 8), generator=g)
    >>> tuple(out["cosine_hist"].shape), tuple(out["baseline_cosine_hist"].shape)
    ((2, 2, 6, 100), (2, 100))

    Layer by layer on the inputs' device (a block never needs more than its own
    3·d_model × 3·d_model matrix: 4800 × 4800 for GPT-2 XL).

    Args:
        x_target, x_nontarget: Tensor[layer, sample, feature=3*d_model], Q|K|V concatenated.
        generator: a torch.Generator on the inputs' device; consumed by one permutation per
            layer, in layer order. The cosine and correlation baselines of a layer use the
            same permutation.

    Returns:
        ``cosine_hist``, ``correlation_hist``: Tensor[role, layer, block, bin] int64;
        ``baseline_cosine_hist``, ``baseline_correlation_hist``: Tensor[layer, bin] int64;
        ``mean``, ``variance``: Tensor[role, layer, component] float64.
    """
    if x_target.shape != x_nontarget.shape:
        raise InputError(f"target and non-target activations differ in shape: {tuple(x_target.shape)} vs "
                         f"{tuple(x_nontarget.shape)}")
    roles = (x_target, x_nontarget)
    out: dict[str, torch.Tensor] = {}
    for name, center in (("cosine", False), ("correlation", True)):
        out[f"{name}_hist"] = torch.stack(
            [qkv_block_histograms(x, center=center, bins=BINS, lo=LO, hi=HI) for x in roles]
        )  # (role, layer, block, bin)
    base = {"cosine": [], "correlation": []}
    for layer in range(x_target.shape[0]):
        state = generator.get_state()
        for name, center in (("cosine", False), ("correlation", True)):
            generator.set_state(state)  # the same permutation for both variants
            values = random_baseline_values(x_target[layer], generator, center=center)  # (pair,)
            base[name].append(uniform_histogram(values, bins=BINS, lo=LO, hi=HI))
    for name, rows in base.items():
        out[f"baseline_{name}_hist"] = torch.stack(rows)  # (layer, bin)
    moments = [component_mean_variance(x) for x in roles]  # each ((layer, 3), (layer, 3))
    out["mean"] = torch.stack([m for m, _ in moments]).to(torch.float64)  # (role, layer, component)
    out["variance"] = torch.stack([v for _, v in moments]).to(torch.float64)
    return out


def summarise(res: dict[str, np.ndarray], stim: Stimuli, d_model: int) -> dict:
    """The key numbers ``lamina info`` prints, from the histograms (share of |c| >= 0.9, spread).

    >>> summarise(res, stim, 768)["sentences"]     # doctest: +SKIP
    54
    """
    edges = histogram_edges(BINS, LO, HI).numpy()
    centres = (edges[:-1] + edges[1:]) / 2
    far = np.abs(centres) > 0.9  # the bins of [-1, -0.9) and [0.9, 1]

    def frac(h: np.ndarray) -> float:  # (bin,) -> share of values with |c| >= 0.9
        return round(float(h[..., far].sum() / max(h.sum(), 1)), 4)

    def sd(h: np.ndarray) -> float:  # spread from bin centres
        p = h / max(h.sum(), 1)
        mu = float((p * centres).sum())
        return round(float(np.sqrt((p * (centres - mu) ** 2).sum())), 4)

    cos, cor = res["cosine_hist"], res["correlation_hist"]
    qq = BLOCKS.index("QQ")
    L = cos.shape[1]
    shown = sorted({0, stim.layer, L - 1})
    return {
        "target": f"{stim.target_text!r} (token {stim.target_id})",
        "sentences": len(stim.texts),
        "features per block": 3 * d_model,
        "figure block": stim.layer,
        f"QQ target cosine, share |c| >= 0.9 at blocks {shown}": [frac(cos[0, l, qq]) for l in shown],
        f"QQ non-target cosine, share |c| >= 0.9 at blocks {shown}": [frac(cos[1, l, qq]) for l in shown],
        f"QQ target correlation sd at blocks {shown}": [sd(cor[0, l, qq]) for l in shown],
        f"baseline correlation sd at blocks {shown}": [sd(res["baseline_correlation_hist"][l]) for l in shown],
    }


# ---------------------------------------------------------------------------------- run


def run(opts: RunOptions, cfg: Config = Config()) -> str:
    """Prepare -> load + open the store -> one capture pass -> histograms per block -> store -> figures.

    >>> run(RunOptions(model="gpt2", weights="random", out="runs/qkv"), Config(layer=3))   # doctest: +SKIP
    'runs/qkv'
    """
    stim = prepare(opts, cfg)
    options = {"sentences": stim.path, "target": stim.target_text, "target_id": stim.target_id, "layer": stim.layer,
               "bins": BINS, "range": [LO, HI]}
    session = common.start(EXPERIMENT, opts, stimuli_sha256=sha256_texts(stim.texts), options=options)
    store, model, world = session.store, session.model, session.world
    batch = stim.batch
    if world.is_main:
        common.put_batch(store, batch, pad_id=batch.pad_id, padding="right")
        pos_attrs = {"target": stim.target_text, "target_id": stim.target_id}
        store.put("inputs/target_pos", stim.target_pos.numpy().astype(np.int32), dims=("sample",),
                  attrs={**pos_attrs, "rule": "first occurrence of the target token"})
        store.put("inputs/nontarget_pos", stim.nontarget_pos.numpy().astype(np.int32), dims=("sample",),
                  attrs={**pos_attrs, "rule": "target_pos - 1"})
    hooks = qkv_hooks(range(model.n_layers))
    caps = [Capture("acts/target", hooks, Selector.at(stim.target_pos)),
            Capture("acts/nontarget", hooks, Selector.at(stim.nontarget_pos))]
    capture_to_store(model, batch, caps, store, micro_batch=opts.micro_batch, world=world, progress=opts.progress)
    barrier(world)
    keys: dict = {}
    if world.is_main:
        feature_attrs = {"feature": f"Q|K|V, each d_model={model.d_model} flattened head-major (c_attn order)"}
        acts = {}
        for c in caps:
            arr = store.group[c.name]
            arr.attrs.update(feature_attrs)
            acts[c.name] = torch.from_numpy(np.asarray(arr[...])).to(model.device)  # (layer, sample, feature)
        res = compute(acts["acts/target"], acts["acts/nontarget"], generator=session.generator())
        res = {k: v.cpu().numpy() for k, v in res.items()}
        hist_attrs = {"role": LABELS["role"], "block": LABELS["block"], "bins": BINS, "range": [LO, HI],
                      "masks": "QQ/KK/VV strict upper triangle of the diagonal block; QK/QV/KV full block"}
        store.put("results/cosine_hist", res["cosine_hist"], dims=("role", "layer", "block", "bin"),
                  attrs={**hist_attrs, "stat": "cosine of feature columns over sentences"})
        store.put("results/correlation_hist", res["correlation_hist"], dims=("role", "layer", "block", "bin"),
                  attrs={**hist_attrs, "stat": "Pearson correlation of feature columns over sentences"})
        store.put("results/bin_edges", histogram_edges(BINS, LO, HI).numpy(), dims=("edge",))
        moment_attrs = {"role": LABELS["role"], "component": LABELS["component"]}
        store.put("results/mean", res["mean"], dims=("role", "layer", "component"),
                  attrs={**moment_attrs, "stat": "mean over sentences per feature, averaged within the component"})
        store.put("results/variance", res["variance"], dims=("role", "layer", "component"),
                  attrs={**moment_attrs, "stat": "variance (ddof=0) over sentences per feature, averaged within "
                                                 "the component"})
        base_attrs = {"role": "target", "seed": opts.seed, "bins": BINS, "range": [LO, HI],
                      "method": "all elements of acts/target[layer] permuted (one permutation per layer, shared by "
                                "cosine and correlation), strict upper triangle of the whole matrix"}
        store.put("results/baseline_cosine_hist", res["baseline_cosine_hist"], dims=("layer", "bin"), attrs=base_attrs)
        store.put("results/baseline_correlation_hist", res["baseline_correlation_hist"], dims=("layer", "bin"),
                  attrs=base_attrs)
        keys = summarise(res, stim, model.d_model)
    return common.finish(session, plot, keys)


def plot(run: Run, figdir: Path) -> list[Path]:
    """All figures of a qkv run (PNG + PDF): see :mod:`lamina.analyses.qkv_plots`."""
    from .qkv_plots import plot_all

    return plot_all(run, figdir)


# ---------------------------------------------------------------------------------- CLI


def add_command(app: typer.Typer) -> None:
    @app.command(EXPERIMENT)
    def qkv_command(
        model: ModelOpt = None, weights: WeightsOpt = "pretrained", seed: SeedOpt = 0, device: DeviceOpt = "auto",
        dtype: DtypeOpt = "float32", out: OutOpt = None, overwrite: OverwriteOpt = False,
        micro_batch: MicroBatchOpt = None, figures: FiguresOpt = True, progress: ProgressOpt = True,
        sentences: Annotated[Optional[str], typer.Option("--sentences", help="Sentences file, one per line, each containing the target. Default: the shipped 54 ' her' sentences.")] = None,
        target: Annotated[str, typer.Option("--target", show_default="' her'", help="Target word: one token with its leading space (added if missing).")] = " her",
        layer: Annotated[int, typer.Option("--layer", help="Block of the single-block figure (clipped to the model's last block).")] = 6,
    ):
        """A: feature cosine / correlation within and across Q, K, V at the target word and the token before it."""
        from .summary import describe

        opts = run_options(model, DEFAULT_MODEL, weights, seed, device, dtype, out, overwrite, micro_batch, figures,
                           progress)
        url = run(opts, Config(sentences=sentences, target=target, layer=layer))
        typer.echo(describe(url))
