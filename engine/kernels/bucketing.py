"""The bucket of each value under NumPy's uniform-bin rule: the plan, and the arithmetic.

>>> import torch
>>> plan = _plan(torch.float32, 4, -1.0, 1.0)
>>> plan.fast, plan.arith
(True, (1, -2, 2))
>>> x = torch.tensor([-2.0, -1.0, -0.5, 0.25, 1.0, 1.5])
>>> v, t = torch.empty(6), torch.empty(6)
>>> bucket_codes(plan, x, v, t, nan=False).tolist()   # 0 below, 1..4 the bins, 5 above
[0, 1, 2, 3, 5, 5]

``1.0`` (= hi) comes out as 5 here: the arithmetic path puts a value equal to
``hi`` above the range, and the caller moves those (:func:`count_equal_hi`) into
the last bin. See :mod:`lamina.engine.kernels.histogram` for the rule itself.

The bucket of ``x`` is the number of thresholds ``t_0 = edge[0], ..., t_{bins-1} =
edge[bins-1], t_bins = nextafter(edge[-1])`` that are ``<= x`` (0 below the range
or NaN, ``bins + 1`` above). With ``j`` the nearest threshold to ``x`` (cheap,
inexact arithmetic cannot get it wrong by more than one) the bucket is
``j + (x >= t_j)``, one comparison against the exact threshold. Two ways to get
``t_j``:

* **arithmetic** (``plan.arith``): NumPy's edges in the data's dtype are the
  correctly rounded values of ``(A·j + B) / C`` for small integers A, B, C (e.g.
  ``(j - 50) / 50`` for 100 bins on [-1, 1]) whenever ``lo``, ``hi`` are short
  decimals; numerator and denominator are exact in float32 and IEEE division
  rounds correctly on every device, so ``t_j`` is recomputed exactly, elementwise.
  The plan checks every ``j`` against the stored thresholds once; if any differs,
  or the range is not a short decimal, the second way is used. The nearest ``j``
  comes from one fused multiply-add: ``v = x·S + (2**23 + offset)`` rounds to the
  integer ``2**23 + j`` (float32 spacing is 1 there), so after ``v += (x >= t_j)``
  the low 23 bits of ``v``'s bit pattern are the bucket: no float-to-int pass.
  Here ``t_bins = hi`` (not ``nextafter(hi)``), so exactly ``x == hi`` lands one
  bucket too high; :func:`count_equal_hi` counts those for the fix-up.
* **gather** (otherwise): ``t_j`` read from the threshold table with
  ``index_select`` (about 2x slower on a CPU).

If the rounding of edges and arithmetic is not provably far below half a bin
(``plan.fast`` False), the bucket comes from a binary search (``torch.bucketize``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor

from lamina.engine.errors import InputError

__all__ = ["bucket_codes", "clamp_free", "count_equal_hi"]


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
    lo: float = -math.inf  # edge[0] in the data's dtype
    hi: float = math.inf  # edge[-1] in the data's dtype (what "x == hi" compares with)
    arith: tuple[int, int, int] | None = None  # (A, B, C): t_j = (A j + B) / C exactly, j = 0..bins
    magic: float = 0.0  # 2**(mantissa bits) of the work dtype: v = magic + j has spacing 1
    magic_offset: float | None = None  # magic - lo * scale when exact in the work dtype, else None


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


def _mantissa_bits(dtype: torch.dtype) -> int:
    """Stored mantissa bits: 23 for float32, 52 for float64 (spacing 1 at 2**that)."""
    return round(-math.log2(torch.finfo(dtype).eps))


def _short_fraction(x: float) -> Fraction:
    """The shortest decimal that round-trips to x, as an exact fraction (-0.8 -> -4/5)."""
    return Fraction(repr(x))


def _arith_thresholds(
    work: torch.dtype, bins: int, lo: float, hi: float, expected: Tensor
) -> tuple[int, int, int] | None:
    """(A, B, C) with fl((A j + B) / C) == expected[j] for j = 0..bins in ``work``, or None.

    Evaluated with exactly the ops :func:`bucket_codes` runs (exact integer
    arithmetic, then one IEEE division), so equality here is equality there.

    Args:
        expected: (bin + 1,) float64: the edges in the data's dtype.
    """
    lo_f, hi_f = _short_fraction(lo), _short_fraction(hi)
    step = (hi_f - lo_f) / bins
    if step <= 0:
        return None
    c = math.lcm(lo_f.denominator, step.denominator)
    a, b = int(step * c), int(lo_f * c)
    exact = 2 ** (_mantissa_bits(work) - 1)  # integers this large stay exact, with margin
    if c >= exact or a * bins + abs(b) >= exact or bins >= exact // 4:
        return None
    magic = 2.0 ** _mantissa_bits(work)
    v = magic + torch.arange(bins + 1, dtype=work)  # what the runtime holds after rounding
    t = _threshold_from(v, (a, b, c), magic)
    return (a, b, c) if bool((t.to(torch.float64) == expected).all()) else None


def _threshold_from(v: Tensor, arith: tuple[int, int, int], magic: float, out: Tensor | None = None) -> Tensor:
    """t_j = (A j + B) / C from v = magic + j, exactly (every step but the division is exact)."""
    a, b, c = arith
    if a == 1:
        t = torch.sub(v, magic - b, out=out)  # j + B
    else:
        t = torch.sub(v, magic, out=out)  # j
        t.mul_(a).add_(b)  # A j + B, exact integers
    if c != 1:
        # A CPU scalar divisor would be turned into a multiplication by its reciprocal on CUDA
        # (not correctly rounded); a 0-d tensor on the data's device keeps IEEE division.
        t.div_(c if t.device.type == "cpu" else _const(float(c), t.dtype, t.device))
    return t


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
    thresholds = edges.to(work, copy=True)  # exact: work is at least as wide as edge_dtype
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
    # The arithmetic path: v = x * scale + (magic - lo * scale) rounds to magic + j in one
    # operation when that constant is exact in the work dtype, else in two (see bucket_codes).
    magic = 2.0 ** _mantissa_bits(work)
    shift = magic - lo * scale
    magic_offset = shift if float(torch.tensor(shift, dtype=work)) == shift else None
    arith = _arith_thresholds(work, bins, lo, hi, edges) if fast else None
    return _Plan(bins, work, thresholds, scale, offset, fast, widths, float(edges[0]), float(edges[-1]), arith, magic,
                 magic_offset)


# ---------------------------------------------------------------------------
# bucket codes


def bucket_codes(plan: _Plan, x: Tensor, v: Tensor, t: Tensor, *, nan: bool = True, clamp: bool = True) -> Tensor:
    """The bucket (0 .. bins + 1) of every value of x, computed in the buffers v and t.

    Args:
        plan: a plan with ``fast`` and ``arith`` (the arithmetic path).
        x: Tensor[...] in the plan's work dtype.
        v, t: Tensor[...] buffers of x's shape and dtype (v holds the result's bits).
        nan: x may hold NaN (costs a pass).
        clamp: x may lie more than 0.45 bin outside ``[lo, hi]`` (costs a pass; implied by
            ``nan``). Without it only values in that band and -inf are allowed (-inf gives 0).

    Returns:
        Tensor[...] int32 (int64 for float64 work), a view of v's bits; ``x == hi``
        gives ``bins + 1`` (see the module docstring).
    """
    magic, dt = plan.magic, x.dtype
    if plan.magic_offset is not None:  # magic + j, rounded in one step
        torch.add(_const(plan.magic_offset, dt), x, alpha=plan.scale, out=v)
    else:
        torch.add(_const(plan.offset - 0.5, dt), x, alpha=plan.scale, out=v)  # (x - lo) * scale
        v.add_(magic)
    if nan or clamp:
        v.clamp_(magic, magic + plan.bins)
    if nan:  # a NaN becomes j = 0, and NaN >= t_0 is False
        v.nan_to_num_(nan=magic)
    # (unclamped -inf stays -inf through all of this, and -inf's bits & mask are 0)
    _threshold_from(v, plan.arith, magic, out=t)  # t_j, exactly
    torch.ge(x, t, out=t)  # 1.0 where x >= t_j
    v.add_(t)  # magic + bucket, exact
    bits = v.view(torch.int32 if v.dtype == torch.float32 else torch.int64)
    return bits.bitwise_and_(int(magic) - 1)


def clamp_free(plan: _Plan, bound: float) -> bool:
    """Whether values with ``|x| <= bound`` (and -inf) need no clamp on the arithmetic path."""
    return (-bound - plan.lo) * plan.scale >= -0.45 and (bound - plan.hi) * plan.scale <= 0.45


@functools.lru_cache(maxsize=256)
def _const(value: float, dtype: torch.dtype, device: torch.device | None = None) -> Tensor:
    """A 0-d tensor (on the CPU unless a device is given: 0-d CPU tensors act as scalars anywhere)."""
    return torch.tensor(value, dtype=dtype, device=device)


def count_equal_hi(plan: _Plan, x: Tensor, *, check: bool) -> Tensor | None:
    """Per row of x (Tensor[row, n]), how many values equal hi (the arithmetic path's fix-up).

    With ``check`` (CPU, and x without NaN) first tests the maximum and returns None
    when no value can equal hi; without it (CUDA: no host synchronisation) always counts.

    Returns:
        Tensor[row] int64, or None.
    """
    if check and not bool(x.amax() >= plan.hi):
        return None
    return torch.eq(x, plan.hi).sum(dim=-1)
