"""Command-line options shared by every ``lamina run`` command (typer ``Annotated`` aliases).

An analysis command declares ``model: ModelOpt = None, weights: WeightsOpt = "pretrained", ...``
and turns them into a :class:`RunOptions` with :func:`run_options`.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .common import RunOptions

ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="Model name (gpt2 ... EleutherAI/gpt-neo-1.3B) or a local HF checkpoint directory. Default: the analysis' own.")]
WeightsOpt = Annotated[str, typer.Option("--weights", help="'pretrained' (HF cache) or 'random' (full-size architecture, random weights: scientifically meaningless).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of random weights, baselines and permutations.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (cuda if available), cpu, cuda, cuda:1 ...")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="Model dtype: float32, bfloat16 or float16. Statistics accumulate in float32/64.")]
OutOpt = Annotated[Optional[str], typer.Option("--out", "-o", help="Run store (Zarr v3 group: a folder or an fsspec URL). Default runs/EXPERIMENT-MODEL[-random].")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace a complete run already at --out.")]
MicroBatchOpt = Annotated[Optional[int], typer.Option("--micro-batch", help="Samples per forward pass (default: fits the device).")]
FiguresOpt = Annotated[bool, typer.Option("--figures/--no-figures", help="Write PNG and PDF figures into OUT/figures.")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars.")]


def run_options(model, default_model, weights, seed, device, dtype, out, overwrite, micro_batch, figures, progress) -> RunOptions:
    return RunOptions(model=model or default_model, weights=weights, seed=seed, device=device, dtype=dtype, out=out,
                      overwrite=overwrite, micro_batch=micro_batch, figures=figures, progress=progress)
