"""``lamina hooks MODEL`` / ``lamina.hooks``: every hook point, its shape per position (against the HF config and the
capture's own probe forward), and the path a capture of it takes; ``lamina --version``; ``--threads``."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import subprocess
import sys

import pytest

import lamina
from lamina.analyses.cli import main as cli_main
from lamina.engine.capture import _probe_widths
from lamina.engine.fastpath import fast_route
from lamina.engine.models import load_model

from .families import family_config, make_family_checkpoint

FAMILIES = ("gpt2", "gpt_neox", "llama")


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request, tmp_path_factory):
    folder = make_family_checkpoint(tmp_path_factory.mktemp(request.param), request.param)
    return request.param, folder, load_model(str(folder), device="cpu")


def _expected(family: str) -> dict[str, tuple[int, ...]]:
    """Shapes per position from the HF config alone."""
    c = family_config(family)
    d, heads = c.hidden_size, c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    d_head = d // heads
    mlp = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * d
    return {"blocks.1.attn.hook_q": (heads, d_head), "blocks.1.attn.hook_k": (kv, d_head),
            "blocks.1.attn.hook_v": (kv, d_head), "blocks.0.hook_resid_post": (d,), "blocks.1.hook_resid_pre": (d,),
            "blocks.2.mlp.hook_pre": (mlp,), "ln_final.hook_out": (d,), "blocks.0.attn.hook_z": (heads, d_head)}


def test_catalog_shapes_paths_and_meta(family_model):
    family, folder, model = family_model
    table = lamina.hooks(model)
    assert set(table) <= set(model.bridge.hook_dict)
    for name, shape in _expected(family).items():
        assert table[name].per_position and table[name].shape == shape, (name, table[name])
    for name in ("blocks.0.attn.hook_pattern", "blocks.0.attn.hook_attn_scores"):
        assert not table[name].per_position and not table[name].fast
    capturable = [n for n, i in table.items() if i.per_position]
    widths = _probe_widths(model, capturable)  # what a capture of them would store, per position
    assert {n: math.prod(table[n].shape) for n in capturable} == widths
    for name, info in table.items():  # the path a capture of this hook alone takes
        if info.per_position:
            assert (fast_route(model, [name]) is not None) == info.fast, name
    assert {table[n].fast for n in ("blocks.1.attn.hook_q", "blocks.2.mlp.hook_pre", "ln_final.hook_out")} == {True}
    assert not table["blocks.0.attn.hook_z"].fast
    assert lamina.hooks(str(folder)) == table  # built on the meta device from the config: the same table


def test_cli_hooks_version_and_threads(tmp_path, capsys, family_model):
    family, folder, _ = family_model
    if family != "gpt2":
        pytest.skip("the command line once is enough")
    cli_main(["hooks", str(folder)])
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("blocks.0.attn.hook_q "))
    assert line.split()[1:] == ["[4,", "16]", "fast"]
    assert "blocks.0.attn.hook_pattern" in out and "not capturable" in out
    cli_main(["hooks", str(folder), "--json"])
    table = json.loads(capsys.readouterr().out)
    assert table["blocks.2.mlp.hook_pre"] == {"shape": [256], "per_position": True, "fast": True}

    cli_main(["--version"])
    assert capsys.readouterr().out.strip() == f"lamina {importlib.metadata.version('lamina')}"

    texts = tmp_path / "texts.txt"
    texts.write_text("the cat sat\na dog ran far away\n")
    out = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "lamina.analyses.cli", "capture", "--model", str(folder), "--hook",
                    "blocks.0.hook_resid_post", "--text-file", str(texts), "--out", str(out), "--threads", "1",
                    "--no-progress"], check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert lamina.open_run(out).attrs["machine"]["torch_threads"] == "1"
