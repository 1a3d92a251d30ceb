"""The cpu store (numba encode + attention on the codes) against the numpy store over the
same rows: identical arrays after every append, attention within 1e-4 of the numpy twin."""
from types import SimpleNamespace

import numpy as np
import pytest

from nexvk.cache.layout import ring_slots
from nexvk.cache.numpy_store import NumpyStore
from nexvk.cpu import attention as attn
from nexvk.cache import cpu_store
from nexvk.cache.cpu_store import CpuStore
from nexvk.quant.formats import make

PAIRS = [("f16", "f16"), ("q8_0", "q4_0"), ("q4_0", "q8_0"), ("turbo2", "turbo4"),
         ("turbo3", "turbo3"), ("turbo4", "turbo2"), ("turbo3", "f16"), ("q8_0", "turbo3")]


def _geometry(k, v, hkv, d, capacity, heads, window=0, sinks=0, max_batch=64):
    slots = ring_slots(capacity, window, max_batch)
    return SimpleNamespace(n_layers=1, n_kv_heads=hkv, head_dim=d, head_dim_v=d, max_heads=heads,
                           kfmts=[make(k, d, 3)], vfmts=[make(v, d, 3)], windows=[window],
                           slots=[slots], sinks=[0 if window else sinks])


def _fill(rng, stores, hkv, d, n, step=29):
    """Append n positions to every store in uneven pieces; the arrays must stay identical."""
    pos = 0
    while pos < n:
        m = min(int(rng.integers(1, step)), n - pos)
        k = (rng.standard_normal((m * hkv, d)) * 2).astype(np.float32)
        v = rng.standard_normal((m * hkv, d)).astype(np.float32)
        for s in stores:
            s.append(0, pos, k, v)
        pos += m
        for a, b in zip(stores[0].arrays, stores[1].arrays):
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


def _check(rng, ref, st, T, n, H, d, thr):
    q = (rng.standard_normal((T, H, d)) * 3).astype(np.float32)
    want, w_skip, w_total = ref.attention(0, q, n - T, 0.2, thr)
    got, skip, total = st.attention(0, q, n - T, 0.2, thr)
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 1e-4, err
    assert total == w_total
    # sparse V: a weight within rounding of the threshold may fall either side
    assert abs(skip - w_skip) <= 1 + total // 10_000, (skip, w_skip)
    return skip


@pytest.mark.parametrize("k,v", PAIRS)
@pytest.mark.parametrize("hkv,group,d", [(2, 1, 64), (3, 3, 64), (1, 4, 128), (2, 3, 256)])
def test_decode_and_prefill(rng, k, v, hkv, group, d):
    H = hkv * group
    g = _geometry(k, v, hkv, d, 160, H, sinks=1)
    ref, st = NumpyStore(g), CpuStore(g)
    _fill(rng, [ref, st], hkv, d, 101)
    _check(rng, ref, st, 1, 101, H, d, 0.0)        # decode
    _check(rng, ref, st, 17, 101, H, d, 0.0)       # prefill: causal over the last 17
    _check(rng, ref, st, 101, 101, H, d, 0.0)      # every position, sink included
    assert _check(rng, ref, st, 1, 101, H, d, 2e-3) > 0   # sparse V drops some rows


@pytest.mark.parametrize("sinks", [0, 1, 4])
@pytest.mark.parametrize("k,v", [("turbo3", "turbo3"), ("q4_0", "turbo2")])
def test_sinks_and_key_rewrites(rng, sinks, k, v):
    """Positions 0-2 alone (sinks only, or a mix), then keys rewritten alone (values None:
    how the hardened cache re-encodes its sinks once the key mean is known)."""
    g = _geometry(k, v, 2, 64, 64, 6, sinks=sinks)
    ref, st = NumpyStore(g), CpuStore(g)
    _fill(rng, [ref, st], 2, 64, 3, step=2)
    _check(rng, ref, st, 1, 3, 6, 64, 0.0)
    _check(rng, ref, st, 3, 3, 6, 64, 0.0)
    keys = rng.standard_normal((3 * 2, 64)).astype(np.float32)
    for x in (ref, st):
        x.append(0, 0, keys, None)
    for a, b in zip(ref.arrays, st.arrays):
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
    _check(rng, ref, st, 3, 3, 6, 64, 0.0)


@pytest.mark.parametrize("k,v", [("turbo3", "turbo3"), ("f16", "q8_0")])
@pytest.mark.parametrize("window,T", [(16, 1), (16, 9), (37, 20)])
def test_ring_window(rng, k, v, window, T):
    """A sliding-window layer's ring wraps several times; queries see window keys."""
    g = _geometry(k, v, 2, 64, 400, 8, window=window, max_batch=24)
    ref, st = NumpyStore(g), CpuStore(g)
    _fill(rng, [ref, st], 2, 64, 300, step=20)
    _check(rng, ref, st, T, 300, 8, 64, 0.0)
    _check(rng, ref, st, T, 300, 8, 64, 1e-3)


