"""B. Laminar profile of RSA and category selectivity: ``lamina run rsa``.

>>> from lamina.analyses.common import RunOptions
>>> url = run(RunOptions(model="gpt2-large", weights="random"), Config(permutations=200))  # doctest: +SKIP
>>> open_run(url).numpy("results/selectivity").shape   # (component, layer)           # doctest: +SKIP
(3, 36)

Each word of a category list is put at the end of a prompt (``"The next word is {w}"``).
Every prompt has the same number of tokens and the word is its ONE final token; that
token's Q, K and V (each ``d_model`` long, head-major) are captured in every block.
Per block and component c: ``RSM_c`` = cosine between items (rows normalised to unit L2
norm); the selectivity index SI_c = mean of the per-category within-category means of
the strict upper triangle / mean of the per-category-pair between means (EXPERIMENTS.md B,
the ``G = triu(g gᵀ, 1)`` mask); RSA = Pearson r of the strict upper triangles of two
RSMs (QK, QV, KV). Beyond the lecture: user word lists (``--words``, ``--template``) and
a permutation test of SI (labels shuffled, ``--permutations``, seeded by ``--seed``).

Store (besides provenance):
  inputs/tokens      (sample, pos) int32      inputs/lengths (sample,) int32
  inputs/labels      (item,) int32, attrs: categories, words, prompts, template
  acts/final         (layer, item, feature=3*d_model)  Q|K|V of the final token
  results/rsm        (layer, component=[Q,K,V], item, item)
  results/selectivity, results/selectivity_pvalue   (component, layer)
  results/rsa        (pair=[QK,QV,KV], layer)
"""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import torch
import typer

from lamina.engine.capture import capture_arrays
from lamina.engine.errors import InputError
from lamina.engine.hooks import Capture, qkv_hooks
from lamina.engine.inputs import Selector, TokenBatch, from_token_ids
from lamina.engine.kernels.rsa import (row_cosine_rsm, rsa_pearson, selectivity_index,
                                       selectivity_permutation_pvalue)
from lamina.engine.models import peek
from lamina.engine.provenance import sha256_texts

from . import common
from .cli_options import (DeviceOpt, DtypeOpt, FiguresOpt, MicroBatchOpt, ModelOpt, OutOpt, OverwriteOpt,
                          ProgressOpt, SeedOpt, WeightsOpt, run_options)
from .common import RunOptions

EXPERIMENT = "rsa"
DEFAULT_MODEL = "gpt2-large"
DEFAULT_TEMPLATE = "The next word is {w}"
COMPONENTS = ("Q", "K", "V")
PAIRS = ("QK", "QV", "KV")
_PAIR_INDEX = ((0, 1), (0, 2), (1, 2))  # component indices of each pair
_PVALUE_SEED_OFFSET = 1  # generator offset of the permutation test (seed + 1: the weights use seed)


@dataclasses.dataclass(frozen=True)
class Config:
    """Options of ``lamina run rsa`` (cheap validation only; files are read in :func:`prepare`)."""

    words: str | None = None  # file of 'word<TAB>category' lines; None = the shipped 34 words in 3 categories
    template: str = DEFAULT_TEMPLATE  # prompt with one '{w}' placeholder, at the very end (the word is the final token)
    permutations: int = 1000  # label shuffles of the SI permutation test (drawn from --seed + 1, shared by all blocks)

    def __post_init__(self):
        n = self.template.count("{w}")
        if n != 1:
            raise InputError(f"--template {self.template!r} must contain the placeholder '{{w}}' exactly once "
                             f"(found {n}), e.g. {DEFAULT_TEMPLATE!r}")
        if not self.template.endswith("{w}"):
            raise InputError(f"--template {self.template!r} must end with '{{w}}': the word has to be the final "
                             f"token of the prompt, e.g. {DEFAULT_TEMPLATE!r}")
        if self.permutations < 1:
            raise InputError(f"--permutations must be >= 1, got {self.permutations}")

    @property
    def words_path(self) -> Path:
        return Path(self.words).expanduser() if self.words else common.stimulus_path("categories.tsv")


