"""KVCache behaviour on every backend: API, errors that leave the cache unchanged, memory."""
import gc
import tracemalloc

import numpy as np
import pytest

import nexvk
from nexvk import KVCache

BACKENDS = ["numpy", "cpu", "vulkan"]


@pytest.fixture(params=BACKENDS)
def make(request):
    device = request.getfixturevalue("device") if request.param == "vulkan" else None

    def _make(*args, **kw):
        return KVCache(*args, backend=request.param, device=device, **kw)
    return _make


def kv(rng, T, hkv=2, d=64):
    return (rng.standard_normal((T, hkv, d)).astype(np.float32),
            rng.standard_normal((T, hkv, d)).astype(np.float32))


def test_append_length_reset(make, rng):
    c = make(3, 2, 64, 10, "turbo3", "turbo3", n_heads=4)
    c.append(1, *kv(rng, 4))
    c.append(1, *kv(rng, 1))
    assert [c.length(i) for i in range(3)] == [0, 5, 0]
    c.reset()
    assert c.length(1) == 0


def test_full_cache_and_bad_input_leave_it_unchanged(make, rng):
    c = make(1, 2, 64, 8, "q8_0", "turbo3", n_heads=4)
    k, v = kv(rng, 6)
    c.append(0, k, v)
    q = rng.standard_normal((1, 4, 64)).astype(np.float32)
    before = c.attention(0, q)
    bad = np.array(k[:1])
    bad[0, 0, 3] = np.nan
    cases = [
        ((0, *kv(rng, 3)), "cache full"),
        ((0, k[:1, :1], v[:1, :1]), r"shape \(T, 2, 64\)"),
        ((0, k[:2], v[:1]), "different token counts"),
        ((0, bad, v[:1]), "non-finite"),
        ((0, k[:1].astype(np.float64), v[:1]), "float32 or float16"),
        ((5, k[:1], v[:1]), "layer must be"),
        ((0, np.full((1, 2, 64), 1e8, np.float32), v[:1]), "fp16"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            c.append(*args)
    assert c.length(0) == 6
    np.testing.assert_array_equal(c.attention(0, q), before)


def test_attention_argument_errors(make, rng):
    c = make(1, 2, 64, 8, "turbo3", "turbo3", n_heads=4)
    c.append(0, *kv(rng, 3))
    for q, match in [(np.zeros((1, 3, 64), np.float32), "multiple of n_kv_heads"),
                     (np.zeros((4, 4, 64), np.float32), "holds 3 tokens"),
                     (np.zeros((1, 4, 32), np.float32), r"shape \(T, n_heads, 64\)"),
                     (np.full((1, 4, 64), np.inf, np.float32), "non-finite")]:
        with pytest.raises(ValueError, match=match):
            c.attention(0, q)
    with pytest.raises(ValueError, match="sparse_v"):
        c.attention(0, np.zeros((1, 4, 64), np.float32), sparse_v=2.0)


@pytest.mark.parametrize("kt,vt", [("f16", "f16"), ("q8_0", "turbo3"), ("turbo3", "turbo3"),
                                   ("turbo4", "turbo2")])
def test_plain_nbytes_is_what_bits_per_value_promises(make, kt, vt):
    L, cap, hkv, d = 4, 100, 2, 128
    c = make(L, hkv, d, cap, kt, vt, n_heads=4, plain=True)
    promised = L * cap * hkv * d * (nexvk.bits_per_value(kt, d) + nexvk.bits_per_value(vt, d)) / 8
    assert c.nbytes == promised
    assert c.bits_per_value == (nexvk.bits_per_value(kt, d) + nexvk.bits_per_value(vt, d)) / 2


def test_numpy_cache_memory_is_exactly_nbytes():
    c = KVCache(2, 3, 64, 50, "turbo3", "q8_0")
    tables = c.transform.mean[0].nbytes + c.transform.scale[0].nbytes  # per layer
    stored = sum(a.nbytes for a in c._impl.arrays + c._raw_sinks) + 2 * tables
    assert c.sinks == 1 and stored == c.nbytes


def test_key_and_value_formats_are_independent(make, rng):
    c = make(1, 2, 64, 40, "q8_0", "turbo3", n_heads=4, plain=True)
    k, v = kv(rng, 40)
    c.append(0, k, v)
    q = rng.standard_normal((1, 4, 64)).astype(np.float32)
    kd = nexvk.codec("q8_0", 64).decode(nexvk.codec("q8_0", 64).encode(k))
    vd = nexvk.codec("turbo3", 64).decode(nexvk.codec("turbo3", 64).encode(v))
    s = np.einsum("hd,lhd->hl", q[0].reshape(2, 2, 64).reshape(4, 64),
                  np.repeat(kd, 2, axis=1)) / 8.0
    p = np.exp(s - s.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    want = np.einsum("hl,lhd->hd", p, np.repeat(vd, 2, axis=1))
    np.testing.assert_allclose(c.attention(0, q)[0], want, rtol=1e-4, atol=1e-5)


def test_vulkan_decode_allocates_nothing(device, rng):
    """1,000 decode steps (append one token, attend) after a prefill: the device pool's
    allocation count and bytes stay put, and Python's traced memory does not grow."""
    hkv, d, H, layers = 3, 64, 9, 2
    c = KVCache(layers, hkv, d, 1100, "turbo3", "turbo3", backend="vulkan", device=device,
                n_heads=H, plain=True)
    for layer in range(layers):
        c.append(layer, *kv(rng, 64, hkv, d))
        c.attention(layer, rng.standard_normal((64, H, d)).astype(np.float32))
    pool = device.pool
    k1, v1 = kv(rng, 1, hkv, d)
    q1 = rng.standard_normal((1, H, d)).astype(np.float32)

    def steps(n):
        for _ in range(n):
            for layer in range(layers):
                c.append(layer, k1, v1)
                c.attention(layer, q1, sparse_v=1e-6)

    steps(50)  # warm: sequences for the 1-row path get recorded once
    gc.collect()  # objects of earlier tests on the shared device are released now, not mid-count
    state = (pool.allocations, pool.nbytes, device.n_pipelines, device.n_sequences)
    tracemalloc.start()
    steps(100)
    gc.collect()
    after_100 = tracemalloc.get_traced_memory()[0]
    steps(850)
    gc.collect()
    after_950 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert c.length(0) == 64 + 1000
    assert (pool.allocations, pool.nbytes, device.n_pipelines, device.n_sequences) == state
    assert after_950 - after_100 < 64 * 1024, (after_100, after_950)


def test_vulkan_cache_frees_device_memory_when_dropped(device):
    before = device.pool.nbytes
    c = KVCache(2, 2, 64, 64, backend="vulkan", device=device, n_heads=4, plain=True)
    assert device.pool.nbytes > before
    del c
    assert device.pool.nbytes == before


def test_vulkan_without_device_fails_clearly(monkeypatch):
    from nexvk.device import manager, probe
    monkeypatch.setattr(probe, "devices", lambda refresh=False: [])
    monkeypatch.setattr(manager, "_default", {})
    with pytest.raises(RuntimeError, match="no Vulkan device"):
        KVCache(1, 1, 64, 8, backend="vulkan", plain=True)


def test_auto_backend_falls_back_to_numpy_with_a_message(monkeypatch, capsys):
    from nexvk.device import probe
    monkeypatch.setattr(probe, "devices", lambda refresh=False: [])
    monkeypatch.delenv("NEXVK_DEVICE", raising=False)
    c = KVCache(1, 1, 64, 8, backend="auto")
    assert c.backend == "numpy"
    assert "using numpy" in capsys.readouterr().err


def test_auto_backend_prefers_numpy_over_a_cpu_driver_and_vulkan_on_a_gpu(monkeypatch, capsys):
    from nexvk import backends
    from nexvk.device import probe
    monkeypatch.delenv("NEXVK_DEVICE", raising=False)
    monkeypatch.setattr(probe, "devices", lambda refresh=False: [{"type": "cpu", "name": "llvmpipe"}])
    assert backends.resolve("auto") == "numpy"
    assert "CPU Vulkan driver (llvmpipe)" in capsys.readouterr().err
    assert backends.resolve("auto", device=0) == "vulkan"   # named: the user asked
    monkeypatch.setattr(probe, "devices", lambda refresh=False: [
        {"type": "cpu", "name": "llvmpipe"}, {"type": "discrete", "name": "a GPU"}])
    assert backends.resolve("auto") == "vulkan"
    with pytest.raises(ValueError, match="unknown backend"):
        backends.resolve("cuda")


def test_auto_backend_takes_the_cpu_driver_when_float32_weights_would_crowd_memory(
        monkeypatch, capsys):
    """On a CPU-only driver, numpy while its float32 weights + KV take at most half the
    available memory; beyond that the device path (weights as stored), saying why."""
    from nexvk import backends
    from nexvk.device import manager, probe
    monkeypatch.delenv("NEXVK_DEVICE", raising=False)
    monkeypatch.setattr(probe, "devices", lambda refresh=False: [{"type": "cpu", "name": "llvmpipe"}])
    monkeypatch.setattr(manager, "available_memory", lambda: 8 << 30)
    assert backends.resolve("auto", numpy_bytes=3 << 30) == "numpy"
    assert "numpy is faster" in capsys.readouterr().err
    assert backends.resolve("auto", numpy_bytes=5 << 30) == "vulkan"
    err = capsys.readouterr().err
    assert "would hold 5120 MiB" in err and "8192 MiB available" in err and "llvmpipe" in err
    monkeypatch.setattr(probe, "devices", lambda refresh=False: [])
    assert backends.resolve("auto", numpy_bytes=5 << 30) == "numpy"  # nothing else


def test_available_memory_is_read_from_the_system():
    from nexvk.device import manager
    n = manager.available_memory()
    assert n is None or 0 < n < 1 << 50


def test_a_cache_config_is_the_keywords_in_one_object(rng):
    """KVCache(config=CacheConfig(...)) is the cache the same keywords give; giving both is
    refused (one of them would be ignored)."""
    from nexvk.cache import CacheConfig
    cfg = CacheConfig("turbo3", "q8_0", sinks=2, layer_types="1:f16/f16", seed=3, max_batch=8)
    a = KVCache(2, 2, 64, 40, config=cfg, n_heads=4)
    b = KVCache(2, 2, 64, 40, "turbo3", "q8_0", sinks=2, layer_types="1:f16/f16", seed=3,
                max_batch=8, n_heads=4)
    k, v = kv(rng, 12)
    q = rng.standard_normal((12, 4, 64)).astype(np.float32)
    for c in (a, b):
        c.append(0, k, v, q=q)
    assert np.array_equal(a.attention(0, q), b.attention(0, q)) and a.nbytes == b.nbytes
    assert a.layout.slots == (40, 40) and a.layout.sinks == (2, 2)
    with pytest.raises(ValueError, match="either as config= or as keyword arguments"):
        KVCache(2, 2, 64, 40, "q8_0", config=cfg)
    with pytest.raises(ValueError, match="sparse_v must be"):
        CacheConfig(sparse_v=1.5)
