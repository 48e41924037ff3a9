"""Hook-point vocabulary: TransformerLens hook names, grouped into layer axes.

A *capture* asks for one array whose leading axis runs over layers (or hidden
states); each entry of that axis concatenates one or more hook outputs along the
feature axis. Q|K|V of a block is three hooks (``blocks.{l}.attn.hook_q/k/v``,
each [batch, pos, head, d_head], flattened head-major to d_model) concatenated
to 3*d_model, the order of GPT-2's ``c_attn`` output.

>>> qkv_hooks([0, 1])[0]
('blocks.0.attn.hook_q', 'blocks.0.attn.hook_k', 'blocks.0.attn.hook_v')
>>> hidden_state_hooks(3)
(('blocks.0.hook_resid_pre',), ('blocks.0.hook_resid_post',), ('blocks.1.hook_resid_post',), ('ln_final.hook_out',))
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Iterable, Sequence

from .errors import HookError
from .inputs import Selector

HookGroups = tuple[tuple[str, ...], ...]  # [layer entry][hook names concatenated along features]


@dataclasses.dataclass(frozen=True)
class Capture:
    """One array to capture: ``name`` in the store, hooks per layer entry, positions kept.

    ``outer`` places the capture inside a larger array with leading axes of its own (e.g.
    the class axis of ``acts/hidden``: ``outer=(("class", 2),)``) and ``prefix`` says where:
    written region = array[prefix + (layer, samples, ...)]; several captures (one per
    pass) fill one array. ``layer_labels`` label the layer axis (default 0..n-1; block numbers, or hook names).
    """

    name: str
    hooks: HookGroups
    select: Selector
    layer_dim: str = "layer"
    feature_dim: str = "feature"
    sample_dim: str = "sample"
    prefix: tuple[int, ...] = ()
    outer: tuple[tuple[str, int], ...] = ()
    layer_labels: tuple[int | str, ...] | None = None

    def __post_init__(self):
        if len(self.prefix) != len(self.outer):
            raise ValueError(f"capture {self.name!r}: prefix {self.prefix} does not match the outer axes {self.outer}")

    @property
    def hook_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(h for group in self.hooks for h in group))


def qkv_hooks(layers: Iterable[int]) -> HookGroups:
    """Q|K|V per block: 3 hooks concatenated (3*d_model features)."""
    return tuple(tuple(f"blocks.{l}.attn.hook_{c}" for c in "qkv") for l in layers)


def layer_hooks(template: str, layers: Iterable[int]) -> HookGroups:
    """One hook per layer from a template, e.g. ``blocks.{layer}.mlp.hook_pre``."""
    return tuple((template.format(layer=l),) for l in layers)


def hidden_state_hooks(n_layers: int) -> HookGroups:
    """HuggingFace ``output_hidden_states`` semantics, n_layers + 1 states.

    state 0 = embeddings (``blocks.0.hook_resid_pre``); state l (1 <= l < L) = output of
    block l-1; the LAST state is the output of the final LayerNorm, not the raw residual.
    """
    states = [("blocks.0.hook_resid_pre",)]
    states += [(f"blocks.{l}.hook_resid_post",) for l in range(n_layers - 1)]
    states.append(("ln_final.hook_out",))
    return tuple(states)


_LAYER_RE = re.compile(r"^blocks\.(\d+)\.")


def validate_hooks(captures: Sequence[Capture], available: Iterable[str], n_layers: int) -> None:
    """Every hook must exist on the model; a bad layer or name says what is valid."""
    available = set(available)
    for cap in captures:
        for name in cap.hook_names:
            if name in available:
                continue
            m = _LAYER_RE.match(name)
            if m and int(m.group(1)) >= n_layers:
                raise HookError(
                    f"capture {cap.name!r}: hook {name!r} asks for layer {m.group(1)}, but the model has "
                    f"{n_layers} blocks (layers 0..{n_layers - 1})"
                )
            generic = _LAYER_RE.sub("blocks.{layer}.", name)
            names = sorted({_LAYER_RE.sub("blocks.{layer}.", a) for a in available})
            close = difflib.get_close_matches(generic, names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise HookError(f"capture {cap.name!r}: the model has no hook point {name!r}{hint}")


def parse_layers(spec: str | None, n_layers: int) -> list[int]:
    """``"all"``/None, ``"6"``, ``"0,3,5"`` or ``"2-7"`` -> sorted layer list, validated."""
    if spec is None or spec == "all":
        return list(range(n_layers))
    out: set[int] = set()
    for part in str(spec).split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                a, b = (int(x) for x in part.split("-", 1))
                if b < a:
                    raise HookError(f"layer spec {spec!r}: the range {part!r} is empty (it goes down); write it "
                                    f"low to high, e.g. {b}-{a}")
                out.update(range(a, b + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise HookError(f"layer spec {spec!r}: {part!r} is not a layer number or a range a-b") from None
    bad = sorted(l for l in out if not 0 <= l < n_layers)
    if bad:
        raise HookError(f"layer(s) {bad} do not exist: the model has {n_layers} blocks (0..{n_layers - 1})")
    return sorted(out)


HookSpec = str | Sequence[str] | Callable[[str], bool]


def normalize_hooks(hooks: HookSpec, available: Iterable[str], n_layers: int,
                    layers: Sequence[int] | None = None) -> dict[str, HookGroups]:
    """Hook names as TransformerLens filters take them, normalised once: {template: hooks per layer entry}.

    ``hooks`` is a name (``"ln_final.hook_out"``), a ``{layer}`` template (``"blocks.{layer}.attn.hook_q"``,
    expanded over ``layers``, default all), a list of those, or a predicate on names (as
    ``names_filter`` in TransformerLens). Concrete per-block names are grouped under their template,
    in block order; a name outside the blocks is its own single entry.

    >>> avail = [f"blocks.{l}.attn.hook_{c}" for l in range(2) for c in "qk"] + ["ln_final.hook_out"]
    >>> normalize_hooks("blocks.{layer}.attn.hook_q", avail, 2)
    {'blocks.{layer}.attn.hook_q': (('blocks.0.attn.hook_q',), ('blocks.1.attn.hook_q',))}
    >>> list(normalize_hooks(lambda n: n.endswith("hook_k") or n.startswith("ln_final"), avail, 2))
    ['blocks.{layer}.attn.hook_k', 'ln_final.hook_out']
    """
    available = list(available)
    layer_list = list(range(n_layers)) if layers is None else list(layers)
    if callable(hooks):
        names = [n for n in available if hooks(n)]
        if not names:
            raise HookError("the hook predicate matched no hook point of this model")
    elif isinstance(hooks, str):
        names = [hooks]
    else:
        names = list(hooks)
        if not names:
            raise HookError("no hooks were given: pass a hook name, a '{layer}' template, a list, or a predicate")
    out: dict[str, list[tuple[int, str]]] = {}
    for name in names:
        if not isinstance(name, str):
            raise HookError(f"hook names must be strings, got {name!r}")
        if "{layer}" in name:
            out.setdefault(name, []).extend((l, name.format(layer=l)) for l in layer_list)
            continue
        m = _LAYER_RE.match(name)
        template = _LAYER_RE.sub("blocks.{layer}.", name) if m else name
        out.setdefault(template, []).append((int(m.group(1)) if m else -1, name))
    return {t: tuple((n,) for _, n in sorted(entries)) for t, entries in out.items()}
