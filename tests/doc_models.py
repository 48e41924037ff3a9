"""Tiny checkpoints standing in for the models the documentation names, for running its code blocks offline.

``install(folders)`` wraps the model-source resolution (``lamina.engine.models.resolve``) so that any name that is
not a local path or file resolves to a tiny checkpoint of the same family (GPT-Neo, GPT-NeoX/Pythia, Llama/SmolLM2,
else GPT-2), with its revision dropped. Everything else - default ``--out`` names, run keys, the command line - sees
the name as written. ``LAMINA_DOC_MODELS`` (JSON {family: folder}) carries the folders into subprocesses.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

FAMILIES = {"gpt2": dict(n_positions=1024), "gpt_neox": dict(max_position_embeddings=2048),
            "gpt_neo": dict(max_position_embeddings=2048, num_layers=6, attention_types=[[["global", "local"], 3]]),
            "llama": dict(max_position_embeddings=2048)}  # 6 blocks: length's default figure shows block 4


def make_folders(root: Path) -> dict[str, str]:
    from .families import make_family_checkpoint

    return {fam: str(make_family_checkpoint(root / fam, fam, **kw)) for fam, kw in FAMILIES.items()}


def family_of(name: str) -> str:
    low = name.lower()
    if "neo-" in low or "gpt_neo" in low or "gpt-neo" in low:
        return "gpt_neo"
    if "pythia" in low or "neox" in low:
        return "gpt_neox"
    if any(k in low for k in ("llama", "smollm", "mistral", "qwen")):
        return "llama"
    return "gpt2"


def install(folders: dict[str, str] | None = None) -> None:
    import lamina.engine.models as models

    folders = folders or json.loads(os.environ["LAMINA_DOC_MODELS"])
    original = models.resolve

    def resolve(name, *, weights="pretrained", revision=None, config=None):
        if isinstance(name, str) and not os.path.exists(os.path.expanduser(name)):
            return original(folders[family_of(name)], weights=weights, revision=None, config=config)
        return original(name, weights=weights, revision=revision, config=config)

    models.resolve = resolve


PRELUDE = "import tests.doc_models as _d; _d.install()\n"
