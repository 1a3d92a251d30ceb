"""The hardened numpy cache: plain=True is today's codec exactly; the hardened cache stores
centred keys and f16 sinks, and its attention is exact attention over what it stores."""
import numpy as np
import pytest

import nexvk
from nexvk import KVCache
from nexvk.kernels import attention as attn_kernel
from nexvk.quant import hadamard

HKV, H, D = 2, 6, 64


def data(rng, T, offset=4.0):
    k = (rng.standard_normal((T, HKV, D)) + offset * rng.standard_normal((1, HKV, D)))
    return k.astype(np.float32), rng.standard_normal((T, HKV, D)).astype(np.float32)


def exact(q, k, v, pos0):
    """float64 causal attention of q (T, H, d) at positions pos0.. over k, v (L, HKV, d)."""
    T = len(q)
    G = H // HKV
    s = np.einsum("thd,lhd->thl", q.astype(np.float64), np.repeat(k, G, 1).astype(np.float64))
    s = s / np.sqrt(D)
    s = np.where(np.arange(len(k))[None, None, :] > (pos0 + np.arange(T))[:, None, None], -np.inf, s)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("thl,lhd->thd", p, np.repeat(v, G, 1).astype(np.float64))


def test_plain_reproduces_the_codec_and_the_reference_attention(rng):
    k, v = data(rng, 50)
    c = KVCache(1, HKV, D, 64, "turbo3", "turbo4", plain=True)
    c.append(0, k[:20], v[:20])
    c.append(0, k[20:], v[20:])
    for (codes, scales), x, fmt in ((c._impl.k[0], k, "turbo3"), (c._impl.v[0], v, "turbo4")):
        enc = nexvk.codec(fmt, D).encode(x)
        np.testing.assert_array_equal(codes[:50], enc.codes.reshape(50, HKV, -1))
        np.testing.assert_array_equal(scales[:50], enc.scales.reshape(50, HKV, -1))
    q = rng.standard_normal((3, H, D)).astype(np.float32)
    (kc, ks), (vc, vs) = c._impl.k[0], c._impl.v[0]
    want, _, _ = attn_kernel.ref(c.kfmts[0], c.vfmts[0], kc, ks, vc, vs, q, 47, 1 / 8)
    np.testing.assert_array_equal(c.attention(0, q), want)


def test_hardened_stores_centred_codes_and_f16_sinks(rng):
    k, v = data(rng, 30)
    c = KVCache(1, HKV, D, 40, "turbo3", "turbo3", sinks=2)
    c.append(0, k, v)
    mean = k[2:].mean(0).astype(np.float16)                 # the non-sink keys of the append
    np.testing.assert_array_equal(c.transform.mean[0], mean)
    kc = k - mean.astype(np.float32)
    enc = nexvk.codec("turbo3", D).encode(kc[2:])
    codes, scales = c._impl.k[0]
    np.testing.assert_array_equal(codes[:28], enc.codes.reshape(28, HKV, -1))
    np.testing.assert_array_equal(scales[:28], enc.scales.reshape(28, HKV, -1))
    signs = c.kfmts[0].signs
    np.testing.assert_array_equal(c._impl.sink_k[0], hadamard.rotate(kc[:2], signs).astype(np.float16))
    np.testing.assert_array_equal(c._impl.sink_v[0], hadamard.rotate(v[:2], signs).astype(np.float16))


@pytest.mark.parametrize("steps,mean_rows", [([30], 27), ([1] * 30, 1), ([3, 10, 17], 10),
                                            ([5, 25], 2)])
def test_hardened_attention_is_exact_attention_over_the_stored_rows(rng, steps, mean_rows):
    """Whatever the append pattern (one prefill, token by token from empty, chunks), the mean
    comes from the non-sink rows of the first append that has any, and the output is exact
    attention over the decoded rows (centred codes + mean, f16 sinks)."""
    k, v = data(rng, 30)
    sinks = 3
    c = KVCache(1, HKV, D, 32, "turbo3", "turbo4", sinks=sinks, n_heads=H)
    pos = 0
    for n in steps:
        c.append(0, k[pos:pos + n], v[pos:pos + n])
        pos += n
    np.testing.assert_array_equal(c.transform.mean[0],
                                  k[sinks:sinks + mean_rows].mean(0).astype(np.float16))
    m = c.transform.mean[0].astype(np.float32)
    kfmt, vfmt = c.kfmts[0], c.vfmts[0]
    kd = np.concatenate([kfmt.from_compute(c._impl.sink_k[0].astype(np.float32)),
                         kfmt.decode_rows(c._impl.k[0][0][:27].reshape(54, -1),
                                          c._impl.k[0][1][:27].reshape(54, -1)).reshape(27, HKV, D)])
    vd = np.concatenate([vfmt.from_compute(c._impl.sink_v[0].astype(np.float32)),
                         vfmt.decode_rows(c._impl.v[0][0][:27].reshape(54, -1),
                                          c._impl.v[0][1][:27].reshape(54, -1)).reshape(27, HKV, D)])
    np.testing.assert_allclose(kd[:sinks] + m, k[:sinks], atol=0.02)   # sinks are f16 of k
    q = rng.standard_normal((4, H, D)).astype(np.float32)
    got = c.attention(0, q)
    np.testing.assert_allclose(got, exact(q, kd + m, vd, 26), rtol=0, atol=2e-5)
    np.testing.assert_allclose(got, exact(q, kd, vd, 26), rtol=0, atol=2e-5)  # q.m drops out


