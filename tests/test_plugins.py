"""A third-party analysis, installed as a plugin by entry point: the README's "Writing an analysis" example, verbatim.

It is installed as a throw-away distribution (a ``.dist-info`` with ``entry_points.txt`` on the path), then run
with ``lamina run resid_stats``, killed mid-run and resumed (bitwise equal), run under 2 ranks (bitwise equal),
read back with ``lamina info``, ``lamina plot`` and ``lamina.open_run``, and checked against plain NumPy on
plain-HuggingFace activations.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import lamina

README = Path(__file__).resolve().parents[1] / "README.md"
WORDS = "a long road runs past the old mill then north rivers bend twice under grey skies".split()


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Writing an analysis", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A site folder holding the plugin module and its distribution metadata (an 'installed' package)."""
    root = tmp_path_factory.mktemp("plugin-site")
    (root / "resid_stats.py").write_text(readme_example(), encoding="utf-8")
    info = root / "lamina_resid_stats-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lamina-resid-stats\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[lamina.analyses]\nresid_stats = resid_stats:ANALYSIS\n")
    return root


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    rng = np.random.default_rng()
    path = tmp_path_factory.mktemp("plugin-texts") / "texts.txt"
    path.write_text("\n".join(" ".join(rng.choice(WORDS, size=int(rng.integers(3, 25)))) for _ in range(120)))
    return path


def env(site) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def lamina_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "lamina.analyses.cli", *map(str, args)]


def run_args(model, texts, out, *extra):
    return ["run", "resid_stats", "--model", model, "--text-file", texts, "--out", out, "--unit-samples", "2",
            "--micro-batch", "1", "--no-progress", *extra]


def hf_resid_post(folder, texts: list[str]) -> np.ndarray:
    """[layer, token, feature] block outputs from plain HF forward hooks, real tokens only (no lamina)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    hf = AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager").eval()
    per_layer: list[list[np.ndarray]] = [[] for _ in hf.transformer.h]
    for text in texts:
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        outs = {}
        handles = [blk.register_forward_hook(lambda m, i, o, l=l: outs.__setitem__(l, o[0] if isinstance(o, tuple)
                                                                                    else o))
                   for l, blk in enumerate(hf.transformer.h)]
        with torch.no_grad():
            hf(ids)
        for h in handles:
            h.remove()
        for l in range(len(per_layer)):
            per_layer[l].append(outs[l][0].numpy())
    return np.stack([np.concatenate(rows) for rows in per_layer])


def test_plugin_is_listed_and_runs_like_a_builtin(site, texts, gpt2_dir, tmp_path):
    e = env(site)
    listing = subprocess.run(lamina_cmd("analyses"), env=e, capture_output=True, text=True, check=True).stdout
    assert "resid_stats" in listing and "Residual-stream mean and variance" in listing
    help_text = subprocess.run(lamina_cmd("run", "resid_stats", "--help"), env=e, capture_output=True, text=True,
                               check=True).stdout
    assert "--text-file" in help_text and "--hook" in help_text and "--seed" in help_text

    ref, killed, ranks = tmp_path / "ref", tmp_path / "killed", tmp_path / "ranks"
    subprocess.run(lamina_cmd(*run_args(gpt2_dir, texts, ref)), env=e, check=True, capture_output=True)

    # killed mid-run, then the same command again: bitwise the same results
    proc = subprocess.Popen(lamina_cmd(*run_args(gpt2_dir, texts, killed)), env=e,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    flags = killed / "_progress" / "capture" / "c"
    deadline = time.time() + 120
    while (not flags.exists() or len(list(flags.iterdir())) < 10) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done, total = lamina.open_run(killed).progress()["capture"]
    assert 0 < done < total
    subprocess.run(lamina_cmd(*run_args(gpt2_dir, texts, killed)), env=e, check=True,
                   capture_output=True)

    # two ranks
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          str(29600 + os.getpid() % 1000), *lamina_cmd(*run_args(gpt2_dir, texts, ranks))[1:]],
                         env=e, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]

    a = lamina.open_run(ref)
    for other in (lamina.open_run(killed), lamina.open_run(ranks)):
        assert other.complete
        for name in ("results/mean", "results/variance"):
            np.testing.assert_array_equal(other.numpy(name), a.numpy(name), err_msg=f"{other.url} {name}")
    assert lamina.open_run(killed).attrs.get("resumed") and lamina.open_run(ranks).attrs["world_size"] == 2
    assert lamina.open_run(ranks).progress()["capture"][1] == 60  # 120 texts / 2 per unit: 30 per rank

    # read back: info, plot, open_run, and the statistics against NumPy on plain-HF activations
    info = subprocess.run(lamina_cmd("info", ref), env=e, capture_output=True, text=True, check=True).stdout
    assert "experiment resid_stats" in info and "results/variance" in info
    (ref / "figures" / "variance.png").unlink()
    subprocess.run(lamina_cmd("plot", ref), env=e, check=True, capture_output=True)
    assert (ref / "figures" / "variance.png").stat().st_size > 1000
    assert not any(k for k in a.arrays() if k.startswith("acts/") and k != "acts/layer"), "activations not stored"
    lines = [ln for ln in texts.read_text().splitlines() if ln.strip()]
    acts = hf_resid_post(gpt2_dir, lines).astype(np.float64)  # [layer, token, feature]
    np.testing.assert_allclose(a.numpy("results/mean"), acts.mean(1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.numpy("results/variance"), acts.var(1), rtol=1e-4, atol=1e-5)
    assert a.labels("results/mean", "layer") == list(range(acts.shape[0]))


def test_register_makes_it_available_in_process(site, texts, gpt2_dir, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(site))
    import importlib

    module = importlib.import_module("resid_stats")
    lamina.register(module.ANALYSIS)
    run = lamina.run("resid_stats", model=str(gpt2_dir), out=str(tmp_path / "r"), text_file=str(texts),
                     progress=False, figures=False)
    assert run.complete and run.numpy("results/variance").shape == (3, 64)
    with pytest.raises(lamina.errors.InputError, match="unknown option"):
        lamina.run("resid_stats", model=str(gpt2_dir), out=str(tmp_path / "r2"), text_fil="x")
