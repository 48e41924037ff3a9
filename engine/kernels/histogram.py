"""Uniform-bin histograms with NumPy's exact edge semantics, batched over rows.

>>> import torch
>>> uniform_histogram(torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, 2.0]), bins=4, lo=-1.0, hi=1.0)
tensor([1, 1, 1, 2])

``uniform_histogram(v, bins=b, lo=lo, hi=hi)`` equals
``np.histogram(v, bins=b, range=(lo, hi))[0]`` for every row of ``v``, bit for bit,
for float16, float32 and float64 input (bfloat16 follows the same rule with
bfloat16 edges). The rule NumPy implements is:

- the edges are ``np.linspace(lo, hi, bins + 1)`` computed in float64 and rounded
  to the data's dtype (NumPy 2 treats the Python floats ``lo`` and ``hi`` as weak
  scalars, so float32 data gets float32 edges);
- a value ``x`` is kept when ``edge[0] <= x <= edge[-1]`` (NaN is dropped);
- it lands in bin ``i`` with ``edge[i] <= x < edge[i+1]``, except that ``x == edge[-1]``
  lands in the last bin.

NumPy reaches this with a guess ``floor((x - lo) / (hi - lo) * bins)`` followed by
one step of correction against the edges. Here the bucket is "how many thresholds
``t_0 = edge[0], ..., t_{bins-1} = edge[bins-1], t_bins = nextafter(edge[-1], +inf)``
are ``<= x``" (0 means below the range or NaN, ``bins + 1`` above it), computed as
``j + (x >= t_j)`` with ``j = floor((x - lo) * bins / (hi - lo) + 1/2)``: the nearest
threshold is the only one the arithmetic can get wrong, so one comparison settles
it. A plan checks, once per (dtype, bins, lo, hi), that the rounding of the edges
and of the arithmetic is far below half a bin (always true for sane ranges); if
not, the bucket comes from a binary search over the same thresholds
(``torch.bucketize``), which is slower but equally exact.

Counting is one ``bincount`` over ``row * (bins + 2) + bucket`` (two overflow
slots per row that are dropped), in chunks on the CPU, with the temporaries in
buffers reused from chunk to chunk (fresh large allocations cost more than the
arithmetic: every one is new pages to fault in).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lamina.engine.errors import InputError

__all__ = ["uniform_histogram", "histogram_edges"]

# Elements per bincount call on the CPU: bounds the reused buffers (~9 MB) and
# keeps the number of ops (each a parallel region) small. 2**18..2**19 measured
# best single-threaded; larger chunks cope better with oversubscribed cores.
_CPU_CHUNK = 1 << 19
# On accelerators one call per up to this many elements (memory bound only).
_DEVICE_CHUNK = 1 << 24


def histogram_edges(bins: int, lo: float, hi: float) -> Tensor:
    """The ``bins + 1`` float64 edges of the uniform bins on ``[lo, hi]``.

    >>> histogram_edges(4, -1.0, 1.0)
    tensor([-1.0000, -0.5000,  0.0000,  0.5000,  1.0000], dtype=torch.float64)

    Identical to ``np.linspace(lo, hi, bins + 1)`` (and to the edges
    ``np.histogram(..., range=(lo, hi))`` returns for float64 data), including
    NumPy's widening of an empty range ``lo == hi`` to ``[lo - 0.5, hi + 0.5]``.

    Returns:
        Tensor[bin + 1], float64, on the CPU.
    """
    bins, lo, hi = _check_range(bins, lo, hi)
    return _linspace64(bins, lo, hi)


def uniform_histogram(
    values: Tensor, *, bins: int, lo: float, hi: float, density: bool = False
) -> Tensor:
    """Counts of ``values`` in ``bins`` equal bins on ``[lo, hi]``, over the last axis.

    >>> import torch
    >>> uniform_histogram(torch.tensor([[0.0, 0.25, 1.0], [0.5, 0.5, float("nan")]]),
    ...                   bins=2, lo=0.0, hi=1.0)
    tensor([[2, 1],
            [0, 2]])

    Exactly ``np.histogram(row, bins=bins, range=(lo, hi))`` for each row (see the
    module docstring for the rule at the edges): values outside ``[lo, hi]`` and NaN
    are dropped, ``hi`` counts in the last bin.

    Args:
        values: Tensor[..., n], any real dtype (integers are binned as float64,
            as NumPy does). Leading axes are batch axes.
        bins: number of bins, >= 1.
        lo, hi: the range; ``lo == hi`` is widened to ``[lo - 0.5, hi + 0.5]``.
        density: if True, return ``counts / total / bin_width`` like NumPy's
            ``density=True`` (bin widths from the edges in the data's dtype).

    Returns:
        Tensor[..., bin]: int64 counts, or float64 densities (NaN for a row with
        no value in range, as in NumPy), on ``values.device``.
    """
    if not isinstance(values, Tensor):
        raise InputError(f"values must be a torch.Tensor, got {type(values).__name__}")
    if values.ndim == 0:
        raise InputError("values must have at least one axis (shape [..., n]), got a 0-d tensor")
    if values.is_complex():
        raise InputError(f"values must be real, got dtype {values.dtype}")
    counter = _Counter(values.dtype, bins=bins, lo=lo, hi=hi, device=values.device)
    lead = values.shape[:-1]
    rows = values.reshape(math.prod(lead), values.shape[-1])  # (row, n)
    counts = counter.count_rows(rows).reshape(*lead, counter.plan.bins)
    if not density:
        return counts
    widths = counter.plan.widths.to(values.device)  # (bin,) float64
    total = counts.sum(dim=-1, keepdim=True).to(torch.float64)
    return counts.to(torch.float64) / widths / total


# ---------------------------------------------------------------------------
# plan


@dataclass(frozen=True)
class _Plan:
    """Everything about one (dtype, bins, lo, hi) that does not depend on the data."""

    bins: int
    work_dtype: torch.dtype  # float32, or float64 for float64 / integer data
    thresholds: Tensor  # (bin + 1,) work dtype, CPU: edge[0..bins-1], nextafter(edge[-1])
    scale: float  # bins / (hi - lo)
    offset: float  # 1/2 - lo * scale
    fast: bool  # nearest-threshold arithmetic is provably safe
    widths: Tensor  # (bin,) float64, CPU: diff of the edges in the data's dtype


def _check_range(bins: int, lo: float, hi: float) -> tuple[int, float, float]:
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise InputError(f"bins must be a positive int, got {bins!r}")
    try:
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        raise InputError(f"lo and hi must be real numbers, got lo={lo!r}, hi={hi!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InputError(f"range [{lo}, {hi}] is not finite")
    if lo > hi:
        raise InputError(f"lo must not exceed hi, got lo={lo}, hi={hi}")
    if lo == hi:  # NumPy widens an empty range
        lo, hi = lo - 0.5, hi + 0.5
    return bins, lo, hi


def _linspace64(bins: int, lo: float, hi: float) -> Tensor:
    """np.linspace(lo, hi, bins + 1) in float64: arange * step + lo, last = hi."""
    step = (hi - lo) / bins
    edges = torch.arange(bins + 1, dtype=torch.float64) * step + lo
    edges[-1] = hi
    return edges


def _round_to(x: Tensor, dtype: torch.dtype) -> Tensor:
    """float64 -> ``dtype`` with one correct rounding (half to even), returned as float64.

    torch converts float64 to float16 / bfloat16 through float32, which can round
    twice; NumPy rounds once, so do it by hand for the narrow types.
    """
    if dtype in (torch.float64, torch.float32):
        return x.to(dtype).to(torch.float64)  # direct, correctly rounded
    fi = torch.finfo(dtype)
    _, exponent = torch.frexp(x)  # x = m * 2**e, 1/2 <= |m| < 1
    quantum = torch.ldexp(torch.ones_like(x), exponent - 1) * fi.eps  # ulp in dtype
    quantum = quantum.clamp_min(fi.tiny * fi.eps)  # subnormal spacing
    out = torch.round(x / quantum) * quantum
    return torch.where(out.abs() > fi.max, out.sign() * math.inf, out)


@functools.lru_cache(maxsize=64)
def _plan(dtype: torch.dtype, bins: int, lo: float, hi: float) -> _Plan:
    if dtype.is_floating_point:
        edge_dtype = dtype
        work = torch.float64 if dtype == torch.float64 else torch.float32
    else:  # bool / integers: NumPy bins them with float64 edges
        edge_dtype, work = torch.float64, torch.float64
    edges = _round_to(_linspace64(bins, lo, hi), edge_dtype)  # float64 holding dtype values
    if not torch.isfinite(edges).all():
        raise InputError(f"range [{lo}, {hi}] is not finite in {dtype}")
    if bool((edges[1:] <= edges[:-1]).any()):
        raise InputError(
            f"too many bins ({bins}) for the range [{lo}, {hi}] in {dtype}: "
            "neighbouring edges round to the same value; use fewer bins or a wider range"
        )
    widths = (edges[1:].to(edge_dtype) - edges[:-1].to(edge_dtype)).to(torch.float64)
    thresholds = edges.to(work)  # exact: work is at least as wide as edge_dtype
    thresholds[-1] = torch.nextafter(thresholds[-1], torch.tensor(math.inf, dtype=work))

    scale = bins / (hi - lo)
    offset = 0.5 - lo * scale
    # Is j = floor(x * scale + offset) within the right half bin? The thresholds
    # sit at positions j + dev_j (rounding of the edges, and the nextafter); the
    # arithmetic in the work dtype errs by a few ulp of the largest term.
    positions = (thresholds.to(torch.float64) - lo) * scale
    deviation = float((positions - torch.arange(bins + 1, dtype=torch.float64)).abs().max())
    reach = scale * (max(abs(lo), abs(hi)) + 1.0 / scale)
    arithmetic = 4.0 * torch.finfo(work).eps * (reach + abs(offset) + bins + 1.0)
    fast = deviation + arithmetic < 0.25
    return _Plan(bins, work, thresholds, scale, offset, fast, widths)


# ---------------------------------------------------------------------------
# counting


class _Counter:
    """Counts values into histograms with one plan on one device, reusing its buffers.

    Fresh temporaries per chunk cost more than the arithmetic on the CPU (every
    large allocation is new pages to fault in), so the chunk-sized buffers are
    made once per call and the elementwise steps write into them with ``out=``.

    >>> import torch
    >>> c = _Counter(torch.float32, bins=2, lo=0.0, hi=1.0, device=torch.device("cpu"))
    >>> c.add(torch.tensor([0.1, 0.9])); c.add(torch.tensor([[0.2, 2.0]]))
    >>> c.counts()
    tensor([2, 1])
    """

    def __init__(self, dtype: torch.dtype, *, bins: int, lo: float, hi: float, device: torch.device):
        self.plan = plan = _plan(dtype, *_check_range(bins, lo, hi))
        self.chunk = _CPU_CHUNK if device.type == "cpu" else _DEVICE_CHUNK
        self._thresholds = plan.thresholds.to(device)  # (bin + 1,) work dtype
        self._offset = torch.tensor(plan.offset, dtype=plan.work_dtype, device=device)
        self._device = device
        self._size = 0  # elements the buffers hold
        self._total = self.new_total()

    def _buffers(self, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Flat buffers of at least n elements: (x, u, j, threshold, above)."""
        if n > self._size:
            self._size = max(n, min(self.chunk, 2 * self._size))
            work, dev = self.plan.work_dtype, self._device
            self._x = torch.empty(self._size, dtype=work, device=dev)
            self._u = torch.empty(self._size, dtype=work, device=dev)
            self._j = torch.empty(self._size, dtype=torch.int32, device=dev)
            self._t = torch.empty(self._size, dtype=work, device=dev)
            self._above = torch.empty(self._size, dtype=torch.bool, device=dev)
        return self._x[:n], self._u[:n], self._j[:n], self._t[:n], self._above[:n]

    def _count_block(self, out: Tensor, x: Tensor) -> None:
        """Add the counts of the rows of x to out.

        Args:
            out: Tensor[row, bin + 2] int64 accumulator (slot 0 below / NaN, slot bins+1 above).
            x: Tensor[row, n], any real dtype.
        """
        plan = self.plan
        rows, n = x.shape
        xb, u, j, t, above = (b.view(rows, n) for b in self._buffers(rows * n))
        if x.dtype != plan.work_dtype or not x.is_contiguous():
            xb.copy_(x)
            x = xb
        if plan.fast:
            # Bucket = number of thresholds <= x = j + (x >= t_j), j the nearest threshold.
            torch.add(self._offset, x, alpha=plan.scale, out=u)  # x * bins/(hi-lo) + 1/2 - lo * ...
            u.clamp_(0.0, float(plan.bins)).nan_to_num_(0.0)  # NaN -> 0, where x >= t_0 is False
            j.copy_(u)  # truncation == floor on [0, bins]
            torch.index_select(self._thresholds, 0, j.view(-1), out=t.view(-1))
            torch.ge(x, t, out=above)
            j.add_(above.view(torch.int8))
        else:
            torch.bucketize(x, self._thresholds, right=True, out_int32=True, out=j)
            j.masked_fill_(torch.isnan(x), 0)
        width = plan.bins + 2
        if rows > 1:
            j.add_(torch.arange(0, rows * width, width, dtype=torch.int32, device=x.device)[:, None])
        out += torch.bincount(j.view(-1), minlength=rows * width).view(rows, width)

    def new_total(self) -> Tensor:
        """A zero accumulator for :meth:`add`: Tensor[1, bin + 2] int64 (two overflow slots)."""
        return torch.zeros(1, self.plan.bins + 2, dtype=torch.int64, device=self._device)

    def add(self, values: Tensor, total: Tensor | None = None) -> None:
        """Count every element of values (Tensor[...]) into ``total`` (default: the counter's own)."""
        total = self._total if total is None else total
        flat = values.reshape(1, -1)
        for a in range(0, flat.shape[1], self.chunk):
            self._count_block(total, flat[:, a : a + self.chunk])

    def counts(self, total: Tensor | None = None) -> Tensor:
        """A running total as Tensor[bin] int64 (default: the counter's own)."""
        return (self._total if total is None else total)[0, 1:-1]

    def count_rows(self, rows: Tensor) -> Tensor:
        """Histogram of each row separately: Tensor[row, n] -> Tensor[row, bin] int64."""
        n_rows, n = rows.shape
        width = self.plan.bins + 2
        if n_rows * width >= 2**31:
            raise InputError(f"{n_rows} rows x {self.plan.bins} bins is too many for one call; split the batch")
        out = torch.zeros(n_rows, width, dtype=torch.int64, device=rows.device)
        if n_rows and n:
            if n >= self.chunk:  # long rows: split each row along its values
                for i in range(n_rows):
                    for a in range(0, n, self.chunk):
                        self._count_block(out[i : i + 1], rows[i : i + 1, a : a + self.chunk])
            else:  # short rows: several whole rows per bincount
                step = max(1, self.chunk // n)
                for a in range(0, n_rows, step):
                    self._count_block(out[a : a + step], rows[a : a + step])
        return out[:, 1:-1]
