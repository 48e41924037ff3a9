"""Smoke test of the benchmark suite: ``--tiny`` on a small checkpoint runs every section and writes JSON.

Benchmarks are not tests: nothing here asserts a speed, only that the code runs and
reports what it should (positive times, ratios, the machine it ran on).
"""

from __future__ import annotations

import importlib.util
import json

import pytest


def test_bench_tiny_writes_complete_json(gpt2_dir, tmp_path, capsys):
    from lamina.benchmarks.__main__ import main

    out = tmp_path / "bench.json"
    main(["--tiny", "--model", str(gpt2_dir), "--device", "cpu", "--out", str(out), "--tmp-dir", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "lamina/x" in printed and str(out) in printed

    report = json.loads(out.read_text())
    assert report["mode"] == "tiny" and report["device"] == "cpu"
    for key in ("cpu", "cpu_cores_logical", "torch", "transformers", "transformer_lens", "gpu"):
        assert key in report["machine"], key

    assert [c["case"] for c in report["capture"]] == ["qkv", "length", "punct"]
    for case in report["capture"]:
        assert case["lamina_s"] > 0 and case["floor_s"] > 0
        assert set(case["baselines_s"]) == {"hf_forward", "tl_forward", "tl_forward_lamina", "course_hooks", "tl_cache"}
        assert all(s > 0 for s in case["baselines_s"].values())
        assert case["ratios"]["lamina/hf_body"] > 0
        assert case["params"]["store"]["bytes"] > 0
        # lamina's arrays agree with the course's hooks and TL's cache
        diffs = [v for k, v in case["checks"].items() if k.startswith("max_abs_diff")]
        assert len(diffs) >= 2 and max(diffs) < 1e-4

    # peers: every tool captured the same values as plain HF hooks
    [peer] = report["peers"]
    assert peer["case"] == "tiny" and peer["lamina_s"] > 0 and peer["floor_s"] > 0
    tools = {"tl_cache", "hf_hooks"} | ({"nnsight"} if importlib.util.find_spec("nnsight") else set())
    assert tools <= set(peer["baselines_s"])
    rel = {k: v for k, v in peer["checks"].items() if k.startswith("max_rel_diff")}
    assert {f"max_rel_diff_{t}_vs_hf_hooks" for t in tools - {"hf_hooks"} | {"lamina"}} <= set(rel)
    assert max(rel.values()) < 1e-5
    if not importlib.util.find_spec("nnsight"):
        assert any(n["case"] == "peers/nnsight" for n in report["not_run"])

    # throughput: lamina capture against both floors, bytes accounted
    [size] = report["throughput"]["sizes"]
    assert size["tokens"] == 2048 and size["store_bytes"] == 2048 * 3 * 64 * 4
    assert size["lamina_s"] > 0 and size["compute_floor_s"] > 0 and size["disk_floor_s"] > 0
    assert size["lamina_over_max_floor"] > 0 and size["peak_rss_mib"] > 0

    assert [c["case"] for c in report["kernels"]] == ["qkv_blocks", "rsa", "length_corr", "punct_pairs"]
    for case in report["kernels"]:
        assert case["lamina_s"] > 0 and case["floor_s"] > 0 and case["baselines_s"]
        assert all(r is None or r > 0 for r in case["ratios"].values())
    punct = report["kernels"][-1]
    assert punct["variants"]["numpy_loop"]["extrapolated_from_pairs"] > 0

    scaling = report["scaling"]
    assert [r["tokens"] for r in scaling["sizes"]] == [1024, 4032]
    assert all(r["tokens_per_s"] > 0 and r["peak_rss_mib"] > 0 for r in scaling["sizes"])


def test_bench_rejects_unknown_case(tmp_path):
    from lamina.benchmarks.__main__ import main

    with pytest.raises(SystemExit):
        main(["--cases", "capture,nonsense", "--out", str(tmp_path / "x.json")])


def test_gpu_check_cpu_side_writes_one_json(tmp_path):
    """``benchmarks/gpu_check.sh`` without a GPU: its CPU side runs, ONE JSON says what it could not run."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the script would run its GPU part (minutes); run it by hand")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(root / "benchmarks" / "gpu_check.sh"), str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "NO CUDA GPU HERE" in proc.stdout
    [out] = list(tmp_path.glob("gpu-check-*.json"))
    report = json.loads(out.read_text())
    assert report["gpu_run"] is False
    why = {n["case"]: n["why"] for n in report["not_run"]}
    assert "no CUDA GPU" in why["gpu"]
    for later in ("smollm2_analyses", "cka", "bootstrap"):  # other work's paths: run, or said why not
        assert later in why or later in report["steps"], later
    bench = report["steps"]["bench_cpu_tiny"]
    assert bench["exit_code"] == 0
    assert bench["result"]["peers"] and bench["result"]["throughput"]["sizes"]
    assert report["steps"]["cuda_tests"]["exit_code"] in (0, 5)  # all skipped (or none collected) on a CPU
