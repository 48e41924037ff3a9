"""How long loading a GGUF file takes: the first load (dequantise into the cache) and later loads (from it).

    python -m lamina.benchmarks.gguf_bench [--model smollm2-135m] [--repeats 3] [--json OUT]

Each load runs in a fresh Python process, so nothing is warm but the OS file cache. A "first" load gets an
empty ``LAMINA_CACHE``; a "later" load reuses the cache a first load filled; a "folder" load reads the
dequantised checkpoint folder itself (``--model FOLDER``: what any checkpoint of this size costs, the
reference for the GGUF's overhead - hashing the file). Reported per kind: the seconds
``lamina.load_model(MODEL, device="cpu")`` takes inside the process once torch, transformers and
TransformerLens are imported (the imports, the same for every model, are reported apart), and the whole
process's wall time; median and range of the repeats. The kinds alternate within each repeat, so machine
noise falls on all alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

CHILD = """
import time
t = time.perf_counter()
import lamina, transformer_lens.model_bridge, transformers.modeling_utils
from transformers import AutoModelForCausalLM, AutoTokenizer
imports = time.perf_counter() - t
t = time.perf_counter()
m = lamina.load_model({model!r}, device="cpu")
print(time.perf_counter() - t, imports, m.provenance()["config_path"].rsplit("/", 1)[0])
"""
KINDS = ("first", "later", "folder")
WHAT = ("load_model_s", "imports_s", "process_s")


def load_once(model: str, cache: str) -> tuple[float, float, float, str]:
    """(seconds inside load_model, seconds of the imports, seconds of the whole process, the checkpoint folder)
    for one load with ``LAMINA_CACHE=cache``."""
    env = {**os.environ, "LAMINA_CACHE": cache, "HF_HUB_OFFLINE": "1"}
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD.format(model=model)], env=env, capture_output=True, text=True,
                         check=True)
    wall = time.perf_counter() - t
    load, imports, folder = out.stdout.strip().splitlines()[-1].split(" ", 2)
    return float(load), float(imports), wall, folder


def bench(model: str, repeats: int) -> dict:
    rows: dict[str, list[tuple]] = {k: [] for k in KINDS}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="lamina-gguf-bench-") as cache:
            rows["first"].append(load_once(model, cache))
            rows["later"].append(load_once(model, cache))
            rows["folder"].append(load_once(rows["first"][-1][3], cache))
    out = {}
    for kind, vals in rows.items():
        for i, what in enumerate(WHAT):
            xs = [v[i] for v in vals]
            out[f"{kind}_{what}"] = {"median": round(statistics.median(xs), 2), "min": round(min(xs), 2),
                                     "max": round(max(xs), 2), "all": [round(x, 2) for x in xs]}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m lamina.benchmarks.gguf_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="a .gguf file or a packaged name")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args(argv)
    res = {"model": args.model, "repeats": args.repeats, "cpus": os.cpu_count(), **bench(args.model, args.repeats)}
    for kind in KINDS:
        for what in WHAT:
            r = res[f"{kind}_{what}"]
            print(f"{kind + ' ' + what:<22} median {r['median']:6.2f} s   range {r['min']:.2f}-{r['max']:.2f} s   "
                  f"{r['all']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
