"""Mean and variance of Q, K and V features across samples (EXPERIMENTS.md A).

>>> import torch
>>> x = torch.tensor([[0.0, 2.0, 1.0, 1.0, 4.0, 0.0],
...                   [2.0, 2.0, 3.0, 3.0, 0.0, 0.0]])  # (sample, 3*d_model), d_model = 2
>>> mean, var = component_mean_variance(x)
>>> mean, var
(tensor([1.5000, 2.0000, 1.0000]), tensor([0.5000, 1.0000, 2.0000]))
"""

from __future__ import annotations

import torch
from torch import Tensor

from lamina.engine.errors import InputError

from .similarity import _check_qkv

__all__ = ["component_mean_variance"]


def component_mean_variance(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-feature mean and variance over samples, averaged within Q, K and V.

    >>> import torch
    >>> m, v = component_mean_variance(torch.ones(4, 54, 3 * 8))  # (layer, sample, 3*d_model)
    >>> m.shape, v.shape
    (torch.Size([4, 3]), torch.Size([4, 3]))

    For every feature, its mean and its variance with ddof=0
    (``mean((x - mean)²)``) over the sample axis; then the average of those over
    the first, second and third thirds of the features (Q, K, V).

    Args:
        x: Tensor[..., sample, 3*d_model], any real dtype.

    Returns:
        (mean, variance), each Tensor[..., component=3], float32 (float64 for
        float64 input).
    """
    if isinstance(x, Tensor) and x.is_complex():
        raise InputError(f"expected a real tensor, got dtype {x.dtype}")
    features = 3 * _check_qkv(x, "..., ")
    x = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    var, mean = torch.var_mean(x, dim=-2, correction=0)  # (..., 3*d_model)
    per_component = (*mean.shape[:-1], 3, features // 3)  # (..., component, feature)
    return mean.reshape(per_component).mean(-1), var.reshape(per_component).mean(-1)
