"""CUDA: capture on the GPU equals the CPU, the one-hot MI path equals the CPU one, out-of-memory backs off,
and 2 ranks over NCCL equal one process. Skipped, with the reason shown, where no CUDA GPU is present
(run them with `bash benchmarks/gpu_check.sh` on a GPU machine)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lamina.engine.capture import capture_arrays
from lamina.engine.hooks import Capture, hidden_state_hooks, layer_hooks, qkv_hooks
from lamina.engine.inputs import Selector, encode_texts
from lamina.engine.kernels.pairs import all_pairs_mi_cov_corr
from lamina.engine.models import load_model

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")]

TEXTS = ["The cat sat on the mat.", "A long road runs past the old mill, then north.", "Rivers bend twice.",
         "She gave her brother a very small but extremely heavy box of old books."]


def captures(n_layers):
    return [Capture("qkv", qkv_hooks(range(n_layers)), Selector.last()),
            Capture("pre", layer_hooks("blocks.{layer}.mlp.hook_pre", range(n_layers)), Selector.every()),
            Capture("hidden", hidden_state_hooks(n_layers), Selector.last(), layer_dim="state")]


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-4), ("bfloat16", 6e-2)])
def test_capture_on_cuda_equals_cpu(tiny_dir, dtype, tol):
    cpu = load_model(str(tiny_dir), device="cpu")
    gpu = load_model(str(tiny_dir), device="cuda", dtype=dtype)
    batch = encode_texts(cpu.tokenizer, TEXTS, n_ctx=cpu.n_ctx)
    want = capture_arrays(cpu, batch, captures(cpu.n_layers))
    got = capture_arrays(gpu, batch, captures(gpu.n_layers))
    for k, w in want.items():
        g = got[k].float().cpu()
        scale = float(w.abs().max())
        assert float((g - w).abs().max()) <= tol * max(scale, 1.0), k


def test_onehot_mi_on_cuda_equals_cpu():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 1024, generator=g) * torch.linspace(0.5, 3, 40)[:, None]
    want = all_pairs_mi_cov_corr(x, bins=15, z_max=5.0)
    got = all_pairs_mi_cov_corr(x.cuda(), bins=15, z_max=5.0, method="onehot")
    for k in ("mi", "cov", "corr"):
        np.testing.assert_allclose(got[k].cpu().numpy(), want[k].numpy(), rtol=1e-9, atol=1e-9, err_msg=k)


def test_out_of_memory_halves_the_micro_batch(tmp_path, gpt2_dir):
    """A memory cap far below one big micro-batch: the pipeline backs off and the run completes, equal."""
    code = f"""
import torch, lamina, numpy as np
torch.cuda.set_per_process_memory_fraction(0.02)
m = lamina.load_model({str(gpt2_dir)!r}, device="cuda")
texts = ["word " * 100] * 4096
run = lamina.capture(m, texts, hooks="blocks.{{layer}}.mlp.hook_pre", positions="all",
                     out={str(tmp_path / "run")!r}, micro_batch=4096)
print("OK", run.numpy("acts/mlp.hook_pre").shape)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]
    assert "micro-batch reduced" in res.stderr


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs for NCCL")
def test_two_ranks_over_nccl_equal_one_process(tmp_path, gpt2_dir):
    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(TEXTS * 10))
    args = ["capture", "--model", str(gpt2_dir), "--text-file", str(texts), "--hook", "blocks.{layer}.attn.hook_q",
            "--device", "cuda", "--unit-samples", "4", "--micro-batch", "4", "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "lamina.analyses.cli", *args, "--out", str(tmp_path / "one")], check=True,
                   env=env, capture_output=True)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m",
                          "lamina.analyses.cli", *args, "--out", str(tmp_path / "two")], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    import lamina

    a, b = lamina.open_run(tmp_path / "one"), lamina.open_run(tmp_path / "two")
    np.testing.assert_allclose(a.numpy("acts/capture"), b.numpy("acts/capture"), atol=1e-5)
