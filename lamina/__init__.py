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
- :func:`compare` runs of one analysis across models, seeds or dtypes on a relative-depth axis;
- :class:`Analysis`, :func:`register` to add an analysis; :mod:`errors` every error lamina raises.
"""

from lamina.analyses.api import capture, run
from lamina.analyses.compare import compare
from lamina.analyses.protocol import Analysis
from lamina.analyses.registry import register
from lamina import errors
from lamina.engine.models import load_model
from lamina.engine.reader import Run, open_run
from lamina.engine.verify import verify

__all__ = ["load_model", "capture", "run", "open_run", "Run", "verify", "compare", "Analysis", "register", "errors"]
