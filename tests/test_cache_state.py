"""KVCache.state() / restore(): a cache's tokens moved into another cache of the same formats
answer every attention call exactly as the original (numpy store, and the cpu and vulkan
stores against themselves), on full-context and ring (sliding-window) layers, into another capacity and
max_batch; the vulkan store's state is laid out as the numpy store's; a state that does not
fit is refused with the cache left as it was."""
import numpy as np
import pytest

from nexvk import KVCache

HKV, H, D = 2, 4, 64


@pytest.fixture(params=["numpy", "cpu", "vulkan"])
def backend(request):
    """Every store: cpu (the numpy store's arrays, numba kernels) and vulkan (regions on the
    device read back and written through the staging buffer)."""
    if request.param == "vulkan":
        request.getfixturevalue("device")
    return request.param


def _filled(rng, cap=48, mb=4, n=29, k_type="turbo3", v_type="turbo3", **kw):
    """A cache whose layer 0 has an 8-token window and layer 1 none, after n tokens
    appended in steps of up to mb rows (the first step fits the key transform)."""
    c = KVCache(2, HKV, D, cap, k_type, v_type, n_heads=H, max_batch=mb, window=[8, 0], **kw)
    done = 0
    while done < n:
        T = min(mb, n - done)
        k = rng.standard_normal((T, HKV, D)).astype(np.float32) + 3.0  # offset: a mean to fit
        v = rng.standard_normal((T, HKV, D)).astype(np.float32)
        q = rng.standard_normal((T, H, D)).astype(np.float32)
        for layer in range(2):
            c.append(layer, k, v, q=q)
        done += T
    return c


def _next_step(rng, c, T=2):
    """Append T more tokens to every layer and return each layer's attention of them."""
    k = rng.standard_normal((T, HKV, D)).astype(np.float32) + 3.0
    v = rng.standard_normal((T, HKV, D)).astype(np.float32)
    q = rng.standard_normal((T, H, D)).astype(np.float32)
    out = []
    for layer in range(2):
        c.append(layer, k, v, q=q)
        out.append(c.attention(layer, q))
    return out


@pytest.mark.parametrize("types", [("turbo3", "turbo3"), ("q8_0", "turbo4"), ("f16", "q4_0")])
@pytest.mark.parametrize("cap, mb", [(48, 4), (40, 4), (64, 2)])
def test_restored_cache_answers_exactly(rng, types, cap, mb, backend):
    src = _filled(rng, k_type=types[0], v_type=types[1], backend=backend)
    dst = KVCache(2, HKV, D, cap, *types, n_heads=H, max_batch=mb, window=[8, 0],
                  backend=backend)
    dst.restore(src.state())
    assert [dst.length(i) for i in range(2)] == [29, 29]
    step = np.random.default_rng(7)
    want = _next_step(np.random.default_rng(7), src)
    got = _next_step(step, dst)
    for w, g in zip(want, got):
        assert np.array_equal(w, g)


@pytest.mark.parametrize("types", [("turbo3", "turbo3"), ("q8_0", "turbo4")])
def test_vulkan_state_is_laid_out_as_numpy(rng, device, types):
    """A numpy cache's state restored into a vulkan cache (of another capacity) reads back
    the same, and back again into numpy answers as the original."""
    src = _filled(rng, k_type=types[0], v_type=types[1])
    state = src.state()
    vk = KVCache(2, HKV, D, 40, *types, n_heads=H, max_batch=4, window=[8, 0], backend="vulkan")
    vk.restore(state)
    back = vk.state()
    assert sorted(back) == sorted(state)
    for k in state:
        assert np.array_equal(back[k], state[k]), k
    dst = KVCache(2, HKV, D, 48, *types, n_heads=H, max_batch=4, window=[8, 0])
    dst.restore(back)
    want = _next_step(np.random.default_rng(3), src)
    for w, g in zip(want, _next_step(np.random.default_rng(3), dst)):
        assert np.array_equal(w, g)


def test_the_key_transform_travels(rng):
    src = _filled(rng)
    assert src.transform.ready.all() and np.abs(src.transform.mean).max() > 1  # fitted
    dst = KVCache(2, HKV, D, 48, n_heads=H, max_batch=4, window=[8, 0])
    dst.restore(src.state())
    assert np.array_equal(dst.transform.mean, src.transform.mean)
    assert np.array_equal(dst.transform.scale, src.transform.scale)


def test_a_state_that_does_not_fit_changes_nothing(rng):
    src = _filled(rng)
    state = src.state()
    dst = _filled(np.random.default_rng(1), n=5)
    before = {k: v.copy() for k, v in dst.state().items()}
    bad = [dict(state, lengths=np.array([60, 60])),           # beyond the capacity
           dict(state, k_codes1=state["k_codes1"][:-1]),      # a row short
           dict(state, key_mean=state["key_mean"][:1]),       # wrong table shape
           {k: v for k, v in state.items() if k != "sink_v0"}]
    for s in bad:
        with pytest.raises(ValueError, match="saved cache"):
            dst.restore(s)
        after = dst.state()
        assert all(np.array_equal(before[k], after[k]) for k in before)
    # rows saved from a ring (the last 11 positions) cannot fill a full-context layer
    with pytest.raises(ValueError, match="needs the last"):
        dst.restore(_ring_only(state))
    after = dst.state()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def _ring_only(state):
    """The state with layer 1's rows cut to a ring's last 11 positions."""
    s = dict(state)
    for name in ("k_codes", "k_scales", "v_codes", "v_scales"):
        s[f"{name}1"] = state[f"{name}1"][-11:]
    return s
