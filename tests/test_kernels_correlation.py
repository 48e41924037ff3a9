"""Per-neuron Pearson / partial correlation kernels against plain NumPy loops (docs/analyses.md "length")."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from lamina.engine.errors import InputError
from lamina.engine.kernels.correlation import (
    StreamingPearson,
    partial_correlation,
    pearson_with_vector,
)

# --------------------------------------------------------------------------- references


def ref_pearson(acts: np.ndarray, v: np.ndarray) -> np.ndarray:
    """C as written: z-scores with ddof=1, r = sum(z_len * z_act) / (N - 1); loop over neurons."""
    n = len(v)
    zv = (v - v.mean()) / v.std(ddof=1)
    flat = acts.reshape(-1, n, acts.shape[-1])
    out = np.empty((flat.shape[0], flat.shape[2]))
    for b in range(flat.shape[0]):
        for k in range(flat.shape[2]):
            a = flat[b, :, k]
            if a.min() == a.max():
                out[b, k] = np.nan
                continue
            za = (a - a.mean()) / a.std(ddof=1)
            out[b, k] = np.sum(zv * za) / (n - 1)
    return out.reshape(acts.shape[:-2] + acts.shape[-1:])


def ref_partial(acts: np.ndarray, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Partial r by the residual method: regress acts and x on [1, z] with lstsq, correlate residuals."""
    design = np.stack([np.ones_like(z), z], 1)
    rx = x - design @ np.linalg.lstsq(design, x, rcond=None)[0]
    flat = acts.reshape(-1, len(x), acts.shape[-1])
    out = np.empty((flat.shape[0], flat.shape[2]))
    for b in range(flat.shape[0]):
        for k in range(flat.shape[2]):
            a = flat[b, :, k]
            ra = a - design @ np.linalg.lstsq(design, a, rcond=None)[0]
            out[b, k] = np.corrcoef(ra, rx)[0, 1]
    return out.reshape(acts.shape[:-2] + acts.shape[-1:])


def make_data(seed: int, shape=(3, 400, 17), offset: float = 0.0, noise: float = 1.0):
    """Activations that depend on token length and on a frequency confound, plus x and z."""
    rng = np.random.default_rng(seed)
    n_tok = shape[-2]
    length = rng.integers(1, 12, n_tok).astype(np.float64)
    logfreq = -0.3 * length + rng.standard_normal(n_tok)
    w = rng.standard_normal(shape[:-2] + (1, shape[-1]))
    u = rng.standard_normal(shape[:-2] + (1, shape[-1]))
    acts = offset + noise * (w * length[:, None] / 5 + u * logfreq[:, None] + rng.standard_normal(shape))
    return acts, length, logfreq


def uneven_chunks(rng: np.random.Generator, n: int) -> list[int]:
    """Chunk boundaries with sizes 1..60, including several 1-token chunks."""
    cuts, s = [0], 0
    while s < n:
        s = min(n, s + int(rng.choice([1, 1, 2, 3, 7, 31, 60])))
        cuts.append(s)
    return cuts


# --------------------------------------------------------------------------- batch


@pytest.mark.parametrize("shape", [(400, 9), (3, 400, 17), (2, 2, 50, 5)])
def test_pearson_matches_numpy_loop(shape):
    acts, length, _ = make_data(1, shape)
    got = pearson_with_vector(torch.tensor(acts), torch.tensor(length))
    assert got.dtype == torch.float64 and got.shape == acts.shape[:-2] + acts.shape[-1:]
    np.testing.assert_allclose(got.numpy(), ref_pearson(acts, length), rtol=0, atol=1e-12)


def test_pearson_float32_and_integer_vector():
    acts, length, _ = make_data(2)
    got = pearson_with_vector(torch.tensor(acts, dtype=torch.float32), torch.tensor(length).long(),
                              dtype=torch.float32)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref_pearson(acts.astype(np.float32).astype(np.float64), length),
                               atol=2e-5)


def test_constant_neuron_is_nan_without_warnings():
    acts, length, logf = make_data(3, (2, 300, 6))
    acts[0, :, 2] = 0.1  # constant, with a mean that is not exact in floating point
    acts[1, :, 5] = -7.0
    t_acts = torch.tensor(acts)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = pearson_with_vector(t_acts, torch.tensor(length))
        pr = partial_correlation(t_acts, torch.tensor(length), torch.tensor(logf))
        sp = StreamingPearson().update(t_acts, torch.tensor(length), torch.tensor(logf))
        rs = sp.correlation()
    expect_nan = np.zeros((2, 6), bool)
    expect_nan[0, 2] = expect_nan[1, 5] = True
    for out in (r, pr, rs):
        assert np.array_equal(np.isnan(out.numpy()), expect_nan)
    assert sp.n_constant == 2
    assert sp.constant_mask.numpy().tolist() == expect_nan.tolist()
    np.testing.assert_allclose(r.numpy(), ref_pearson(acts, length), atol=1e-12)


