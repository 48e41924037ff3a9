"""One batched forward pass, every hook: keep only the selected positions, on the device.

For each micro-batch the model runs once with hooks on every requested hook point
of every layer. Each hook gathers the selected positions straight into a
preallocated device buffer ([layer, batch, (pos,) feature], float32), and the
forward pass is stopped (by an exception) as soon as the last needed hook has
fired, so blocks after the deepest one and the LM head never run.

Two ways to run it, same values (tests/test_fastpath.py): the fast path
(:mod:`lamina.engine.fastpath`) reads the hooks analyses use - Q/K/V, MLP
pre-activations, residual stream, final norm - straight from the HuggingFace modules
the bridge wraps, on a bridge-free twin of the model (plain ``register_forward_hook``,
HF's own forward, lamina's attention kernel), and runs whenever every requested hook
maps; otherwise the micro-batch runs through the TransformerLens bridge with
``run_with_hooks``. Buffers are not zeroed first (every element is written) and the
NaN/inf check is one reduction.

>>> caps = [Capture("acts/final", qkv_hooks(range(m.n_layers)), Selector.last())]   # doctest: +SKIP
>>> for rows, arrays in capture_batches(m, batch, caps, micro_batch=8):            # doctest: +SKIP
...     arrays["acts/final"].shape   # [layer, batch, 3*d_model]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence

import torch

from .errors import InputError, NonFiniteError
from .fastpath import fast_route, hook_points, hook_value, split_part
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
    if model.device.type == "meta":
        raise InputError("a model on the meta device has shapes but no weights: it cannot run a capture; load it "
                         "with device='cpu' or 'cuda'")
    names = [c.name for c in captures]
    if len(set(names)) != len(names):
        raise InputError(f"capture names must be unique, got {names}")
    validate_hooks(captures, hook_points(model.bridge).keys(), model.n_layers)
    hooks = sorted({h for c in captures for h in c.hook_names})
    widths = _probe_widths(model, hooks)
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


def _rows(t: torch.Tensor, b: int, width: int, name: str) -> torch.Tensor:
    """Hook ``name``'s value ``t`` as [b, width, features]: [b, width, ...], or flattened [(b width), ...]
    (OPT's MLP); InputError when it is not one value per token position (attention patterns and scores,
    head-major [b, head, pos, d])."""
    if t.ndim >= 2 and t.shape[0] == b and t.shape[1] == width:
        return t.reshape(b, width, -1)
    if t.ndim >= 1 and t.shape[0] == b * width and (b > 1 or t.ndim >= 2):
        return t.reshape(b, width, -1)
    raise InputError(
        f"hook {name!r} gives a tensor of shape {list(t.shape)}, not one value per token position "
        "([batch, position, ...]); lamina captures per-position hooks (e.g. attn.hook_q, hook_resid_post, "
        "mlp.hook_pre, hook_z). Attention patterns and scores, and head-major tensors, cannot be captured: "
        "capture hook_q and hook_k instead")


def _probe_length(model: LoadedModel) -> int:
    """Tokens of the probe forward: a length no head count or head width equals, so that a head-major
    tensor [1, head, pos, d] cannot pass for a per-position one [1, pos, ...]."""
    taken = {getattr(model.cfg, k, None) for k in ("n_heads", "n_key_value_heads", "d_head")}
    taken.add(getattr(getattr(model, "info", None), "n_kv_heads", None))
    return next(p for p in (3, 5, 7, 11, 13, 17, 19, 23) if p not in taken)


def _probe_widths(model: LoadedModel, hooks: list[str]) -> dict[str, int]:
    """{hook: features per position} from a short forward (fast path when every hook has one)."""
    route = fast_route(model, hooks)
    if route is not None and all(h in route.twin.widths for h in hooks):  # probed before on this model
        return {h: route.twin.widths[h] for h in hooks}
    widths: dict[str, int] = {}
    n = _probe_length(model)
    tokens = torch.zeros((1, n), dtype=torch.long, device=model.device)
    with torch.inference_mode():
        try:
            if route is not None:
                def probe_module(names):
                    def fn(t: torch.Tensor):
                        flat = _rows(t, 1, n, names[0])[0, 0]  # (OPT's MLP runs on [batch * pos, feature])
                        for h in names:
                            widths[h] = int(split_part(flat, route.taps[h].part)[0].numel())
                        if len(widths) == len(hooks):
                            raise _StopForward
                    return fn

                hooks_ = [(m, kind, _module_hook(kind, probe_module(names)))
                          for (m, kind), names in _by_module(route, hooks).items()]
                route.run(tokens, torch.ones_like(tokens), hooks_)
            else:
                def probe(name):
                    def fn(t, hook):
                        widths[name] = int(_rows(t, 1, n, name)[0, 0].numel())
                        if len(widths) == len(hooks):
                            raise _StopForward
                        return t
                    return fn

                model.bridge.run_with_hooks(tokens, fwd_hooks=[(h, probe(h)) for h in hooks])
        except _StopForward:
            pass
    if route is not None:
        route.twin.widths.update(widths)
        missing = [h for h in hooks if h not in widths]
        if missing:  # an HF module the twin hooks was not called (e.g. its weight used directly): the bridge's way
            route.twin.unmap(missing)
            return _probe_widths(model, hooks)
    return widths


def capture_batches(
    model: LoadedModel,
    batch: TokenBatch,
    layouts: Sequence[CaptureLayout],
    *,
    rows: range,
    micro_batch: int,
    check_finite: bool = True,
    on_entry: Callable[[str, int, range, torch.Tensor], None] | None = None,
) -> Iterator[tuple[range, dict[str, torch.Tensor]]]:
    """Run samples ``rows`` in micro-batches; yield (sample range, {capture name: device tensor}).

    Tensors are [layer, batch, feature] or [layer, batch, pos, feature] (pos padded to
    ``batch.max_len`` with zeros), float32, on the model's device.

    ``on_entry(name, entry, samples, values)`` is called during the forward as soon as
    layer entry ``entry`` of capture ``name`` is final for the micro-batch ``samples``
    (every hook of it fired, pads zeroed; ``values`` = that entry of the yielded tensor):
    a caller can start writing it while the later blocks still run. The NaN/inf check
    comes after the forward, so an entry handed over early may still fail it.

    Hooks whose values are plain functions of HuggingFace module outputs (Q/K/V, MLP
    pre-activations, residual stream, final norm: :mod:`lamina.engine.fastpath`) are read
    from the HF modules directly, on a bridge-free twin of the model; any other hook
    runs the whole micro-batch through the bridge with TransformerLens hooks.
    """
    positions = {lay.capture.name: lay.capture.select.positions(batch) for lay in layouts}
    route = fast_route(model, sorted({h for lay in layouts for h in lay.capture.hook_names}))
    for start in range(rows.start, rows.stop, micro_batch):
        stop = min(start + micro_batch, rows.stop)
        yield range(start, stop), _forward_one(model, batch, layouts, positions, start, stop, check_finite, route,
                                               on_entry)


@dataclasses.dataclass
class _Copy:
    """One copy of a hook's value into a capture buffer: buf[entry, :, (:width,) dst] = part of the value."""

    buf: torch.Tensor
    entry: int
    dst: slice
    pos: torch.Tensor | None  # flat row index (sample * width + position) per sample; None: every position
    part: tuple | None = None  # joint Q|K|V part (fastpath.split_part); None: the whole value
    parts: tuple[int, ...] | None = None  # several consecutive parts merged into one copy


