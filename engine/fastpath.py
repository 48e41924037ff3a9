"""The capture fast path: TransformerLens hook names resolved ONCE to plain HuggingFace modules.

In compatibility mode without weight processing (how lamina boots every bridge), the
value a TransformerLens hook sees is, for the hook points analyses use, a plain function
of one HuggingFace module's output or input:

===============================  ====================================================
TransformerLens hook             HuggingFace module (every supported family)
===============================  ====================================================
``blocks.{l}.hook_resid_pre``    layer ``l``'s input ``hidden_states`` (pre-hook)
``blocks.{l}.hook_resid_post``   layer ``l``'s output
``blocks.{l}.attn.hook_q/k/v``   ``q_proj``/``k_proj``/``v_proj`` output; GPT-2: a third of
                                 ``c_attn``'s output; GPT-NeoX: ``query_key_value``'s
                                 output split per head as [q_h|k_h|v_h]
``blocks.{l}.mlp.hook_pre``      the MLP input projection (``c_fc``, ``dense_h_to_4h``,
                                 ``fc1``; gated MLPs: ``gate_proj``)
``ln_final.hook_out``            the final norm's output
any projection's ``hook_out``    that ``nn.Linear``/``Conv1D``'s output
===============================  ====================================================

The resolution is not a table of names: each hook name is looked up in the bridge's own
``hook_dict``, the HookPoint's owner component is found, and only these owners map -
a ``LinearBridge``'s ``hook_out`` (the wrapped projection's output), a block's
``hook_in``/``hook_out`` and the final norm's ``hook_out``; the joint Q|K|V projections of
GPT-2 and GPT-NeoX (whose separate q/k/v the bridge makes itself) by their HF attention
class. Everything else - ``hook_z``, ``hook_resid_mid``, norms' inner hooks, ... - is not
mapped, and a capture that asks for one runs on the bridge (attention scores and patterns,
which have no value per token position, are refused by ``capture.plan`` on either path)
(``capture.py``'s general path), as does any family not in :data:`FAMILIES`, a
bridge carrying hooks of its own, a bridge in training mode, a bridge whose weights changed
after :func:`remember_weights` (edited in place, replaced, reloaded: the bridge keeps its own
copies of some, e.g. GPT-NeoX's split q/k/v, so the two would disagree), or ``LAMINA_FASTPATH=0``.
The joint Q|K|V projection's own ``hook_out`` is not mapped either: the bridge never fires it.

The forward runs on a *twin* of the bridged HF model: the same HF module classes,
shallow-copied with every bridge wrapper replaced by the HF module it wraps, sharing
every parameter and buffer (no weights are copied; building it takes milliseconds). It
is built once per bridge and cached on it. Its attention kernel is lamina's choice for
the bridge (``engine/sdpa.py``): HuggingFace's ``sdpa`` where lamina runs SDPA, GPT-Neo's
SDPA ``_attn`` from ``sdpa.py``, eager where the bridge stays eager (soft-capping). Hooks
are plain ``register_forward_hook``/``register_forward_pre_hook`` handles on the twin's
modules, registered per forward and removed after it.

>>> route = fast_route(model, ["blocks.0.attn.hook_q", "blocks.0.mlp.hook_pre"])   # doctest: +SKIP
>>> route is None     # None: some hook (or the model) needs the bridge path         # doctest: +SKIP
False
"""

from __future__ import annotations

import copy
import dataclasses
import os
import types
from collections.abc import Iterable, Sequence
from typing import Any

import torch

# HF ``config.model_type`` of the families whose hook mapping is verified against the bridge's
# own run_with_cache (tests/test_fastpath.py) and plain HF (tests/test_parity.py).
FAMILIES = frozenset({"gpt2", "gpt_neo", "gpt_neox", "llama", "mistral", "qwen2", "gemma2", "gemma3_text", "opt",
                      "phi"})
# HF attention class -> (joint Q|K|V projection attribute, layout of its output)
JOINT_QKV = {"GPT2Attention": ("c_attn", "thirds"), "GPTNeoXAttention": ("query_key_value", "per_head")}
# hook conversions that only reshape (the flattened features are the same): [b, T, (h d)] <-> [b, T, h, d],
# and OPT's [(b T), F] <-> [b, T, F]; a hook point with any other conversion is not mapped
_LAYOUT_ONLY = frozenset({"ReshapeForAttentionHeads", "_UnflattenTokens"})
# TransformerLens options under which the bridge computes something the HF modules do not
_BRIDGE_OPTIONS = ("use_attn_result", "use_split_qkv_input", "use_attn_in", "use_hook_mlp_in")
_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
               "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
               "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


