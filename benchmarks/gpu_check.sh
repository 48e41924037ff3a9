#!/usr/bin/env bash
# One prepared GPU check, under 8 minutes on one GPU (the steps' time limits add up to 470 s), writing ONE JSON:
#   1. every test marked `cuda` (tests/, so new paths' CUDA tests join by their marker);
#   2. the benchmarks on CUDA: capture (MFU, store bandwidth), kernels, scaling, end to end;
#   3. peers on CUDA: lamina vs nnsight, TransformerLens run_with_cache, HF hooks, the raw body
#      (GPT-2, GPT-Neo, the trained SmolLM2-135M), values checked equal;
#   4. capture throughput on CUDA against the disk floor and the compute floor;
#   5. paths other work adds (the trained model through the analyses, the CKA benchmark with its bootstrap):
#      run when present, else one line "not run: not available yet".
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (default bench-results/)
# Without a CUDA GPU it runs its CPU side (CUDA tests listed as skipped, every benchmark section in
# --tiny on a small checkpoint) and says clearly that the GPU part was not run. Whatever a step
# could not run is listed under "not_run" in the JSON, with the reason.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
OUT=${1:-bench-results}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TQDM_DISABLE=1
stamp=$(date -u +%Y%m%dT%H%M%SZ)
json="$OUT/gpu-check-$stamp.json"
steps="$OUT/gpu-check-steps-$stamp.tsv"   # name, exit code, seconds, JSON file or -, note
: > "$steps"
start=$(date +%s)

step() {  # step NAME TIMEOUT_S JSON_OR_- COMMAND...: run, time, record
  local name=$1 limit=$2 file=$3; shift 3
  local t0=$(date +%s)
  echo "== $name (at most ${limit}s)"
  timeout "$limit" "$@"
  local rc=$?
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$file" \
    "$([ $rc -eq 124 ] && echo "timed out after ${limit}s")" >> "$steps"
}

not_run() {  # not_run NAME WHY
  echo "== $1: not run: $2"
  printf '%s\t-\t0\t-\tnot run: %s\n' "$1" "$2" >> "$steps"
}

noted() {  # noted NAME NOTE: nothing to run, but say where it was covered
  echo "== $1: $2"
  printf '%s\t0\t0\t-\t%s\n' "$1" "$2" >> "$steps"
}

has_module() { $PY -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('$1') else 1)" 2>/dev/null; }

if $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  gpu=1
  echo "== GPU: $($PY -c 'import torch; print(torch.cuda.get_device_name(0))')"
  step cuda_tests 100 - $PY -m pytest -m cuda -q -p no:cacheprovider tests/ --junitxml="$OUT/cuda-tests.xml"
  step bench_cuda 140 "$OUT/bench-cuda.json" \
    $PY -m lamina.benchmarks --device cuda --cases capture,kernels,scaling,e2e --out "$OUT/bench-cuda.json"
  step peers_cuda 50 "$OUT/peers-cuda.json" \
    $PY -m lamina.benchmarks --device cuda --cases peers --out "$OUT/peers-cuda.json"
  step throughput_cuda 55 "$OUT/throughput-cuda.json" \
    $PY -m lamina.benchmarks --device cuda --cases throughput --out "$OUT/throughput-cuda.json"
  device=cuda
else
  gpu=0
  echo "== NO CUDA GPU HERE: the GPU part was NOT run (CUDA tests skipped, CPU side in --tiny only)"
  step cuda_tests 150 - $PY -m pytest -m cuda -q -p no:cacheprovider tests/ -rs --junitxml="$OUT/cuda-tests.xml"
  ckpt=$(mktemp -d)
  $PY -c "import sys; sys.path.insert(0, '.'); from tests.conftest import make_checkpoint; make_checkpoint('$ckpt', 'gpt2')"
  step bench_cpu_tiny 240 "$OUT/bench-cpu-tiny.json" \
    $PY -m lamina.benchmarks --tiny --model "$ckpt" --device cpu --out "$OUT/bench-cpu-tiny.json"
  rm -rf "$ckpt"
  device=cpu
fi

