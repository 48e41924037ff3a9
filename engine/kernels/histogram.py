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

import math

import torch
from torch import Tensor

from lamina.engine.errors import InputError
from lamina.engine.kernels.bucketing import (
    _check_range,
    _linspace64,
    _Plan,
    _plan,
    bucket_codes,
    clamp_free,
    count_equal_hi,
)

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
# counting


class _Buckets:
    """Bucket codes (0 .. bins + 1) of blocks of values under one plan, in reused buffers.

    Fresh temporaries per block cost more than the arithmetic on the CPU (every
    large allocation is new pages to fault in), so block-sized buffers are made
    once and every elementwise step writes into them with ``out=``.
    """

    def __init__(self, plan: _Plan, device: torch.device, chunk: int):
        self.plan = plan
        self.chunk = chunk
        self.arith = plan.fast and plan.arith is not None  # see lamina.engine.kernels.bucketing
        self._thresholds = plan.thresholds.to(device)  # (bin + 1,) work dtype
        self._offset = torch.tensor(plan.offset, dtype=plan.work_dtype, device=device)
        self._device = device
        self._size = 0  # elements the buffers hold

    def buffers(self, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Flat buffers of at least n elements: (x, v, t) in the work dtype, j int32."""
        if n > self._size:
            self._size = max(n, min(self.chunk, 2 * self._size))
            work, dev = self.plan.work_dtype, self._device
            self._x = torch.empty(self._size, dtype=work, device=dev)
            self._v = torch.empty(self._size, dtype=work, device=dev)
            self._t = torch.empty(self._size, dtype=work, device=dev)
            self._j = torch.empty(self._size, dtype=torch.int32, device=dev)
        return self._x[:n], self._v[:n], self._t[:n], self._j[:n]

    def codes(self, x: Tensor, *, finite: bool, clamp: bool = True) -> Tensor:
        """Tensor[...] work dtype, contiguous -> bucket codes of the same shape (int32, or int64
        for float64 work on the arithmetic path), a view of a buffer; valid until the next call.

        On the arithmetic path ``x == hi`` gives ``bins + 1`` (fix with :func:`count_equal_hi`).
        """
        plan = self.plan
        _, v, t, j = (b.view(x.shape) for b in self.buffers(x.numel()))
        if self.arith:
            return bucket_codes(plan, x, v, t, nan=not finite, clamp=clamp)
        if plan.fast:
            # Bucket = number of thresholds <= x = j + (x >= t_j), j the nearest threshold.
            torch.add(self._offset, x, alpha=plan.scale, out=v)  # x * bins/(hi-lo) + 1/2 - lo * ...
            v.clamp_(0.0, float(plan.bins))
            if not finite:
                v.nan_to_num_(0.0)  # NaN -> 0, where x >= t_0 is False
            j.copy_(v)  # truncation == floor on [0, bins]
            torch.index_select(self._thresholds, 0, j.view(-1), out=t.view(-1))
            torch.ge(x, t, out=t)
            v.copy_(j).add_(t)
            j.copy_(v)
        else:
            torch.bucketize(x, self._thresholds, right=True, out_int32=True, out=j)
            if not finite:
                j.masked_fill_(torch.isnan(x), 0)
        return j


class _Counter:
    """Counts values into histograms with one plan on one device, reusing its buffers.

    >>> import torch
    >>> c = _Counter(torch.float32, bins=2, lo=0.0, hi=1.0, device=torch.device("cpu"))
    >>> c.add(torch.tensor([0.1, 0.9])); c.add(torch.tensor([[0.2, 2.0]]))
    >>> c.counts()
    tensor([2, 1])
    """

    def __init__(self, dtype: torch.dtype, *, bins: int, lo: float, hi: float, device: torch.device):
        self.plan = plan = _plan(dtype, *_check_range(bins, lo, hi))
        self.chunk = _CPU_CHUNK if device.type == "cpu" else _DEVICE_CHUNK
        self._buckets = _Buckets(plan, device, self.chunk)
        self._device = device
        self._total = self.new_total()

    def _count_block(self, out: Tensor, x: Tensor) -> None:
        """Add the counts of the rows of x to out.

        Args:
            out: Tensor[row, bin + 2] int64 accumulator (slot 0 below / NaN, slot bins+1 above).
            x: Tensor[row, n], any real dtype.
        """
        plan = self.plan
        rows, n = x.shape
        if x.dtype != plan.work_dtype or not x.is_contiguous():
            xb = self._buckets.buffers(rows * n)[0].view(rows, n)
            xb.copy_(x)
            x = xb
        codes = self._buckets.codes(x, finite=False)
        width = plan.bins + 2
        # x == hi was coded above the range: count those, on a CPU only if some code is that high
        fix = self._buckets.arith and (x.device.type != "cpu" or int(codes.amax()) > plan.bins)
        if rows > 1:
            codes.add_(torch.arange(0, rows * width, width, dtype=codes.dtype, device=x.device)[:, None])
        out += torch.bincount(codes.view(-1), minlength=rows * width).view(rows, width)
        if fix:
            at_hi = count_equal_hi(plan, x, check=False)
            out[:, -2] += at_hi
            out[:, -1] -= at_hi

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


class PieceCounter:
    """Counts finite work-dtype values written into its own buffer, two values per bincount slot.

    For kernels that produce values piece by piece (a matrix product into
    :meth:`piece`) and count each piece while it is in cache, then read one
    histogram per group of pieces (:meth:`flush`). Not thread-safe: one per worker.

    >>> import torch
    >>> c = PieceCounter(torch.float32, bins=4, lo=-1.0, hi=1.0, device=torch.device("cpu"), defer_hi=False)
    >>> p = c.piece(2, 3)
    >>> _ = p.copy_(torch.tensor([[-1.0, -0.2, 0.3], [1.0, 1.5, 0.9]]))
    >>> c.count(p); c.flush()
    (tensor([1, 1, 1, 2]), tensor(1))

    The bincount runs over ``code_a * (bins + 2) + code_b`` for the two halves of each
    piece (half the scattered increments of one code per value); the marginals of that
    (bins + 2)² table are the counts.

    Values equal to ``hi``: on the arithmetic path (:mod:`~lamina.engine.kernels.bucketing`)
    they are coded above the range. With ``defer_hi=False`` every piece also counts them
    (one more pass; no host synchronisation, for accelerators) and :meth:`flush` puts them
    in the last bin. With ``defer_hi=True`` (:attr:`defers_hi` then tells whether it
    applies) nothing is done per piece: :meth:`flush` returns them among the values above
    the range, and a caller that finds that count non-zero recounts its pieces with
    :meth:`count_hi` (values equal to hi are rare: a cosine of exactly 1).
    """

    def __init__(self, dtype: torch.dtype, *, bins: int, lo: float, hi: float, device: torch.device,
                 chunk: int = 1 << 17, bound: float | None = None, defer_hi: bool = True):
        """
        Args:
            dtype: the values' dtype (float32, or float64).
            bins, lo, hi: the uniform bins.
            device: where the values are.
            chunk: the largest piece (elements).
            bound: optional: every value counted satisfies ``|x| <= bound`` or is -inf (saves a pass).
            defer_hi: see the class docstring.
        """
        self.plan = plan = _plan(dtype, *_check_range(bins, lo, hi))
        self._buckets = _Buckets(plan, device, chunk + 1)
        x, v, t, _ = self._buckets.buffers(chunk + 1)  # allocated once
        self._x, self._v, self._t = x, v, t
        self._device = device
        self._width = w = plan.bins + 2
        self._pairs = torch.zeros(w * w, dtype=torch.int64, device=device)
        self._pair_codes = torch.empty(chunk // 2 + 1, dtype=torch.int32 if plan.work_dtype == torch.float32
                                       else torch.int64, device=device)
        self._arith = self._buckets.arith
        self._clamp = bound is None or not clamp_free(plan, bound)
        self.defers_hi = self._arith and defer_hi
        self._at_hi: Tensor | int = 0

    def piece(self, rows: int, cols: int) -> Tensor:
        """Tensor[rows, cols] of the work dtype to write a piece into (a view of the buffer)."""
        return self._x[: rows * cols].view(rows, cols)

    def count(self, piece: Tensor, *, drop: Tensor | None = None) -> None:
        """Count the values of a piece from :meth:`piece` (finite, or -inf where not to count).

        Args:
            piece: Tensor[rows, cols] returned by :meth:`piece`, filled.
            drop: optional Tensor[rows, k] bool, k <= cols: entries of the first k columns
                not to count (set to -inf, which counts below the range).
        """
        if drop is not None:
            piece[:, : drop.shape[1]].masked_fill_(drop, -math.inf)
        n = piece.numel()
        if n & 1:
            self._x[n] = -math.inf  # pad to an even count: one more value below the range
            n += 1
        x = self._x[:n]
        if self._arith:
            codes = bucket_codes(self.plan, x, self._v[:n], self._t[:n], nan=False, clamp=self._clamp)
        else:
            codes = self._buckets.codes(x, finite=True)
        h = n // 2
        pair = torch.add(codes[h:], codes[:h], alpha=self._width, out=self._pair_codes[:h])
        self._pairs += torch.bincount(pair, minlength=self._width**2)
        if self._arith and not self.defers_hi:
            self._at_hi = self._at_hi + torch.eq(x, self.plan.hi).sum()

    def count_hi(self, piece: Tensor, *, drop: Tensor | None = None) -> Tensor:
        """How many values of a filled piece equal hi (Tensor[] int64), masked like :meth:`count`."""
        if drop is not None:
            piece[:, : drop.shape[1]].masked_fill_(drop, -math.inf)
        return torch.eq(piece, self.plan.hi).sum()

    def flush(self) -> tuple[Tensor, Tensor]:
        """(counts Tensor[bin] int64, above Tensor[] int64) since the last flush; resets them.

        ``above`` counts the values above the range; if :attr:`defers_hi`, the values equal
        to hi are among them and not yet in the last bin.
        """
        table = self._pairs.view(self._width, self._width)
        counts = table.sum(0) + table.sum(1)  # (bin + 2,) codes of the second and first halves
        counts[-2] += self._at_hi
        counts[-1] -= self._at_hi
        self._pairs.zero_()
        self._at_hi = 0
        return counts[1:-1], counts[-1]
