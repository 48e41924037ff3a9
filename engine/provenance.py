"""Provenance recorded with every run: versions, machine, stimuli hash.

>>> sorted(versions())[:3]
['lamina', 'numpy', 'python']
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import platform
from collections.abc import Iterable

_PACKAGES = ("lamina", "torch", "transformers", "transformer-lens", "zarr", "numpy")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            out[pkg.replace("-", "_") if pkg == "transformer-lens" else pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return dict(sorted(out.items()))


def machine() -> dict[str, str]:
    import torch

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "torch_threads": str(torch.get_num_threads())}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def sha256_texts(items: Iterable[str]) -> str:
    """Hash of the stimuli as given (one item per line, order matters)."""
    h = hashlib.sha256()
    for it in items:
        h.update(it.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()