def enabled() -> bool:
    """``LAMINA_FASTPATH=0`` switches the fast path off (every capture runs on the bridge)."""
    return os.environ.get("LAMINA_FASTPATH", "1").strip().lower() not in ("0", "false", "no", "off")


@dataclasses.dataclass(frozen=True)
class Tap:
    """Where one hook's value comes from: a twin module's output (``"out"``) or input (``"in"``),
    and for a joint Q|K|V projection which part of it (``part`` = (layout, index, n_heads))."""

    module: torch.nn.Module
    kind: str  # "out" | "in"
    part: tuple[str, int, int] | None = None


class Twin:
    """The bridged HF model without the bridge: shallow copies of its HF modules, shared tensors."""

    def __init__(self, bridge, attention: tuple):
        from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

        hf = bridge.original_model
        self.attention = attention
        self.config = copy.deepcopy(hf.config)
        self._clones: dict[int, torch.nn.Module] = {}  # id(original HF module) -> its copy
        self._originals: list[tuple[torch.nn.Module, torch.nn.Module]] = []
        self._gc = GeneralizedComponent
        self.model = self._copy(hf, hf.config)
        self.model.eval()
        self._attention(bridge)
        # hook point -> (owning bridge component, "hook_in" | "hook_out")
        self._owner: dict[int, tuple[Any, str]] = {}
        self._joint_parent: dict[int, tuple[Any, int]] = {}  # id(q/k/v bridge) -> (attention bridge, index)
        self._joint_projections: set[int] = set()  # id(HF joint Q|K|V projection): its hook_out never fires
        for comp in bridge.modules():
            if isinstance(comp, GeneralizedComponent):
                for attr in ("hook_in", "hook_out"):
                    hp = comp._modules.get(attr)
                    if hp is not None:
                        self._owner.setdefault(id(hp), (comp, attr))
                oc = comp._modules.get("_original_component")
                if oc is not None and type(oc).__name__ in JOINT_QKV:
                    proj = oc._modules.get(JOINT_QKV[type(oc).__name__][0])  # HF's, or the bridge's wrapper
                    if proj is not None:
                        self._joint_projections |= {id(proj), id(proj._modules.get("_original_component"))}
                    for i, key in enumerate("qkv"):
                        sub = comp._modules.get(key)
                        if sub is not None:
                            self._joint_parent[id(sub)] = (comp, i)
        self._blocks = {id(b) for b in bridge.blocks}
        self._final = id(bridge.ln_final) if hasattr(bridge, "ln_final") else None
        self._params = [(orig, clone) for orig, clone in self._originals if orig._parameters]
        self.bridge_modules = list(bridge.modules())  # scanned for foreign hooks before every capture
        self._taps: dict[str, Tap | None] = {}
        self.widths: dict[str, int] = {}  # hook name -> features per position, once probed

    # ---- building -------------------------------------------------------------------------
    def _copy(self, module: torch.nn.Module, config) -> torch.nn.Module:
        if isinstance(module, self._gc):
            inner = module._modules.get("_original_component")
            if inner is None:
                raise _Unsupported(f"bridge component {type(module).__name__} wraps no HF module")
            return self._copy(inner, config)
        done = self._clones.get(id(module))
        if done is not None:
            return done
        if "forward" in module.__dict__ or "_hf_hook" in module.__dict__:  # e.g. accelerate's device_map hooks
            raise _Unsupported(f"{type(module).__name__} has an instance-level forward")
        clone = copy.copy(module)  # a new __dict__ holding the same values: tensors, configs are shared
        d = clone.__dict__
        d["_parameters"] = dict(module._parameters)
        d["_buffers"] = dict(module._buffers)
        d["_non_persistent_buffers_set"] = set(module._non_persistent_buffers_set)
        for name in _HOOK_DICTS:
            if name in d:
                d[name] = type(d[name])()
        for key, value in list(d.items()):
            if isinstance(value, types.MethodType) and value.__self__ is module:
                del d[key]  # a method patched onto the instance (lamina's GPT-Neo SDPA): the twin is plain HF
            elif value is config:
                d[key] = self.config
        self._clones[id(module)] = clone
        self._originals.append((module, clone))
        d["_modules"] = {name: (None if child is None else self._copy(child, config))
                         for name, child in module._modules.items()}
        return clone

    def _attention(self, bridge) -> None:
        """lamina's attention kernel per block (engine/sdpa.py) on the twin."""
        from .sdpa import gpt_neo_sdpa

        kinds = set(self.attention)
        if kinds <= {"hf", "reconstruct"} and None not in kinds:
            self.config._attn_implementation = "sdpa"  # HF's own SDPA path, HF's SDPA masks
        elif kinds == {"gpt_neo"}:
            for block in bridge.blocks:
                hf_attn = self.clone_of(block.attn.original_component)
                hf_attn._attn = types.MethodType(gpt_neo_sdpa, hf_attn)  # type: ignore[assignment]
        elif kinds != {None}:
            raise _Unsupported(f"mixed attention kernels {sorted(map(str, kinds))}")

    def clone_of(self, module: torch.nn.Module) -> torch.nn.Module:
        return self._clones[id(module)]

    # ---- resolving ------------------------------------------------------------------------
    def tap(self, name: str, hook_point) -> Tap | None:
        if name not in self._taps:
            self._taps[name] = self._resolve(hook_point)
        return self._taps[name]

    def unmap(self, names: Iterable[str]) -> None:
        """These hooks run on the bridge from now on (their HF module did not fire on the twin)."""
        for name in names:
            self._taps[name] = None

    def _resolve(self, hook_point) -> Tap | None:
        from transformer_lens.model_bridge.generalized_components.linear import LinearBridge

        owner = self._owner.get(id(hook_point))
        if owner is None:
            return None
        conversion = getattr(hook_point, "hook_conversion", None)
        if conversion is not None and type(conversion).__name__ not in _LAYOUT_ONLY:
            return None
        comp, attr = owner
        inner = comp._modules.get("_original_component")
        if inner is None:
            return None
        if id(comp) in self._blocks:
            return Tap(self._clones[id(inner)], "in" if attr == "hook_in" else "out")
        if attr != "hook_out":
            return None
        if id(comp) == self._final:
            return Tap(self._clones[id(inner)], "out")
        if not isinstance(comp, LinearBridge):
            return None
        if {id(comp), id(inner)} & self._joint_projections:  # the bridge runs its split q/k/v instead
            return None
        if id(inner) in self._clones:  # a projection of the HF model itself
            return Tap(self._clones[id(inner)], "out")
        joint = self._joint_parent.get(id(comp))  # q/k/v split by the bridge from a joint projection
        if joint is None:
            return None
        attn_bridge, index = joint
        hf_attn = self._clones[id(attn_bridge._modules["_original_component"])]
        attr_name, layout = JOINT_QKV[type(hf_attn).__name__]
        proj = hf_attn._modules.get(attr_name)
        if proj is None:
            return None
        n_heads = int(self.config.num_attention_heads)
        return Tap(proj, "out", (layout, index, n_heads))

    def stale(self) -> bool:
        """True when the bridge's HF modules no longer hold the tensors the twin shares."""
        for orig, clone in self._params:
            p, c = orig._parameters, clone._parameters
            if p.keys() != c.keys() or any(p[k] is not c[k] for k in p):
                return True
        return False


