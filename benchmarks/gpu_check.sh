#!/usr/bin/env bash
# One prepared GPU check, under 8 minutes on one GPU: the CUDA tests, then the benchmarks on CUDA
# (model-FLOPs utilisation, store write bandwidth, kernel times), written as ONE JSON.
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (default bench-results/)
# Without a CUDA GPU it still runs the CPU-side checks and says clearly that the GPU part was not run.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
OUT=${1:-bench-results}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TQDM_DISABLE=1
stamp=$(date -u +%Y%m%dT%H%M%SZ)
json="$OUT/gpu-check-$stamp.json"
if $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "== GPU: $($PY -c 'import torch; print(torch.cuda.get_device_name(0))')"
  timeout 240 $PY -m pytest -m cuda -q -p no:cacheprovider tests/test_cuda.py --junitxml="$OUT/cuda-tests.xml"
  tests_rc=$?
  timeout 330 $PY -m lamina.benchmarks --device cuda --out "$OUT/bench-cuda.json"
  bench_rc=$?
  gpu=1
else
  echo "== NO CUDA GPU HERE: the GPU part was NOT run (CUDA tests skipped, CPU smoke benchmark only)"
  timeout 240 $PY -m pytest -m cuda -q -p no:cacheprovider tests/test_cuda.py -rs --junitxml="$OUT/cuda-tests.xml"
  tests_rc=$?
  ckpt=$(mktemp -d)
  $PY -c "import sys; sys.path.insert(0, '.'); from tests.conftest import make_checkpoint; make_checkpoint('$ckpt', 'gpt2')"
  timeout 300 $PY -m lamina.benchmarks --tiny --model "$ckpt" --device cpu --out "$OUT/bench-cpu-tiny.json"
  bench_rc=$?
  gpu=0
fi
$PY - "$json" "$OUT" "$gpu" "$tests_rc" "$bench_rc" <<'PYEOF'
import json, sys, pathlib, xml.etree.ElementTree as ET
out, folder, gpu, tests_rc, bench_rc = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3] == "1", *map(int, sys.argv[4:])
report = {"gpu_run": gpu, "tests_exit_code": tests_rc, "bench_exit_code": bench_rc}
xml = folder / "cuda-tests.xml"
if xml.exists():
    suite = ET.parse(xml).getroot().find("testsuite") or ET.parse(xml).getroot()
    report["tests"] = {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped", "time")}
bench = folder / ("bench-cuda.json" if gpu else "bench-cpu-tiny.json")
if bench.exists():
    report["bench"] = json.loads(bench.read_text())
pathlib.Path(out).write_text(json.dumps(report, indent=2, default=str))
print(f"== wrote {out}" + ("" if gpu else "  (NO GPU: GPU part not run)"))
PYEOF