def test_constant_vector_gives_all_nan():
    acts, _, _ = make_data(4, (50, 3))
    r = pearson_with_vector(torch.tensor(acts), torch.full((50,), 3.0))
    assert torch.isnan(r).all()


def test_partial_correlation_matches_residual_method():
    acts, length, logf = make_data(5, (2, 500, 11))
    got = partial_correlation(torch.tensor(acts), torch.tensor(length), torch.tensor(logf))
    np.testing.assert_allclose(got.numpy(), ref_partial(acts, length, logf), rtol=0, atol=1e-10)
    # the confound is real in this data: partial r differs from plain r
    plain = pearson_with_vector(torch.tensor(acts), torch.tensor(length))
    assert (got - plain).abs().max() > 0.05


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("offset,noise", [(0.0, 1.0), (1e4, 1.0), (1e4, 1e-2)])
def test_streaming_equals_batch_on_uneven_chunks(offset, noise):
    acts, length, logf = make_data(6, (2, 700, 13), offset=offset, noise=noise)
    rng = np.random.default_rng(7)
    cuts = uneven_chunks(rng, acts.shape[-2])
    assert 1 in np.diff(cuts)
    sp = StreamingPearson()
    ta, tx, tz = torch.tensor(acts), torch.tensor(length), torch.tensor(logf)
    for s, e in zip(cuts[:-1], cuts[1:]):
        sp.update(ta[..., s:e, :], tx[s:e], tz[s:e])
    assert sp.count == acts.shape[-2]
    ref_r = ref_pearson(acts, length)
    np.testing.assert_allclose(sp.correlation().numpy(), ref_r, rtol=0, atol=1e-10)
    batch = pearson_with_vector(ta, tx).numpy()
    np.testing.assert_allclose(sp.correlation().numpy(), batch, rtol=0, atol=1e-10)
    np.testing.assert_allclose(sp.partial_correlation().numpy(), partial_correlation(ta, tx, tz).numpy(),
                               rtol=0, atol=1e-10)
    # the running means are close to the truth, not drifted
    np.testing.assert_allclose(sp.mean_act.numpy(), acts.mean(-2), rtol=1e-13)


def test_streaming_stays_accurate_where_raw_sums_fail():
    """Offset 1e4 with noise 1e-2: sum-of-squares (raw moment) variance is ruined, ours is not."""
    acts, length, _ = make_data(8, (600, 4), offset=1e4, noise=1e-2)
    sp = StreamingPearson()
    for s in range(0, 600, 1):  # one token at a time, the hardest case
        sp.update(torch.tensor(acts[s : s + 1]), torch.tensor(length[s : s + 1]))
    ref = ref_pearson(acts, length)
    np.testing.assert_allclose(sp.correlation().numpy(), ref, atol=1e-10)
    n = len(length)
    raw_var = (acts**2).sum(0) / n - (acts.sum(0) / n) ** 2  # what a raw-sum stream would compute
    assert np.max(np.abs(raw_var / acts.var(0) - 1)) > 1e-6


def test_merge_of_two_streams_equals_one_stream():
    acts, length, logf = make_data(9, (3, 500, 7))
    ta, tx, tz = torch.tensor(acts), torch.tensor(length), torch.tensor(logf)
    whole = StreamingPearson()
    for s in range(0, 500, 97):
        whole.update(ta[..., s : s + 97, :], tx[s : s + 97], tz[s : s + 97])
    a, b = StreamingPearson(), StreamingPearson()
    a.update(ta[..., :123, :], tx[:123], tz[:123])
    for s in range(123, 500, 50):
        b.update(ta[..., s : s + 50, :], tx[s : s + 50], tz[s : s + 50])
    merged = StreamingPearson().merge(a).merge(b)
    assert merged.count == whole.count == 500
    np.testing.assert_allclose(merged.correlation().numpy(), whole.correlation().numpy(), atol=1e-12)
    np.testing.assert_allclose(merged.partial_correlation().numpy(), whole.partial_correlation().numpy(),
                               atol=1e-12)
    a.merge(StreamingPearson())  # merging an empty state is a no-op
    assert a.count == 123


