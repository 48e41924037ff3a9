"""Independent references for the CKA tests: plain-HF block outputs and linear CKA in NumPy from the definitions."""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoModelForCausalLM


def hf_resid_post(folder, tokens: np.ndarray) -> np.ndarray:
    """Every block's output (TransformerLens' hook_resid_post) by plain HF forward hooks: [layer, sample, pos, d]."""
    hf = AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager").eval()
    got = []
    handles = [blk.register_forward_hook(lambda m, i, o: got.append(o[0] if isinstance(o, tuple) else o))
               for blk in hf.transformer.h]
    with torch.no_grad():
        hf(torch.as_tensor(tokens, dtype=torch.long))
    for h in handles:
        h.remove()
    return torch.stack(got).double().numpy()


def hsic(k: np.ndarray, l: np.ndarray, debiased: bool) -> float:
    """Biased HSIC tr(KHLH)/(n-1)^2, or Song et al.'s (2012) unbiased estimator, from the Grams."""
    n = k.shape[0]
    if not debiased:
        h = np.eye(n) - 1.0 / n
        return float(np.trace(k @ h @ l @ h)) / (n - 1) ** 2
    k, l = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
    one = np.ones(n)
    return float(np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
                 - 2.0 / (n - 2) * (one @ k @ l @ one)) / (n * (n - 3))


def cka(x: np.ndarray, y: np.ndarray, debiased: bool) -> float:
    """Linear CKA of x [n, p] and y [n, q] (Kornblith et al. 2019) with either HSIC."""
    k, l = x @ x.T, y @ y.T
    return hsic(k, l, debiased) / np.sqrt(hsic(k, k, debiased) * hsic(l, l, debiased))


def cka_matrix(xa: np.ndarray, xb: np.ndarray, debiased: bool) -> np.ndarray:
    """[La, Lb] from xa [La, n, p], xb [Lb, n, q]."""
    return np.array([[cka(a, b, debiased) for b in xb] for a in xa])


def minibatch_cka(xa: np.ndarray, xb: np.ndarray, m: int) -> np.ndarray:
    """Nguyen et al.'s minibatch CKA over consecutive minibatches of m samples (the rest left out): [La, Lb]."""
    k = xa.shape[1] // m
    parts = [slice(i * m, (i + 1) * m) for i in range(k)]

    def total(x, y):
        return sum(hsic(x[s] @ x[s].T, y[s] @ y[s].T, True) for s in parts)

    return np.array([[total(a, b) / np.sqrt(total(a, a) * total(b, b)) for b in xb] for a in xa])


def mutual_knn(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """Huh et al.'s mutual k-NN alignment of x [n, p] and y [n, q]: mean_i |N_x(i) ∩ N_y(i)| / k (cosine, i excluded)."""
    def neighbours(z):
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
        s = z @ z.T
        np.fill_diagonal(s, -np.inf)
        return [set(np.argsort(-row, kind="stable")[:k]) for row in s]

    return float(np.mean([len(a & b) / k for a, b in zip(neighbours(x), neighbours(y))]))