# Paths other work adds: run when present.
if $PY -c "import sys; from lamina.engine.models import MODEL_SPECS; sys.exit(0 if 'smollm2-135m' in MODEL_SPECS else 1)" 2>/dev/null; then
  step smollm2_analyses 50 - $PY -m lamina.analyses.cli run all --model smollm2-135m --dtype bfloat16 \
    --device "$device" --out "$OUT/smollm2-runs" --overwrite --no-figures --no-progress
else
  not_run smollm2_analyses "not available yet (lamina --model smollm2-135m: capture and the four analyses in bf16)"
fi
if [ -f benchmarks/cka_bench.py ] && has_module lamina.engine.kernels.cka; then
  if [ "$gpu" = 1 ]; then
    step cka 50 "$OUT/cka-$device.json" $PY -m lamina.benchmarks.cka_bench --device cuda --out "$OUT/cka-$device.json"
  else
    step cka 50 "$OUT/cka-$device.json" $PY -m lamina.benchmarks.cka_bench --tiny --device cpu --out "$OUT/cka-$device.json"
  fi
else
  not_run cka "not available yet (lamina.engine.kernels.cka and benchmarks/cka_bench.py)"
fi
if [ "$gpu" = 1 ] && has_module lamina.analyses.similarity; then  # the trained model's layer x layer CKA, and vs its control
  step smollm2_cka 25 - bash -c "$PY -m lamina.analyses.cli run cka --model smollm2-135m --dtype bfloat16 \
    --device cuda --out '$OUT/cka-smollm2' --overwrite --no-progress && $PY -m lamina.analyses.cli run cka \
    --model smollm2-135m --weights random --dtype bfloat16 --device cuda --out '$OUT/cka-smollm2-random' \
    --overwrite --no-progress && $PY -m lamina.analyses.cli similarity '$OUT/cka-smollm2' '$OUT/cka-smollm2-random' \
    --device cuda --out '$OUT/similarity-smollm2' --overwrite"
else
  not_run smollm2_cka "GPU only (lamina run cka / lamina similarity on SmolLM2-135M; their CPU side is in the tests)"
fi
if has_module lamina.engine.kernels.bootstrap; then
  noted bootstrap "timed in the cka step (its bootstrap variant); its CUDA tests ran with the cuda marker"
else
  not_run bootstrap "not available yet (lamina.engine.kernels.bootstrap)"
fi

$PY - "$json" "$OUT" "$gpu" "$steps" "$(( $(date +%s) - start ))" <<'PYEOF'
import json, sys, pathlib, xml.etree.ElementTree as ET
out, folder, gpu, steps, seconds = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3] == "1", sys.argv[4], int(sys.argv[5])
report = {"gpu_run": gpu, "seconds": seconds, "steps": {}, "not_run": []}
if not gpu:
    report["not_run"].append({"case": "gpu", "why": "no CUDA GPU here: only the CPU side ran"})
for line in pathlib.Path(steps).read_text().splitlines():
    name, rc, secs, file, note = (line.split("\t") + [""] * 5)[:5]
    if rc == "-":
        report["not_run"].append({"case": name, "why": note.removeprefix("not run: ")})
        continue
    entry = {"exit_code": int(rc), "seconds": int(secs)}
    if note:
        entry["note"] = note
    if file != "-" and pathlib.Path(file).exists():
        entry["result"] = json.loads(pathlib.Path(file).read_text())
        report["not_run"] += entry["result"].get("not_run", [])
    elif file != "-":
        entry["note"] = (entry.get("note", "") + " no result written").strip()
        report["not_run"].append({"case": name, "why": entry["note"]})
    report["steps"][name] = entry
xml = folder / "cuda-tests.xml"
if xml.exists():
    root = ET.parse(xml).getroot()
    suite = root.find("testsuite") if root.find("testsuite") is not None else root
    report["steps"].setdefault("cuda_tests", {})["tests"] = {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped", "time")}
pathlib.Path(out).write_text(json.dumps(report, indent=2, default=str))
for n in report["not_run"]:
    print(f"== not run: {n['case']}: {n['why']}")
print(f"== wrote {out} ({seconds} s)" + ("" if gpu else "  (NO GPU: GPU part not run)"))
PYEOF
