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


@pytest.mark.parametrize("fmt", ["f16", "q8_0", "q4_0", "turbo2", "turbo3", "turbo4"])
@pytest.mark.parametrize("plain", [False, True])
def test_decode_appends_in_one_compiled_call_match_numpy(rng, monkeypatch, fmt, plain):
    """A decode token past the sinks goes through CpuStore.append_one (checks, key
    transform and encoding in one compiled call): the same arrays as the numpy cache's
    checked path, token after token."""
    taken = []
    one = CpuStore.append_one
    monkeypatch.setattr(CpuStore, "append_one", lambda *a: taken.append(one(*a)) or taken[-1])
    hkv, H, d = 2, 4, 64
    ref, cpu = _pair(n_layers=1, n_kv_heads=hkv, head_dim=d, capacity=48, k_type=fmt,
                     v_type=fmt, n_heads=H, plain=plain)
    offset = rng.standard_normal((1, hkv, d)).astype(np.float32) * 4
    for T in [20] + [1] * 12:
        k = rng.standard_normal((T, hkv, d)).astype(np.float32) + offset
        v = rng.standard_normal((T, hkv, d)).astype(np.float32)
        q = rng.standard_normal((T, H, d)).astype(np.float32)
        for c in (ref, cpu):
            c.append(0, k, v, q=q)
        for a, b in zip(ref._impl.arrays, cpu._impl.arrays):
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
        np.testing.assert_allclose(cpu.attention(0, q), ref.attention(0, q), atol=1e-4)
    assert taken == [True] * 12


@pytest.mark.parametrize("fmt", ["f16", "turbo3"])
def test_a_decode_token_the_compiled_call_refuses_gets_the_checked_paths_answer(rng, fmt):
    """Non-finite keys, values or queries, and values past the format's fp16 range: the
    same error as the numpy cache, nothing stored. A turbo row past the one-reduction bound
    but storable is stored, as the checked path stores it."""
    hkv, H, d = 2, 4, 64
    ref, cpu = _pair(n_layers=1, n_kv_heads=hkv, head_dim=d, capacity=48, k_type=fmt,
                     v_type=fmt, n_heads=H)
    k, v = (rng.standard_normal((8, hkv, d)).astype(np.float32) for _ in range(2))
    q = rng.standard_normal((8, H, d)).astype(np.float32)
    for c in (ref, cpu):
        c.append(0, k, v, q=q)
    k1, v1, q1 = k[:1].copy(), v[:1].copy(), q[:1].copy()
    bad_k, bad_v, bad_q, big_v = k1.copy(), v1.copy(), q1.copy(), v1.copy()
    bad_k[0, 1, 3] = np.nan
    bad_v[0, 0, 9] = np.inf
    bad_q[0, 2, 0] = np.nan
    big_v[0, 1, 5] = 1e6 if fmt == "f16" else 5e3   # f16: out of range; turbo3: storable
    for args in ((bad_k, v1, q1), (k1, bad_v, q1), (k1, v1, bad_q), (k1, big_v, q1)):
        errors = []
        for c in (ref, cpu):
            try:
                c.append(0, *args[:2], q=args[2])
                errors.append(None)
            except ValueError as e:
                errors.append(str(e))
        assert errors[0] == errors[1]
        assert (errors[0] is None) == (fmt == "turbo3" and args[1] is big_v)
        assert ref.length(0) == cpu.length(0)
        for a, b in zip(ref._impl.arrays, cpu._impl.arrays):
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