class _Unsupported(Exception):
    """This bridge cannot be twinned: the capture runs on the bridge."""


def _attention_kinds(bridge) -> tuple:
    from .sdpa import sdpa_blocks

    return tuple(sdpa_blocks(bridge))


def twin(model) -> Twin | None:
    """The cached twin of ``model``'s bridge, (re)built when the attention choice changed; None when the
    family is not covered or the bridge cannot be twinned."""
    bridge = model.bridge
    hf = getattr(bridge, "original_model", None)
    if hf is None or getattr(hf.config, "model_type", None) not in FAMILIES or not hasattr(bridge, "blocks"):
        return None
    loaded = bridge.__dict__.get("_lamina_weights")
    if loaded is None:  # a bridge lamina did not load: its weights as first seen
        remember_weights(bridge)
    elif loaded != _weights_signature(bridge):
        return None
    kinds = _attention_kinds(bridge)
    cached = bridge.__dict__.get("_lamina_twin")
    if cached is not None and cached.attention == kinds and not cached.stale():
        return cached
    try:
        built = Twin(bridge, kinds)
    except (_Unsupported, KeyError, AttributeError):
        built = None
    if built is not None:
        object.__setattr__(bridge, "_lamina_twin", built)  # not a submodule: no state_dict, no hook_dict entry
    return built


def _weights_signature(bridge) -> tuple:
    """Every parameter's identity, storage and in-place version counter (bumped by every in-place edit)."""
    return tuple((id(p), p.data_ptr(), p._version) for p in bridge.parameters())


def remember_weights(bridge) -> None:
    """Record ``bridge``'s weights as loaded; the fast path runs only while they are unchanged."""
    object.__setattr__(bridge, "_lamina_weights", _weights_signature(bridge))  # plain attribute, not state


