"""Every stored number of the five built-in analyses, bitwise, at two git revisions (a script, not a test).

    .venv/bin/python tests/bitwise_runs.py                 # merge-base with main vs HEAD
    .venv/bin/python tests/bitwise_runs.py REV_A REV_B

Each revision is checked out into a temporary git worktree and imported from there (a shim folder maps
``lamina``, ``lamina.engine`` and ``lamina.analyses`` onto that tree, as the install does). Both run qkv,
rsa, length, punct and capture through the command line on one tiny random GPT-2 checkpoint (made as
tests/conftest.py makes them) and one seeded corpus; then every array of every run is compared byte for
byte (dtype, shape, bytes). Prints a table; exits 1 on any difference or missing array.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORDS = (
    "the river bends past an old mill where the grey birds rest and the road turns north under tall "
    "trees while a slow wind moves over fields of wheat"
).split()


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def corpus(folder: Path) -> tuple[Path, Path]:
    """A seeded prose corpus with commas and periods, and a file of short texts (one per line)."""
    rng = np.random.default_rng(1234)
    sentences = []
    for _ in range(220):
        words = list(rng.choice(WORDS, size=int(rng.integers(6, 14))))
        words[int(rng.integers(2, len(words) - 2))] += ","
        sentences.append(" ".join(words).capitalize() + ".")
    text = folder / "corpus.txt"
    text.write_text(" ".join(sentences), encoding="utf-8")
    lines = folder / "texts.txt"
    lines.write_text(
        "\n".join(" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) for _ in range(24)), encoding="utf-8"
    )
    return text, lines


def commands(ckpt: Path, text: Path, lines: Path) -> dict[str, list[str]]:
    common = ["--model", str(ckpt), "--no-progress", "--no-figures", "--seed", "7"]
    return {
        "qkv": ["run", "qkv", *common],
        "rsa": ["run", "rsa", *common, "--permutations", "50"],
        "length": ["run", "length", *common, "--text", str(text), "--n-seq", "4", "--seq-len", "48", "--block", "1"],
        "punct": ["run", "punct", *common, "--text", str(text), "--marks", "12", "--skip", "0"],
        "capture": [
            "run",
            "capture",
            *common,
            "--hook",
            "blocks.{layer}.hook_resid_post",
            "--text-file",
            str(lines),
            "--positions",
            "all",
        ],
    }


# the venv's editable install maps ``lamina`` to its own checkout ahead of PYTHONPATH: drop that finder
BOOT = (
    "import runpy, sys; sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in "
    "getattr(f, '__module__', '')]; "
)


def shim(tree: Path, folder: Path) -> Path:
    """A folder whose ``lamina`` package is ``tree``'s (lamina/ files, engine/, analyses/, benchmarks/)."""
    pkg = folder / "lamina"
    pkg.mkdir(parents=True)
    for f in (tree / "lamina").glob("*.py"):
        (pkg / f.name).symlink_to(f)
    for sub in ("engine", "analyses", "benchmarks"):
        (pkg / sub).symlink_to(tree / sub)
    return folder


def run_revision(rev: str, work: Path, cmds: dict[str, list[str]]) -> dict[str, Path]:
    tree = work / f"tree-{rev[:10]}"
    git("worktree", "add", "--detach", str(tree), rev)
    try:
        path = shim(tree, work / f"shim-{rev[:10]}")
        env = {
            **os.environ,
            "PYTHONPATH": str(path),
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "LAMINA_CACHE": str(work / "cache"),
        }
        where = subprocess.run(
            [sys.executable, "-c", BOOT + "import lamina.analyses.cli as c; print(c.__file__)"],
            env=env,
            capture_output=True,
            text=True,
            cwd=work,
        )
        where = where.stdout.strip() or where.stderr[-1500:]
        assert where and Path(where).resolve().is_relative_to(tree.resolve()), f"{rev}: lamina imported from {where!r}"
        outs = {}
        for name, argv in cmds.items():
            out = work / f"runs-{rev[:10]}" / name
            main = BOOT + "sys.argv[0] = 'lamina'; runpy.run_module('lamina.analyses.cli', run_name='__main__')"
            proc = subprocess.run(
                [sys.executable, "-c", main, *argv, "--out", str(out)],
                env=env,
                capture_output=True,
                text=True,
                cwd=work,
            )
            if proc.returncode != 0:
                raise SystemExit(f"{rev} {name}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
            outs[name] = out
        return outs
    finally:
        git("worktree", "remove", "--force", str(tree))


def arrays(url: Path) -> dict[str, np.ndarray]:
    import zarr

    out: dict[str, np.ndarray] = {}

    def walk(group, prefix: str) -> None:
        for key, node in group.members():
            path = f"{prefix}{key}"
            if isinstance(node, zarr.Array):
                out[path] = np.asarray(node[...])
            else:
                walk(node, path + "/")

    walk(zarr.open_group(str(url), mode="r"), "")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev_a", nargs="?", default=None, help="default: git merge-base main HEAD")
    ap.add_argument("rev_b", nargs="?", default="HEAD")
    args = ap.parse_args(argv)
    rev_a = git("rev-parse", args.rev_a or git("merge-base", "main", "HEAD"))
    rev_b = git("rev-parse", args.rev_b)
    sys.path.insert(0, str(ROOT))
    from tests.conftest import make_checkpoint

    work = Path(tempfile.mkdtemp(prefix="lamina-bitwise-"))
    try:
        ckpt = make_checkpoint(work / "ckpt", "gpt2")
        cmds = commands(ckpt, *corpus(work))
        runs = {rev: run_revision(rev, work, cmds) for rev in (rev_a, rev_b)}
        print(f"{rev_a[:10]} (A) vs {rev_b[:10]} (B)")
        print(f"{'analysis':<9} {'array':<34} {'dtype':<8} {'shape':<22} result")
        bad = 0
        for name in cmds:
            a, b = arrays(runs[rev_a][name]), arrays(runs[rev_b][name])
            for path in sorted(set(a) | set(b)):
                if path not in a or path not in b:
                    result = "only in " + ("A" if path in a else "B")
                    x = a.get(path, b.get(path))
                else:
                    x, y = a[path], b[path]
                    same = x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
                    result = "identical" if same else "DIFFERENT"
                bad += result != "identical"
                print(f"{name:<9} {path:<34} {str(x.dtype):<8} {str(x.shape):<22} {result}")
        print(f"{bad} difference(s)" if bad else "every array bitwise identical")
        return 1 if bad else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
