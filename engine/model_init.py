"""Random weights without paying for HuggingFace's initialisation: build on the meta device, then fill.

``random_model(config, seed, device, dtype)`` constructs the HF model with every
parameter on the meta device (buffers - rotary frequencies, causal-mask tables - are
computed for real, as HF does; HF's own initialisation and weight tying run on meta
tensors, at no cost), then allocates each parameter on ``device`` and fills it. The
parameters are numbered k = 0, 1, ... in ``named_parameters()`` order (tied parameters
once) and filled:

- norm-layer scales: 1, or 0 where the norm multiplies by ``(1 + w)`` (Gemma); found by
  probing the norm itself, so no family list is needed; norm and linear biases: 0;
- every other parameter (embeddings, projections, anything else): normal(0, std) with
  ``std = config.initializer_range`` (``init_std`` for OPT; 0.02 when absent). The
  flattened parameter is cut into chunks of ``CHUNK`` values; chunk j of parameter k is
  ``torch.randn`` from a CPU ``torch.Generator`` seeded with ``chunk_seed(seed, k, j)``
  (blake2b of the three numbers), times std.

Chunks are independent, so they are filled in parallel threads and the result does not
depend on the thread count. Values are drawn on the CPU in float32 and copied to the
device and dtype, so a seed gives the same weights on every device. ``device="meta"`` skips the fill: shapes and
hook names without memory.

>>> model = random_model(config, seed=0, device=torch.device("cpu"), dtype=torch.float32)   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import torch

DEFAULT_STD = 0.02
CHUNK = 1 << 22  # values per generator (4M): the unit of parallel filling


@contextlib.contextmanager
def parameters_on_meta():
    """Modules built inside get their parameters on the meta device; buffers stay real.

    It patches ``torch.nn.Module.register_parameter`` for the duration (as accelerate's
    ``init_empty_weights(include_buffers=False)`` does), so no other thread should build
    modules meanwhile.
    """
    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, param)
        if param is not None and not param.is_meta:  # a meta parameter (tied weights) keeps its identity
            p = module._parameters[name]
            module._parameters[name] = torch.nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def init_std(config) -> float:
    for key in ("initializer_range", "init_std"):
        value = getattr(config, key, None)
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
    return DEFAULT_STD


def build_on_meta(config, dtype: torch.dtype):
    """The HF causal LM for ``config`` with meta parameters (no initialisation cost)."""
    from transformers import AutoModelForCausalLM

    with parameters_on_meta():  # HF's init and weight tying run, on meta tensors: no cost
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def random_model(config, seed: int, device: torch.device, dtype: torch.dtype):
    """A full-size HF causal LM with deterministic random weights (see module doc)."""
    from transformers import AutoModelForCausalLM

    if device.type == "meta":
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    model = build_on_meta(config, dtype)
    if device.type != "cpu":
        for module in model.modules():  # buffers to the device; parameters are filled there below
            for key, buf in module._buffers.items():
                if buf is not None:
                    module._buffers[key] = buf.to(device)
    fill_parameters(model, seed, device, dtype, init_std(config))
    return model


def fill_parameters(model, seed: int, device: torch.device, dtype: torch.dtype, std: float) -> None:
    """Materialise every (meta) parameter on ``device`` and fill it as the module doc says."""
    norm_params = _norm_parameters(model)
    owners: dict[int, list[tuple[torch.nn.Module, str]]] = {}
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None:
                owners.setdefault(id(p), []).append((module, name))
    chunks: list[tuple[torch.Tensor, int]] = []
    with torch.no_grad():
        for k, (name, p) in enumerate(list(model.named_parameters())):  # tied parameters appear once
            values = torch.empty(p.shape, device=device, dtype=dtype)
            if id(p) in norm_params:
                values.fill_(norm_params[id(p)])
            elif name.endswith("bias"):
                values.zero_()
            else:
                flat = values.view(-1)
                chunks += [(flat[j : j + CHUNK], chunk_seed(seed, k, j // CHUNK))
                           for j in range(0, flat.numel(), CHUNK)]
            new = torch.nn.Parameter(values, requires_grad=False)
            for module, pname in owners[id(p)]:
                module._parameters[pname] = new
        _fill_normal(chunks, std)


def chunk_seed(seed: int, param_index: int, chunk_index: int) -> int:
    """The seed of one chunk's generator: 64 bits of blake2b over (seed, parameter index, chunk index)."""
    digest = hashlib.blake2b(f"{seed}:{param_index}:{chunk_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _fill_normal(chunks: list[tuple[torch.Tensor, int]], std: float) -> None:
    """normal(0, std) into each chunk from its own generator, in parallel (independent of the thread count)."""

    def work(item):
        target, s = item
        gen = torch.Generator().manual_seed(s)
        if target.device.type == "cpu" and target.dtype == torch.float32:
            torch.randn(target.shape, generator=gen, out=target).mul_(std)
        else:  # drawn in float32 on the CPU, then cast/copied: the same weights on every device
            target.copy_(torch.randn(target.shape, generator=gen).mul_(std))

    workers = max(1, min(torch.get_num_threads(), os.cpu_count() or 1, len(chunks)))
    with torch.no_grad(), ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, chunks))


def _norm_parameters(model) -> dict[int, float]:
    """{id(param): fill value} for the scales and biases of normalisation layers."""
    out: dict[int, float] = {}
    for module in model.modules():
        if "norm" not in type(module).__name__.lower():
            continue
        weight = module._parameters.get("weight")
        if weight is not None:
            out[id(weight)] = _identity_scale(module, weight)
        bias = module._parameters.get("bias")
        if bias is not None:
            out[id(bias)] = 0.0
    return out


def _identity_scale(module, weight) -> float:
    """1.0 for norms computing ``x_hat * w``; 0.0 for those computing ``x_hat * (1 + w)``."""
    import copy

    if weight.ndim != 1:
        return 1.0
    probe = copy.copy(module)  # shallow: own parameter dict, same code
    probe._parameters = dict(module._parameters)
    probe._parameters["weight"] = torch.nn.Parameter(torch.zeros(weight.shape[0]), requires_grad=False)
    if probe._parameters.get("bias") is not None:
        probe._parameters["bias"] = torch.nn.Parameter(torch.zeros(weight.shape[0]), requires_grad=False)
    try:
        with torch.no_grad():
            out = probe(torch.linspace(-1.0, 2.0, weight.shape[0]).repeat(2, 1))
    except Exception:  # a norm we cannot probe: the usual x_hat * w
        return 1.0
    return 0.0 if bool(out.abs().max() > 0) else 1.0
