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
from collections.abc import Iterable, Sequence

from .errors import HookError
from .inputs import Selector

HookGroups = tuple[tuple[str, ...], ...]  # [layer entry][hook names concatenated along features]


@dataclasses.dataclass(frozen=True)
class Capture:
    """One array to capture: ``name`` in the store, hooks per layer entry, positions kept.

    ``prefix`` places the capture inside a larger array (e.g. the class axis of
    ``acts/hidden``): written region = array[prefix + (layer, samples, ...)].
    """

    name: str
    hooks: HookGroups
    select: Selector
    layer_dim: str = "layer"
    feature_dim: str = "feature"
    prefix: tuple[int, ...] = ()

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
                a, b = part.split("-", 1)
                out.update(range(int(a), int(b) + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise HookError(f"layer spec {spec!r}: {part!r} is not a layer number or a range a-b") from None
    bad = sorted(l for l in out if not 0 <= l < n_layers)
    if bad:
        raise HookError(f"layer(s) {bad} do not exist: the model has {n_layers} blocks (0..{n_layers - 1})")
    return sorted(out)
