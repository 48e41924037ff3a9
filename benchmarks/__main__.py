"""``python -m lamina.benchmarks`` / ``lamina bench``: every benchmark, side by side, in one run.

    python -m lamina.benchmarks --quick                         # a few minutes on a laptop CPU
    python -m lamina.benchmarks --device cuda --out bench-results/h100.json
    python -m lamina.benchmarks --cases kernels --repeats 5
    python -m lamina.benchmarks --tiny --model CHECKPOINT_DIR   # smoke run (seconds)
    python -m lamina.benchmarks --quick --cases peers,throughput  # lamina vs nnsight / TL / HF hooks; vs the disk

Prints one table per case and writes JSON: machine (CPU, cores, GPU, versions), then per
case the seconds of lamina, of each baseline and of the floor, and lamina/x ratios
(< 1: lamina is faster). All ratios of a case come from the same process, model, inputs
and device, measured one after the other: warm-up, then the median of the repeats,
synchronised on CUDA.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

CASES = ("capture", "peers", "throughput", "kernels", "scaling", "e2e")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lamina bench", description="lamina benchmarks: lamina vs baselines vs the floor.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller shapes (a few minutes on a CPU)")
    size.add_argument("--tiny", action="store_true",
                      help="minimal shapes for smoke tests; give --model (a small checkpoint directory)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    p.add_argument("--out", default=None, help="JSON output (default bench-results/{full|quick|tiny}-{device}.json)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    p.add_argument("--model", default=None,
                   help="a checkpoint directory (or table name) to use for every capture and scaling case")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls before timing (default 1; 0 with --tiny)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls, median reported (default 3 full, 2 quick, 1 tiny)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's, one per core). On a CPU shared with other work, "
                        "--threads 1 avoids OpenMP stalls when a worker thread is descheduled")
    p.add_argument("--tmp-dir", default=None, help="where temporary Zarr stores go (default: the system temp dir)")
    p.add_argument("--scaling-inprocess", action="store_true",
                   help="run scaling sizes in this process (default: one process per size, independent peaks; "
                        "--tiny implies it)")
    a = p.parse_args(argv)
    a.mode = "tiny" if a.tiny else "quick" if a.quick else "full"
    a.case_list = [c.strip() for c in a.cases.split(",") if c.strip()]
    bad = [c for c in a.case_list if c not in CASES]
    if bad:
        p.error(f"--cases: unknown {bad}; choose from {', '.join(CASES)}")
    if a.mode == "tiny" and a.model is None and set(a.case_list) & {"capture", "peers", "throughput", "scaling"}:
        p.error("--tiny needs --model CHECKPOINT_DIR (a small model) for the capture, peers, throughput and "
                "scaling cases")
    if a.device not in ("auto", "cpu", "cuda") and not a.device.startswith("cuda:"):
        p.error(f"--device must be cpu, cuda or auto, not {a.device!r}")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {a.device} was asked for but CUDA is not available here; use --device cpu or auto")
    a.device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    a.warmup = (0 if a.mode == "tiny" else 1) if a.warmup is None else a.warmup
    a.repeats = a.repeats or {"full": 3, "quick": 2, "tiny": 1}[a.mode]
    a.out = a.out or f"bench-results/{a.mode}-{a.device.replace(':', '')}.json"
    return a


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the selected benchmark sections, print tables, write the JSON; returns the JSON object."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    a = parse_args(sys.argv[1:] if argv is None else argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from .timing import machine_info

    report: dict[str, Any] = {
        "lamina_bench": 1, "mode": a.mode, "device": a.device, "warmup": a.warmup, "repeats": a.repeats,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "argv": list(sys.argv[1:] if argv is None else argv), "machine": machine_info(a.device),
        "capture": [], "peers": [], "throughput": None, "kernels": [], "scaling": None, "e2e": None,
        "not_run": [],
    }
    m = report["machine"]
    _say(f"lamina bench ({a.mode}) on {a.device}: {m['cpu']} ({m['cpu_cores_logical']} logical cores, "
         f"{m['torch_threads']} torch threads, load {m['load_average_1min']})"
         + (f", GPU {m['gpu']}" if m.get("gpu") else "")
         + f"; torch {m['torch']}, transformers {m['transformers']}, transformer_lens {m['transformer_lens']}")
    out = Path(a.out)
    try:
        if "capture" in a.case_list:
            _capture(a, report, out)
        if "peers" in a.case_list:
            _peers(a, report, out)
        if "throughput" in a.case_list:
            _throughput(a, report, out)
        if "kernels" in a.case_list:
            _kernels(a, report, out)
        if "scaling" in a.case_list:
            _scaling(a, report, out)
        if "e2e" in a.case_list:
            _e2e(a, report, out)
    finally:
        report["load_average_1min_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
        _write(report, out)
    _say(f"\nwrote {out}")
    return report


def _capture(a, report, out: Path) -> None:
    from .capture_bench import capture_specs, run_capture_case

    for spec in capture_specs(a.mode, a.model):
        _say(f"\n... capture {spec.case} on {spec.model} ({a.device})")
        res = run_capture_case(spec, device=a.device, warmup=a.warmup, repeats=a.repeats, tmp_dir=a.tmp_dir)
        _say(res.table())
        report["capture"].append(res.to_json())
        _write(report, out)
        del res
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _peers(a, report, out: Path) -> None:
    from .peers_bench import nnsight_missing, peer_specs, run_peer_case, smollm2_missing

    if nnsight_missing():
        report["not_run"].append({"case": "peers/nnsight", "why": nnsight_missing()})
    for spec in peer_specs(a.mode, a.model):
        _say(f"\n... peers {spec.case} ({a.device})")
        if spec.case == "smollm2" and smollm2_missing():
            report["not_run"].append({"case": "peers/smollm2", "why": smollm2_missing()})
        res = run_peer_case(spec, device=a.device, warmup=a.warmup, repeats=a.repeats,
                            max_repeats=None if a.mode == "tiny" else 5)
        if res is None:
            continue
        _say(res.table())
        report["peers"].append(res.to_json())
        _write(report, out)
        del res
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _throughput(a, report, out: Path) -> None:
    from .scaling_bench import small_gpt2
    from .throughput_bench import run_throughput, sizes_for, table

    tmp = None
    model = a.model
    if model is None:
        tmp = tempfile.TemporaryDirectory(prefix="lamina-bench-model-", dir=a.tmp_dir)
        model = small_gpt2(Path(tmp.name), n_layers=2)
    _say(f"\n... throughput {sizes_for(a.mode)} tokens on {a.model or 'gpt2-small widths, 2 blocks'} ({a.device})")
    try:
        res = run_throughput(model, sizes_for(a.mode), seq_len=64 if a.mode == "tiny" else 512, device=a.device,
                             tmp_dir=a.tmp_dir, inprocess=a.mode == "tiny", threads=a.threads,
                             repeats=2 if a.mode == "quick" else 1)
    finally:
        if tmp is not None:
            tmp.cleanup()
    if a.model is None:
        res["model"] = "gpt2-small widths, 2 blocks, random weights"
    report["throughput"] = res
    _say(table(res))
    _write(report, out)


def _kernels(a, report, out: Path) -> None:
    from .kernel_bench import kernel_specs, run_kernel_case

    for spec in kernel_specs(a.mode):
        _say(f"\n... kernels {spec.case} ({a.device})")
        res = run_kernel_case(spec, device=a.device, warmup=a.warmup, repeats=a.repeats,
                              slow_s={"full": 20.0, "quick": 10.0, "tiny": 5.0}[a.mode])
        _say(res.table())
        report["kernels"].append(res.to_json())
        _write(report, out)
        gc.collect()


def _scaling(a, report, out: Path) -> None:
    from .scaling_bench import run_scaling, sizes_for, small_gpt2, table

    model = a.model
    tmp = None
    if model is None:
        if a.mode == "quick":
            tmp = tempfile.TemporaryDirectory(prefix="lamina-bench-model-", dir=a.tmp_dir)
            model = small_gpt2(Path(tmp.name), n_layers=1)
        else:
            model = "gpt2"
    seq_len = 64 if a.mode == "tiny" else 512
    _say(f"\n... scaling {sizes_for(a.mode)} tokens on {model} ({a.device})")
    try:
        res = run_scaling(model, sizes_for(a.mode), seq_len=seq_len, device=a.device, tmp_dir=a.tmp_dir,
                          inprocess=a.scaling_inprocess or a.mode == "tiny", threads=a.threads)
    finally:
        if tmp is not None:
            tmp.cleanup()
    if a.mode == "quick" and a.model is None:
        res["model"] = "gpt2-small widths, 1 block, random weights"
    report["scaling"] = res
    _say(table(res))


def _e2e(a, report, out: Path) -> None:
    from .e2e_bench import run_e2e, table

    model = a.model or {"full": "gpt2-xl", "quick": "gpt2"}.get(a.mode)
    if model is None:
        return
    _say(f"\n... end to end: lamina run qkv --model {model} ({a.device})")
    res = run_e2e(model, device=a.device, weights="random" if a.model is None else "pretrained", tmp_dir=a.tmp_dir,
                  repeats=a.repeats)
    report["e2e"] = res
    _say(table(res))
    _write(report, out)


def _write(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=_json_default))
    os.replace(tmp, out)


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def _say(text: str) -> None:
    print(text, flush=True)


if __name__ == "__main__":
    main()