def test_sinks_and_layer_types_are_what_nbytes_counts():
    c = KVCache(3, HKV, D, 100, "turbo3", "turbo3", sinks=4, layer_types="1:q8_0/turbo2,2:f16/f16")
    assert c.k_type == "turbo3" and [f.name for f in c.kfmts] == ["turbo3", "q8_0", "f16"]
    assert [f.name for f in c.vfmts] == ["turbo3", "turbo2", "f16"]
    per_head = [96 * (26 + 26) + 4 * 256 + 4 * 4 * 64 + 2 * 128,  # turbo3/turbo3 + sinks (f16,
                                                                  # raw keys) + mean, scale
                96 * (68 + 18) + 4 * 256,               # q8_0/turbo2: no mean (not turbo keys)
                96 * (128 + 128) + 4 * 256]             # f16/f16
    assert c.nbytes == HKV * sum(per_head)
    assert c.bits_per_value == 8 * c.nbytes / (3 * 100 * HKV * 2 * D)
    stored = sum(a.nbytes for a in c._impl.arrays + c._raw_sinks) + 2 * HKV * D * 2  # + tables
    assert stored == c.nbytes
    assert c._impl.k[1][0].shape == (96, HKV, 16)     # q8_0 codes only after the sinks


def test_a_failed_append_leaves_the_transform_unfitted(rng):
    k, v = data(rng, 6)
    c = KVCache(1, HKV, D, 8, "turbo3", "turbo3")
    c.append(0, k[:1], v[:1])                      # a sink: no mean yet
    huge = np.full((2, HKV, D), 1e9, np.float32)
    opposite = huge * np.array([1, -1], np.float32)[:, None, None] / 1e3  # mean 0, norm 8e6
    for bad, match in ((huge, "mean up to 1e\\+09"), (opposite, "vector norms")):
        with pytest.raises(ValueError, match=match):
            c.append(0, bad, v[:2])
    assert c.length(0) == 1 and not c.transform.ready[0] and not c.transform.mean.any()
    c.append(0, k[1:], v[1:])
    assert c.transform.ready[0] and c.length(0) == 6


def test_reset_forgets_fitted_means_but_keeps_given_ones(rng):
    k, v = data(rng, 16)
    c = KVCache(2, HKV, D, 16, "turbo3", "turbo3")
    c.append(0, k, v)
    c.reset()
    assert not c.transform.ready[0] and c.length(0) == 0
    mean = np.ones((2, HKV, D), np.float32)
    c = KVCache(2, HKV, D, 16, "turbo3", "turbo3", key_mean=mean)   # the scale is still fitted
    c.append(0, k, v, q=np.repeat(k, 3, axis=1))
    assert (c.transform.mean == 1).all() and (c.transform.scale[0] != 1).any()
    c.reset()
    assert not c.transform.ready.any() and (c.transform.mean == 1).all()
    assert (c.transform.scale == 1).all()
    c = KVCache(2, HKV, D, 16, "turbo3", "turbo3", key_mean=mean, key_scale=False)
    assert c.transform.ready.all() and not c.spec.scaled


@pytest.mark.device
def test_vulkan_runs_centred_keys_and_layer_types_as_numpy_does(device, rng):
    """The key transform happens in KVCache (host side), so with no sinks the Vulkan store
    holds the same centred codes and gives the numpy store's outputs."""
    k, v = data(rng, 40)
    kw = dict(sinks=0, layer_types="1:q8_0/turbo4", n_heads=H)
    ref = KVCache(2, HKV, D, 48, "turbo3", "turbo3", **kw)
    vk = KVCache(2, HKV, D, 48, "turbo3", "turbo3", backend="vulkan", device=device, **kw)
    q = rng.standard_normal((5, H, D)).astype(np.float32)
    for layer in (0, 1):
        for c in (ref, vk):
            c.append(layer, k[:30], v[:30])
            c.append(layer, k[30:], v[30:])
        np.testing.assert_array_equal(vk.transform.mean, ref.transform.mean)
        a, b = vk.attention(layer, q), ref.attention(layer, q)
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()


