"""Per-block curves of an rsa run for ``lamina compare``: SI per component and RSA per pair (as stored).

>>> c = curves(open_run("runs/rsa-gpt2-large"))            # doctest: +SKIP
>>> c["selectivity"].dims, c["rsa"].dims                    # doctest: +SKIP
(('component', 'layer'), ('pair', 'layer'))
"""

from __future__ import annotations

from lamina.engine.reader import Run

from ..curves import curve
from ..kit import Labelled, labels
from . import schema

FINDING_SI = ("Lecture (GPT-2 large): SI is highest in early blocks for Q and K and declines with depth; V's SI "
              "rises again in the deepest third.")
FINDING_RSA = "Lecture: RSA stays high (about 0.84–0.96) at every depth for all three pairs."


def curves(run: Run) -> dict[str, Labelled]:
    """``selectivity`` (component, layer) and ``rsa`` (pair, layer)."""
    si, rsa = schema.SELECTIVITY, schema.RSA
    return {
        "selectivity": curve(run.numpy(si), ("component", "layer"),
                             {"component": labels(run.labels(si, "component"))},
                             long_name="selectivity index SI (within / between category cosine)",
                             finding=FINDING_SI, reference=1.0, reference_label="SI = 1 (no selectivity)"),
        "rsa": curve(run.numpy(rsa), ("pair", "layer"), {"pair": labels(run.labels(rsa, "pair"))},
                     long_name="RSA: Pearson r between two RSMs", finding=FINDING_RSA),
    }
