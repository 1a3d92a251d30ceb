"""KVCache on the cpu store against KVCache on the numpy store: hardened (key mean and scale
fitted from the first append, f16 sinks re-encoded) and plain, per-layer formats, a
sliding-window layer, prefill then decode; identical arrays, attention within 1e-4."""
import numpy as np
import pytest

from nexvk import KVCache
from nexvk.cache.cpu_store import CpuStore


def _pair(**kw):
    ref, cpu = KVCache(backend="numpy", **kw), KVCache(backend="cpu", **kw)
    assert type(cpu._impl) is CpuStore
    return ref, cpu


@pytest.mark.parametrize("plain", [False, True])
@pytest.mark.parametrize("decode_first", [False, True])
def test_hardened_and_plain_cache(rng, plain, decode_first):
    """decode_first: the sequence starts token by token, so the sink is stored before the
    key mean is known and re-encoded (keys only) when it is fitted."""
    hkv, H, d = 2, 6, 64
    kw = dict(n_layers=3, n_kv_heads=hkv, head_dim=d, capacity=96, k_type="turbo3",
              v_type="turbo3", n_heads=H, max_batch=32, plain=plain, window=[0, 0, 12],
              **({} if plain else {"layer_types": "1:q8_0/turbo2"}))
    ref, cpu = _pair(**kw)
    offset = rng.standard_normal((1, hkv, d)).astype(np.float32) * 4   # keys with a mean
    pos, steps = 0, ([1, 1, 20] if decode_first else [30]) + [1] * 9 + [7]
    for T in steps:
        k = rng.standard_normal((T, hkv, d)).astype(np.float32) + offset
        v = rng.standard_normal((T, hkv, d)).astype(np.float32)
        q = (rng.standard_normal((T, H, d)) * 2).astype(np.float32)
        for layer in range(3):
            for c in (ref, cpu):
                c.append(layer, k, v, q=q)
            for a, b in zip(ref._impl.arrays, cpu._impl.arrays):
                np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
            for sparse in (None, 1e-3):
                want = ref.attention(layer, q, sparse_v=sparse)
                got = cpu.attention(layer, q, sparse_v=sparse)
                assert np.abs(got - want).max() / np.abs(want).max() < 1e-4
                assert cpu.stats["total"] == ref.stats["total"]
                assert abs(cpu.stats["skipped"] - ref.stats["skipped"]) <= 1
        pos += T
    assert cpu.length(2) == pos
    assert list(cpu.transform.active) == ([False] * 3 if plain else [True, False, True])
    assert cpu.transform.ready.all() and cpu.layer_sinks == ([0] * 3 if plain else [1, 1, 0])
