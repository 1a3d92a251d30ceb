"""Packed attention: numpy reference vs plain attention over decoded K/V, and the Vulkan
kernel vs the numpy reference, across formats, head_dim, GQA ratio, prefill and decode.
Every cache here is plain=True: the plain algorithm, which the Vulkan backend runs."""
import numpy as np
import pytest

import nexvk
from nexvk import KVCache

FORMAT_PAIRS = [("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0"), ("turbo2", "turbo2"),
                ("turbo3", "turbo3"), ("turbo4", "turbo4"), ("q8_0", "turbo3")]


def exact_attention(q, k, v, scale):
    """float64 causal softmax attention of q (T, H, d) over the last T of k/v (L, HKV, d)."""
    T, H, d = q.shape
    L, hkv, _ = k.shape
    G = H // hkv
    kk = np.repeat(k.astype(np.float64), G, axis=1)       # (L, H, d)
    vv = np.repeat(v.astype(np.float64), G, axis=1)
    s = np.einsum("thd,lhd->thl", q.astype(np.float64), kk) * scale
    pos = L - T + np.arange(T)
    s = np.where(np.arange(L)[None, None, :] > pos[:, None, None], -np.inf, s)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("thl,lhd->thd", p, vv)


def fill(cache, rng, L):
    """Append L random tokens to layer 0; returns the decoded K and V as the cache stores them."""
    hkv, d = cache.n_kv_heads, cache.head_dim
    k = rng.standard_normal((L, hkv, d)).astype(np.float32)
    v = rng.standard_normal((L, hkv, d)).astype(np.float32)
    cache.append(0, k, v)
    kd = nexvk.codec(cache.k_type, d).decode(nexvk.codec(cache.k_type, d).encode(k))
    vd = nexvk.codec(cache.v_type, d).decode(nexvk.codec(cache.v_type, d).encode(v))
    return kd, vd


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("kt,vt", FORMAT_PAIRS)
@pytest.mark.parametrize("d,hkv,G", [(64, 3, 3), (128, 2, 4), (256, 1, 8), (64, 4, 1)])
def test_numpy_packed_attention_equals_attention_over_decoded_kv(kt, vt, d, hkv, G):
    rng = np.random.default_rng(d * G)
    cache = KVCache(1, hkv, d, 200, kt, vt, plain=True)
    kd, vd = fill(cache, rng, 150)
    for T in (150, 1):  # prefill of everything, then a decode query
        q = rng.standard_normal((T, hkv * G, d)).astype(np.float32) * 2
        out = cache.attention(0, q)
        assert rel(out, exact_attention(q, kd, vd, 1 / np.sqrt(d))) < 1e-4


GRID = [(kt, vt, d, hkv, G, L, T)
        for (kt, vt) in FORMAT_PAIRS
        for (d, hkv, G) in [(64, 3, 3), (128, 8, 4), (256, 2, 8), (128, 4, 1)]
        for (L, T) in [(1, 1), (63, 63), (65, 1), (300, 40), (1000, 1)]]


@pytest.mark.parametrize("kt,vt,d,hkv,G,L,T", GRID,
                         ids=[f"{kt}-{vt}-d{d}-gqa{G}-ctx{L}-T{T}" for kt, vt, d, hkv, G, L, T in GRID])
def test_vulkan_attention_matches_numpy(device, kt, vt, d, hkv, G, L, T):
    rng = np.random.default_rng(L + d)
    H = hkv * G
    ref = KVCache(1, hkv, d, L, kt, vt, plain=True)
    vk = KVCache(1, hkv, d, L, kt, vt, backend="vulkan", device=device, n_heads=H, max_batch=64,
                 plain=True)
    k = rng.standard_normal((L, hkv, d)).astype(np.float32)
    v = rng.standard_normal((L, hkv, d)).astype(np.float32)
    ref.append(0, k, v)
    vk.append(0, k, v)
    q = rng.standard_normal((T, H, d)).astype(np.float32) * 2
    a, b = vk.attention(0, q), ref.attention(0, q)
    assert np.isfinite(a).all()
    assert rel(a, b) < 1e-4


def test_vulkan_decode_steps_match_numpy_over_a_long_context(device):
    """Token-by-token appends (the decode path) past 32k positions. Regression: one
    workgroup per KV head used to loop over every key, and llvmpipe ends any shader loop
    after 65535 iterations, which silently left outputs unwritten past ~30k keys."""
    rng = np.random.default_rng(0)
    hkv, d, H, L = 2, 128, 8, 33000
    ref = KVCache(1, hkv, d, L + 3, "turbo3", "turbo3", plain=True)
    vk = KVCache(1, hkv, d, L + 3, "turbo3", "turbo3", backend="vulkan", device=device, n_heads=H,
                 plain=True)
    k = rng.standard_normal((L, hkv, d)).astype(np.float32)
    assert_decode_steps_match(ref, vk, rng, k, k, H, 3)