@pytest.mark.device
@pytest.mark.parametrize("steps", [[40], [1, 1, 38], [2, 3, 35], [3, 37]])
@pytest.mark.parametrize("sparse_v", [None, 0.02])
def test_vulkan_keeps_sinks_as_numpy_does(device, rng, steps, sparse_v):
    """Sinks on the device (f16 rows of the compute domain, read by all three attention
    passes): prefill, token by token from empty (the sinks are re-encoded once the mean is
    fitted: a keys-only re-append), chunks that start inside the sink range, sparse V."""
    k, v = data(rng, 40)
    q = rng.standard_normal((40, H, D)).astype(np.float32)
    kw = dict(sinks=3, n_heads=H)
    ref = KVCache(1, HKV, D, 48, "turbo3", "turbo3", **kw)
    vk = KVCache(1, HKV, D, 48, "turbo3", "turbo3", backend="vulkan", device=device, **kw)
    assert vk.nbytes == ref.nbytes == vk.store.nbytes  # what the device allocates
    pos = 0
    for n in steps:
        outs = []
        for c in (ref, vk):
            c.append(0, k[pos:pos + n], v[pos:pos + n], q=q[pos:pos + n])
            outs.append(c.attention(0, q[pos:pos + n], sparse_v=sparse_v))
            assert c.stats["total"] > 0
        assert np.abs(outs[0] - outs[1]).max() <= 1e-4 * np.abs(outs[0]).max(), steps
        assert vk.stats == ref.stats
        pos += n


@pytest.mark.device
@pytest.mark.parametrize("opts", [{}, {"key_scale": False}, {"sinks": 0}, {"plain": True}])
@pytest.mark.parametrize("steps", [[20], [1, 1, 18], [1, 9, 10]])
def test_device_steps_fit_and_apply_the_transform_as_numpy_does(device, rng, opts, steps):
    """A model's device step hands the store raw keys and queries (record_append with q):
    key_fit.comp fits the mean and scale in the step that holds the first non-sink position,
    quantize.comp stores (k - mean) * scale (and re-encodes the sinks kept raw), the scores
    pass divides the queries by the scale. Outputs match KVCache.append(..., q=)."""
    from nexvk.kernels import dyn
    k, v = data(rng, 20)
    k *= np.linspace(0.2, 3, D, dtype=np.float32)          # channels the scale can tell apart
    q = (rng.standard_normal((20, H, D)) * np.linspace(3, 0.2, D)).astype(np.float32)
    ref = KVCache(1, HKV, D, 32, "turbo3", "turbo3", n_heads=H, **opts)
    vk = KVCache(1, HKV, D, 32, "turbo3", "turbo3", backend="vulkan", device=device, n_heads=H,
                 **opts)
    st, pool = vk.store, device.pool
    bufs = {n: pool.get(f"test-xf/{n}", 20 * H * D, np.float32, kind="device") for n in "kvqo"}
    graphs = {}
    try:
        pos = 0
        for n in steps:
            if n not in graphs:
                g = device.graph().upload(bufs["k"], bufs["v"], bufs["q"], st.dyn, st.stats)
                st.record_append(g, st.dyn, 0, bufs["k"], bufs["v"], n, q=bufs["q"], n_heads=H)
                st.record_attention(g, st.dyn, 0, bufs["q"], bufs["o"], n, H, raw_q=True)
                graphs[n] = g.download(bufs["o"])
            for name, x in (("k", k), ("v", v), ("q", q)):
                bufs[name].host[:x[pos:pos + n].size] = x[pos:pos + n].reshape(-1)
            dyn.fill(st.dyn.host, n, pos, scale=1 / np.sqrt(D), sparse_v=0.0)
            vk.advance(pos, n)
            graphs[n].run()
            got = bufs["o"].host[:n * H * D].reshape(n, H, D)
            ref.append(0, k[pos:pos + n], v[pos:pos + n], q=q[pos:pos + n])
            want = ref.attention(0, q[pos:pos + n])
            assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), (opts, steps, pos)
            pos += n
    finally:
        for g in graphs.values():
            g.destroy()
        device.release("test-xf/")


def test_hardened_cache_with_a_block_format_layer_attends_from_its_first_token(rng):
    c = KVCache(2, 2, 64, 10, "turbo3", "turbo3", layer_types="0:q4_0/q8_0")
    k = rng.standard_normal((1, 2, 64)).astype(np.float32)
    c.append(0, k, k)
    assert c.layer_sinks[0] == 1
    q = rng.standard_normal((1, 4, 64)).astype(np.float32)
    assert np.isfinite(c.attention(0, q)).all()