def _bridge_is_plain(bridge, modules: Sequence[torch.nn.Module]) -> bool:
    """No hooks of anyone else on the bridge, no TransformerLens option that changes what it computes.

    A hook on a HookPoint (TransformerLens' ``add_hook``/``hooks()``, which register torch hooks) is
    someone's: the bridge must run, except the wiring TransformerLens adds itself at boot. On other
    modules, hooks defined by transformers or TransformerLens are their machinery (transformers'
    output recorders, the bridge's capture wiring - which fires HookPoints, checked themselves);
    a hook defined anywhere else is someone's intervention.
    """
    if bridge.training:
        return False
    cfg = getattr(bridge, "cfg", None)
    if cfg is not None and any(getattr(cfg, o, False) for o in _BRIDGE_OPTIONS):
        return False
    for m in modules:
        point = type(m).__name__ == "HookPoint"
        for hooks in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks):
            for fn in hooks.values() if hooks else ():
                if not (_wiring(fn) if point else _machinery(fn)):
                    return False
    return True


def _machinery(fn) -> bool:
    module = getattr(fn, "__module__", None) or ""
    return module.split(".")[0] in ("transformers", "transformer_lens")


def _wiring(fn) -> bool:
    """A permanent hook TransformerLens itself adds at boot (``component_setup``: a symbolic component's
    placeholder points re-fired from its subcomponents', e.g. OPT's MLP): identity unless those points are
    hooked, which the caller sees on them."""
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            inner = cell.cell_contents
        except ValueError:
            continue
        code = getattr(inner, "__code__", None)
        if (code is not None and code.co_name == "<lambda>"
                and code.co_filename.endswith(os.path.join("model_bridge", "component_setup.py"))):
            return True
    return False


class Route:
    """One capture's hooks on the twin: ``taps[name]`` per hook name, run with :meth:`run`."""

    def __init__(self, twin_: Twin, taps: dict[str, Tap]):
        self.twin = twin_
        self.taps = taps

    def run(self, tokens: torch.Tensor, mask: torch.Tensor, hooks: Iterable[tuple]) -> None:
        """Forward the twin with ``hooks`` = [(module, kind, torch hook)] registered for this call only."""
        handles = []
        try:
            for module, kind, fn in hooks:
                if kind == "in":
                    handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))
                else:
                    handles.append(module.register_forward_hook(fn))
            self.twin.model(input_ids=tokens, attention_mask=mask, use_cache=False)
        finally:
            for h in handles:
                h.remove()


def fast_route(model, hook_names: Iterable[str]) -> Route | None:
    """The fast path for ``hook_names`` on ``model``, or None: the capture must run on the bridge."""
    if not enabled():
        return None
    names = list(hook_names)
    tw = twin(model)
    if tw is None or not _bridge_is_plain(model.bridge, tw.bridge_modules):
        return None
    hook_dict = hook_points(model.bridge)
    taps: dict[str, Tap] = {}
    for name in names:
        hp = hook_dict.get(name)
        tap = None if hp is None else tw.tap(name, hp)
        if tap is None:
            return None
        taps[name] = tap
    return Route(tw, taps)


def hook_points(bridge) -> dict:
    """The bridge's hook_dict (aliases included), cached per bridge: TransformerLens rebuilds it per access."""
    cached = bridge.__dict__.get("_lamina_hook_dict")
    if cached is None:
        cached = dict(bridge.hook_dict)
        object.__setattr__(bridge, "_lamina_hook_dict", cached)
    return cached


def hook_value(output: Any) -> torch.Tensor:
    """The primary tensor of a module's output (decoder layers may return tuples)."""
    return output if isinstance(output, torch.Tensor) else output[0]


def split_part(flat: torch.Tensor, part: tuple[str, int, int] | None, parts: Sequence[int] | None = None
               ) -> tuple[torch.Tensor, tuple[int, ...] | None]:
    """The ``part`` of a joint projection's output ``flat`` [..., 3 * width], as a view, and the shape its
    destination's last axis must be unflattened to for ``copy_`` (None: none needed).

    ``parts`` (consecutive indices, e.g. (0, 1, 2) for Q|K|V) gives them concatenated in that order.
    """
    if part is None:
        return flat, None
    layout, index, n_heads = part
    idx = (index,) if parts is None else tuple(parts)
    third = flat.shape[-1] // 3
    if layout == "thirds":  # GPT-2 c_attn: [q | k | v]
        return flat[..., idx[0] * third:(idx[-1] + 1) * third], None
    d_head = third // n_heads
    per_head = flat.unflatten(-1, (n_heads, 3, d_head))  # GPT-NeoX: per head [q_h | k_h | v_h]
    if len(idx) == 1:
        return per_head[..., idx[0], :], (n_heads, d_head)
    return per_head[..., idx[0]:idx[-1] + 1, :].transpose(-3, -2), (len(idx), n_heads, d_head)
