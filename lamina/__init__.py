"""lamina: layer-wise analyses of language-model representations, one batched hooked pass, streamed to Zarr.

The promise is these names; everything else is importable but may change.

>>> import lamina
>>> model = lamina.load_model("gpt2", weights="random")                         # doctest: +SKIP
>>> acts = lamina.capture(model, ["The cat sat."], hooks="blocks.{layer}.hook_resid_post")  # doctest: +SKIP
>>> run = lamina.run("rsa", model="gpt2-large", weights="random")               # doctest: +SKIP
>>> lamina.open_run(run.url).datatree()                                          # doctest: +SKIP

- :func:`load_model` a TransformerLens hooked model (any bridged HuggingFace family; pretrained,
  random or a local checkpoint);
- :func:`capture` activations of any hooks, in memory or streamed into a run;
- :func:`run` an analysis (built-in or plugin) exactly as ``lamina run NAME`` does;
- :func:`open_run` / :class:`Run` read a run; :func:`verify` checks every chunk's checksum;
- :func:`hooks` every hook point of a model: its shape per position, and whether the fast path serves it;
- :func:`compare` runs of one analysis across models, seeds or dtypes on a relative-depth axis;
- :func:`similarity` layer × layer CKA of two runs on the same tokens (``lamina similarity A B --out F``);
- :class:`Analysis`, :func:`register` to add an analysis; :mod:`errors` every error lamina raises.
"""

from __future__ import annotations

import importlib

_NAMES = {  # name -> module; imported on first use, so that reading a run does not import torch
    "capture": "lamina.analyses.api", "run": "lamina.analyses.api", "compare": "lamina.analyses.compare",
    "similarity": "lamina.analyses.similarity",
    "Analysis": "lamina.analyses.protocol", "register": "lamina.analyses.registry", "errors": "lamina.errors",
    "load_model": "lamina.engine.models", "Run": "lamina.engine.reader", "open_run": "lamina.engine.reader",
    "verify": "lamina.engine.verify", "hooks": "lamina.engine.hook_catalog",
}

__all__ = ["load_model", "capture", "run", "open_run", "Run", "verify", "compare", "similarity", "hooks", "Analysis",
           "register", "errors"]


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module 'lamina' has no attribute {name!r}")
    module = importlib.import_module(_NAMES[name])
    value = module if name == "errors" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
