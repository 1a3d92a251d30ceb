"""Causal GQA attention read straight from the cache's codes (twin: nexvk.kernels.attention.ref).

The rotated-domain form of the shaders: each query is rotated once into the key format's
compute domain and scored against centroids times norms (q8_0/q4_0: values times block
scales; f16: the halves). Rows are decoded TILE at a time into a small float tile that
stays in L1, never a float copy of the context (turbo rows: 16 codes per vector table
lookup, nexvk.cpu.lut, where the CPU has AVX-512, else two per scalar pair-table copy);
values are accumulated in the value format's compute domain and un-rotated once per query
head. Decoding a tile (_tile), its dots (_dots) and its value sums (_accum) are separate
compiled functions called once per tile, each small: numba increfs and decrefs every array
an inlined function receives, and in a large loop nest (the earlier one-row-at-a-time
kernel, which spent most of its time on those atomic calls: docs/cpu.md) its pruning pass
leaves them in; in functions this size it removes them.

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
TILE = 32  # rows decoded per call of _tile: 8 KiB at d = 64


@dataclass
class Scratch:
    """Working arrays of one store, sized for `block` queries of at most `heads` heads
    over `keys` keys at head_dim d, split into at most `ns` chunks per KV head."""
    qr: np.ndarray       # (block, heads, d) rotated, scaled queries
    scores: np.ndarray   # (block, heads, keys)
    ml: np.ndarray       # (hkv * ns, block, group, 2) per item: max and sum; then its weight factor
    rows: np.ndarray     # (hkv * ns, TILE, d) one tile of decoded key or value rows per item
    mult: np.ndarray     # (hkv * ns, TILE) each tile row's factor (a turbo norm, else 1)
    need: np.ndarray     # (hkv * ns, TILE) uint8: which rows of a value tile to decode
    acc: np.ndarray      # (hkv * ns, block, group, d) partial value sums
    skips: np.ndarray    # (hkv * ns,) int64

    @classmethod
    def make(cls, block, heads, hkv, keys, d, ns):
        n, G = hkv * ns, heads // hkv
        return cls(np.zeros((block, heads, d), np.float32),
                   np.zeros((block, heads, keys), np.float32),
                   np.zeros((n, block, G, 2), np.float32),
                   np.zeros((n, TILE, d), np.float32), np.zeros((n, TILE), np.float32),
                   np.ones((n, TILE), np.uint8), np.zeros((n, block, G, d), np.float32),
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
               scr.qr, scr.scores, scr.ml, scr.rows, scr.mult, scr.need, scr.acc, scr.skips)


def _tables(k):
    """What _tile needs of a Kind: (fid, bits, pair table, centroids, 16-code lookups)."""
    return k.fid, k.bits, k.pairs, k.centroids, k.vec


@njit(cache=True, fastmath=FAST)
def _tile(tables, c8, c16, nslots, hkv, scales, sinks, slot, j, m, g, need, t32, t64,
          mult):
    """Tile row k (t32[k * d:(k + 1) * d], times mult[k]) := the row of KV head g at
    position j + k in its compute domain, for k < m where need[k] (mult[k] = 0 elsewhere);
    slot is position j's. c8, c16: the codes (nslots, hkv, rb bytes) flattened, as bytes
    and as halves; t64: t32 viewed as uint64. Returns position j + m's slot.

    Offsets are unsigned: numba wraps negative indices, and an offset it cannot prove
    non-negative made LLVM gather element by element. (The one inlined helper that takes
    arrays, lut.decode_row, costs no reference counts here: perf shows the same share of
    atomic calls as with its loop written out.)"""
    fid, bits, pairs, cent, vec = tables
    N, d = sinks.shape[0], sinks.shape[2]
    rb = c8.size // (nslots * hkv)
    for k in range(m):
        f = np.float32(0)
        if need[k]:
            f = np.float32(1)
            o = np.uint64(k * d)
            if slot < 0:   # a sink: float16 in the compute domain
                for i in range(d):
                    t32[o + np.uint64(i)] = half.to_f32(sinks[-1 - slot, g, i])
            else:
                base = (slot * hkv + g) * rb
                ub = np.uint64(base)
                if fid == TURBO:
                    f = half.to_f32(scales[slot, g, 0])
                if fid == TURBO and vec:   # 16 codes per table lookup (nexvk.cpu.lut)
                    lut.decode_row(bits, c8, base, rb, cent, t32, k * d, d)
                elif fid == TURBO:   # two codes at a time: one 64-bit copy of two centroids
                    o64 = o // np.uint64(2)
                    if bits == 3:
                        for w in range(d // 8):
                            x = ub + np.uint64(3 * w)
                            v = np.uint32(c8[x]) | \
                                (np.uint32(c8[x + np.uint64(1)]) << np.uint32(8)) | \
                                (np.uint32(c8[x + np.uint64(2)]) << np.uint32(16))
                            for p in range(4):
                                t64[o64 + np.uint64(4 * w + p)] = \
                                    pairs[(v >> np.uint32(6 * p)) & np.uint32(63)]
                    elif bits == 2:
                        for w in range(d // 4):
                            v = c8[ub + np.uint64(w)]
                            t64[o64 + np.uint64(2 * w)] = pairs[v & np.uint8(15)]
                            t64[o64 + np.uint64(2 * w + 1)] = pairs[v >> np.uint8(4)]
                    else:
                        for w in range(d // 2):
                            t64[o64 + np.uint64(w)] = pairs[c8[ub + np.uint64(w)]]
                elif fid == F16:
                    h = ub // np.uint64(2)
                    for i in range(d):
                        t32[o + np.uint64(i)] = half.to_f32(c16[h + np.uint64(i)])
                elif fid == Q8_0:
                    for b in range(d // 32):
                        s = half.to_f32(scales[slot, g, b])
                        for i in range(32 * b, 32 * b + 32):
                            q8 = np.int8(c8[ub + np.uint64(i)])
                            t32[o + np.uint64(i)] = np.float32(q8) * s
                else:  # Q4_0
                    for b in range(d // 32):
                        s = half.to_f32(scales[slot, g, b])
                        for i in range(16 * b, 16 * b + 16):
                            q4 = np.int32(c8[ub + np.uint64(i)])
                            t32[o + np.uint64(2 * i)] = np.float32((q4 & 15) - 8) * s
                            t32[o + np.uint64(2 * i + 1)] = np.float32((q4 >> 4) - 8) * s
        mult[k] = f
        slot = _next(slot, j + k, N, nslots)
    return slot


@njit(cache=True, fastmath=FAST)
def _dots(qr, tb, p0, window, h0, G, tile, mult, j, m, scores, col):
    """scores[t, h0 + r, col + k] := qr[t, h0 + r] . tile[k] * mult[k] for the keys j + k
    (k < m) that query t sees."""
    d = tile.shape[1]
    for t in range(tb):
        a, b = _seen(t, p0, window, j, j + m)
        k = a - j
        while k + 4 <= b - j:   # four keys per pass over the query row (56 -> 44 us a layer)
            for r in range(G):
                q = qr[t, h0 + r]
                s0, s1, s2, s3 = np.float32(0), np.float32(0), np.float32(0), np.float32(0)
                for i in range(d):
                    x = q[i]
                    s0 += x * tile[k, i]
                    s1 += x * tile[k + 1, i]
                    s2 += x * tile[k + 2, i]
                    s3 += x * tile[k + 3, i]
                out = scores[t, h0 + r]
                out[col + k], out[col + k + 1] = s0 * mult[k], s1 * mult[k + 1]
                out[col + k + 2], out[col + k + 3] = s2 * mult[k + 2], s3 * mult[k + 3]
            k += 4
        for k in range(k, b - j):
            for r in range(G):
                s = np.float32(0)
                for i in range(d):
                    s += qr[t, h0 + r, i] * tile[k, i]
                scores[t, h0 + r, col + k] = s * mult[k]


@njit(cache=True, fastmath=FAST)
def _accum(acc, it, tb, h0, G, tile, mult, m, scores, col):
    """acc[it, t, r] += scores[t, h0 + r, col + k] * mult[k] * tile[k] (k < m, weights != 0).

    Four rows per pass over acc (skipped when all four weights are 0): one load and store of
    acc per four rows instead of per row (a 2048-key SmolLM2 layer's value sums: ~90 -> ~68
    us). A row of a group whose weight is 0 adds 0 x its tile row, which is finite (a row
    that was not decoded holds an earlier, decoded one, or the zeros it started with)."""
    d = tile.shape[1]
    k = 0
    while k + 4 <= m:
        for t in range(tb):
            for r in range(G):
                s = scores[t, h0 + r]
                p0, p1 = s[col + k] * mult[k], s[col + k + 1] * mult[k + 1]
                p2, p3 = s[col + k + 2] * mult[k + 2], s[col + k + 3] * mult[k + 3]
                if p0 != 0 or p1 != 0 or p2 != 0 or p3 != 0:
                    a = acc[it, t, r]
                    for i in range(d):
                        a[i] += (p0 * tile[k, i] + p1 * tile[k + 1, i]) + \
                            (p2 * tile[k + 2, i] + p3 * tile[k + 3, i])
        k += 4
    for k in range(k, m):
        for t in range(tb):
            for r in range(G):
                p = scores[t, h0 + r, col + k] * mult[k]
                if p != 0:
                    for i in range(d):
                        acc[it, t, r, i] += p * tile[k, i]


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
            scores, ml, rows, mult, need):
    """Pass 1 for item it = (KV head g, chunk c): scores, then per query row the chunk's
    max m and sum l of exp(s - m); the scores become exp(s - m), 0 where not seen."""
    g, c = it // ns, it % ns
    j0, j1 = _chunk(lo, nk, ns, c)
    N, nslots = sink_k.shape[0], kc.shape[0]
    need[it] = 1
    if j0 < j1:
        c8, tile, mu, nd = kc.reshape(-1), rows[it], mult[it], need[it]
        c16, t32 = c8.view(np.uint16), tile.reshape(-1)
        t64 = t32.view(np.uint64)
        slot = _slot0(j0, N, nslots)
        for j in range(j0, j1, TILE):
            nt = min(TILE, j1 - j)
            slot = _tile(kt, c8, c16, nslots, kc.shape[1], ks, sink_k, slot, j, nt, g, nd,
                         t32, t64, mu)
            _dots(qr, tb, p0, window, g * G, G, tile, mu, j, nt, scores, j - lo)
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
            scores, ml, rows, mult, need, acc, skips):
    """Pass 2 for item it: weights = scores * the item's factor (ml[it, t, r, 0]), those
    under thr dropped and counted; then the value rows some query row needs."""
    g, c = it // ns, it % ns
    j0, j1 = _chunk(lo, nk, ns, c)
    N, nslots = sink_v.shape[0], vc.shape[0]
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
        c8, tile, mu, nd = vc.reshape(-1), rows[it], mult[it], need[it]
        c16, t32 = c8.view(np.uint16), tile.reshape(-1)
        t64 = t32.view(np.uint64)
        slot = _slot0(j0, N, nslots)
        for j in range(j0, j1, TILE):
            nt = min(TILE, j1 - j)
            for k in range(nt):
                x = False
                for t in range(tb):
                    for r in range(G):
                        x = x or scores[t, g * G + r, j + k - lo] > 0
                nd[k] = x
            slot = _tile(vt, c8, c16, nslots, vc.shape[1], vs, sink_v, slot, j, nt, g, nd,
                         t32, t64, mu)
            _accum(acc, it, tb, g * G, G, tile, mu, nt, scores, j - lo)
    skips[it] = n_skip


@njit(cache=True, parallel=True)
def _scores_par(n, kt, kc, ks, sink_k, qr, tb, p0, lo, nk, window, ns, G,
                scores, ml, rows, mult, need):
    for it in prange(n):
        _scores(it, kt, kc, ks, sink_k, qr, tb, p0, lo, nk, window, ns, G,
                scores, ml, rows, mult, need)


@njit(cache=True, parallel=True)
def _values_par(n, vt, vc, vs, sink_v, tb, p0, lo, nk, window, ns, G, thr,
                scores, ml, rows, mult, need, acc, skips):
    for it in prange(n):
        _values(it, vt, vc, vs, sink_v, tb, p0, lo, nk, window, ns, G, thr,
                scores, ml, rows, mult, need, acc, skips)


@njit(cache=True, fastmath=FAST)
def _attend(kt, ksigns, kinv, kc, ks, sink_k,
            vt, vsigns, vinv, vc, vs, sink_v,
            q, pos0, scale, thr, window, ns, out, qr, scores, ml, rows, mult, need, acc,
            skips):
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
                        ns, G, scores, ml, rows, mult, need)
        else:
            for it in range(n):
                _scores(it, kt, kc, ks, sink_k, qr, tb, p0, lo, nk, window,
                        ns, G, scores, ml, rows, mult, need)
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
                        thr, scores, ml, rows, mult, need, acc, skips)
        else:
            for it in range(n):
                _values(it, vt, vc, vs, sink_v, tb, p0, lo, nk, window, ns, G,
                        thr, scores, ml, rows, mult, need, acc, skips)
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
