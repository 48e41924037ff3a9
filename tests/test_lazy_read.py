"""Reading a run stays lazy: Run.datatree(), Run.dataset() and the README's ``xr.open_datatree(..., chunks={})`` are
dask-backed on the stored chunks, and a mean over an activation array stays within 2 chunks + 300 MB of memory
(the benchmark at a small size; ``python -m lamina.benchmarks.lazy_read_bench`` runs it at >= 1 GiB)."""

from __future__ import annotations

import dask.array as da
import numpy as np

from lamina.benchmarks.lazy_read_bench import run as bench, write_run
from lamina.engine.reader import open_run


def test_run_views_are_dask_on_the_stored_chunks(tmp_path):
    made = write_run(str(tmp_path / "run"), 0.01, 0.5)
    run = open_run(tmp_path / "run")
    for var in (run.datatree()["acts"].mlp_pre, run.dataset("acts").mlp_pre):
        assert isinstance(var.data, da.Array)
        assert tuple(c[0] for c in var.data.chunks) == tuple(run["acts/mlp_pre"].chunks)
        np.testing.assert_allclose(var.mean(["sample", "pos"]).values, made["mean"], rtol=1e-5, atol=1e-5)


def test_a_mean_stays_within_two_chunks_and_300_mb(tmp_path):
    out = bench(gib=0.05, chunk_mib=2, tmp_dir=str(tmp_path))
    for reader, r in out["readers"].items():
        assert r["backing"] == "dask.Array" and r["within_bound"] and r["max_abs_error"] < 1e-4, (reader, r)
