"""KVCache against hostile use, on both backends: geometry that is not a true integer,
non-finite scale and threshold, rollback with truncate(), several threads at once, and the
device's shared-memory limit checked before any pipeline exists."""
import gc
import sys
import threading

import numpy as np
import pytest

from nexvk import KVCache
from nexvk.kernels import attention as attn_kernel
from nexvk.kernels import layout
from test_cache import kv, make  # noqa: F401 - the cache fixture on both backends, and data


@pytest.mark.parametrize("arg,value", [("n_heads", 4.0), ("n_heads", True), ("n_layers", 1.0),
                                       ("n_kv_heads", 2.0), ("head_dim", 64.0),
                                       ("capacity", 8.0), ("capacity", True),
                                       ("max_batch", 2.5), ("n_heads", 0),
                                       ("n_heads", np.float32(4)), ("capacity", np.bool_(True)),
                                       ("head_dim", np.float64(64)), ("n_layers", -1)])
def test_geometry_must_be_true_integers(make, arg, value):
    """A float n_heads once passed `4.0 % 2 == 0` and its bits reached a specialization
    constant as ~1e9 heads per KV head, taking the machine's memory (vulkan)."""
    geo = dict(n_layers=1, n_kv_heads=2, head_dim=64, capacity=8, n_heads=4, max_batch=4)
    geo[arg] = value
    with pytest.raises(ValueError, match=f"{arg} must be a positive integer"):
        make(k_type="f16", v_type="f16", **geo)


@pytest.mark.parametrize("itype", [np.uint8, np.int16, np.uint16, np.int64])
def test_numpy_integer_geometry_is_converted_once(make, rng, itype):
    """KVCache(n_heads=np.uint16(128)) on vulkan once returned finite garbage: sizes computed
    in the argument's own type overflowed (uint16 x Python int stays uint16) and the device
    offsets wrapped; uint8 / int16 gave a traceback. Every geometry number is a Python int
    from the start, so the cache is the one the same Python ints give (numpy's, the
    reference)."""
    cap = min(600, np.iinfo(itype).max)
    geo = dict(n_layers=itype(2), n_kv_heads=itype(2), head_dim=itype(64), capacity=itype(cap),
               n_heads=itype(128), max_batch=itype(32), window=[itype(0), itype(100)])
    c = make(k_type="turbo3", v_type="q8_0", **geo)
    ref = KVCache(2, 2, 64, cap, "turbo3", "q8_0", n_heads=128, max_batch=32, window=[0, 100])
    for x in (c.n_layers, c.n_kv_heads, c.head_dim, c.capacity, c.max_heads, c.max_batch,
              *c.windows, *c.slots, *c.layout.head_bytes):
        assert type(x) is int
    k, v = kv(rng, 30)
    q = rng.standard_normal((2, 128, 64)).astype(np.float32)
    for layer in range(2):
        for cache in (c, ref):
            cache.append(layer, k, v)
        got, want = c.attention(layer, q), ref.attention(layer, q)
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), (itype, layer)
    assert c.nbytes == ref.nbytes


def test_geometry_beyond_any_model_is_refused_before_allocating():
    for arg, value in (("n_heads", 1 << 20), ("capacity", 1 << 40), ("n_kv_heads", 1 << 13)):
        geo = dict(n_layers=1, n_kv_heads=2, head_dim=64, capacity=8, n_heads=4)
        geo[arg] = value
        with pytest.raises(ValueError, match=f"{arg} must be a positive integer up to"):
            KVCache(k_type="f16", v_type="f16", **geo)


def test_scale_and_threshold_must_be_finite(make, rng):
    """attention(scale=nan) returned NaN on numpy and finite values on vulkan."""
    c = make(1, 2, 64, 8, "turbo3", "turbo3", n_heads=4)
    c.append(0, *kv(rng, 3))
    q = rng.standard_normal((1, 4, 64)).astype(np.float32)
    for scale in (np.nan, np.inf, -np.inf, 0.0, -0.125, "0.1", True):
        with pytest.raises(ValueError, match="scale must be a finite number > 0"):
            c.attention(0, q, scale=scale)
    for thr in (np.nan, -1e-6, 1.0, np.inf, "1e-6"):
        with pytest.raises(ValueError, match="sparse_v must be a weight threshold"):
            c.attention(0, q, sparse_v=thr)
    out = c.attention(0, q, scale=np.float32(0.125), sparse_v=0)  # 1/sqrt(64): the default
    np.testing.assert_array_equal(out, c.attention(0, q))
    assert c.length(0) == 3


