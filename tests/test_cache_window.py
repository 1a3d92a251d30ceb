"""Sliding-window layers of the KVCache: a ring of window + max_batch - 1 slots whose attention
equals dense attention masked to the window (keys p-window+1..p for a query at p, as
llama.cpp's standard SWA), memory that is exactly what `nexvk plan` reports, clear errors."""
import numpy as np
import pytest

from nexvk import KVCache
from nexvk.model.config import Config
from nexvk.model.plan import kv_bytes

HKV, H, D = 2, 4, 64


def masked_attention(q, k, v, window, scale):
    """Dense softmax attention of q (T, H, D) at the last T of the P positions of k, v
    (P, HKV, D), each query seeing its own and the window - 1 previous positions (or all
    previous ones when window is 0), in float64."""
    T, P = len(q), len(k)
    G = q.shape[1] // k.shape[1]
    kk = np.repeat(k.astype(np.float64), G, axis=1)             # (P, H, D)
    vv = np.repeat(v.astype(np.float64), G, axis=1)
    s = np.einsum("thd,phd->thp", q.astype(np.float64), kk) * scale
    qpos = np.arange(P - T, P)[:, None]
    age = qpos - np.arange(P)[None, :]                          # (T, P)
    ok = (age >= 0) & ((age < window) if window else True)
    s = np.where(ok[:, None, :], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("thp,phd->thd", p, vv)


@pytest.fixture(params=["numpy", "cpu", "vulkan"])
def backend(request):
    """Every store: the cpu one (ring slots and window masks in numba kernels) and the vulkan
    one (in quantize.comp and the attention passes) on the test device."""
    if request.param == "vulkan":
        request.getfixturevalue("device")
    return request.param


@pytest.mark.parametrize("steps", [[1] * 40, [4] * 10, [3, 1, 4, 4, 2, 4, 1, 4, 4, 4, 3, 4, 2]])
def test_ring_matches_dense_attention_masked_to_the_window(rng, steps, backend):
    """Decode and chunked prefill past 3x (up to 5x) the window; layer 0 is windowed, layer 1
    keeps everything. f16 storage, so the reference gets the f16-rounded keys and values."""
    window, cap, mb = 8, 64, 4
    c = KVCache(2, HKV, D, cap, "f16", "f16", n_heads=H, max_batch=mb, window=[window, 0],
                backend=backend)
    assert c.slots == [window + mb - 1, cap]
    ks, vs = [], []
    for T in steps:
        k = rng.standard_normal((T, HKV, D)).astype(np.float32)
        v = rng.standard_normal((T, HKV, D)).astype(np.float32)
        q = rng.standard_normal((T, H, D)).astype(np.float32)
        ks.append(k.astype(np.float16))
        vs.append(v.astype(np.float16))
        K, V = np.concatenate(ks), np.concatenate(vs)
        for layer, w in ((0, window), (1, 0)):
            c.append(layer, k, v)
            got = c.attention(layer, q)
            want = masked_attention(q, K, V, w, 1 / np.sqrt(D))
            np.testing.assert_allclose(got, want, atol=2e-3, rtol=0)
    assert c.length(0) == sum(steps) >= 3 * window + mb


def test_window_as_long_as_the_capacity_is_no_window():
    c = KVCache(3, HKV, D, 16, "f16", "f16", window=[16, 100, 0])
    assert c.windows == [0, 0, 0] and c.slots == [16, 16, 16]


def test_ring_rejects_more_rows_than_it_can_hold_and_stays_unchanged(rng, backend):
    c = KVCache(1, HKV, D, 64, "q8_0", "q8_0", n_heads=H, max_batch=4, window=8, backend=backend)
    k, v = (rng.standard_normal((5, HKV, D)).astype(np.float32) for _ in range(2))
    c.append(0, k[:3], v[:3])
    q = rng.standard_normal((3, H, D)).astype(np.float32)
    before = c.attention(0, q)
    with pytest.raises(ValueError, match="8-token window in 11 slots.*max_batch=4.*append 5"):
        c.append(0, k, v)
    assert c.length(0) == 3
    np.testing.assert_array_equal(c.attention(0, q), before)
    c.append(0, k[:3], v[:3])
    with pytest.raises(ValueError, match="attend with 5"):
        c.attention(0, rng.standard_normal((5, H, D)).astype(np.float32))


@pytest.mark.parametrize("window", [-1, 2.5, "8", [8, 8]])
def test_bad_window(window):
    with pytest.raises(ValueError, match="window"):
        KVCache(3, HKV, D, 64, window=window)


@pytest.mark.parametrize("sparse", [0.0, 1e-3])
def test_vulkan_ring_matches_numpy_over_the_same_codes(device, rng, sparse):
    """turbo3 ring layers: the device store equals the numpy store (same codes: the device
    quantizer is bit-identical on lavapipe), sparse-V counters included."""
    window, mb, n = 16, 8, 104
    caches = [KVCache(1, HKV, D, 128, "turbo3", "q8_0", n_heads=H, max_batch=mb, window=window,
                      backend=b) for b in ("numpy", "vulkan")]
    k, v = (rng.standard_normal((n, HKV, D)).astype(np.float32) for _ in range(2))
    q = rng.standard_normal((n, H, D)).astype(np.float32)
    s = 0
    for T in [5, 8, 1, 1, 8, 3] * 4:
        outs = []
        for c in caches:
            c.append(0, k[s:s + T], v[s:s + T])
            outs.append((c.attention(0, q[s:s + T], sparse_v=sparse or None), dict(c.stats)))
        s += T
        np.testing.assert_allclose(outs[1][0], outs[0][0], rtol=0, atol=2e-5)
        assert outs[1][1] == outs[0][1]
    assert s > 3 * window


@pytest.mark.parametrize("ctx", [32768, 1000])
@pytest.mark.parametrize("fmt", ["f16", "q8_0", "turbo3"])
def test_gemma3_bytes_equal_the_plan(fmt, ctx):
    """Gemma-3-270M's shape (18 layers, 1 kv head of 256, window 512 on 5 of 6 layers) at a
    32k context, and at 1000 tokens (the window masks, but the ring keeps every slot and the
    layer still keeps no sink): what the cache allocates is what `nexvk plan` prints."""
    meta = {"general.architecture": "gemma3", "gemma3.block_count": 18,
            "gemma3.embedding_length": 640, "gemma3.attention.head_count": 4,
            "gemma3.attention.head_count_kv": 1, "gemma3.attention.key_length": 256,
            "gemma3.attention.value_length": 256, "gemma3.attention.sliding_window": 512}
    cfg = Config.from_meta(meta)
    batch = 512
    window = [cfg.sliding_window if i in cfg.swa_layers else 0 for i in range(18)]
    c = KVCache(18, 1, 256, ctx, fmt, fmt, n_heads=4, max_batch=batch, window=window)
    store = c._impl
    tables = sum(c.spec.transform_vectors(i) for i in range(18)) * 1 * 256 * 2  # f16 mean, scale
    allocated = sum(a.nbytes for a in store.arrays + c._raw_sinks) + tables
    assert c.nbytes == allocated == kv_bytes(cfg, ctx, fmt, fmt, batch)
    if fmt == "f16" and ctx == 32768:  # 3 global layers x 32768 + 15 rings x 1023, 1 KB a token
        assert c.nbytes == 1024 * (3 * 32768 + 15 * 1023)


def test_visible_keys_closed_form():
    """The per-head count of (query, key) pairs attention reports as `total` (the sparse-V
    skip rate's denominator) against a direct count of what each query sees."""
    from nexvk.kernels.attention import visible_keys
    for window in (0, 1, 2, 5, 16, 37):
        for pos0 in range(0, 60, 7):
            for T in range(0, 25, 3):
                want = sum(min(p + 1, window) if window else p + 1 for p in range(pos0, pos0 + T))
                assert visible_keys(pos0, T, window) == want, (pos0, T, window)
