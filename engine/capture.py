"""One batched forward pass, every hook: keep only the selected positions, on the device.

For each micro-batch the model runs once with hooks on every requested hook point
of every layer. Each hook gathers the selected positions straight into a
preallocated device buffer ([layer, batch, (pos,) feature], float32), and the
forward pass is stopped (by an exception) as soon as the last needed hook has
fired, so blocks after the deepest one and the LM head never run.

>>> caps = [Capture("acts/final", qkv_hooks(range(m.n_layers)), Selector.last())]   # doctest: +SKIP
>>> for rows, arrays in capture_batches(m, batch, caps, micro_batch=8):            # doctest: +SKIP
...     arrays["acts/final"].shape   # [layer, batch, 3*d_model]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import torch

from .errors import InputError, NonFiniteError
from .hooks import Capture, validate_hooks
from .inputs import TokenBatch
from .models import LoadedModel


class _StopForward(Exception):
    """Raised by the last needed hook: the rest of the model is not run."""


@dataclasses.dataclass(frozen=True)
class CaptureLayout:
    """Shapes of one capture's array: [*prefix, layer, sample, (pos,) feature]."""

    capture: Capture
    n_entries: int
    n_features: int
    widths: tuple[tuple[int, ...], ...]  # per entry, the width of each hook in it
    per_position: bool

    def sample_shape(self, max_len: int) -> tuple[int, ...]:
        """Shape of one sample's data per layer entry."""
        return (max_len, self.n_features) if self.per_position else (self.n_features,)

    @property
    def dims(self) -> tuple[str, ...]:
        """[*outer, layer, sample, (pos,) feature] dimension names of the stored array."""
        sample = self.capture.sample_dim
        inner = (sample, "pos") if self.per_position else (sample,)
        outer = tuple(d for d, _ in self.capture.outer)
        return (*outer, self.capture.layer_dim, *inner, self.capture.feature_dim)

    def shape(self, n_samples: int, max_len: int) -> tuple[int, ...]:
        """The stored array's shape: [*outer, layer, sample, (pos,) feature]."""
        outer = tuple(n for _, n in self.capture.outer)
        return (*outer, self.n_entries, n_samples, *self.sample_shape(max_len))


def plan(model: LoadedModel, captures: Sequence[Capture]) -> list[CaptureLayout]:
    """Validate hooks, and find each hook's feature width with a 2-token probe forward."""
    if not captures:
        raise InputError("nothing to capture: give at least one capture")
    names = [c.name for c in captures]
    if len(set(names)) != len(names):
        raise InputError(f"capture names must be unique, got {names}")
    validate_hooks(captures, model.bridge.hook_dict.keys(), model.n_layers)
    hooks = sorted({h for c in captures for h in c.hook_names})
    widths: dict[str, int] = {}

    def probe(name):
        def fn(t, hook):
            widths[name] = int(t[0, 0].numel())
            if len(widths) == len(hooks):
                raise _StopForward
            return t

        return fn

    tokens = torch.zeros((1, 2), dtype=torch.long, device=model.device)
    with torch.inference_mode():
        try:
            model.bridge.run_with_hooks(tokens, fwd_hooks=[(h, probe(h)) for h in hooks])
        except _StopForward:
            pass
    missing = [h for h in hooks if h not in widths]
    if missing:
        raise InputError(f"hook points {missing} did not fire in a forward pass; they cannot be captured")
    out = []
    for c in captures:
        w = tuple(tuple(widths[h] for h in group) for group in c.hooks)
        totals = {sum(g) for g in w}
        if len(totals) != 1:
            raise InputError(f"capture {c.name!r}: layer entries have different feature widths {sorted(totals)}")
        out.append(CaptureLayout(c, len(c.hooks), totals.pop(), w, c.select.kind == "all"))
    return out


def capture_batches(
    model: LoadedModel,
    batch: TokenBatch,
    layouts: Sequence[CaptureLayout],
    *,
    rows: range,
    micro_batch: int,
    check_finite: bool = True,
) -> Iterator[tuple[range, dict[str, torch.Tensor]]]:
    """Run samples ``rows`` in micro-batches; yield (sample range, {capture name: device tensor}).

    Tensors are [layer, batch, feature] or [layer, batch, pos, feature] (pos padded to
    ``batch.max_len`` with zeros), float32, on the model's device.
    """
    positions = {lay.capture.name: lay.capture.select.positions(batch) for lay in layouts}
    for start in range(rows.start, rows.stop, micro_batch):
        stop = min(start + micro_batch, rows.stop)
        yield range(start, stop), _forward_one(model, batch, layouts, positions, start, stop, check_finite)


