"""A unit run in one forward writes each layer's chunks while the later blocks still run (the pipeline's
``on_entry``): the stored bytes and the manifest are those of the unit written whole after its forward."""

from __future__ import annotations

import numpy as np
import zarr

from lamina.engine import pipeline
from lamina.engine.capture import capture_arrays
from lamina.engine.inputs import encode_texts
from lamina.engine.pipeline import capture_to_store
from lamina.engine.reader import open_run
from lamina.engine.verify import verify

from .test_store import captures, open_store, random_texts


def _stored(path) -> dict[str, bytes]:
    """Every file of the store's arrays (chunks, metadata, the manifest in _progress), as bytes."""
    g = zarr.open_group(str(path), mode="r")
    out = {}
    for name, arr in g.members(max_depth=None):
        if isinstance(arr, zarr.Array):
            values = np.asarray(arr[...])
            out[name] = values.tobytes() if values.dtype.kind not in "OTU" else repr(values.tolist()).encode()
    return out


def _capture(tmp_path, name, m, batch, caps, **kw):
    store = open_store(tmp_path / name)
    capture_to_store(m, batch, caps, store, progress=False, **kw)
    store.finalise()
    return tmp_path / name


def test_early_writes_equal_the_whole_unit_bitwise(tmp_path, tiny_model, monkeypatch):
    m = tiny_model
    rng = np.random.default_rng()
    batch = encode_texts(m.tokenizer, random_texts(rng, 12), n_ctx=m.n_ctx)
    caps = captures(m)
    handed: list[tuple] = []  # (capture, entry) in the order the forward finished them
    real = pipeline.EarlyWrites.on_entry

    def spy(self, name, entry, samples, values):
        handed.append((name, entry, samples))
        return real(self, name, entry, samples, values)

    monkeypatch.setattr(pipeline.EarlyWrites, "on_entry", spy)
    early = _capture(tmp_path, "early", m, batch, caps, micro_batch=4, samples_per_chunk=4)  # 3 units, 1 forward each
    n_entries = sum(len(c.hooks) for c in caps)
    assert len(handed) == 3 * n_entries  # every entry of every unit went out during its forward
    assert [h[2] for h in handed[:n_entries]] == [range(0, 4)] * n_entries

    monkeypatch.setattr(pipeline.EarlyWrites, "on_entry", lambda self, *a: self.abandon())
    whole = _capture(tmp_path, "whole", m, batch, caps, micro_batch=4, samples_per_chunk=4)
    assert _stored(early) == _stored(whole)
    assert verify(str(early)).ok
    ref = {k: v.numpy() for k, v in capture_arrays(m, batch, caps, micro_batch=len(batch)).items()}
    run = open_run(early)
    for name, want in ref.items():
        np.testing.assert_allclose(run.numpy(name), want, atol=1e-5, err_msg=name)


def test_units_of_several_forwards_are_written_after_them(tmp_path, tiny_model, monkeypatch):
    m = tiny_model
    batch = encode_texts(m.tokenizer, random_texts(np.random.default_rng(), 9), n_ctx=m.n_ctx)
    called = []
    monkeypatch.setattr(pipeline.EarlyWrites, "on_entry", lambda self, *a: called.append(a))
    path = _capture(tmp_path, "run", m, batch, captures(m), micro_batch=2, samples_per_chunk=4)
    # units of 4 samples take two forwards (a forward over part of a unit would write partial chunks); the last
    # unit, 1 sample, is one forward
    assert {a[2] for a in called} == {range(8, 9)}
    assert open_run(path).complete and verify(str(path)).ok
