"""torchrun with 2 CPU ranks (gloo) writes the same run as one process, bitwise, for every analysis.

Both runs use the same micro-batches (``--unit-samples`` small enough that each rank captures several
work units) and one thread per process, so every float is computed the same way in both.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from lamina.engine.reader import open_run

WORDS = "a long road runs past the old mill, then north. rivers bend twice".split()
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

CASES = {  # analysis -> (its options, unit size)
    "qkv": ([], 4),
    "rsa": (["--permutations", "30"], 4),
    "length": (["--n-seq", "8", "--seq-len", "32", "--block", "1", "--store-acts"], 1),
    "punct": (["--marks", "10"], 2),
    "capture": (["--hook", "blocks.{layer}.attn.hook_q", "--hook", "blocks.{layer}.attn.hook_k", "--positions", "all"],
                4),
    "cka": (["--n-seq", "8", "--seq-len", "16"], 1),
}


def cli(*args):
    return [sys.executable, "-m", "lamina.analyses.cli", *map(str, args)]


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_equal_one_process(name, tmp_path, gpt2_dir):
    extra, unit = CASES[name]
    if name == "capture":
        rng = np.random.default_rng()
        texts = tmp_path / "texts.txt"
        texts.write_text("\n".join(" ".join(rng.choice(WORDS, size=int(rng.integers(2, 20)))) for _ in range(37)))
        extra = [*extra, "--text-file", texts]
    args = ["run", name, "--model", gpt2_dir, *extra, "--unit-samples", unit, "--no-progress", "--no-figures"]
    one, two = tmp_path / "one", tmp_path / "two"
    res = subprocess.run(cli(*args, "--out", one), env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          str(29500 + os.getpid() % 1000), *cli(*args, "--out", two)[1:]],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = open_run(one), open_run(two)
    assert b.complete and b.attrs["world_size"] == 2
    for phase, (done, total) in b.progress().items():
        assert done == total >= 4, (phase, total)  # several units for each rank
    assert a.arrays() == b.arrays()
    for array in a.arrays():
        np.testing.assert_array_equal(a.numpy(array), b.numpy(array), err_msg=array)