def _forward_one(model, batch, layouts, positions, start, stop, check_finite, route=None,
                 on_entry=None) -> dict[str, torch.Tensor]:
    dev = model.device
    b = stop - start
    lengths = batch.lengths[start:stop]
    width = int(lengths.max())
    tokens = batch.tokens[start:stop, :width].to(dev, non_blocking=True)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long().to(dev, non_blocking=True)
    row0 = torch.arange(b, device=dev) * width  # flat index of each sample's position 0 in [b * width, feature]
    buffers: dict[str, torch.Tensor] = {}
    copies: dict[str, list[_Copy]] = {}  # hook name -> its copies
    entries: dict[str, list[tuple]] = {}  # hook name -> the (layout, entry) it fills
    waiting: dict[tuple[str, int], int] = {}  # (capture, entry) -> hooks of it not fired yet
    for lay in layouts:
        name = lay.capture.name
        shape = (lay.n_entries, b, *lay.sample_shape(batch.max_len))
        # every element is written below (by a hook, or zeroed as padding): no need to zero it first
        buffers[name] = torch.empty(shape, dtype=torch.float32, device=dev)
        pos = positions[name]
        pos = None if pos is None else row0 + pos[start:stop].to(dev, non_blocking=True)
        for e, (group, widths) in enumerate(zip(lay.capture.hooks, lay.widths)):
            offset = 0
            waiting[name, e] = len(set(group))
            for hook_name, w in zip(group, widths):
                copies.setdefault(hook_name, []).append(_Copy(buffers[name], e, slice(offset, offset + w), pos))
                if (lay, e) not in entries.setdefault(hook_name, []):
                    entries[hook_name].append((lay, e))
                offset += w
    n_hooks = len(copies)
    fired: set[str] = set()
    short = [(i, n) for i, n in enumerate(lengths.tolist()) if n < width]
    samples = range(start, stop)

    def filled(names) -> None:
        """Hooks ``names`` fired and were copied: finish every entry they completed."""
        fired.update(names)
        for hook_name in names:
            for lay, e in entries[hook_name]:
                key = (lay.capture.name, e)
                waiting[key] -= 1
                if waiting[key]:
                    continue
                values = buffers[lay.capture.name][e]
                if lay.per_position:  # zero the pad positions: their activations are not data
                    values[:, width:] = 0.0
                    for i, n in short:
                        values[i, n:width] = 0.0
                if on_entry is not None:
                    on_entry(lay.capture.name, e, samples, values)
        if len(fired) == n_hooks:
            raise _StopForward

    with torch.inference_mode():
        try:
            if route is not None:
                _run_fast(route, copies, b, width, filled, tokens, mask)
            else:
                _run_bridge(model, copies, b, width, filled, tokens, mask)
        except _StopForward:
            pass
    if len(fired) != n_hooks:  # plan() saw every hook fire; a forward that skips one is a bug, not data
        raise RuntimeError(f"hook points {sorted(set(copies) - fired)} did not fire in this forward pass")
    for lay in layouts:
        buf = buffers[lay.capture.name]
        if check_finite and not _all_finite(buf):
            _check_finite(buf, lay, start, positions[lay.capture.name], model.dtype)
    return buffers


