"""The run store: streamed capture == one batch, schema, refusal rules, locks, failures mid-write."""

from __future__ import annotations

import errno
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zarr

from lamina.engine.capture import capture_arrays
from lamina.engine.errors import StoreExistsError, StoreLockedError, StoreMismatchError, StoreNotWritableError
from lamina.engine.hooks import Capture, hidden_state_hooks, layer_hooks, qkv_hooks
from lamina.engine.inputs import Selector, encode_texts
from lamina.engine.pipeline import capture_to_store
from lamina.engine.reader import open_run
from lamina.engine.store import RunWriter as RunStore

WORDS = "alpha beta gamma delta, epsilon. zeta eta theta iota kappa lambda mu nu xi omicron pi".split()


def random_texts(rng, n):
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 12)))) for _ in range(n)]


def open_store(path, **kw):
    return RunStore.open(str(path), experiment="test", key={"k": 1}, provenance={"model": {"model": "tiny"}}, **kw)


def captures(m):
    L = m.n_layers
    return [
        Capture("acts/qkv", qkv_hooks(range(L)), Selector.last()),
        Capture("acts/pre", layer_hooks("blocks.{layer}.mlp.hook_pre", range(L)), Selector.every()),
        Capture("acts/hidden", hidden_state_hooks(L), Selector.last(), layer_dim="state"),
    ]


def test_streamed_capture_equals_one_batch(tmp_path, tiny_model):
    m = tiny_model
    rng = np.random.default_rng()
    batch = encode_texts(m.tokenizer, random_texts(rng, 23), n_ctx=m.n_ctx)
    ref = {k: v.numpy() for k, v in capture_arrays(m, batch, captures(m), micro_batch=len(batch)).items()}
    store = open_store(tmp_path / "run")
    capture_to_store(m, batch, captures(m), store, micro_batch=3, samples_per_chunk=2, progress=False)
    store.finalise()
    run = open_run(tmp_path / "run")
    assert run.complete
    for name, want in ref.items():
        got = run.numpy(name)
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=name)
        assert run[name].chunks[1] == 2  # chunk along samples = samples_per_chunk
    assert run.dims("acts/pre") == ("layer", "sample", "pos", "feature")
    assert run.dims("acts/hidden") == ("state", "sample", "feature")
    assert run.progress() == {"capture": (6, 6)}  # units of 2 whole chunks (micro-batch 3 -> 4 samples)


def test_store_is_readable_by_plain_zarr_and_xarray(tmp_path, gpt2_dir):
    from lamina.engine.models import load_model

    m = load_model(str(gpt2_dir))
    batch = encode_texts(m.tokenizer, ["one two three", "four five"], n_ctx=m.n_ctx)
    store = open_store(tmp_path / "run")
    store.put("inputs/lengths", batch.lengths.numpy(), dims=("sample",))
    capture_to_store(m, batch, captures(m)[:1], store, progress=False)
    store.finalise()
    g = zarr.open_group(str(tmp_path / "run"), mode="r")
    assert g.attrs["status"] == "complete"
    assert tuple(g["acts/qkv"].metadata.dimension_names) == ("layer", "sample", "feature")
    ds = open_run(tmp_path / "run").dataset("acts")
    assert ds["qkv"].dims == ("layer", "sample", "feature")
    np.testing.assert_allclose(ds["qkv"].values, np.asarray(g["acts/qkv"][...]))


def test_complete_run_is_refused_unless_overwrite(tmp_path):
    s = open_store(tmp_path / "run")
    s.put("results/x", np.arange(3.0), dims=("i",))
    s.finalise()
    s.close()
    with pytest.raises(StoreExistsError, match="overwrite=True"):
        open_store(tmp_path / "run")
    assert open_run(tmp_path / "run").numpy("results/x").tolist() == [0.0, 1.0, 2.0]  # untouched
    s = open_store(tmp_path / "run", overwrite=True)
    assert "results/x" not in s and not s.resumed
    s.close()


