"""Causal GQA attention read straight from the cache's codes (twin: nexvk.kernels.attention.ref).

The rotated-domain form of the shaders: each query is rotated once into the key format's
compute domain and scored against centroids times norms (q8_0/q4_0: values times block
scales; f16: the halves), one key row at a time into a d-float register-sized buffer, never
a float copy of the context (turbo rows: 16 codes per vector table lookup, nexvk.cpu.lut,
where the CPU has AVX-512, else two per scalar pair-table copy); values are accumulated in
the value format's compute domain and un-rotated once per query head.

Queries go in blocks of `block` (the score scratch holds block x heads x keys floats). Per
block, two passes over the block's visible keys, each split into `ns` chunks x KV heads
(the parallel items; one chunk per thread):
 pass 1  scores of every query row of the KV head's group -> scratch; per item the
         running max m and sum l of exp(s - m)
 (combine the items' m, l: the exact global softmax; scores hold exp(s - m_item) by now)
 pass 2  p = exp(s - M) / L (one multiply), dropped below the sparse-V threshold (counted), as the
         shader and ref do; a value row is decoded only when some row of the group needs
         it, and accumulated into the item's partial sums
 (sum the partials, un-rotate)
Every array is given by the caller (the store preallocates them): a call allocates nothing.
"""
from dataclasses import dataclass

import numba
import numpy as np
from numba import njit, prange

from nexvk.cpu import half, lut
from nexvk.cpu.fastexp import exp
from nexvk.cpu.formats import F16, Q8_0, TURBO
from nexvk.cpu.rotate import rotate, unrotate
from nexvk.kernels.attention import ref  # noqa: F401  (the numpy twin)

# fastmath without nnan/ninf: the kernels compare against -inf
FAST = {"reassoc", "contract", "arcp", "nsz", "afn"}
PARALLEL_WORK = 1 << 18  # key-row x query-row x d products below which one thread runs


@dataclass
class Scratch:
    """Working arrays of one store, sized for `block` queries of at most `heads` heads
    over `keys` keys at head_dim d, split into at most `ns` chunks per KV head."""
    qr: np.ndarray       # (block, heads, d) rotated, scaled queries
    scores: np.ndarray   # (block, heads, keys)
    ml: np.ndarray       # (hkv * ns, block, group, 2) per item: max and sum; then its weight factor
    rows: np.ndarray     # (hkv * ns, d) one decoded key or value row per item
    rows2: np.ndarray    # the same, viewed as uint64 (d / 2) for the two-code copies
    acc: np.ndarray      # (hkv * ns, block, group, d) partial value sums
    skips: np.ndarray    # (hkv * ns,) int64

    @classmethod
    def make(cls, block, heads, hkv, keys, d, ns):
        n, G = hkv * ns, heads // hkv
        rows = np.zeros((n, d), np.float32)
        return cls(np.zeros((block, heads, d), np.float32),
                   np.zeros((block, heads, keys), np.float32),
                   np.zeros((n, block, G, 2), np.float32),
                   rows, rows.view(np.uint64), np.zeros((n, block, G, d), np.float32),
                   np.zeros(n, np.int64))


