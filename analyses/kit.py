"""Everything an analysis author needs, in one import (see README "Writing an analysis").

>>> from lamina.analyses.kit import Spec, Pass, Capture, Selector, Labelled, MeanVar, option
"""

from lamina.engine.hooks import Capture, hidden_state_hooks, layer_hooks, normalize_hooks, qkv_hooks
from lamina.engine.inputs import Selector, TokenBatch, encode_texts, from_token_ids
from lamina.engine.labelled import Coord, Labelled, bins_coord, index_coord, labels
from lamina.engine.reducers import GroupHistogram, MeanVar, Reducer, StateSpec, TokenPearson, Unit

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
