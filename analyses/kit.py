"""Everything an analysis author needs, in one import (see README "Writing an analysis").

>>> from lamina.analyses.kit import Spec, Pass, Capture, Selector, Labelled, MeanVar, option

The engine's torch-backed names (captures, selectors, token batches, reducers) load on first use, so that importing
the contract alone (an analysis package's ``ANALYSIS``, for ``lamina analyses`` and ``lamina report``) does not
import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lamina.engine.labelled import Coord, Labelled, bins_coord, index_coord, labels

from .protocol import (
    REQUIRED,
    Analysis,
    Compute,
    Context,
    Data,
    ModelInfo,
    Pass,
    Result,
    Results,
    Spec,
    SpecFunction,
    batch_inputs,
    check_options,
    option,
)
from .textfiles import read_lines, read_text_file

_ENGINE = {  # name -> the engine module holding it (imports torch): loaded by __getattr__ on first use
    **dict.fromkeys(("Capture", "hidden_state_hooks", "layer_hooks", "normalize_hooks", "qkv_hooks"), "hooks"),
    **dict.fromkeys(("Selector", "TokenBatch", "encode_texts", "from_token_ids"), "inputs"),
    **dict.fromkeys(("GroupHistogram", "MeanVar", "Reducer", "StateSpec", "TokenPearson", "Unit"), "reducers"),
}

if TYPE_CHECKING:
    from lamina.engine.hooks import Capture, hidden_state_hooks, layer_hooks, normalize_hooks, qkv_hooks
    from lamina.engine.inputs import Selector, TokenBatch, encode_texts, from_token_ids
    from lamina.engine.reducers import GroupHistogram, MeanVar, Reducer, StateSpec, TokenPearson, Unit


def __getattr__(name: str) -> Any:
    if name not in _ENGINE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"lamina.engine.{_ENGINE[name]}"), name)
    globals()[name] = value
    return value


__all__ = [
    "Analysis",
    "Capture",
    "Compute",
    "Context",
    "Coord",
    "Data",
    "GroupHistogram",
    "Labelled",
    "MeanVar",
    "ModelInfo",
    "Pass",
    "REQUIRED",
    "Reducer",
    "Result",
    "Results",
    "Selector",
    "Spec",
    "SpecFunction",
    "StateSpec",
    "TokenBatch",
    "TokenPearson",
    "Unit",
    "batch_inputs",
    "bins_coord",
    "check_options",
    "encode_texts",
    "from_token_ids",
    "hidden_state_hooks",
    "index_coord",
    "labels",
    "layer_hooks",
    "normalize_hooks",
    "option",
    "qkv_hooks",
    "read_lines",
    "read_text_file",
]