def _all_finite(buf: torch.Tensor) -> bool:
    """One reduction instead of an elementwise mask: NaN or inf anywhere makes the sum non-finite
    (a finite buffer whose sum overflows reads as non-finite here, and _check_finite then looks closer)."""
    return buf.numel() == 0 or bool(torch.isfinite(buf.sum()))


def _copy_into(flat: torch.Tensor, ops: list[_Copy], width: int) -> None:
    """Copy a hook's value ``flat`` [b, width, features] into its capture buffers: gather each set of
    positions once, then one ``copy_`` per (merged) destination slice."""
    gathered: dict[int, torch.Tensor] = {}
    for op in ops:
        if op.pos is None:
            rows = flat
            dst = op.buf[op.entry, :, :width, op.dst]
        else:
            rows = gathered.get(id(op.pos))  # type: ignore[assignment]
            if rows is None:
                rows = gathered[id(op.pos)] = flat.reshape(-1, flat.shape[-1]).index_select(0, op.pos)
            dst = op.buf[op.entry, :, op.dst]
        src, inner = split_part(rows, op.part, op.parts)
        if inner is not None:
            dst = dst.unflatten(-1, inner)
        dst.copy_(src)


def _merge(ops: list[_Copy]) -> list[_Copy]:
    """Merge copies of consecutive parts of one joint projection into adjacent destination slices
    (GPT-2's Q|K|V: one copy of the c_attn row instead of three)."""
    out: list[_Copy] = []
    for op in sorted(ops, key=lambda o: (id(o.buf), o.entry, id(o.pos), o.dst.start)):
        prev = out[-1] if out else None
        if (prev is not None and op.part is not None and prev.part is not None and prev.buf is op.buf
                and prev.entry == op.entry and prev.pos is op.pos and prev.dst.stop == op.dst.start
                and prev.part[0] == op.part[0] and prev.part[2] == op.part[2]
                and (prev.parts or (prev.part[1],))[-1] + 1 == op.part[1]):
            first = prev.parts or (prev.part[1],)
            out[-1] = dataclasses.replace(prev, dst=slice(prev.dst.start, op.dst.stop), parts=(*first, op.part[1]))
        else:
            out.append(op)
    return out


def _module_hook(kind: str, fn):
    """A torch hook calling ``fn(tensor)`` on a module's output (``"out"``) or its first input (``"in"``)."""
    if kind == "in":
        def pre(module, args, kwargs):
            fn(args[0] if args else kwargs["hidden_states"])
        return pre

    def post(module, args, output):
        fn(hook_value(output))
    return post


def _by_module(route, hook_names) -> dict[tuple, list[str]]:
    """(twin module, "in" | "out") -> the hook names read there (one torch hook per module serves them)."""
    out: dict[tuple, list[str]] = {}
    for h in hook_names:
        out.setdefault((route.taps[h].module, route.taps[h].kind), []).append(h)
    return out


def _run_fast(route, copies, b, width, filled, tokens, mask) -> None:
    by_module = _by_module(route, copies)

    def make(names: list[str]):
        ops = _merge([dataclasses.replace(op, part=route.taps[h].part) for h in names for op in copies[h]])

        def fn(t: torch.Tensor) -> None:
            _copy_into(_rows(t, b, width, names[0]), ops, width)
            filled(names)

        return fn

    route.run(tokens, mask, [(m, kind, _module_hook(kind, make(names))) for (m, kind), names in by_module.items()])


def _run_bridge(model, copies, b, width, filled, tokens, mask) -> None:
    def make(hook_name: str):
        ops = copies[hook_name]

        def fn(t: torch.Tensor, hook) -> torch.Tensor:
            _copy_into(_rows(t, b, width, hook_name), ops, width)
            filled((hook_name,))
            return t

        return fn

    model.bridge.run_with_hooks(tokens, attention_mask=mask, fwd_hooks=[(h, make(h)) for h in copies])


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

    >>> q = Capture("q", layer_hooks("blocks.{layer}.attn.hook_q", [0]), Selector.last())  # doctest: +SKIP
    >>> out = capture_arrays(m, batch, [q])  # doctest: +SKIP
    """
    layouts = plan(model, captures)
    mb = micro_batch or auto_micro_batch(model, batch.max_len, len(batch))
    parts: dict[str, list[torch.Tensor]] = {lay.capture.name: [] for lay in layouts}
    for _, out in capture_batches(model, batch, layouts, rows=range(len(batch)), micro_batch=mb):
        for k, v in out.items():
            parts[k].append(v)
    return {k: torch.cat(v, dim=1) for k, v in parts.items()}