@dataclasses.dataclass(frozen=True)
class Stimuli:
    """Validated prompts: one item per word, categories in order of first appearance."""

    words: tuple[str, ...]  # (item,)
    categories: tuple[str, ...]  # (category,)
    labels: np.ndarray  # (item,) int32, index into ``categories``
    prompts: tuple[str, ...]  # (item,)
    batch: TokenBatch  # tokens [sample=item, pos], every row the same length
    n_layers: int

    @property
    def sha256(self) -> str:
        return sha256_texts(f"{w}\t{self.categories[g]}\t{p}" for w, g, p in zip(self.words, self.labels, self.prompts))


# ---- stimuli --------------------------------------------------------------------------------


def read_categories(path: str | Path) -> list[tuple[int, str, str]]:
    """(line number, word, category) per non-blank line of a 'word<TAB>category' file.

    >>> read_categories(common.stimulus_path("categories.tsv"))[0]
    (1, 'galaxy', 'space')

    Lines starting with ``#`` are comments. Fields are split on a tab (or, in a file
    without tabs on that line, on whitespace); anything other than two non-empty fields,
    a repeated word or an empty file is an input error naming the line.
    """
    p = Path(path)
    text = common.read_text_file(p, "words", "pass --words FILE with one 'word<TAB>category' per line")
    out: list[tuple[int, str, str]] = []
    first_line: dict[str, int] = {}
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in (line.split("\t") if "\t" in line else line.split())]
        if len(fields) != 2 or not all(fields):
            raise InputError(f"words file {str(p)!r}, line {n}: {raw!r} is not 'word<TAB>category' "
                             f"({len(fields)} field(s)); write one word, a tab, and its category per line")
        word, category = fields
        if word in first_line:
            raise InputError(f"words file {str(p)!r}, line {n}: the word {word!r} is already on line "
                             f"{first_line[word]}; list each word once")
        first_line[word] = n
        out.append((n, word, category))
    if not out:
        raise InputError(f"words file {str(p)!r} has no words; write one 'word<TAB>category' per line "
                         "(at least 2 categories with at least 2 words each)")
    return out


def _check_categories(entries: list[tuple[int, str, str]], path: Path) -> tuple[tuple[str, ...], np.ndarray]:
    """Categories in order of first appearance and the (item,) label of each word."""
    members: dict[str, list[tuple[int, str]]] = {}
    for n, word, category in entries:
        members.setdefault(category, []).append((n, word))
    if len(members) < 2:
        raise InputError(f"words file {str(path)!r} has only one category ({next(iter(members))!r}); "
                         "selectivity compares categories: give at least 2 categories with at least 2 words each")
    for category, items in members.items():
        if len(items) < 2:
            n, word = items[0]
            raise InputError(f"words file {str(path)!r}: category {category!r} has only one word ({word!r}, "
                             f"line {n}); every category needs at least 2 words (add words or drop the category)")
    categories = tuple(members)
    labels = np.array([categories.index(c) for _, _, c in entries], dtype=np.int32)
    return categories, labels


def _tokenize(tok, template: str, entries: list[tuple[int, str, str]], n_ctx: int) -> tuple[list[str], TokenBatch]:
    """Prompts -> token batch; every prompt the same length, the word its one final token."""
    prompts = [template.replace("{w}", word) for _, word, _ in entries]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    lengths = collections.Counter(len(r) for r in ids)
    ref = lengths.most_common(1)[0][0]  # the length most prompts have
    problems = []
    for (n, word, _), prompt, row in zip(entries, prompts, ids):
        whole = len(row) > 0 and tok.decode(row[-1:]).lstrip() == word
        if whole and len(row) == ref:
            continue
        pieces = [tok.decode([i]) for i in row]
        why = "is not one final token" if not whole else f"makes a prompt of {len(row)} tokens"
        problems.append(f"word {word!r} (line {n}) {why}: {prompt!r} tokenises to {len(row)} tokens {pieces}")
    if problems:
        shown = problems[:8] + ([f"... and {len(problems) - 8} more"] if len(problems) > 8 else [])
        raise InputError(
            "every prompt must have the same number of tokens with the word as its ONE final token "
            f"(most prompts here have {ref} tokens):\n  " + "\n  ".join(shown) +
            "\nreplace or drop these words (common words usually stay one token with a leading space)"
        )
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return prompts, from_token_ids(ids, pad_id=int(pad), n_ctx=n_ctx, what="prompt")


