"""The key transform (centring and channel scaling) and the cache spec (formats per layer,
sinks, bytes)."""
import numpy as np
import pytest

from nexvk.quant.cachespec import CacheSpec, format_layer_types, parse_layer_types
from nexvk.quant.transform import KeyTransform


def softmax_attention(q, k, v):
    """float64 attention of q (T, H, d) over k, v (L, HKV, d), no mask."""
    T, H, d = q.shape
    G = H // k.shape[1]
    s = np.einsum("thd,lhd->thl", q, np.repeat(k, G, axis=1)) / np.sqrt(d)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("thl,lhd->thd", p, np.repeat(v, G, axis=1))


def test_key_transform_leaves_exact_attention_unchanged():
    rng = np.random.default_rng(0)
    L, hkv, H, d = 40, 2, 6, 64
    offset = rng.standard_normal((hkv, d)) * 8           # real keys carry a large offset
    k = rng.standard_normal((L, hkv, d)) + offset
    v = rng.standard_normal((L, hkv, d))
    q = rng.standard_normal((5, H, d))
    mean = rng.standard_normal((1, hkv, d)) * 8
    scale = np.exp(rng.standard_normal((1, hkv, d)) * 0.5)
    t = KeyTransform(1, hkv, d, [True], mean=mean, scale=scale)
    kt, qt = t.keys(0, k), t.queries(0, q)
    assert kt.dtype == qt.dtype == np.float64
    assert np.abs(kt - k).max() > 1                       # it really changed the keys
    np.testing.assert_allclose(softmax_attention(qt, kt, v), softmax_attention(q, k, v),
                               rtol=0, atol=1e-9)


def test_key_transform_fit_reset_and_inactive_layers():
    rng = np.random.default_rng(1)
    k = rng.standard_normal((10, 2, 16)).astype(np.float32) + 3
    t = KeyTransform(2, 2, 16, [True, False])
    assert list(t.ready) == [False, True]
    t.fit(0, k)
    np.testing.assert_array_equal(t.mean[0], k.mean(0).astype(np.float16))
    assert t.keys(1, k) is k                               # inactive layer
    assert (t.scale[0] == 1).all()                         # no queries: no scale
    t.reset()
    assert not t.ready[0] and not t.mean.any()
    fixed = KeyTransform(2, 2, 16, [True, True], mean=np.ones((2, 2, 16)), scaled=False)
    fixed.reset()
    assert fixed.ready.all() and (fixed.mean == 1).all()
    for bad, match in [(dict(mean=np.ones((2, 2, 8))), "shape"),
                       (dict(scale=np.zeros((2, 2, 16))), "positive"),
                       (dict(mean=np.full((2, 2, 16), np.nan)), "finite")]:
        with pytest.raises(ValueError, match=match):
            KeyTransform(2, 2, 16, [True, True], **bad)


def test_layer_types_parse_and_format():
    per = parse_layer_types("0-1:q8_0/q8_0, 5:turbo4/turbo2", 8)
    assert per == {0: ("q8_0", "q8_0"), 1: ("q8_0", "q8_0"), 5: ("turbo4", "turbo2")}
    spec = CacheSpec.build(8, "turbo3", "turbo3", per)
    assert spec.k_types[:2] == ("q8_0", "q8_0") and spec.v_types[5] == "turbo2"
    assert format_layer_types(spec.k_types, spec.v_types, "turbo3", "turbo3") == \
        "0-1:q8_0/q8_0,5:turbo4/turbo2"
    for bad, match in [("0:q8_0", "LAYER"), ("3-1:f16/f16", "comes before"), ("9:f16/f16", "0..7"),
                       ("0:q9/f16", "unknown KV format")]:
        with pytest.raises(ValueError, match=match):
            parse_layer_types(bad, 8)


def test_spec_defaults_and_bytes():
    hard = CacheSpec.build(3, "turbo3", "q8_0")
    assert hard.sinks == 1 and not hard.plain and hard.transformed(0)
    assert CacheSpec.build(3, "q8_0", "q8_0").sinks == 0           # nothing to harden
    plain = CacheSpec.build(3, "turbo3", "turbo3", plain=True)
    assert plain.sinks == 0 and not plain.transformed(0)
    with pytest.raises(ValueError, match="plain"):
        CacheSpec.build(3, "turbo3", "turbo3", sinks=2, plain=True)
    with pytest.raises(ValueError, match="sinks"):
        CacheSpec.build(3, "turbo3", "turbo3", sinks=-1)
    # turbo3 K (26 B) + q8_0 V (68 B) per position, 1 f16 sink (128 + 128 B) and its raw
    # float32 key (256 B), f16 mean and scale (128 B each)
    assert hard.layer_bytes(0, 64, 64, 100) == 99 * (26 + 68) + 256 + 256 + 256
    unscaled = CacheSpec.build(3, "turbo3", "q8_0", scaled=False)
    assert unscaled.layer_bytes(0, 64, 64, 100) == 99 * (26 + 68) + 256 + 256 + 128
    mixed = CacheSpec.build(2, "turbo3", "turbo3", "1:q8_0/f16", sinks=4)
    assert not mixed.transformed(1)
    assert mixed.layer_bytes(1, 64, 64, 10) == 6 * (68 + 128) + 4 * 256
    assert mixed.layer_bytes(0, 64, 64, 3) == 3 * 256 + 3 * 256 + 256   # all sinks (+ raw keys)


def test_scale_is_fitted_from_queries_and_keeps_attention_exact():
    """A channel that queries ignore but keys fill gets a small scale (it is what the
    rotation would otherwise spread over every coordinate); attention is unchanged."""
    rng = np.random.default_rng(2)
    T, hkv, H, d = 64, 1, 3, 16
    k = rng.standard_normal((T, hkv, d))
    k[..., 0] *= 30                                        # a loud key channel ...
    q = rng.standard_normal((T, H, d))
    q[..., 0] *= 0.01                                      # ... that queries barely read
    t = KeyTransform(1, hkv, d, [True])
    t.fit(0, k[:7], q[:7])                                 # too few rows: no scale
    assert (t.scale == 1).all()
    t.reset()
    t.fit(0, k, q)
    s = t.scale[0, 0].astype(np.float64)
    assert s[0] < 0.1 * np.median(s) and abs(np.log(s).mean()) < 1e-2
    v = rng.standard_normal((T, hkv, d))
    np.testing.assert_allclose(softmax_attention(t.queries(0, q), t.keys(0, k), v),
                               softmax_attention(q, k, v), rtol=0, atol=1e-9)


def test_layer_ranges_are_checked_before_they_are_expanded():
    """'0-100000000:f16/f16' was expanded into 10^8 entries (3.75 GB, 44 s) before its last
    layer was found out of range: the range is now checked first, so nothing is allocated."""
    import tracemalloc
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="layer 3000000; this cache has layers 0..7"):
            parse_layer_types("0-1:q8_0/q8_0,2-3000000:f16/f16", 8)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak
