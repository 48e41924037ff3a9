"""The slow baselines: the course's way, written from docs/analyses.md with plain HF hooks and NumPy.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> qkv_numpy(rng.standard_normal((2, 54, 3 * 8), dtype=np.float32)).shape   # (matrix, block, bin)
(2, 6, 100)

Nothing here is tuned: forward hooks keep every block's FULL output (all positions)
as NumPy arrays and positions are picked afterwards; statistics loop over layers,
components and pairs the way the lecture code does. They are the "before" of every
ratio in the benchmark tables, and a second opinion on lamina's numbers (the
benchmark reports the largest difference).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

BLOCKS = ("QQ", "KK", "VV", "QK", "QV", "KV")


# ---- capture: HuggingFace forward hooks on every block -------------------------------------


def _qkv_modules(block) -> list:
    """The module(s) whose output is Q|K|V: GPT-2's c_attn, GPT-Neo's q/k/v projections."""
    if hasattr(block.attn, "c_attn"):
        return [block.attn.c_attn]
    att = block.attn.attention
    return [att.q_proj, att.k_proj, att.v_proj]


def hf_hook_capture(hf_model, batches, kind: str, positions: Sequence[np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Course-style capture with ``register_forward_hook`` on the raw HF model.

    Args:
        hf_model: a HuggingFace GPT-2 / GPT-Neo causal LM (full forward, LM head included).
        batches: list of (tokens [b, T] int64, attention_mask [b, T]) micro-batches.
        kind: ``"qkv"`` (Q|K|V of every block), ``"mlp_pre"`` (``c_fc`` output of every block)
            or ``"hidden"`` (``output_hidden_states``: L + 1 states).
        positions: for ``qkv`` and ``hidden``, one [b_total] position array per output
            (e.g. target and non-target); ``None`` keeps all positions (``mlp_pre``).

    Returns:
        {"out0", "out1", ...} one per position array: [layer, sample, feature], or for
        ``positions=None`` {"all": [layer, sample, pos, feature]} (pos padded to the
        longest micro-batch with zeros).
    """
    blocks = hf_model.transformer.h
    parts: list[dict[str, np.ndarray]] = []
    for tokens, mask in batches:
        stored: dict[int, list] = {l: [] for l in range(len(blocks))}
        handles = []
        if kind in ("qkv", "mlp_pre"):
            for l, blk in enumerate(blocks):
                mods = _qkv_modules(blk) if kind == "qkv" else [blk.mlp.c_fc]
                for mod in mods:  # keep the FULL output of every position, as NumPy
                    handles.append(mod.register_forward_hook(
                        lambda m, i, o, l=l, stored=stored: stored[l].append(o.detach().cpu().numpy().copy())))
        with torch.no_grad():
            out = hf_model(tokens, attention_mask=mask, output_hidden_states=kind == "hidden")
        for h in handles:
            h.remove()
        if kind == "hidden":
            full = np.stack([h.detach().cpu().numpy() for h in out.hidden_states])  # [state, b, T, D]
        else:
            full = np.stack([np.concatenate(stored[l], axis=-1) for l in range(len(blocks))])  # [layer, b, T, F]
        parts.append({"full": full, "n": tokens.shape[0]})
    if positions is None:
        width = max(p["full"].shape[2] for p in parts)
        padded = [np.pad(p["full"], ((0, 0), (0, 0), (0, width - p["full"].shape[2]), (0, 0))) for p in parts]
        return {"all": np.concatenate(padded, axis=1)}
    out: dict[str, np.ndarray] = {}
    for k, pos in enumerate(positions):
        rows, start = [], 0
        for p in parts:  # NumPy fancy indexing of the positions, per micro-batch
            n = p["n"]
            rows.append(p["full"][:, np.arange(n), pos[start : start + n]])
            start += n
        out[f"out{k}"] = np.concatenate(rows, axis=1)
    return out


# ---- A: cosine / correlation blocks and histograms ------------------------------------------


def qkv_numpy(x: np.ndarray, *, center: bool = False, bins: int = 100) -> np.ndarray:
    """Per matrix, the 6 block histograms of the feature cosine (or correlation) matrix.

    The full ``3D × 3D`` matrix ``C = Xnᵀ Xn`` is computed (as the course did), then the
    strict upper triangles of QQ/KK/VV and the full QK/QV/KV blocks are cut out with
    index masks and histogrammed with ``np.histogram(bins=100, range=(-1, 1))``.

    Args:
        x: [matrix, sample, 3*D] float32 (matrix = layer x role).
    Returns:
        [matrix, block=6, bin] int64 counts.
    """
    m, _, f = x.shape
    d = f // 3
    iu = np.triu_indices(d, 1)
    out = np.zeros((m, 6, bins), dtype=np.int64)
    for i in range(m):
        xi = x[i] - x[i].mean(axis=0) if center else x[i]
        norm = np.linalg.norm(xi, axis=0)
        xn = xi / np.where(norm > 0, norm, 1.0)
        c = xn.T @ xn  # (3D, 3D)
        q, k, v = slice(0, d), slice(d, 2 * d), slice(2 * d, 3 * d)
        values = [c[q, q][iu], c[k, k][iu], c[v, v][iu], c[q, k].ravel(), c[q, v].ravel(), c[k, v].ravel()]
        for b, vals in enumerate(values):
            out[i, b] = np.histogram(vals, bins=bins, range=(-1.0, 1.0))[0]
    return out


# ---- B: RSA and selectivity ---------------------------------------------------------------------


def rsa_numpy(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Selectivity (3 components x L) and RSA (3 pairs x L), loops over layers and components.

    Args:
        x: [layer, component=3, item, D]; labels: [item] in {1, 2, 3}.
    """
    n_layers = x.shape[0]
    g = np.asarray(labels)
    G = np.triu(np.outer(g, g), 1)
    iu = np.triu_indices(len(g), 1)
    si = np.zeros((3, n_layers))
    rsa = np.zeros((3, n_layers))
    for l in range(n_layers):
        rsms = []
        for c in range(3):
            v = x[l, c]
            vn = v / np.linalg.norm(v, axis=1, keepdims=True)
            r = vn @ vn.T
            rsms.append(r)
            within = np.mean([r[G == 1].mean(), r[G == 4].mean(), r[G == 9].mean()])
            between = np.mean([r[G == 2].mean(), r[G == 3].mean(), r[G == 6].mean()])
            si[c, l] = within / between
        for p, (a, b) in enumerate(((0, 1), (0, 2), (1, 2))):
            rsa[p, l] = np.corrcoef(rsms[a][iu], rsms[b][iu])[0, 1]
    return si, rsa


# ---- C: correlation of every neuron with token length ---------------------------------------------


def length_corr_numpy(acts: np.ndarray, length: np.ndarray) -> np.ndarray:
    """r = Σ z_len z_act / (N − 1) with ddof=1 z-scores, per layer (vectorised over neurons, float64).

    Args:
        acts: [layer, token, neuron]; length: [token].
    Returns:
        [layer, neuron] float64.
    """
    n = acts.shape[1]
    ln = length.astype(np.float64)
    zl = (ln - ln.mean()) / ln.std(ddof=1)
    out = np.zeros((acts.shape[0], acts.shape[2]))
    for l in range(acts.shape[0]):
        a = acts[l].astype(np.float64)
        za = (a - a.mean(axis=0)) / a.std(axis=0, ddof=1)
        out[l] = zl @ za / (n - 1)
    return out


# ---- D: MI, covariance and correlation of one pair, the per-pair loop -----------------------------


def pair_stats(x: np.ndarray, y: np.ndarray, *, bins: int = 15, z_max: float = 5.0) -> tuple[float, float, float]:
    """(MI bits, covariance, Pearson r) of two vectors after the lecture's outlier removal."""
    zx = (x - x.mean()) / x.std(ddof=1)
    zy = (y - y.mean()) / y.std(ddof=1)
    keep = ~((np.abs(zx) > z_max) | (np.abs(zy) > z_max))
    xk, yk = x[keep], y[keep]
    joint = np.histogram2d(xk, yk, bins=bins)[0]
    p = joint / joint.sum()
    hxy = -np.sum(p * np.log2(p + 1e-12))
    px, py = p.sum(axis=1), p.sum(axis=0)
    hx = -np.sum(px * np.log2(px + 1e-12))
    hy = -np.sum(py * np.log2(py + 1e-12))
    cov = np.sum((xk - xk.mean()) * (yk - yk.mean())) / (len(xk) - 1)
    corr = np.corrcoef(xk, yk)[0, 1]
    return hx + hy - hxy, cov, corr


def pair_loop(x: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """[pair, 3] (MI, cov, corr) for the given (i, j) rows of ``x`` [sample, feature], one pair at a time."""
    x = x.astype(np.float64)
    return np.array([pair_stats(x[i], x[j]) for i, j in pairs])