def test_state_dict_round_trip_resumes():
    acts, length, _ = make_data(10, (2, 300, 5))
    ta, tx = torch.tensor(acts), torch.tensor(length)
    sp = StreamingPearson().update(ta[:, :100], tx[:100])
    state = sp.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values()) and int(state["count"]) == 100
    resumed = StreamingPearson.from_state_dict({k: v.clone() for k, v in state.items()})
    resumed.update(ta[:, 100:], tx[100:])
    np.testing.assert_allclose(resumed.correlation().numpy(), ref_pearson(acts, length), atol=1e-12)
    assert StreamingPearson.from_state_dict(StreamingPearson().state_dict()).count == 0


def test_neuron_constant_within_chunks_but_not_overall():
    acts, length, _ = make_data(11, (200, 3))
    acts[:100, 1], acts[100:, 1] = 1.0, 2.0
    sp = StreamingPearson()
    sp.update(torch.tensor(acts[:100]), torch.tensor(length[:100]))
    assert sp.n_constant == 1
    sp.update(torch.tensor(acts[100:]), torch.tensor(length[100:]))
    assert sp.n_constant == 0
    np.testing.assert_allclose(sp.correlation().numpy(), ref_pearson(acts, length), atol=1e-12)


# --------------------------------------------------------------------------- errors


def test_bad_shapes_raise_input_error_naming_shapes():
    acts = torch.randn(2, 10, 4)
    with pytest.raises(InputError, match=r"\(9,\)"):
        pearson_with_vector(acts, torch.randn(9))
    with pytest.raises(InputError, match=r"\(10,\)"):
        pearson_with_vector(torch.randn(10), torch.randn(10))
    with pytest.raises(InputError, match="z"):
        partial_correlation(acts, torch.randn(10), torch.randn(11))
    with pytest.raises(InputError, match="2 tokens"):
        pearson_with_vector(torch.randn(1, 4), torch.randn(1))
    with pytest.raises(InputError):
        pearson_with_vector(acts, torch.randn(10), dtype=torch.float16)
    sp = StreamingPearson().update(acts, torch.randn(10))
    with pytest.raises(InputError, match=r"\(2, 4\)"):
        sp.update(torch.randn(3, 10, 4), torch.randn(10))
    with pytest.raises(InputError, match="z"):
        sp.update(acts, torch.randn(10), torch.randn(10))
    with pytest.raises(InputError, match="z"):
        sp.partial_correlation()
    with pytest.raises(InputError, match="2 token"):
        StreamingPearson().correlation()
    assert issubclass(InputError, ValueError)


# --------------------------------------------------------------------------- float64 equality at scale


def large_offset_data(seed: int, layers=3, tokens=1500, neurons=700):
    """Activations ~ N(50, 1) (float32, as captured) that partly follow length and a frequency confound."""
    g = torch.Generator().manual_seed(seed)
    length = torch.randint(1, 16, (tokens,), generator=g)
    logf = -0.3 * length.double() + torch.randn(tokens, generator=g, dtype=torch.float64)
    w = torch.randn(layers, 1, neurons, generator=g)
    u = torch.randn(layers, 1, neurons, generator=g)
    acts = 50.0 + torch.randn(layers, tokens, neurons, generator=g) + w * length[:, None] / 5 + u * logf[:, None].float()
    return acts.float(), length, logf


def assert_close_relative(got: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-10):
    """|got - ref| <= rtol |ref| + 1e-15 (the batch formula's own float64 rounding near r = 0)."""
    err = (got - ref).abs()
    assert torch.isfinite(got).all() and bool((err <= rtol * ref.abs() + 1e-15).all()), float((err / ref.abs()).max())


def assert_within(got: torch.Tensor, ref: torch.Tensor, atol: float = 1e-6):
    """Same NaN pattern, and |got - ref| <= atol elsewhere (the float32 pass's promise on r)."""
    assert torch.equal(torch.isnan(got), torch.isnan(ref))
    ok = ~torch.isnan(ref)
    err = float((got[ok] - ref[ok]).abs().max()) if bool(ok.any()) else 0.0
    assert err <= atol, err


def stream(acts, length, logf, step, **kw) -> StreamingPearson:
    sp = StreamingPearson()
    for a in range(0, acts.shape[-2], step):
        sp.update(acts[..., a : a + step, :], length[a : a + step], None if logf is None else logf[a : a + step], **kw)
    return sp


