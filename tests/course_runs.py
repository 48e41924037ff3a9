"""Tiny complete runs of the four course analyses on two depths (3 and 6 blocks), shared by
tests/test_compare.py and tests/test_report.py (built once per test process), and an independent
NumPy recomputation of the per-layer curves from the stored arrays (plain zarr, no lamina code).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from lamina.analyses import length, punct, qkv, rsa
from lamina.analyses.options import RunOptions

from .conftest import make_checkpoint
from .helpers import run_analysis

DEPTHS = (3, 6)
ANALYSES = ("qkv", "rsa", "length", "punct")
TEXT = (
    "The train was late, the platform was cold and the coffee was bitter. Nobody complained, not even the old man "
    "with the dog, who read his paper in silence. The clock showed ten. A girl counted the pigeons, the benches and "
    "the lamps. Her brother, bored, drew faces on the window. Then the rain began, slowly at first, then hard. The "
    "porter, a tall woman, pulled a cart of parcels, boxes and letters. She whistled. The dog barked, the man "
    "laughed, and the girl stopped counting. When the train came, it was almost empty. They found seats, put their "
    "bags down and looked out. Fields, farms and rivers passed. The conductor, smiling, checked the tickets. Later, "
    "as the light faded, the carriage grew quiet. The girl slept. Her brother, still awake, watched the stars. At "
    "the last station, the doors opened, the air smelled of salt and the sea was near. They walked to the harbour, "
    "where the boats rocked. It was late. The town was asleep.\n"
)
CONFIGS = {
    "qkv": lambda tmp: qkv.Config(),
    "rsa": lambda tmp: rsa.Config(permutations=20),
    "length": lambda tmp: length.Config(n_seq=2, seq_len=32, block=1),
    "punct": lambda tmp: punct.Config(text=str(_text(tmp)), marks=10, skip=10),
}
_CACHE: dict = {}


def _text(tmp: Path) -> Path:
    path = tmp / "punct-text.txt"
    if not path.exists():
        path.write_text(TEXT, encoding="utf-8")
    return path


def checkpoints(tmp_path_factory) -> dict[int, Path]:
    """{n_blocks: tiny GPT-2 checkpoint folder} (d_model 32, 4 heads, 128 positions)."""
    if "ckpt" not in _CACHE:
        _CACHE["ckpt"] = {n: make_checkpoint(tmp_path_factory.mktemp(f"cmp-gpt2-{n}"), "gpt2", n_layers=n, d_model=32,
                                             n_heads=4, n_ctx=128, seed=n) for n in DEPTHS}
    return _CACHE["ckpt"]


def course_runs(tmp_path_factory) -> dict[tuple[str, int], str]:
    """{(analysis, n_blocks): URL of a complete run}; the shallower runs also have figures and report.html."""
    if "runs" not in _CACHE:
        ckpt = checkpoints(tmp_path_factory)
        root = tmp_path_factory.mktemp("course-runs")
        runs = {}
        for name in ANALYSES:
            for n in DEPTHS:
                opts = RunOptions(model=str(ckpt[n]), out=str(root / f"{name}-{n}"), progress=False,
                                  figures=n == DEPTHS[0])
                runs[name, n] = run_analysis(name, CONFIGS[name](root), opts).url
        _CACHE["runs"] = runs
    return _CACHE["runs"]


# ---- independent reference ---------------------------------------------------------------------


def reference_curves(url: str, analysis: str) -> dict[str, dict[tuple[str, ...], np.ndarray]]:
    """{curve: {label tuple: per-layer values}} recomputed from the stored arrays with plain NumPy loops."""
    g = zarr.open_group(url, mode="r")

    def lab(path):
        return [str(v) for v in np.asarray(g[path][...]).tolist()]

    out: dict[str, dict] = {}
    if analysis == "qkv":
        hist = np.asarray(g["results/cosine_hist"][...])  # role, layer, block, bin
        edges = np.asarray(g["results/bin_edges"][...])
        centres = (edges[:-1] + edges[1:]) / 2
        roles, blocks = lab("results/role"), lab("results/block")
        far, sd = {}, {}
        for r, role in enumerate(roles):
            for b, block in enumerate(blocks):
                share_l, sd_l = [], []
                for layer in range(hist.shape[1]):
                    counts = hist[r, layer, b].astype(float)
                    share_l.append(counts[np.abs(centres) > 0.9].sum() / counts.sum())
                    mu = np.average(centres, weights=counts)
                    sd_l.append(np.sqrt(np.average((centres - mu) ** 2, weights=counts)))
                far[role, block], sd[role, block] = np.array(share_l), np.array(sd_l)
        out = {"cosine_far": far, "cosine_sd": sd}
    elif analysis == "rsa":
        si, rsa_ = np.asarray(g["results/selectivity"][...]), np.asarray(g["results/rsa"][...])
        out = {"selectivity": {(c,): si[i] for i, c in enumerate(lab("results/component"))},
               "rsa": {(p,): rsa_[i] for i, p in enumerate(lab("results/pair"))}}
    elif analysis == "length":
        r = np.asarray(g["results/corr"][...], dtype=np.float64)
        out = {"corr_mean": {(): np.array([np.nanmean(row) for row in r])},
               "corr_sd": {(): np.array([np.nanstd(row) for row in r])},
               "corr_density": {(): np.asarray(g["results/corr_hist"][...], dtype=np.float64)}}
    elif analysis == "punct":
        mean, r = np.asarray(g["results/mean"][...]), np.asarray(g["results/r_cov_mi"][...])
        classes, stats = lab("results/class"), lab("results/stat")
        for k in ("mi", "cov", "corr"):
            out[f"mean_{k}"] = {(c,): mean[i, :, stats.index(k)] for i, c in enumerate(classes)}
        out["r_cov_mi"] = {(c,): r[i] for i, c in enumerate(classes)}
    return out


def n_depth(url: str, analysis: str) -> int:
    """Blocks of the run's model (hidden states = blocks + 1 for punct), from its attrs."""
    n = int(zarr.open_group(url, mode="r").attrs["model"]["n_layers"])
    return n + 1 if analysis == "punct" else n
