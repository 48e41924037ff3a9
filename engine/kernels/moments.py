"""Mean and variance of Q, K and V features across samples (docs/analyses.md "qkv").

>>> import torch
>>> x = torch.tensor([[0.0, 2.0, 1.0, 1.0, 4.0, 0.0],
...                   [2.0, 2.0, 3.0, 3.0, 0.0, 0.0]])  # (sample, 3*d_model), d_model = 2
>>> mean, var = component_mean_variance(x)
>>> mean, var
(tensor([1.5000, 2.0000, 1.0000]), tensor([0.5000, 1.0000, 2.0000]))
>>> component_mean_variance(x, widths=(4, 1, 1))[0]   # unequal widths (grouped-query attention)
tensor([1.7500, 2.0000, 0.0000])
"""

from __future__ import annotations

import torch
from torch import Tensor

from lamina.engine.errors import InputError

from .similarity import Widths, _check_qkv

__all__ = ["component_mean_variance"]


def component_mean_variance(x: Tensor, *, widths: Widths | None = None) -> tuple[Tensor, Tensor]:
    """Per-feature mean and variance over samples, averaged within Q, K and V.

    >>> import torch
    >>> m, v = component_mean_variance(torch.ones(4, 54, 3 * 8))  # (layer, sample, 3*d_model)
    >>> m.shape, v.shape
    (torch.Size([4, 3]), torch.Size([4, 3]))

    For every feature, its mean and its variance with ddof=0
    (``mean((x - mean)²)``) over the sample axis; then the average of those over
    each component's own features: the first ``d_q``, the next ``d_k`` and the last
    ``d_v`` (equal thirds unless ``widths`` says otherwise).

    Args:
        x: Tensor[..., sample, d_q + d_k + d_v], any real dtype.
        widths: (d_q, d_k, d_v), or None for three equal thirds.

    Returns:
        (mean, variance), each Tensor[..., component=3], float32 (float64 for
        float64 input).
    """
    if isinstance(x, Tensor) and x.is_complex():
        raise InputError(f"expected a real tensor, got dtype {x.dtype}")
    widths = _check_qkv(x, "..., ", widths)
    x = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    var, mean = torch.var_mean(x, dim=-2, correction=0)  # (..., d_q + d_k + d_v)
    if widths[0] == widths[1] == widths[2]:  # one reshape (the equal-thirds arithmetic, unchanged)
        per_component = (*mean.shape[:-1], 3, widths[0])  # (..., component, feature)
        return mean.reshape(per_component).mean(-1), var.reshape(per_component).mean(-1)
    means = [m.mean(-1) for m in mean.split(widths, dim=-1)]  # each (...,)
    variances = [v.mean(-1) for v in var.split(widths, dim=-1)]
    return torch.stack(means, dim=-1), torch.stack(variances, dim=-1)