@pytest.mark.parametrize("step", [910, 128, 1])
def test_streaming_equals_float64_batch_formula_large_offset(step, monkeypatch):
    """float32 activations: the float32 pass within 1e-6 of the float64 formula, exact=True to 1e-10."""
    import lamina.engine.kernels.correlation as corr_mod

    monkeypatch.setattr(corr_mod, "_CPU_BLOCK", 1 << 14)  # many blocks per update
    acts, length, logf = large_offset_data(30, tokens=1500 if step > 1 else 300)
    ref_r, ref_p = pearson_with_vector(acts, length), partial_correlation(acts, length, logf)
    fast = stream(acts, length, logf, step)
    assert_within(fast.correlation(), ref_r)
    assert_within(fast.partial_correlation(), ref_p)
    exact = stream(acts, length, logf, step, exact=True)
    assert_close_relative(exact.correlation(), ref_r)
    assert_close_relative(exact.partial_correlation(), ref_p)
    # and against the definition, NumPy float64 loops
    np.testing.assert_allclose(exact.correlation().numpy(), ref_pearson(acts.double().numpy(), length.double().numpy()),
                               rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(fast.correlation().numpy(), ref_pearson(acts.double().numpy(), length.double().numpy()),
                               rtol=0, atol=1e-6)
    # means and extremes of the float32 pass: the means within 1e-6 standard deviations, the extremes exact
    ref_mean, ref_sd = acts.double().mean(1), acts.double().std(1)
    assert float(((fast.mean_act - ref_mean).abs() / ref_sd).max()) < 1e-6
    assert torch.equal(fast.min_act, acts.amin(1).double()) and torch.equal(fast.max_act, acts.amax(1).double())


def hostile_float32(seed: int, case: str, tokens: int = 900, neurons: int = 40):
    """float32 activations that a naive float32 accumulation gets wrong, by case."""
    g = torch.Generator().manual_seed(seed)
    length = torch.randint(1, 16, (tokens,), generator=g)
    noise = torch.randn(2, tokens, neurons, generator=g, dtype=torch.float64)
    follow = torch.randn(2, 1, neurons, generator=g, dtype=torch.float64) * length[:, None].double() / 8
    acts = noise + follow
    if case == "offset_1e4_noise_1e-2":  # mean 1e6 standard deviations away from 0
        acts = 1e4 + 1e-2 * acts
    elif case == "drift":  # the first tokens' mean is far from the rest: the shift is no good
        acts[:, 200:] += 300.0
    elif case == "massive_first_token":  # one token 1e4 std away (LMs' first positions)
        acts[:, 0] += 1e4
    elif case == "tiny":  # squares near float32 underflow
        acts = acts * 1e-21
    elif case == "huge":  # squares overflow float32
        acts = acts * 1e21
    elif case == "constant_and_blockwise_constant":
        acts[0, :, 3] = 0.1
        acts[1, :450, 7], acts[1, 450:, 7] = 1.0, 2.0
        acts[1, :, 9] = torch.where(torch.arange(tokens) % 300 < 150, 5.0, -5.0)  # constant within blocks
    return acts.float(), length


HOSTILE = ["offset_1e4_noise_1e-2", "drift", "massive_first_token", "tiny", "huge", "constant_and_blockwise_constant"]


@pytest.mark.parametrize("case", HOSTILE)
def test_float32_pass_on_hostile_activations(case, monkeypatch):
    """Each hostile case: within 1e-6 of the NumPy float64 definition, same constant neurons, exact extremes."""
    import lamina.engine.kernels.correlation as corr_mod

    monkeypatch.setattr(corr_mod, "_CPU_BLOCK", 1 << 12)  # blocks of ~50 tokens
    acts, length = hostile_float32(40, case)
    ref = torch.from_numpy(ref_pearson(acts.double().numpy(), length.double().numpy()))
    for step in (900, 250):
        sp = stream(acts, length, None, step)
        assert_within(sp.correlation(), ref)
        assert torch.equal(sp.constant_mask, torch.isnan(ref))
        assert torch.equal(sp.min_act, acts.amin(1).double()) and torch.equal(sp.max_act, acts.amax(1).double())
    if case == "constant_and_blockwise_constant":
        assert stream(acts, length, None, 900).n_constant == 1


def test_float32_pass_guard_is_what_keeps_tiny_variances_exact(monkeypatch):
    """Squares near float32 underflow: without the redo in float64 (guard disabled) r misses 1e-6."""
    import lamina.engine.kernels.correlation as corr_mod

    monkeypatch.setattr(corr_mod, "_CPU_BLOCK", 1 << 12)
    acts, length = hostile_float32(40, "tiny")
    ref = torch.from_numpy(ref_pearson(acts.double().numpy(), length.double().numpy()))
    assert_within(stream(acts, length, None, 900).correlation(), ref)
    monkeypatch.setattr(corr_mod, "_TINY_32", 0.0)
    got = stream(acts, length, None, 900).correlation()
    assert float((got - ref).abs().max()) > 1e-6


def test_float32_pass_sends_far_shifts_to_the_float64_pass(monkeypatch):
    """Neurons whose shift (the first block's mean) is far from their mean next to their spread are redone."""
    import lamina.engine.kernels.correlation as corr_mod

    monkeypatch.setattr(corr_mod, "_CPU_BLOCK", 1 << 10)  # ~12-token blocks
    acts, length = hostile_float32(41, "constant_and_blockwise_constant", tokens=1200, neurons=40)
    acts[:, :12, 20:30] += 1e3  # only the first block is far: sum of squares ~ n/12 x M2
    redone = []
    real = corr_mod._block_sums

    def spy(a, *args):
        redone.append(a.shape[-1])
        return real(a, *args)

    monkeypatch.setattr(corr_mod, "_block_sums", spy)
    got = stream(acts, length, None, 1200).correlation()
    assert sum(redone) == 2 * 10  # the ten far-shifted neurons of both layers, nothing else
    assert_within(got, torch.from_numpy(ref_pearson(acts.double().numpy(), length.double().numpy())))


def test_float32_pass_bfloat16_and_float16_inputs():
    acts, length, logf = large_offset_data(33, layers=2, tokens=600, neurons=50)
    for dt in (torch.bfloat16, torch.float16):
        a = (acts - 50).to(dt)
        ref = pearson_with_vector(a, length)  # float64 arithmetic on the same values
        assert_within(stream(a, length, logf, 256).correlation(), ref)


@pytest.mark.parametrize("exact", [False, True])
def test_streaming_merge_of_units_equals_batch_and_is_deterministic(exact):
    """Per-unit states merged in unit order (the length analysis): equal to batch, and deterministic."""
    acts, length, logf = large_offset_data(31, layers=2, tokens=1200, neurons=300)
    units = [(0, 500), (500, 700), (700, 1200)]

    def merged() -> StreamingPearson:
        total = StreamingPearson()
        for a, b in units:
            part = StreamingPearson()
            for s in range(a, b, 160):
                e = min(b, s + 160)
                part.update(acts[:, s:e], length[s:e], logf[s:e], exact=exact)
            total.merge(StreamingPearson.from_state_dict(part.state_dict()))
        return total

    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = merged()
        torch.set_num_threads(3)
        three, again = merged(), merged()
    finally:
        torch.set_num_threads(old)
    for k, v in three.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k  # deterministic: resume, ranks merged in unit order
    if exact:
        assert_close_relative(one.correlation(), three.correlation(), rtol=1e-13)  # thread count: rounding only
        for sp in (one, three):
            assert_close_relative(sp.correlation(), pearson_with_vector(acts, length))
            assert_close_relative(sp.partial_correlation(), partial_correlation(acts, length, logf))
        return
    for k, v in three.state_dict().items():  # float32 pass: one single-threaded task per range, any thread count
        assert torch.equal(v, one.state_dict()[k]), k
    for sp in (one, three):
        assert_within(sp.correlation(), pearson_with_vector(acts, length))
        assert_within(sp.partial_correlation(), partial_correlation(acts, length, logf))


def test_state_dict_keys_unchanged():
    acts, length, logf = large_offset_data(32, layers=1, tokens=50, neurons=4)
    sd = StreamingPearson().update(acts, length, logf).state_dict()
    assert set(sd) == {"count", "mean_act", "m2_act", "min_act", "max_act", "c_ax", "c_az", "mean_x", "m2_x",
                       "min_x", "max_x", "mean_z", "m2_z", "min_z", "max_z", "c_xz"}
    assert all(v.dtype == (torch.int64 if k == "count" else torch.float64) for k, v in sd.items())
    np.testing.assert_array_equal(sd["min_act"].numpy(), acts.amin(1).double().numpy())
    np.testing.assert_array_equal(sd["max_act"].numpy(), acts.amax(1).double().numpy())