def _forward_one(model, batch, layouts, positions, start, stop, check_finite) -> dict[str, torch.Tensor]:
    dev = model.device
    b = stop - start
    lengths = batch.lengths[start:stop]
    width = int(lengths.max())
    tokens = batch.tokens[start:stop, :width].to(dev, non_blocking=True)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long().to(dev, non_blocking=True)
    buffers: dict[str, torch.Tensor] = {}
    plans: dict[str, list] = {}  # hook name -> [(buffer, entry, feature slice, pos index | None)]
    for lay in layouts:
        name = lay.capture.name
        shape = (lay.n_entries, b, *lay.sample_shape(batch.max_len))
        buffers[name] = torch.zeros(shape, dtype=torch.float32, device=dev)
        pos = positions[name]
        pos = None if pos is None else pos[start:stop].to(dev, non_blocking=True)
        for e, (group, widths) in enumerate(zip(lay.capture.hooks, lay.widths)):
            offset = 0
            for hook_name, w in zip(group, widths):
                plans.setdefault(hook_name, []).append((buffers[name], e, slice(offset, offset + w), pos))
                offset += w
    arange_b = torch.arange(b, device=dev)
    fired: set[str] = set()
    n_hooks = len(plans)

    def make_hook(hook_name: str):
        targets = plans[hook_name]

        def fn(t: torch.Tensor, hook) -> torch.Tensor:
            flat = t.reshape(t.shape[0], t.shape[1], -1)  # [batch, pos, feature]
            for buf, e, feats, pos in targets:
                if pos is None:
                    buf[e, :, :width, feats] = flat
                else:
                    buf[e, :, feats] = flat[arange_b, pos]
            fired.add(hook_name)
            if len(fired) == n_hooks:
                raise _StopForward
            return t

        return fn

    with torch.inference_mode():
        try:
            model.bridge.run_with_hooks(tokens, attention_mask=mask, fwd_hooks=[(h, make_hook(h)) for h in plans])
        except _StopForward:
            pass
    for lay in layouts:
        buf = buffers[lay.capture.name]
        if lay.per_position:  # zero the pad positions: their activations are not data
            pad = torch.arange(batch.max_len, device=dev)[None, :] >= lengths.to(dev)[:, None]
            buf[:, pad] = 0.0
        if check_finite:
            _check_finite(buf, lay, start, positions[lay.capture.name], model.dtype)
    return buffers


def _check_finite(buf: torch.Tensor, lay: CaptureLayout, start: int, pos: torch.Tensor | None,
                  dtype: torch.dtype = torch.float32) -> None:
    if bool(torch.isfinite(buf).all()):
        return
    bad = (~torch.isfinite(buf)).nonzero()[0].tolist()
    entry, sample = bad[0], bad[1] + start
    position = bad[2] if lay.per_position else int(pos[sample]) if pos is not None else "?"
    hooks = ", ".join(lay.capture.hooks[entry])
    half = dtype in (torch.float16, torch.bfloat16)
    fix = ("try --dtype float32 (half precision overflows) or check the weights" if half
           else "the model itself produces it in float32: check the weights (e.g. a damaged checkpoint)")
    raise NonFiniteError(
        f"capture {lay.capture.name!r}: NaN or inf in {hooks} ({lay.capture.layer_dim} {entry}) at sample "
        f"{sample + 1}, position {position}; {fix}"
    )


def auto_micro_batch(model: LoadedModel, max_len: int, n_samples: int) -> int:
    """A micro-batch that fits: ~8k tokens per forward on CPU; on CUDA sized from free memory."""
    if model.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(model.device)
        cfg = model.cfg
        itemsize = torch.finfo(model.dtype).bits // 8
        # activations per token kept alive by one block (eager attention scores dominate at long pos)
        per_token = itemsize * (12 * cfg.d_model + 2 * cfg.d_mlp + 3 * cfg.n_heads * max_len) + 4 * 3 * cfg.d_model
        mb = int(0.5 * free / max(per_token * max_len, 1))
    else:
        mb = 8192 // max(max_len, 1)
    return max(1, min(n_samples, mb, 512))


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def capture_arrays(
    model: LoadedModel, batch: TokenBatch, captures: Sequence[Capture], *, micro_batch: int | None = None
) -> dict[str, torch.Tensor]:
    """In-memory capture (no store): {name: [layer, sample, (pos,) feature] float32 on the device}.

    >>> out = capture_arrays(m, batch, [Capture("q", layer_hooks("blocks.{layer}.attn.hook_q", [0]), Selector.last())])  # doctest: +SKIP
    """
    layouts = plan(model, captures)
    mb = micro_batch or auto_micro_batch(model, batch.max_len, len(batch))
    parts: dict[str, list[torch.Tensor]] = {lay.capture.name: [] for lay in layouts}
    for _, out in capture_batches(model, batch, layouts, rows=range(len(batch)), micro_batch=mb):
        for k, v in out.items():
            parts[k].append(v)
    return {k: torch.cat(v, dim=1) for k, v in parts.items()}
