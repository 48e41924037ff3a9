"""Per-neuron Pearson and partial correlation with a token-level variable (docs/analyses.md, length).

>>> import torch
>>> acts = torch.randn(2, 100, 8)            # (layer, token, neuron)
>>> length = torch.randint(1, 9, (100,))     # (token,)
>>> pearson_with_vector(acts, length).shape  # (layer, neuron)
torch.Size([2, 8])

Three entry points share one formula:

* :func:`pearson_with_vector` -- r of every neuron with one vector, in one pass.
* :func:`partial_correlation` -- r of every neuron with ``x`` controlling for ``z``.
* :class:`StreamingPearson` -- the same two numbers over a corpus of any length in
  constant memory: chunks are merged with the pairwise update of Chan, Golub &
  LeVeque (1979), which keeps means and *centred* second moments (never raw
  sums of squares), so an offset of 1e4 on activations costs no precision.

Within a chunk (one read of the activations, in cache-sized blocks; see :func:`_moments`):

* the batch functions, and :meth:`StreamingPearson.update` with ``exact=True`` or float64
  activations, compute every product and sum in float64: r equals the float64 formula to ~1e-12;
* :meth:`StreamingPearson.update` of float32 activations on a CPU (the length analysis) keeps
  them float32, shifted near each neuron's mean, sums ~block-length runs in float32 and merges
  them in float64: r within 1e-6 of the float64 formula, at a few float32 reads' cost. Neurons
  that cannot meet that (a mean far from the first block's, variance near float32 underflow,
  non-finite values) are redone in float64 automatically.

A neuron that is constant over the tokens has no defined correlation: it gets NaN
(quietly, no warning), and :attr:`StreamingPearson.n_constant` counts them. The
test for "constant" is exact (``min == max`` over the tokens), not a variance
threshold, so it does not depend on rounding in the mean.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from lamina.engine.errors import InputError
from lamina.engine.kernels.workers import cpu_workers, run_tasks

__all__ = ["pearson_with_vector", "partial_correlation", "StreamingPearson"]

_FLOATS = (torch.float32, torch.float64)


# --------------------------------------------------------------------------- helpers


def _check(acts: Tensor, x: Tensor, z: Tensor | None, what: str) -> None:
    """Raise InputError unless acts is (..., token, neuron) and x, z are (token,)."""
    if acts.ndim < 2:
        raise InputError(
            f"{what}: acts must be (..., token, neuron); got shape {tuple(acts.shape)}"
        )
    n_tok = acts.shape[-2]
    for name, v in (("x", x), ("z", z)):
        if v is None:
            continue
        if v.ndim != 1 or v.shape[0] != n_tok:
            raise InputError(
                f"{what}: {name} must be (token,) with token = {n_tok} to match acts "
                f"{tuple(acts.shape)} (..., token, neuron); got {name} shape {tuple(v.shape)}"
            )


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in _FLOATS:
        raise InputError(f"dtype must be torch.float32 or torch.float64; got {dtype}")


# Elements (token x neuron) of one block of the moment pass on a CPU: 2**18 float64 are
# 2 MB, the cores' L2 caches. Accelerators take all neurons and as many tokens as 2**24
# elements allow (two float64 buffers of 128 MB).
_CPU_BLOCK = 1 << 18
_DEVICE_BLOCK = 1 << 24


# A neuron whose sum of squares exceeds this many times its centred second moment (|mean| >
# ~30 std) loses too many digits to cancellation in unshifted float64 sums: it is recomputed
# with every value shifted by its first one (bounds the relative error of M2 near 1e-12).
_SHIFT_ABOVE = 1e3

# The float32 pass (:func:`_sums32`) keeps a neuron when its shifted sum of squares is at most
# this many times its centred M2 (the shift, the mean of the update's first block, is within
# ~1.7 standard deviations of the mean) and its variance is far above float32's underflow;
# any other neuron (and any non-finite sum) is redone by the float64 pass. The float32 sums
# then err by ~eps32 * sqrt(block tokens) * _AMPLIFY_32 relative: r within ~1e-6 of float64.
_AMPLIFY_32 = 4.0
_TINY_32 = 1e-30  # M2 / token below this: squares of the deviations are near float32 underflow
_MIN_TASKS = 8  # (leading index, neuron range) tasks of the float32 pass, at least
_MAX_STEP_32 = 48  # tokens per float32 sum, at most: each sum errs by ~eps32 * sqrt(tokens) / 2 relative


def _moments(acts: Tensor, x: Tensor, z: Tensor | None, dtype: torch.dtype, *, fast: bool = False
             ) -> dict[str, Tensor]:
    """Count, means, centred second moments and extremes of one block of tokens.

    One read of the activations, in blocks of (tokens x neurons) that fit a core's cache.

    * ``fast`` (float32, bfloat16 or float16 activations on a CPU; see :func:`_sums32`): each
      block stays float32, shifted by a per-neuron value near its mean, and its sums are
      accumulated in float32 per block and merged in float64; neurons where that cannot hold
      r to ~1e-6 of the float64 formula (the shift far from the mean next to the spread,
      variance near float32 underflow, non-finite sums) are redone by the float64 pass.
    * otherwise (:func:`_block_sums`): each block is converted to ``dtype`` (float64), then ONE
      matrix product adds its sums against [1, x_c, z_c] and one fused multiply-add its
      squares to running (token x neuron) sums; min and max are folded in per block. The
      neurons whose mean is large next to their spread (sum of squares > ``_SHIFT_ABOVE`` x M2:
      float64 sums would cancel) are done again with every value shifted by the neuron's first
      one, so the sums are small and no precision is lost.

    Each (leading index, neuron range) is done over its tokens in order, so the result does
    not depend on the number of threads.

    Args:
        acts: (..., token, neuron).
        x, z: (token,).
        dtype: the float64 (or float32) arithmetic of the exact pass.
        fast: use the float32 pass where it applies (float activations on a CPU).
    Returns:
        dict of tensors: ``count`` (), ``mean_act``/``m2_act``/``min_act``/``max_act``
        (..., neuron), ``mean_x``/``m2_x``/``min_x``/``max_x`` (), ``c_ax`` (..., neuron),
        and when z is given the same for z plus ``c_az`` (..., neuron) and ``c_xz`` ().
    """
    lead, n_tok, n_neu = acts.shape[:-2], acts.shape[-2], acts.shape[-1]
    a = acts.reshape(-1, n_tok, n_neu)  # (batch, token, neuron): a view for the usual layouts
    dev = a.device
    cols, vals = [torch.ones(n_tok, dtype=dtype, device=dev)], {}
    for name, v in (("x", x), ("z", z)):
        if v is None:
            continue
        v = v.to(dtype)  # (token,)
        vals[name] = (v, v.mean(), v - v.mean())
        cols.append(vals[name][2])
    w = torch.stack(cols)  # (k, token)
    fast = fast and dev.type == "cpu" and a.dtype in (torch.float32, torch.bfloat16, torch.float16) \
        and dtype == torch.float64
    lo = torch.empty(a.shape[0], n_neu, dtype=a.dtype, device=dev)
    hi = torch.empty(a.shape[0], n_neu, dtype=a.dtype, device=dev)
    if fast:
        w32 = w.to(torch.float32)  # (k, token): the weights the float32 sums use
        shift, sums, ssq = _sums32(a, w32, lo, hi)
        wsum = w32.to(torch.float64).sum(1)  # (k,) the sums of those weights
        s1 = sums[:, 0, :]
        m2 = ssq - s1 * s1 / n_tok
        ok = (ssq <= _AMPLIFY_32 * m2) & (m2 >= _TINY_32 * n_tok) & torch.isfinite(ssq) & torch.isfinite(sums).all(1)
        redo = ~(ok | (lo == hi))  # a constant neuron is exact already (d = 0 when the shift is its value)
    else:
        shift = torch.zeros(a.shape[0], n_neu, dtype=dtype, device=dev)  # (batch, neuron): 0, or the first value
        sums = torch.zeros(a.shape[0], len(cols), n_neu, dtype=dtype, device=dev)  # (batch, k, neuron)
        ssq = torch.empty(a.shape[0], n_neu, dtype=dtype, device=dev)
        _block_sums(a, w, sums, ssq, (lo, hi), None)
        wsum = w.sum(1)
        s1 = sums[:, 0, :]  # (batch, neuron)
        m2 = ssq - s1 * s1 / n_tok
        redo = ~(ssq <= _SHIFT_ABOVE * m2)  # also m2 <= 0 (constant, or cancelled to nothing) and NaN
    # centred co-moments sum((a - mean_a) * w_i) = sum(d * w_i) - (sum(d) / n) * sum(w_i), d = a - shift
    cross = sums[:, 1:, :] - (s1 / n_tok).unsqueeze(1) * wsum[1:, None]  # (batch, k - 1, neuron)

    # again, in float64, shifted by their first value: neurons with a large mean next to their
    # spread (float64 pass), or that the float32 pass cannot hold to its tolerance
    if bool(redo.any()):
        for b in torch.nonzero(redo.any(1)).flatten().tolist():
            idx = torch.nonzero(redo[b]).flatten()
            part = a[b].index_select(1, idx).unsqueeze(0)  # (1, token, k) the input dtype
            out_sums = torch.zeros(1, len(cols), idx.numel(), dtype=dtype, device=dev)
            out_ssq = torch.empty(1, idx.numel(), dtype=dtype, device=dev)
            first = part[:, 0, :].to(dtype)  # (1, k) exact
            _block_sums(part, w, out_sums, out_ssq, None, first)
            o1 = out_sums[0, 0]
            s1[b, idx], ssq[b, idx], shift[b, idx] = o1, out_ssq[0], first[0]
            cross[b, :, idx] = out_sums[0, 1:] - (o1 / n_tok) * w[1:].sum(1, keepdim=True)
    st: dict[str, Tensor] = {
        "count": torch.tensor(n_tok, dtype=torch.int64, device=dev),
        "mean_act": (shift + s1 / n_tok).reshape(*lead, n_neu),
        "m2_act": (ssq - s1 * s1 / n_tok).clamp_min(0).reshape(*lead, n_neu),
        "min_act": lo.to(dtype).reshape(*lead, n_neu),
        "max_act": hi.to(dtype).reshape(*lead, n_neu),
    }
    for i, (name, (v, mv, vc)) in enumerate(vals.items(), start=1):
        st[f"mean_{name}"] = mv
        st[f"m2_{name}"] = vc.square().sum()
        st[f"min_{name}"] = v.amin()
        st[f"max_{name}"] = v.amax()
        st[f"c_a{name}"] = cross[:, i - 1, :].reshape(*lead, n_neu)
    if z is not None:
        st["c_xz"] = (vals["x"][2] * vals["z"][2]).sum()
    return st


def _sums32(a: Tensor, w: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Shifted float32 sums of every neuron, merged in float64: the fast moment pass on a CPU.

    Per (leading index, neuron range), a task on a single-threaded worker
    (:func:`~lamina.engine.kernels.workers.run_tasks`) walks its tokens in blocks of about
    ``_CPU_BLOCK / 2`` elements (a core's cache): the shift ``s`` is the float32 mean of the
    first block (near the mean, so the sums below barely cancel); per block ``d = a - s`` in
    float32, ONE product ``w @ d`` gives sum(d · w_k) for [1, x_c, z_c], the block's min and max
    are kept (reduced once at the end), ``d`` is squared in place and summed; the block's float32
    sums are added to float64 totals. At most ``_MAX_STEP_32`` terms are summed in float32.

    Args:
        a: (batch, token, neuron) float32 (bfloat16 / float16: converted per block).
        w: (k, token) float32 weights, row 0 all ones.
        lo, hi: (batch, neuron) in a's dtype, filled with the min and max.
    Returns:
        shift (batch, neuron) float64 (exact float32 values), sums (batch, k, neuron) float64
        sum(d · w_k), ssq (batch, neuron) float64 sum(d²).
    """
    n_batch, n_tok, n_neu = a.shape
    k = w.shape[0]
    # Ranges and blocks depend on the shape alone (never on the thread count), so the sums do
    # not either: whole rows when they fit (contiguous reads), and at least _MIN_TASKS ranges
    # so that every worker has some when there are few layers.
    width = min(n_neu, max(1, _CPU_BLOCK // 32), max(1, -(-n_neu // -(-_MIN_TASKS // n_batch))))
    step = max(1, min(n_tok, _MAX_STEP_32, (_CPU_BLOCK // 2) // width))  # tokens per block
    shift32 = torch.empty(n_batch, n_neu, dtype=torch.float32)
    acc = torch.zeros(n_batch, k + 1, n_neu, dtype=torch.float64)  # sum(d · w_k), then sum(d²)
    items = [(b, c0, min(n_neu, c0 + width)) for b in range(n_batch) for c0 in range(0, n_neu, width)]

    def task(buf: tuple[Tensor, Tensor, Tensor], item: tuple[int, int, int]) -> None:
        b, c0, c1 = item
        cw = c1 - c0
        d_all = buf[0][: step * cw].view(step, cw)
        part = buf[1][: (k + 1) * cw].view(k + 1, cw)  # this block's float32 sums
        ext = buf[2][: 2 * n_blocks * cw].view(2, n_blocks, cw)  # every block's min and max
        s = shift32[b, c0:c1]
        first = a[b, : min(step, n_tok), c0:c1]
        torch.mean(first if first.dtype == torch.float32 else first.float(), 0, out=s)
        total = acc[b, :, c0:c1]
        for q, t0 in enumerate(range(0, n_tok, step)):
            t1 = min(t0 + step, n_tok)
            block = a[b, t0:t1, c0:c1]  # (block token, width)
            d = d_all[: t1 - t0]
            torch.sub(block, s, out=d)
            torch.amin(block, 0, out=ext[0, q])
            torch.amax(block, 0, out=ext[1, q])
            torch.mm(w[:, t0:t1], d, out=part[:k])
            torch.sum(d.square_(), 0, out=part[k])
            total.add_(part)
        torch.amin(ext[0], 0, out=lo[b, c0:c1])
        torch.amax(ext[1], 0, out=hi[b, c0:c1])

    size, n_blocks = step * width, -(-n_tok // step)
    run_tasks(task, items, [(torch.empty(size), torch.empty((k + 1) * width),
                             torch.empty(2 * n_blocks * width, dtype=a.dtype)) for _ in range(cpu_workers(a.device))])
    return shift32.to(torch.float64), acc[:, :k], acc[:, k]


def _block_sums(a: Tensor, w: Tensor, sums: Tensor, ssq: Tensor, extremes: tuple[Tensor, Tensor] | None,
                shift: Tensor | None) -> None:
    """Fill ``sums`` (batch, k, neuron) += w @ d, ``ssq`` (batch, neuron) = sum d², d = a - shift.

    Blocks of (tokens x neurons) of about ``_CPU_BLOCK`` elements on a CPU, each op of a
    block spread over torch's threads: here every op is long enough (tens of microseconds)
    that intra-op threads beat single-threaded workers, whose Python calls would contend
    for the interpreter lock (measured 42 vs 52 ms for 12 x 2048 x 3072 on 2 cores).

    Args:
        a: (batch, token, neuron) any float dtype; w: (k, token) the work dtype.
        extremes: (min, max) (batch, neuron) in a's dtype to fill, or None.
        shift: (batch, neuron) in the work dtype, or None (no shift).
    """
    n_batch, n_tok, n_neu = a.shape
    dtype, dev = w.dtype, a.device
    if dev.type == "cpu":
        width = min(n_neu, _CPU_BLOCK // 16)  # whole rows when they fit: contiguous reads
        step = max(1, min(n_tok, _CPU_BLOCK // width))  # tokens per block
    else:
        width, step = n_neu, max(1, min(n_tok, _DEVICE_BLOCK // max(n_neu, 1)))
    d_buf = torch.empty(step * width, dtype=dtype, device=dev)
    sq_buf = torch.empty(step * width, dtype=dtype, device=dev)
    for b in range(n_batch):
        for c0 in range(0, n_neu, width):
            c1 = min(c0 + width, n_neu)
            acc = sums[b, :, c0:c1]  # (k, width)
            s = None if shift is None else shift[b, c0:c1]  # (width,)
            sq = sq_buf[: step * (c1 - c0)].view(step, c1 - c0)
            for t0 in range(0, n_tok, step):
                t1 = min(t0 + step, n_tok)
                block = a[b, t0:t1, c0:c1]  # (k_tok, width), the input dtype
                d = d_buf[: (t1 - t0) * (c1 - c0)].view(t1 - t0, c1 - c0)
                d.copy_(block)  # in ``dtype``
                if s is not None:
                    d.sub_(s)
                torch.addmm(acc, w[:, t0:t1], d, out=acc)  # sum(d), sum(d * x_c), sum(d * z_c)
                if t0 == 0:
                    torch.mul(d, d, out=sq[: t1 - t0])
                else:
                    sq[: t1 - t0].addcmul_(d, d)
                if extremes is not None:
                    mn, mx = extremes[0][b, c0:c1], extremes[1][b, c0:c1]
                    if t0 == 0:
                        torch.amin(block, 0, out=mn)
                        torch.amax(block, 0, out=mx)
                    else:
                        torch.minimum(mn, block.amin(0), out=mn)
                        torch.maximum(mx, block.amax(0), out=mx)
            torch.sum(sq[: min(step, n_tok)], 0, out=ssq[b, c0:c1])


def _pearson(c_ay: Tensor, m2_a: Tensor, m2_y: Tensor, const_a: Tensor, const_y: Tensor) -> Tensor:
    """r = C_ay / sqrt(M2_a M2_y) -- identical to sum(z_a z_y) / (N - 1) with ddof=1 z-scores.

    NaN where either side is constant (exact test passed in as const_*).
    """
    r = c_ay / torch.sqrt(m2_a * m2_y)
    bad = const_a | const_y
    return torch.where(bad, torch.full_like(r, float("nan")), r)


def _partial(r_ax: Tensor, r_az: Tensor, r_xz: Tensor) -> Tensor:
    """(r_ax - r_az r_xz) / sqrt((1 - r_az^2)(1 - r_xz^2)); NaN where a denominator is 0."""
    den = ((1 - r_az.square()).clamp_min(0) * (1 - r_xz.square()).clamp_min(0)).sqrt()
    out = (r_ax - r_az * r_xz) / den
    return torch.where(den > 0, out, torch.full_like(out, float("nan")))


def _finish(st: dict[str, Tensor], partial: bool) -> Tensor:
    """Correlation (or partial correlation) from a moments dict."""
    const_a = st["min_act"] == st["max_act"]
    const_x = st["min_x"] == st["max_x"]
    r_ax = _pearson(st["c_ax"], st["m2_act"], st["m2_x"], const_a, const_x)
    if not partial:
        return r_ax
    const_z = st["min_z"] == st["max_z"]
    r_az = _pearson(st["c_az"], st["m2_act"], st["m2_z"], const_a, const_z)
    r_xz = _pearson(st["c_xz"], st["m2_x"], st["m2_z"], const_x, const_z)
    return _partial(r_ax, r_az, r_xz)


# --------------------------------------------------------------------------- batch


def pearson_with_vector(acts: Tensor, v: Tensor, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """Pearson r of every neuron's activation with one token-level vector.

    >>> acts = torch.tensor([[1., 2.], [2., 2.], [3., 2.]])  # (token=3, neuron=2)
    >>> pearson_with_vector(acts, torch.tensor([1., 2., 4.]))
    tensor([0.9820,    nan], dtype=torch.float64)

    Exactly docs/analyses.md (length): z-scores with ddof=1 and r = sum(z_v * z_act) / (N - 1),
    computed as C / sqrt(M2_act M2_v) on centred values (the same number).

    Args:
        acts: (..., token, neuron) activations, any float dtype (e.g. (layer, token, neuron)).
        v: (token,) the variable, e.g. token length in characters (ints are fine).
        dtype: float64 (default) or float32 for the arithmetic. The whole input is
            converted at once; for corpora that do not fit use :class:`StreamingPearson`.

    Returns:
        (..., neuron) r in ``dtype``; NaN for constant neurons (or everywhere if v is constant).

    Raises:
        InputError: shapes that do not match, fewer than 2 tokens, or a non-float dtype.
    """
    _check_dtype(dtype)
    _check(acts, v, None, "pearson_with_vector")
    if acts.shape[-2] < 2:
        raise InputError(f"pearson_with_vector needs at least 2 tokens; acts {tuple(acts.shape)}")
    return _finish(_moments(acts, v, None, dtype), partial=False)


def partial_correlation(
    acts: Tensor, x: Tensor, z: Tensor, *, dtype: torch.dtype = torch.float64
) -> Tensor:
    """Partial r of every neuron with ``x`` controlling for ``z``.

    >>> g = torch.Generator().manual_seed(0)
    >>> z = torch.randn(500, generator=g); x = z + torch.randn(500, generator=g)
    >>> acts = (2 * z).unsqueeze(-1) + 0.1 * torch.randn(500, 3, generator=g)  # (token, neuron)
    >>> partial_correlation(acts, x, z).abs().max() < 0.2   # x adds nothing once z is known
    tensor(True)

    r_ax.z = (r_ax - r_az r_xz) / sqrt((1 - r_az^2)(1 - r_xz^2)), which equals the Pearson r
    of the residuals of acts and x after a least-squares fit on [1, z].

    Args:
        acts: (..., token, neuron).
        x: (token,) e.g. token length.
        z: (token,) the control, e.g. log unigram frequency.
        dtype: float64 (default) or float32.

    Returns:
        (..., neuron); NaN where a neuron or x or z is constant, or |r_az| or |r_xz| is 1.
    """
    _check_dtype(dtype)
    _check(acts, x, z, "partial_correlation")
    if acts.shape[-2] < 2:
        raise InputError(f"partial_correlation needs at least 2 tokens; acts {tuple(acts.shape)}")
    return _finish(_moments(acts, x, z, dtype), partial=True)


# --------------------------------------------------------------------------- streaming


@dataclass
class StreamingPearson:
    """Running Pearson / partial correlation in memory independent of the number of tokens.

    >>> sp = StreamingPearson()
    >>> acts = torch.randn(2, 1000, 4)          # (layer, token, neuron)
    >>> x = torch.randn(1000)                   # (token,)
    >>> for s in range(0, 1000, 300):
    ...     _ = sp.update(acts[:, s:s + 300], x[s:s + 300])
    >>> torch.allclose(sp.correlation(), pearson_with_vector(acts, x))
    True

    State is float64 on the device of the first chunk: count, means, centred second
    moments ``M2`` and co-moments ``C`` (Chan et al. pairwise merge), and running min/max
    (to flag constant neurons exactly). All fields are None before the first update.

    To checkpoint, save :meth:`state_dict` (a dict of tensors) and rebuild with
    :meth:`from_state_dict`. Across processes, gather every rank's state dict and fold
    them with :meth:`merge` (the merge is not a plain sum, so a sum all-reduce of the
    raw fields would be wrong).

    Fields (shapes): count (); mean_act, m2_act, min_act, max_act, c_ax, c_az
    (..., neuron); mean_x, m2_x, min_x, max_x, mean_z, m2_z, min_z, max_z, c_xz ().
    """

    n: Tensor | None = None
    mean_act: Tensor | None = None
    m2_act: Tensor | None = None
    min_act: Tensor | None = None
    max_act: Tensor | None = None
    mean_x: Tensor | None = None
    m2_x: Tensor | None = None
    min_x: Tensor | None = None
    max_x: Tensor | None = None
    c_ax: Tensor | None = None
    mean_z: Tensor | None = None
    m2_z: Tensor | None = None
    min_z: Tensor | None = None
    max_z: Tensor | None = None
    c_az: Tensor | None = None
    c_xz: Tensor | None = None

    # ---- read-only views

    @property
    def count(self) -> int:
        """Tokens seen so far."""
        return 0 if self.n is None else int(self.n)

    @property
    def has_z(self) -> bool:
        """Whether a control variable z is being tracked (fixed by the first update)."""
        return self.mean_z is not None

    @property
    def constant_mask(self) -> Tensor:
        """(..., neuron) bool: neurons whose activation has been the same on every token."""
        self._need(1, "constant_mask")
        return self.min_act == self.max_act

    @property
    def n_constant(self) -> int:
        """Number of constant neurons (their correlation is NaN), over all leading dims."""
        return int(self.constant_mask.sum())

    # ---- updating

    def update(self, acts: Tensor, x: Tensor, z: Tensor | None = None, *, exact: bool = False) -> StreamingPearson:
        """Fold in one chunk of tokens; returns self.

        Args:
            acts: (..., token, neuron); the leading dims and neuron must be the same for every
                chunk. A chunk of 0 tokens is a no-op.
            x: (token,).
            z: (token,) or None; must be given on every update or on none.
            exact: float64 arithmetic throughout (r equal to the float64 batch formula to
                ~1e-12). By default float32 activations on a CPU take the float32 pass
                (r within 1e-6 of it, several times faster); float64 activations and other
                devices always take the float64 pass.
        """
        _check(acts, x, z, "StreamingPearson.update")
        if self.n is not None and (z is not None) != self.has_z:
            raise InputError(
                "StreamingPearson.update: z was "
                + ("given before but not now" if self.has_z else "not given before but is now")
                + "; pass z on every chunk or on none"
            )
        if self.n is not None and acts.shape[:-2] + acts.shape[-1:] != self.mean_act.shape:
            raise InputError(
                f"StreamingPearson.update: acts {tuple(acts.shape)} (..., token, neuron) does not "
                f"match the running state (..., neuron) = {tuple(self.mean_act.shape)}"
            )
        if acts.shape[-2] == 0:
            return self
        self._combine(_moments(acts, x, z, torch.float64, fast=not exact))
        return self

    def merge(self, other: StreamingPearson) -> StreamingPearson:
        """Fold another stream's state into this one (as if its tokens had been appended); returns self."""
        if other.n is None or other.count == 0:
            return self
        if self.n is not None and self.count > 0:
            if other.mean_act.shape != self.mean_act.shape:
                raise InputError(
                    f"StreamingPearson.merge: states of shape (..., neuron) = {tuple(self.mean_act.shape)} "
                    f"and {tuple(other.mean_act.shape)} cannot be merged"
                )
            if other.has_z != self.has_z:
                raise InputError("StreamingPearson.merge: one state tracks z and the other does not")
        self._combine(other.state_dict())
        return self

    def _combine(self, b: dict[str, Tensor]) -> None:
        """Chan et al. pairwise update of self (a) with moments b, written into self."""
        if self.n is None or self.count == 0:
            for k, v in b.items():
                setattr(self, "n" if k == "count" else k, v)
            return
        na = self.n.to(torch.float64)
        nb = b["count"].to(torch.float64)
        n = na + nb
        wb = nb / n  # weight of b in the mean
        f = na * nb / n  # cross-term factor of the co-moments
        new: dict[str, Any] = {"n": self.n + b["count"]}
        deltas = {}
        names = ["act", "x"] + (["z"] if self.has_z else [])
        for name in names:
            d = b[f"mean_{name}"] - getattr(self, f"mean_{name}")
            deltas[name] = d
            new[f"mean_{name}"] = getattr(self, f"mean_{name}") + d * wb
            new[f"m2_{name}"] = getattr(self, f"m2_{name}") + b[f"m2_{name}"] + d.square() * f
            new[f"min_{name}"] = torch.minimum(getattr(self, f"min_{name}"), b[f"min_{name}"])
            new[f"max_{name}"] = torch.maximum(getattr(self, f"max_{name}"), b[f"max_{name}"])
        new["c_ax"] = self.c_ax + b["c_ax"] + deltas["act"] * deltas["x"] * f
        if self.has_z:
            new["c_az"] = self.c_az + b["c_az"] + deltas["act"] * deltas["z"] * f
            new["c_xz"] = self.c_xz + b["c_xz"] + deltas["x"] * deltas["z"] * f
        for k, v in new.items():
            setattr(self, k, v)

    # ---- results

    def _need(self, tokens: int, what: str) -> None:
        if self.count < tokens:
            raise InputError(
                f"StreamingPearson.{what} needs at least {tokens} token(s); {self.count} seen so far"
            )

    def correlation(self) -> Tensor:
        """(..., neuron) float64 Pearson r of each neuron with x over all tokens seen."""
        self._need(2, "correlation")
        return _finish(self.state_dict(), partial=False)

    def partial_correlation(self) -> Tensor:
        """(..., neuron) float64 partial r of each neuron with x controlling for z."""
        self._need(2, "partial_correlation")
        if not self.has_z:
            raise InputError(
                "StreamingPearson.partial_correlation needs z: pass z to every update() call"
            )
        return _finish(self.state_dict(), partial=True)

    # ---- checkpointing

    def state_dict(self) -> dict[str, Tensor]:
        """The running state as a dict of tensors (key ``count`` for the token count)."""
        out: dict[str, Tensor] = {}
        for fld in fields(self):
            v = getattr(self, fld.name)
            if v is not None:
                out["count" if fld.name == "n" else fld.name] = v
        return out

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> StreamingPearson:
        """Rebuild a stream from :meth:`state_dict` output (e.g. after ``torch.load``)."""
        names = {f.name for f in fields(cls)} - {"n"}
        unknown = set(state) - names - {"count"}
        if unknown:
            raise InputError(f"StreamingPearson.from_state_dict: unknown keys {sorted(unknown)}")
        if "count" not in state or int(state["count"]) == 0:
            return cls()
        required = {"mean_act", "m2_act", "min_act", "max_act", "mean_x", "m2_x", "min_x", "max_x", "c_ax"}
        z_keys = {"mean_z", "m2_z", "min_z", "max_z", "c_az", "c_xz"}
        if z_keys & set(state):
            required |= z_keys
        missing = required - set(state)
        if missing:
            raise InputError(f"StreamingPearson.from_state_dict: missing keys {sorted(missing)}")
        kw = {k: v for k, v in state.items() if k != "count"}
        return cls(n=torch.as_tensor(state["count"], dtype=torch.int64), **kw)
