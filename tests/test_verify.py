"""Checksummed chunks: `lamina verify` finds a truncated, a deleted and a flipped-byte chunk in acts/ and
results/ of every analysis and names it; `lamina plot` and `lamina info --verify` refuse a damaged run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lamina.analyses.cli import main as cli_main
from lamina.engine.reader import open_run
from lamina.engine.verify import verify

from .course_runs import course_runs
from .test_hostile import clean  # noqa: F401 - the module-scoped reference run (a fixture)

ANALYSES = ("qkv", "rsa", "length", "punct")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The tiny complete runs shared with test_compare / test_report (3 blocks)."""
    made = course_runs(tmp_path_factory)
    return {name: open_run(made[name, 3]) for name in ANALYSES}


def _chunk_file(run, group: str) -> tuple[str, Path, tuple]:
    """The first stored chunk of the first data array in ``group`` (not a coordinate)."""
    for name in run.arrays():
        arr = run[name]
        if name.startswith(group + "/") and name.rsplit("/", 1)[1] not in run.dims(name) and arr.nchunks:
            coords = (0,) * arr.ndim
            return name, Path(run.url) / name / arr.metadata.encode_chunk_key(coords), coords
    raise AssertionError(f"no array in {group}")


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "deleted":
        path.unlink()
    else:  # one flipped bit in the middle of the chunk
        b = bytearray(data)
        b[len(b) // 2] ^= 0x10
        path.write_bytes(bytes(b))


@pytest.mark.parametrize("name", list(ANALYSES))
def test_complete_runs_verify(runs, name):
    report = verify(runs[name])
    assert report.ok and report.n_chunks > 0 and not report.unchecked, report.summary()


@pytest.mark.parametrize("group", ["acts", "results"])
@pytest.mark.parametrize("how", ["truncated", "deleted", "flipped"])
@pytest.mark.parametrize("name", list(ANALYSES))
def test_damage_is_found_and_named(runs, name, group, how, tmp_path, capsys):
    copy = tmp_path / f"damaged-{name}-{group}-{how}"
    shutil.copytree(runs[name].url, copy)
    shutil.rmtree(copy / "figures", ignore_errors=True)
    array, chunk, coords = _chunk_file(open_run(copy), group)
    _damage(chunk, how)
    report = verify(str(copy))
    want = "missing" if how == "deleted" else "checksum mismatch"
    assert report.problems == [f"{array} chunk {coords}: {want}"], report.summary()
    for argv in (["plot", str(copy)], ["info", str(copy), "--verify"], ["verify", str(copy)]):
        with pytest.raises(SystemExit) as e:
            cli_main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"{array} chunk {coords}: {want}" in err and "Traceback" not in err
    assert not (copy / "figures").exists()


@pytest.mark.parametrize("how", ["garbage", "shape"])
def test_damaged_array_metadata_is_found(runs, how, tmp_path):
    """An array's own zarr.json (what plain zarr reads without consolidation) garbled or disagreeing with
    the run's consolidated metadata is damage."""
    import json

    copy = tmp_path / f"damaged-meta-{how}"
    shutil.copytree(runs["rsa"].url, copy)
    meta = copy / "results" / "rsa" / "zarr.json"
    if how == "garbage":
        meta.write_text("{garbage")
    else:
        doc = json.loads(meta.read_text())
        doc["shape"][-1] += 2
        meta.write_text(json.dumps(doc))
    report = verify(str(copy))
    assert [p.split(":")[0] for p in report.problems] == ["results/rsa"], report.summary()
    assert ("is damaged (not valid JSON" if how == "garbage" else "disagrees") in report.problems[0]


def test_an_interrupted_run_is_incomplete_not_damaged(runs, tmp_path, capsys):
    """Chunks of units not done yet in a run that is not complete are not damage (the same command resumes it);
    a chunk of a unit marked done that is missing, and a bad chunk that IS written, are."""
    import zarr

    copy = tmp_path / "damaged-interrupted"
    shutil.copytree(runs["qkv"].url, copy)
    shutil.rmtree(copy / "figures", ignore_errors=True)
    zarr.open_group(str(copy), mode="r+").attrs["status"] = "running"
    from lamina.engine.store import consolidate

    consolidate(str(copy))
    array, chunk, coords = _chunk_file(open_run(copy), "acts")
    chunk.unlink()  # its unit is still marked done: damage
    assert verify(str(copy)).problems == [f"{array} chunk {coords}: missing"]
    (copy / "_progress" / "capture" / "c" / "0").unlink()  # the unit is not done: a chunk not written yet
    report = verify(str(copy))
    assert report.ok and report.incomplete and report.unwritten >= 1, report.summary()
    assert "the same command resumes it" in report.summary()
    cli_main(["verify", str(copy)])  # exit 0: nothing damaged
    assert "chunks not written yet" in capsys.readouterr().out
    array, chunk, coords = _chunk_file(open_run(copy), "results")
    _damage(chunk, "flipped")
    assert verify(str(copy)).problems == [f"{array} chunk {coords}: checksum mismatch"]


# ---- the manifest: every kind of damage named, then repaired by the same command, bitwise ------------------


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _swap(a: Path, b: Path) -> None:
    x = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(x)


def _drop_from_consolidated(run: Path, name: str) -> None:
    import json

    doc = json.loads((run / "zarr.json").read_text())
    del doc["consolidated_metadata"]["metadata"][name]
    (run / "zarr.json").write_text(json.dumps(doc))


NOT_OURS = "not the chunk this run wrote (moved, swapped, or copied in from another run)"
CHUNK = Path("acts/target/c/1/2/0")
DAMAGE = {  # name -> (damage(run, other run), the problems verify must name)
    "deleted": (lambda r, o: (r / CHUNK).unlink(), ["acts/target chunk (1, 2, 0): missing"]),
    "flipped": (lambda r, o: _flip(r / CHUNK), ["acts/target chunk (1, 2, 0): checksum mismatch"]),
    "truncated": (lambda r, o: _damage(r / CHUNK, "truncated"), ["acts/target chunk (1, 2, 0): checksum mismatch"]),
    "swapped": (lambda r, o: _swap(r / CHUNK, r / "acts/target/c/1/3/0"),
                [f"acts/target chunk (1, 2, 0): {NOT_OURS}", f"acts/target chunk (1, 3, 0): {NOT_OURS}"]),
    "from-another-run": (lambda r, o: shutil.copy(o / "results/baseline_cosine_hist/c/0/0",
                                                  r / "results/baseline_cosine_hist/c/0/0"),
                         [f"results/baseline_cosine_hist chunk (0, 0): {NOT_OURS}"]),
    "array-zarr.json": (lambda r, o: (r / "acts/target/zarr.json").unlink(), ["acts/target: its zarr.json is missing"]),
    "group-zarr.json": (lambda r, o: (r / "results/zarr.json").unlink(), ["results: its zarr.json is missing"]),
    "dropped-from-consolidated": (lambda r, o: _drop_from_consolidated(r, "results/mean"),
                                  ["results/mean: absent from the run's consolidated metadata (readers of the run do "
                                   "not see it)"]),
    "truncated-root": (lambda r, o: _damage(r / "zarr.json", "truncated"), None),
}


@pytest.fixture(scope="module")
def seed1(gpt2_dir, tmp_path_factory):
    from .test_hostile import qkv_args

    out = tmp_path_factory.mktemp("seed1") / "run"
    cli_main(qkv_args(gpt2_dir, out, "--seed", "1"))
    return out


@pytest.mark.parametrize("how", list(DAMAGE))
def test_damage_is_named_and_the_same_command_repairs_it_bitwise(gpt2_dir, clean, seed1, tmp_path, capsys, how):
    from .test_hostile import copy_of, qkv_args, same_arrays

    run = copy_of(clean, tmp_path, how)
    damage, want = DAMAGE[how]
    damage(run, seed1)
    report = verify(str(run))
    if want is None:  # the root's metadata itself: named as damage
        assert report.problems[0].startswith("zarr.json (the run's root): not valid JSON"), report.summary()
    else:
        assert report.problems == want, report.summary()
    with pytest.raises(SystemExit) as e:
        cli_main(["verify", str(run)])
    assert e.value.code == 2 and "Traceback" not in capsys.readouterr().err
    cli_main(qkv_args(gpt2_dir, run))  # the same command
    assert "is damaged" in capsys.readouterr().out
    same_arrays(clean, run)
    assert verify(str(run)).ok
