"""torchrun with 2 CPU ranks (gloo) writes the same store as one process."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from lamina.engine.reader import open_run

WORDS = "a long road runs past the old mill, then north. rivers bend twice".split()


def test_two_ranks_equal_one_process(tmp_path, gpt2_dir):
    rng = np.random.default_rng()
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(" ".join(rng.choice(WORDS, size=int(rng.integers(2, 20)))) for _ in range(37)))
    common = ["capture", "--model", str(gpt2_dir), "--text-file", str(texts), "--hook", "blocks.{layer}.attn.hook_q",
              "--hook", "blocks.{layer}.attn.hook_k", "--hook", "blocks.{layer}.attn.hook_v", "--positions", "last",
              "--micro-batch", "4", "--chunk-samples", "4", "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "-m", "lamina.analyses.cli", *common, "--out", str(one)], check=True, env=env,
                   capture_output=True)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          str(29500 + os.getpid() % 1000), "-m", "lamina.analyses.cli", *common, "--out", str(two)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = open_run(one), open_run(two)
    assert b.complete and b.attrs["world_size"] == 2
    assert a.arrays() == b.arrays()
    for name in a.arrays():
        np.testing.assert_allclose(a.numpy(name), b.numpy(name), atol=1e-6, err_msg=name)