def assert_decode_steps_match(ref, vk, rng, k, v, H, steps):
    """Prefill k, v into both caches, then `steps` token-by-token appends, each followed by
    one query of H heads: the two caches' outputs within 1e-4."""
    ref.append(0, k, v)
    vk.append(0, k, v)
    hkv, d = k.shape[1:]
    for _ in range(steps):
        kv = rng.standard_normal((1, hkv, d)).astype(np.float32)
        ref.append(0, kv, kv)
        vk.append(0, kv, kv)
        q = rng.standard_normal((1, H, d)).astype(np.float32)
        assert rel(vk.attention(0, q), ref.attention(0, q)) < 1e-4


@pytest.mark.parametrize("backend", ["numpy", "vulkan"])
def test_sparse_v_at_1e6_stays_within_1e4_and_skips_rows(request, backend):
    device = request.getfixturevalue("device") if backend == "vulkan" else None
    rng = np.random.default_rng(3)
    hkv, d, H, L = 2, 128, 8, 2000
    cache = KVCache(1, hkv, d, L, "turbo3", "turbo3", backend=backend, device=device, n_heads=H,
                    plain=True)
    k = rng.standard_normal((L, hkv, d)).astype(np.float32)
    cache.append(0, k, rng.standard_normal((L, hkv, d)).astype(np.float32))
    # peaked attention, as in real decoding: the query resembles a handful of keys
    q = np.repeat(k[[5, 700, 1999]].sum(0), H // hkv, axis=0)[None] * 2.0
    dense = cache.attention(0, q)
    sparse = cache.attention(0, q, sparse_v=1e-6)
    assert cache.stats["skip_rate"] > 0.5, cache.stats
    assert cache.stats["total"] == L * H
    assert rel(sparse, dense) < 1e-4


def test_split_size_fills_a_gpu_without_breaking_llvmpipes_loop_bound():
    """tuning's attention TARGET: a decode query of SmolLM2 (3 KV heads, 2048 keys) gets
    splits of one workgroup width (96 workgroups per pass instead of 3); never below the
    width, never above the loop bound that TARGET 0 (lavapipe) keeps using."""
    from nexvk.kernels.attention import Plan, split_size
    from nexvk.kernels.layout import WG
    cap = split_size(64, 3)
    assert cap == split_size(64, 3, 2048, 3, 0) and cap >= 2048
    assert Plan(64, 3, 3, 2048, 1).ns == 1
    p = Plan(64, 3, 3, 2048, 1, target=512)
    assert p.ks == WG and p.groups == 3 * 2048 // WG
    big = Plan(128, 8, 4, 32768, 1, target=512)      # 8 KV heads: 64 splits of 512 keys
    assert (big.ks, big.ns) == (512, 64)
    assert Plan(64, 3, 3, 2048, 256, target=512).ks == cap   # a prefill chunk: as before
    for keys in (1, 63, 65, 1000, 40000):
        for rows in (1, 7, 64):
            ks = split_size(128, 4, keys, rows * 8, 512)
            assert ks % WG == 0 and WG <= ks <= split_size(128, 4)


@pytest.fixture
def gpu_splits(monkeypatch):
    """lavapipe running attention with the GPU table's TARGET (small splits + reduce)."""
    from nexvk.kernels import tuning
    monkeypatch.setitem(tuning.TABLE["cpu"], "attention", dict(tuning.TABLE["gpu"]["attention"]))


SPLIT_GRID = [(kt, vt, d, hkv, G, L, T)
              for (kt, vt) in FORMAT_PAIRS
              for (d, hkv, G) in [(64, 3, 3), (128, 8, 4)]
              for (L, T) in [(65, 1), (300, 40), (1000, 1)]]


@pytest.mark.parametrize("kt,vt,d,hkv,G,L,T", SPLIT_GRID,
                         ids=[f"{kt}-{vt}-d{d}-gqa{G}-ctx{L}-T{T}" for kt, vt, d, hkv, G, L, T in SPLIT_GRID])
def test_vulkan_attention_with_gpu_splits_matches_numpy(device, gpu_splits, kt, vt, d, hkv, G, L, T):
    test_vulkan_attention_matches_numpy(device, kt, vt, d, hkv, G, L, T)


def test_hardened_decode_with_gpu_splits_matches_numpy(device, gpu_splits):
    """Sinks, the key transform and token-by-token appends (the model's decode path) with
    small splits: the same outputs as the numpy cache."""
    rng = np.random.default_rng(3)
    hkv, d, H, L = 3, 64, 9, 700
    ref = KVCache(1, hkv, d, L + 4, "turbo3", "turbo3")
    vk = KVCache(1, hkv, d, L + 4, "turbo3", "turbo3", backend="vulkan", device=device, n_heads=H)
    k = rng.standard_normal((L, hkv, d)).astype(np.float32) + np.float32(2.0)
    v = rng.standard_normal((L, hkv, d)).astype(np.float32)
    assert_decode_steps_match(ref, vk, rng, k, v, H, 4)