@pytest.mark.parametrize("threads", [1, 2])
def test_chunks_threads_and_query_blocks(rng, monkeypatch, threads):
    """The parallel path (keys split into chunks, one per thread) and queries in several
    blocks give what one chunk in one block gives."""
    monkeypatch.setattr(attn, "PARALLEL_WORK", 0)
    monkeypatch.setattr(cpu_store, "_SCORE_BYTES", 4 * 6 * 200 * 5)   # 5 queries per block
    g = _geometry("turbo3", "turbo4", 2, 64, 200, 6, sinks=1)
    ref, st = NumpyStore(g), CpuStore(g)
    assert st.scr.qr.shape[0] == 5
    _fill(rng, [ref, st], 2, 64, 173)
    import numba
    old = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        _check(rng, ref, st, 1, 173, 6, 64, 0.0)
        _check(rng, ref, st, 23, 173, 6, 64, 1e-3)
    finally:
        numba.set_num_threads(old)


def test_more_heads_than_sized_for(rng):
    g = _geometry("turbo3", "turbo3", 1, 64, 40, 2)
    ref, st = NumpyStore(g), CpuStore(g)
    _fill(rng, [ref, st], 1, 64, 40)
    _check(rng, ref, st, 3, 40, 8, 64, 0.0)


def test_decode_allocates_nothing_inside_the_kernels(rng):
    """What a decode step (append + attention) costs numba's runtime (NRT), counted over
    100 steps at contexts 50-150 and 400 at 150-550: every allocation is freed (none
    survives), each step makes the same number at any context (none grows with it; NRT
    counts calls, not bytes, so this is the count of the meminfo wrappers that carry each
    array argument into compiled code: a few dozen), and Python's traced memory stays flat.
    Not proven: the size of a transient block (a per-call buffer freed in the same step
    would count like a wrapper); the kernels take every buffer from the store's scratch
    (cpu_store.py), which is what keeps the count independent of the context."""
    import os
    import subprocess
    import sys
    code = """
import tracemalloc, numpy as np
from numba.core.runtime import rtsys
from types import SimpleNamespace
from nexvk.cache.cpu_store import CpuStore
from nexvk.quant.formats import make
g = SimpleNamespace(n_layers=1, n_kv_heads=2, head_dim=64, head_dim_v=64, max_heads=4, windows=[0],
                    kfmts=[make("turbo3", 64)], vfmts=[make("turbo3", 64)], slots=[600], sinks=[1])
st, rng = CpuStore(g), np.random.default_rng(0)
kv = rng.standard_normal((2, 64)).astype(np.float32)
q = rng.standard_normal((1, 4, 64)).astype(np.float32)
def step(n):
    st.append(0, n, kv, kv)
    st.attention(0, q, n, 0.1, 1e-3)
for n in range(50):
    step(n)
tracemalloc.start()
a = rtsys.get_allocation_stats()
for n in range(50, 150):
    step(n)
mid, b = tracemalloc.get_traced_memory()[0], rtsys.get_allocation_stats()
for n in range(150, 550):
    step(n)
end, c = tracemalloc.get_traced_memory()[0], rtsys.get_allocation_stats()
print(b.alloc - a.alloc, c.alloc - b.alloc, b.alloc - b.free - (a.alloc - a.free),
      c.alloc - c.free - (a.alloc - a.free), end - mid)
"""
    env = dict(os.environ, NUMBA_NRT_STATS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    per_100, per_400, live_mid, live_end, grown = map(int, out)
    assert per_100 % 100 == 0 and per_400 == 4 * per_100   # the same count in every step
    assert 0 < per_100 // 100 < 64                        # wrappers of the arguments only
    assert live_mid == live_end == 0                       # all freed
    assert grown < 4096


@pytest.mark.parametrize("k,v", [("turbo2", "turbo4"), ("turbo3", "turbo3")])
def test_pair_table_path(rng, k, v):
    """Rows decoded two codes per lookup (where nexvk.cpu.lut does not serve: no AVX-512,
    or head_dim not a multiple of 16) give what the 16-code lookups give."""
    import dataclasses
    g = _geometry(k, v, 2, 64, 100, 6, sinks=1)
    ref, st = NumpyStore(g), CpuStore(g)
    st.kinds = [tuple(dataclasses.replace(x, vec=False) for x in kv) for kv in st.kinds]
    _fill(rng, [ref, st], 2, 64, 77)
    _check(rng, ref, st, 1, 77, 6, 64, 0.0)
    _check(rng, ref, st, 9, 77, 6, 64, 0.0)
