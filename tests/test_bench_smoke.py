"""Smoke test of the benchmark suite: ``--tiny`` on a small checkpoint runs every section and writes JSON.

Benchmarks are not tests: nothing here asserts a speed, only that the code runs and
reports what it should (positive times, ratios, the machine it ran on).
"""

from __future__ import annotations

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