def test_truncate_rolls_back_every_layer(make, rng):
    c = make(2, 2, 64, 16, "q8_0", "turbo3", n_heads=4)
    ref = make(2, 2, 64, 16, "q8_0", "turbo3", n_heads=4)
    k, v = kv(rng, 6)
    k2, v2 = kv(rng, 2)
    for layer in range(2):
        c.append(layer, k, v)
        ref.append(layer, k[:4], v[:4])
    c.truncate(4)
    assert [c.length(i) for i in range(2)] == [4, 4]
    for layer in range(2):  # new tokens go where the dropped ones were
        c.append(layer, k2, v2)
        ref.append(layer, k2, v2)
    q = rng.standard_normal((3, 4, 64)).astype(np.float32)
    for layer in range(2):
        np.testing.assert_array_equal(c.attention(layer, q), ref.attention(layer, q))
    c.truncate(100)  # past the end: nothing to drop
    assert c.length(1) == 6
    for bad in (-1, 2.0, None, True):
        with pytest.raises(ValueError, match="truncate needs a position"):
            c.truncate(bad)


def test_threads_lose_no_tokens(make, rng):
    """Two threads append 300 tokens each, one at a time, while a third attends: all 600 are
    stored exactly once (two threads used to lose 56-122 of 300 tokens silently). With
    zero keys every weight is equal, so attention is the mean of every stored value, in
    any order; f16 stores these values exactly."""
    d, n = 64, 300
    c = make(1, 1, d, 2 * n + 1, "f16", "f16", n_heads=1, max_batch=1)
    vals = rng.standard_normal((2 * n + 1, 1, d)).astype(np.float16).astype(np.float32)
    zeros = np.zeros((1, 1, d), np.float32)
    c.append(0, zeros, vals[-1:])
    start, errors = threading.Barrier(3), []

    def appender(part):
        start.wait()
        for t in range(part * n, (part + 1) * n):
            c.append(0, zeros, vals[t:t + 1])

    def reader():
        start.wait()
        for _ in range(50):
            assert np.isfinite(c.attention(0, zeros)).all()

    def guard(fn, *a):
        try:
            fn(*a)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=guard, args=(appender, 0)),
               threading.Thread(target=guard, args=(appender, 1)),
               threading.Thread(target=guard, args=(reader,))]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so an unguarded race would show
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors, errors
    assert c.length(0) == 2 * n + 1
    np.testing.assert_allclose(c.attention(0, zeros)[0, 0], vals.mean(axis=0)[0], rtol=0,
                               atol=1e-5)


def test_shared_memory_bytes_of_the_attention_passes():
    """The passes declare sh_x[G * D] and sh_red / sh_p[G * WG] floats."""
    p = attn_kernel.Plan(64, 1, 512, 64, 1)  # the 512 query heads per KV head, d=64
    assert p.shared_bytes == 4 * 512 * (64 + layout.WG) == 256 * 1024
    with pytest.raises(ValueError, match=r"256\.0 KiB of shared memory .* over gpu's 32 KiB"):
        p.check_shared_memory(32 * 1024, "gpu")
    attn_kernel.Plan(128, 8, 8, 4096, 1).check_shared_memory(16 * 1024, "gpu")  # 8B-class fits


def test_shared_memory_limit_is_checked_before_any_pipeline(device, rng):
    """The largest group that fits the device's limit works (and the validation layer, on in
    the tests, stays silent: the byte count is not an underestimate); one head more fails
    with a clear error before a pipeline is created."""
    d = 64
    limit = device.info["limits"]["max_compute_shared_memory_size"]
    g_fit = limit // (4 * (d + layout.WG))
    pipes, pool_bytes = device.n_pipelines, device.pool.nbytes
    with pytest.raises(ValueError, match="shared memory"):
        KVCache(1, 1, d, 64, "f16", "f16", backend="vulkan", device=device, n_heads=g_fit + 1)
    gc.collect()
    assert (device.n_pipelines, device.pool.nbytes) == (pipes, pool_bytes)
    c = KVCache(1, 1, d, 64, "turbo3", "turbo3", backend="vulkan", device=device, n_heads=g_fit)
    ref = KVCache(1, 1, d, 64, "turbo3", "turbo3", n_heads=g_fit)
    k, v = kv(rng, 5, 1, d)
    q = rng.standard_normal((2, g_fit, d)).astype(np.float32)
    c.append(0, k, v)
    ref.append(0, k, v)
    np.testing.assert_allclose(c.attention(0, q), ref.attention(0, q), rtol=1e-4, atol=1e-5)
