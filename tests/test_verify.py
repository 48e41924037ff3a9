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