def prepare(model: str, weights: str, cfg: Config = Config()) -> Stimuli:
    """Read and validate the words with the model's tokenizer (no weights loaded, no store made).

    >>> s = prepare("gpt2-large", "random")
    >>> len(s.words), s.categories, tuple(s.batch.tokens.shape)
    (34, ('space', 'interior', 'fruit'), (34, 5))
    """
    path = cfg.words_path
    entries = read_categories(path)
    categories, labels = _check_categories(entries, path)
    tok, n_ctx, n_layers = peek(model, weights)
    prompts, batch = _tokenize(tok, cfg.template, entries, n_ctx)
    return Stimuli(tuple(w for _, w, _ in entries), categories, labels, tuple(prompts), batch, n_layers)


# ---- statistics ------------------------------------------------------------------------------


def compute(acts: torch.Tensor, labels: torch.Tensor, *, permutations: int,
            generator: torch.Generator) -> dict[str, torch.Tensor]:
    """RSMs, SI, its permutation p-value and RSA from Q|K|V of the final token (pure, float64).

    >>> acts = torch.randn(2, 6, 3 * 8)              # (layer, item, feature=3*d_model)
    >>> out = compute(acts, torch.tensor([0, 0, 0, 1, 1, 1]), permutations=50, generator=torch.Generator())
    >>> {k: tuple(v.shape) for k, v in out.items()}
    {'rsm': (2, 3, 6, 6), 'selectivity': (3, 2), 'selectivity_pvalue': (3, 2), 'rsa': (3, 2)}

    Args:
        acts: (layer, item, feature=3*d_model), Q then K then V.
        labels: (item,) integer category of each item.
    Returns:
        rsm (layer, component, item, item); selectivity and selectivity_pvalue
        (component, layer); rsa (pair=[QK, QV, KV], layer).
    """
    n_layers, n_items, n_feat = acts.shape
    if n_feat % 3:
        raise InputError(f"Q|K|V features must be 3*d_model, got {n_feat}")
    x = acts.to(torch.float64).reshape(n_layers, n_items, 3, n_feat // 3)  # (layer, item, component, d_model)
    x = x.transpose(1, 2)  # (layer, component, item, d_model)
    rsm = row_cosine_rsm(x)  # (layer, component, item, item)
    labels = labels.to(rsm.device)
    si = selectivity_index(rsm, labels)  # (layer, component)
    pvalue = selectivity_permutation_pvalue(rsm, labels, n_permutations=permutations, generator=generator)
    rsa = torch.stack([rsa_pearson(rsm[:, a], rsm[:, b]) for a, b in _PAIR_INDEX])  # (pair, layer)
    return {"rsm": rsm, "selectivity": si.T, "selectivity_pvalue": pvalue.T, "rsa": rsa}


# ---- run ------------------------------------------------------------------------------------


def run(opts: RunOptions, cfg: Config = Config()) -> str:
    """Prepare, capture, compute, store, plot; returns the run's URL."""
    from .rsa_plots import plot as plot_fn

    stim = prepare(opts.model, opts.weights, cfg)
    options = {"words": str(cfg.words_path), "template": cfg.template, "permutations": cfg.permutations,
               "layers": list(range(stim.n_layers))}
    session = common.start(EXPERIMENT, opts, stimuli_sha256=stim.sha256, options=options)
    model, store = session.model, session.store
    n_layers = model.n_layers
    cap = Capture("acts/final", qkv_hooks(range(n_layers)), Selector.last())
    acts = capture_arrays(model, stim.batch, [cap], micro_batch=opts.micro_batch)["acts/final"]
    # acts: (layer, item, feature=3*d_model) on the model's device
    labels = torch.as_tensor(stim.labels, dtype=torch.long)
    res = compute(acts, labels, permutations=cfg.permutations, generator=session.generator(_PVALUE_SEED_OFFSET))
    res = {k: v.to("cpu", torch.float32).numpy() for k, v in res.items()}

    common.put_batch(store, stim.batch)
    store.put("inputs/labels", stim.labels, dims=("item",),
              attrs={"categories": list(stim.categories), "words": list(stim.words), "prompts": list(stim.prompts),
                     "template": cfg.template})
    store.put("acts/final", acts.cpu().numpy(), dims=("layer", "item", "feature"),
              attrs={"hooks": [list(g) for g in cap.hooks], "select": cap.select.kind})
    store.put("results/rsm", res["rsm"], dims=("layer", "component", "item", "item"),
              attrs={"component": list(COMPONENTS), "words": list(stim.words)})
    store.put("results/selectivity", res["selectivity"], dims=("component", "layer"),
              attrs={"component": list(COMPONENTS)})
    store.put("results/selectivity_pvalue", res["selectivity_pvalue"], dims=("component", "layer"),
              attrs={"component": list(COMPONENTS), "permutations": cfg.permutations,
                     "test": "one-sided, labels shuffled: (1 + #{SI_perm >= SI}) / (1 + permutations)"})
    store.put("results/rsa", res["rsa"], dims=("pair", "layer"), attrs={"pair": list(PAIRS)})
    return common.finish(session, plot_fn, _summary(stim, res, cfg))


def _summary(stim: Stimuli, res: dict[str, np.ndarray], cfg: Config) -> dict:
    si, p, rsa = res["selectivity"], res["selectivity_pvalue"], res["rsa"]  # (component, layer), (pair, layer)
    out: dict = {"items": len(stim.words), "categories": {c: int((stim.labels == i).sum())
                                                          for i, c in enumerate(stim.categories)}}
    depths = shown_blocks(si.shape[1])
    for i, c in enumerate(COMPONENTS):
        out[f"SI_{c} at blocks {'/'.join(map(str, depths))}"] = [round(float(si[i, j]), 4) for j in depths]
        out[f"SI_{c} blocks with p<0.05"] = f"{int((p[i] < 0.05).sum())}/{p.shape[1]} ({cfg.permutations} permutations)"
    for i, pair in enumerate(PAIRS):
        out[f"RSA_{pair} min/mean/max"] = [round(float(f(rsa[i])), 4) for f in (np.min, np.mean, np.max)]
    return out


def shown_blocks(n_layers: int) -> list[int]:
    """First, middle and last block (fewer when the model has fewer blocks)."""
    return sorted({0, n_layers // 2, n_layers - 1})


# ---- command line ---------------------------------------------------------------------------


def add_command(app: typer.Typer) -> None:
    @app.command(EXPERIMENT)
    def rsa_command(
        model: ModelOpt = None, weights: WeightsOpt = "pretrained", seed: SeedOpt = 0, device: DeviceOpt = "auto",
        dtype: DtypeOpt = "float32", out: OutOpt = None, overwrite: OverwriteOpt = False,
        micro_batch: MicroBatchOpt = None, figures: FiguresOpt = True, progress: ProgressOpt = True,
        words: Annotated[Optional[str], typer.Option(
            "--words", help="File of 'word<TAB>category' lines (>= 2 categories of >= 2 words). "
                            "Default: the shipped 34 words in 3 categories.")] = None,
        template: Annotated[str, typer.Option(
            "--template", help="Prompt ending with the '{w}' placeholder; every word must be its one final token.")]
        = DEFAULT_TEMPLATE,
        permutations: Annotated[int, typer.Option(
            "--permutations", help="Label shuffles of the SI permutation test (seeded by --seed).")] = 1000,
    ):
        """B: RSA between Q, K, V and category selectivity of the final word, at every block (default gpt2-large)."""
        from .summary import describe

        opts = run_options(model, DEFAULT_MODEL, weights, seed, device, dtype, out, overwrite, micro_batch, figures,
                           progress)
        url = run(opts, Config(words=words, template=template, permutations=permutations))
        typer.echo(describe(url))


def plot(run, figdir: Path) -> list[Path]:
    """Figures of a finished run (see :mod:`lamina.analyses.rsa_plots`)."""
    from .rsa_plots import plot as plot_fn

    return plot_fn(run, figdir)