def attend(kk, vk, kc, ks, vc, vs, sink_k, sink_v, q, pos0, scale, thr, window, out, scr,
           threads=None):
    """out (T, H, d) := attention of q (T, H, d) float32 at positions pos0.. over the layer.
    kk, vk: the K and V formats' Kinds; kc, vc: codes (slots, HKV, words) uint32 viewed as
    uint8 (slots, HKV, 4 * words); ks, vs: scales (slots, HKV, n) as uint16; sink_k, sink_v:
    (N, HKV, d) halves as uint16; position p >= N lives in slot (p - N) % slots (the cache's
    layout). Returns the number of (query, head, key) weights dropped by sparse V."""
    T, H, d = q.shape
    hkv = kc.shape[1]
    block = scr.qr.shape[0]
    keys = min(pos0 + T, window + block - 1) if window else pos0 + T
    work = keys * d * min(T, block) * H // hkv
    ns = max(1, min(numba.get_num_threads() if threads is None else threads,
                    scr.skips.size // hkv))
    if work < PARALLEL_WORK:
        ns = 1
    return _attend(_tables(kk), kk.signs, kk.inv_sqrt_d, kc, ks, sink_k,
               _tables(vk), vk.signs, vk.inv_sqrt_d, vc, vs, sink_v,
               q, pos0, np.float32(scale), np.float32(thr), window, ns, out,
               scr.qr, scr.scores, scr.ml, scr.rows, scr.rows2, scr.acc, scr.skips)


def _tables(k):
    """What _decode needs of a Kind: (fid, bits, pair table, centroids, 16-code lookups)."""
    return k.fid, k.bits, k.pairs, k.centroids, k.vec


@njit(cache=True, fastmath=FAST, inline="always")
def _decode(tables, codes, scales, sinks, slot, g, out, out2):
    """out := the row of KV head g in `slot` (-1 - p: sink position p) in its compute
    domain, but for the factor returned (a turbo norm); out2 is out viewed as uint64. Rows
    are indexed in place: a view per row would cost reference counting on every key."""
    fid, bits, pairs, cent, vec = tables
    d = out.size
    if slot < 0:
        p = -1 - slot
        for i in range(d):
            out[i] = half.to_f32(sinks[p, g, i])
        return np.float32(1)
    if fid == TURBO and vec:   # 16 codes per table lookup
        lut.decode_row(bits, codes, (slot * codes.shape[1] + g) * codes.shape[2], cent, out)
        return half.to_f32(scales[slot, g, 0])
    if fid == TURBO:   # two codes at a time: one 64-bit copy of their two centroids
        if bits == 3:
            for k in range(d // 8):
                v = np.uint32(codes[slot, g, 3 * k]) | \
                    (np.uint32(codes[slot, g, 3 * k + 1]) << np.uint32(8)) | \
                    (np.uint32(codes[slot, g, 3 * k + 2]) << np.uint32(16))
                for j in range(4):
                    out2[4 * k + j] = pairs[(v >> np.uint32(6 * j)) & np.uint32(63)]
        elif bits == 2:
            for k in range(d // 4):
                v = codes[slot, g, k]
                out2[2 * k] = pairs[v & np.uint8(15)]
                out2[2 * k + 1] = pairs[v >> np.uint8(4)]
        else:
            for k in range(d // 2):
                out2[k] = pairs[codes[slot, g, k]]
        return half.to_f32(scales[slot, g, 0])
    if fid == F16:
        for i in range(d):
            out[i] = half.to_f32(np.uint32(codes[slot, g, 2 * i]) |
                                 (np.uint32(codes[slot, g, 2 * i + 1]) << np.uint32(8)))
    elif fid == Q8_0:
        for b in range(d // 32):
            s = half.to_f32(scales[slot, g, b])
            for i in range(32 * b, 32 * b + 32):
                out[i] = np.float32(np.int8(codes[slot, g, i])) * s
    else:  # Q4_0
        for b in range(d // 32):
            s = half.to_f32(scales[slot, g, b])
            for i in range(16 * b, 16 * b + 16):
                c = codes[slot, g, i]
                out[2 * i] = np.float32(np.int32(c & np.uint8(15)) - 8) * s
                out[2 * i + 1] = np.float32(np.int32(c >> np.uint8(4)) - 8) * s
    return np.float32(1)


@njit(cache=True, inline="always")
def _chunk(lo, nk, ns, c):
    cs = (nk + ns - 1) // ns
    j0 = lo + c * cs
    return j0, min(lo + nk, j0 + cs)


@njit(cache=True, inline="always")
def _slot0(j, N, nslots):
    return -1 - j if j < N else (j - N) % nslots


@njit(cache=True, inline="always")
def _next(slot, j, N, nslots):
    """The slot of position j + 1 given that of j."""
    if j + 1 < N:
        return slot - 1
    if j + 1 == N:
        return 0
    slot += 1
    return 0 if slot == nslots else slot


@njit(cache=True, inline="always")
def _seen(t, p0, window, j0, j1):
    """The keys j0 <= j < j1 that query t of the block (at position p0 + t) sees: [a, b)."""
    a = max(j0, p0 + t - window + 1) if window > 0 else j0
    return a, max(a, min(j1, p0 + t + 1))


@njit(cache=True, fastmath=FAST)
def _scores(it, kt, kc, ks, sink_k, qr, tb, p0, lo, nk, window, ns, G,
            scores, ml, rows, rows2):
    """Pass 1 for item it = (KV head g, chunk c): scores, then per query row the chunk's
    max m and sum l of exp(s - m); the scores become exp(s - m), 0 where not seen."""
    g, c = it // ns, it % ns
    j0, j1 = _chunk(lo, nk, ns, c)
    d = qr.shape[2]
    N, nslots = sink_k.shape[0], kc.shape[0]
    buf = rows[it]
    if j0 < j1:
        slot = _slot0(j0, N, nslots)
        for j in range(j0, j1):
            mult = _decode(kt, kc, ks, sink_k, slot, g, buf, rows2[it])
            for t in range(tb):
                age = p0 + t - j
                if age < 0 or (window > 0 and age >= window):
                    continue
                for r in range(G):
                    h = g * G + r
                    s = np.float32(0)
                    for i in range(d):
                        s += qr[t, h, i] * buf[i]
                    scores[t, h, j - lo] = s * mult
            slot = _next(slot, j, N, nslots)
    for t in range(tb):
        a, b = _seen(t, p0, window, j0, j1)
        for r in range(G):
            h = g * G + r
            scores[t, h, j0 - lo:a - lo] = 0
            scores[t, h, b - lo:j1 - lo] = 0
            seen = scores[t, h, a - lo:b - lo]   # loops from 0: no index wraparound, SIMD
            m = np.float32(-np.inf)
            for j in range(seen.size):
                m = max(m, seen[j])
            acc = np.float32(0)
            for j in range(seen.size):   # one exp per score in all
                e = exp(seen[j] - m)
                seen[j] = e
                acc += e
            ml[it, t, r, 0] = m
            ml[it, t, r, 1] = acc


@njit(cache=True, fastmath=FAST)
def _values(it, vt, vc, vs, sink_v, tb, p0, lo, nk, window, ns, G, thr,
            scores, ml, rows, rows2, acc, skips):
    """Pass 2 for item it: weights = scores * the item's factor (ml[it, t, r, 0]), those
    under thr dropped and counted; then the value rows some query row needs."""
    g, c = it // ns, it % ns
    j0, j1 = _chunk(lo, nk, ns, c)
    N, nslots = sink_v.shape[0], vc.shape[0]
    d = rows.shape[1]
    buf = rows[it]
    acc[it, :tb] = 0
    n_skip = 0
    for t in range(tb):
        a, b = _seen(t, p0, window, j0, j1)
        for r in range(G):
            seen = scores[t, g * G + r, a - lo:b - lo]
            f = ml[it, t, r, 0]
            for j in range(seen.size):
                p = seen[j] * f
                drop = p < thr
                n_skip += drop
                seen[j] = np.float32(0) if drop else p
    if j0 < j1:
        slot = _slot0(j0, N, nslots)
        for j in range(j0, j1):
            need = False
            for t in range(tb):
                for r in range(G):
                    need = need or scores[t, g * G + r, j - lo] > 0
            if need:
                mult = _decode(vt, vc, vs, sink_v, slot, g, buf, rows2[it])
                for t in range(tb):
                    for r in range(G):
                        p = scores[t, g * G + r, j - lo] * mult
                        if p != 0:
                            for i in range(d):
                                acc[it, t, r, i] += p * buf[i]
            slot = _next(slot, j, N, nslots)
    skips[it] = n_skip


@njit(cache=True, parallel=True)
def _scores_par(n, kt, kc, ks, sink_k, qr, tb, p0, lo, nk, window, ns, G,
                scores, ml, rows, rows2):
    for it in prange(n):
        _scores(it, kt, kc, ks, sink_k, qr, tb, p0, lo, nk, window, ns, G,
                scores, ml, rows, rows2)


@njit(cache=True, parallel=True)
def _values_par(n, vt, vc, vs, sink_v, tb, p0, lo, nk, window, ns, G, thr,
                scores, ml, rows, rows2, acc, skips):
    for it in prange(n):
        _values(it, vt, vc, vs, sink_v, tb, p0, lo, nk, window, ns, G, thr,
                scores, ml, rows, rows2, acc, skips)


@njit(cache=True, fastmath=FAST)
def _attend(kt, ksigns, kinv, kc, ks, sink_k,
            vt, vsigns, vinv, vc, vs, sink_v,
            q, pos0, scale, thr, window, ns, out, qr, scores, ml, rows, rows2, acc, skips):
    T, H, d = q.shape
    hkv = kc.shape[1]
    G = H // hkv
    block = qr.shape[0]
    n = hkv * ns
    skipped = 0
    for b0 in range(0, T, block):
        tb = min(block, T - b0)
        p0 = pos0 + b0
        lo = max(0, p0 - window + 1) if window > 0 else 0
        nk = p0 + tb - lo
        for t in range(tb):
            for h in range(H):
                x = qr[t, h]
                x[:] = q[b0 + t, h]
                if kt[0] == TURBO:
                    rotate(x, ksigns, kinv)
                for i in range(d):
                    x[i] *= scale
        if ns > 1:
            _scores_par(n, kt, kc, ks, sink_k, qr, tb, p0, lo, nk, window,
                        ns, G, scores, ml, rows, rows2)
        else:
            for it in range(n):
                _scores(it, kt, kc, ks, sink_k, qr, tb, p0, lo, nk, window,
                        ns, G, scores, ml, rows, rows2)
        for g in range(hkv):   # combine the chunks: global max M and 1 / sum
            for t in range(tb):
                for r in range(G):
                    m = -np.inf
                    for c in range(ns):
                        m = max(m, ml[g * ns + c, t, r, 0])
                    s = np.float32(0)
                    for c in range(ns):
                        it = g * ns + c
                        f = np.float32(0)
                        if ml[it, t, r, 1] > 0:
                            f = exp(ml[it, t, r, 0] - m)
                            s += ml[it, t, r, 1] * f
                        ml[it, t, r, 0] = f
                    for c in range(ns):   # a chunk's exp(s - m_c) times this: the weight
                        ml[g * ns + c, t, r, 0] /= s
        if ns > 1:
            _values_par(n, vt, vc, vs, sink_v, tb, p0, lo, nk, window, ns, G,
                        thr, scores, ml, rows, rows2, acc, skips)
        else:
            for it in range(n):
                _values(it, vt, vc, vs, sink_v, tb, p0, lo, nk, window, ns, G,
                        thr, scores, ml, rows, rows2, acc, skips)
        for it in range(n):
            skipped += skips[it]
        for t in range(tb):
            for h in range(H):
                g, r = h // G, h % G
                o = out[b0 + t, h]
                o[:] = acc[g * ns, t, r]
                for c in range(1, ns):
                    src = acc[g * ns + c, t, r]
                    for i in range(d):
                        o[i] += src[i]
                if vt[0] == TURBO:
                    unrotate(o, vsigns, vinv)
    return skipped
