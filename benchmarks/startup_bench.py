"""Start-up time of the commands that only read: ``lamina info RUN`` beside ``python -c pass`` and ``import torch``.

    python -m lamina.benchmarks.startup_bench [RUN] [--repeats 5]

Each command runs ``--repeats`` times in a fresh process; the median wall time is printed with its ratio to
``python -c pass`` and to ``python -c "import torch"``. Without RUN a small run is made first (``lamina capture`` of
GPT-2's architecture with random weights, offline); ``lamina compare`` reads two small ``lamina run rsa`` runs of
that architecture made first (seeds 0 and 1, 20 permutations), and rewrites one comparison folder each time.
Reading commands do not import torch (tests/test_startup.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAMINA = [sys.executable, "-m", "lamina.analyses.cli"]


def commands(run: str, pair: list[str], out: str) -> dict[str, list[str]]:
    return {"python -c pass": [sys.executable, "-c", "pass"],
            "python -c 'import torch'": [sys.executable, "-c", "import torch"],
            "lamina --help": [*LAMINA, "--help"],
            "lamina analyses": [*LAMINA, "analyses"],
            "lamina run qkv --help": [*LAMINA, "run", "qkv", "--help"],
            "lamina info RUN": [*LAMINA, "info", run],
            "lamina verify RUN": [*LAMINA, "verify", run],
            "lamina report RUN": [*LAMINA, "report", run],
            "lamina compare A B --out F": [*LAMINA, "compare", *pair, "--out", out]}


def wall(cmd: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def make_run(folder: Path) -> str:
    texts = folder / "texts.txt"
    texts.write_text("The cat sat on the mat.\nA dog ran far away.\n", encoding="utf-8")
    out = folder / "run"
    subprocess.run([*LAMINA, "capture", "--model", "gpt2", "--weights", "random", "--hook",
                    "blocks.{layer}.hook_resid_post", "--text-file", str(texts), "--out", str(out), "--no-progress"],
                   check=True, stdout=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return str(out)


def make_rsa_runs(folder: Path) -> list[str]:
    """Two complete ``lamina run rsa`` runs of GPT-2's architecture with random weights (seeds 0 and 1), no figures."""
    outs = [str(folder / f"rsa-{seed}") for seed in (0, 1)]
    for seed, out in enumerate(outs):
        subprocess.run([*LAMINA, "run", "rsa", "--model", "gpt2", "--weights", "random", "--permutations", "20",
                        "--seed", str(seed), "--out", out, "--no-figures", "--no-progress"],
                       check=True, stdout=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return outs


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", nargs="?", help="a run to read (default: a small one made first)")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lamina-startup-") as tmp:
        run = a.run or make_run(Path(tmp))
        cmds = commands(run, make_rsa_runs(Path(tmp)), str(Path(tmp) / "comparison"))
        wall(cmds["lamina info RUN"], 1)  # warm the file cache once
        results = {name: wall(cmd, a.repeats) for name, cmd in cmds.items()}
    base, torch_s = results["python -c pass"], results["python -c 'import torch'"]
    print(f"{'command':<26} {'median s':>9} {'- python':>9} {'/ import torch':>15}   ({a.repeats} fresh processes)")
    for name, s in results.items():
        print(f"{name:<26} {s:>9.3f} {s - base:>9.3f} {s / torch_s:>15.2f}")
    return results


if __name__ == "__main__":
    main()