def test_incomplete_run_of_another_command_is_refused(tmp_path):
    s = open_store(tmp_path / "run")
    s.close()  # left incomplete
    with pytest.raises(StoreMismatchError, match="different command"):
        RunStore.open(str(tmp_path / "run"), experiment="test", key={"k": 2}, provenance={})
    s = open_store(tmp_path / "run")
    assert s.resumed
    s.close()


def test_second_writer_is_refused_and_a_dead_writer_holds_nothing(tmp_path):
    path = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from lamina.engine.store import RunStore
            s = RunStore.open({str(path)!r}, experiment="test", key={{"k": 1}}, provenance={{}})
            print("locked", flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError, match="another live process"):
            open_store(path)
    finally:
        holder.kill()
        holder.wait()
    s = open_store(path)  # the dead process's lock is gone: resumable
    assert s.resumed
    s.close()


def test_read_only_destination_fails_before_anything(tmp_path):
    with pytest.raises(StoreNotWritableError, match="not writable"):
        open_store("/sys/lamina-test/run")


def test_disk_full_mid_write_leaves_a_resumable_run(tmp_path, gpt2_dir, monkeypatch):
    from lamina.engine.models import load_model

    m = load_model(str(gpt2_dir))
    rng = np.random.default_rng()
    batch = encode_texts(m.tokenizer, random_texts(rng, 8), n_ctx=m.n_ctx)
    caps = captures(m)[:1]
    path = tmp_path / "run"
    store = open_store(path)
    real_setitem = zarr.Array.__setitem__
    calls = {"n": 0}

    def full_disk(self, key, value):  # the 5th chunk write finds the disk full
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_setitem(self, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", full_disk)
    with pytest.raises(StoreNotWritableError, match="No space left"):
        capture_to_store(m, batch, caps, store, micro_batch=1, samples_per_chunk=1, progress=False)
    store.close()
    monkeypatch.setattr(zarr.Array, "__setitem__", real_setitem)
    run = open_run(path)
    assert not run.complete
    done, total = run.progress()["capture"]
    assert 0 < done < total
    store = open_store(path)  # same command again: resumes and completes
    assert store.resumed
    capture_to_store(m, batch, caps, store, micro_batch=1, samples_per_chunk=1, progress=False)
    store.finalise()
    want = capture_arrays(m, batch, caps, micro_batch=1)["acts/qkv"].numpy()
    np.testing.assert_array_equal(open_run(path).numpy("acts/qkv"), want)


def test_resume_with_another_micro_batch_rewrites_everything(tmp_path, gpt2_dir):
    """Unit boundaries move with --micro-batch; old done flags must not be trusted then."""
    from lamina.engine.models import load_model

    m = load_model(str(gpt2_dir))
    rng = np.random.default_rng()
    batch = encode_texts(m.tokenizer, random_texts(rng, 16), n_ctx=m.n_ctx)
    caps = captures(m)[:1]
    path = tmp_path / "run"
    store = open_store(path)

    class Crash:  # a reducer that interrupts the run at its third unit
        name = "crash"

        def state_specs(self, widths):
            return {}

        def reduce(self, unit):
            if unit.index == 2:
                raise KeyboardInterrupt
            return {}

    with pytest.raises(KeyboardInterrupt):
        capture_to_store(m, batch, caps, store, micro_batch=6, samples_per_chunk=1, reducers=[Crash()],
                         progress=False)
    store.close()
    store = open_store(path)
    assert store.resumed
    capture_to_store(m, batch, caps, store, micro_batch=7, samples_per_chunk=1, progress=False)
    store.finalise()
    want = capture_arrays(m, batch, caps, micro_batch=16)["acts/qkv"].numpy()
    np.testing.assert_allclose(open_run(path).numpy("acts/qkv"), want, atol=1e-5)
