"""Encode rows into a KV format, straight into the cache's arrays (twin: Format.encode_rows).

Compiled without fastmath: every float32 operation of nexvk.quant.formats is done in the
same order (the 64-lane sum of squares, the butterflies, the divisions), so codes and
fp16 scales are bit-identical to numpy's.
"""
import numpy as np
from numba import njit

from nexvk.cpu import half
from nexvk.cpu.formats import F16, Q4_0, Q8_0, TURBO
from nexvk.cpu.rotate import rotate
from nexvk.quant.formats import LANES


def ref(fmt, x):
    """The numpy twin: (codes (n, words) uint32, scales (n, n_scales) float16)."""
    return fmt.encode_rows(x)


def encode(kind, x, codes, scales, slot0, work):
    """Encode x (T, HKV, d) float32: row t goes to slot (slot0 + t) % len(codes) of codes
    (slots, HKV, words) uint32 and scales (slots, HKV, n_scales) viewed as uint16.
    work: float32 scratch of at least LANES + d values."""
    _encode(kind.fid, kind.bits, kind.centroids, kind.thresholds, kind.signs,
            kind.inv_sqrt_d, x, codes, scales, slot0, work)


@njit(cache=True)
def _sum_squares(x, part):
    """sum(x*x) in float32 in nexvk.quant.formats.sum_squares's order."""
    for t in range(LANES):
        part[t] = np.float32(0)
    for k in range(0, x.size, LANES):
        for t in range(min(LANES, x.size - k)):
            part[t] += x[k + t] * x[k + t]
    s = LANES // 2
    while s:
        for t in range(s):
            part[t] += part[t + s]
        s //= 2
    return part[0]


@njit(cache=True)
def _turbo(x, bits, cent, thr, signs, inv_sqrt_d, words, work):
    d = x.size
    part, y = work[:LANES], work[LANES:LANES + d]
    gamma = np.sqrt(_sum_squares(x, part))
    y[:] = x
    rotate(y, signs, inv_sqrt_d)
    inv = np.float32(1) / gamma if gamma > 0 else np.float32(0)
    words[:] = 0
    n_thr = (1 << bits) - 1
    for i in range(d):
        v = y[i] * inv
        c = 0
        while c < n_thr and thr[c] <= v:   # searchsorted(thr, v, side="right")
            c += 1
        y[i] = cent[c]
        bit = bits * i
        w, sh = bit >> 5, bit & 31
        words[w] |= np.uint32(c) << np.uint32(sh)
        if sh + bits > 32:
            words[w + 1] |= np.uint32(c) >> np.uint32(32 - sh)
    cn = np.sqrt(_sum_squares(y, part))
    return half.from_f32(gamma / cn if cn > 0 else np.float32(0))


@njit(cache=True)
def _q8_0(x, words, scales):
    words[:] = 0
    for b in range(x.size // 32):
        amax = np.float32(0)
        for i in range(32 * b, 32 * b + 32):
            amax = max(amax, abs(x[i]))
        dd = amax / np.float32(127)
        inv = np.float32(1) / dd if dd > 0 else np.float32(0)
        for i in range(32 * b, 32 * b + 32):
            v = x[i] * inv
            q = np.int64(np.trunc(v + np.float32(np.copysign(np.float32(0.5), v))))
            words[i >> 2] |= np.uint32(q & 0xFF) << np.uint32(8 * (i & 3))
        scales[b] = half.from_f32(dd)


@njit(cache=True)
def _q4_0(x, words, scales):
    words[:] = 0
    for b in range(x.size // 32):
        mx = x[32 * b]
        for i in range(32 * b + 1, 32 * b + 32):
            if abs(x[i]) > abs(mx):       # the first of equal magnitudes, as argmax
                mx = x[i]
        dd = mx / np.float32(-8)
        inv = np.float32(1) / dd if dd != 0 else np.float32(0)
        for i in range(32 * b, 32 * b + 32):
            q = min(15, np.int64(np.trunc(x[i] * inv + np.float32(8.5))))
            words[i >> 3] |= np.uint32(q) << np.uint32(4 * (i & 7))
        scales[b] = half.from_f32(dd)


@njit(cache=True)
def _f16(x, words):
    for w in range(words.size):
        words[w] = np.uint32(half.from_f32(x[2 * w])) | \
            (np.uint32(half.from_f32(x[2 * w + 1])) << np.uint32(16))


@njit(cache=True)
def _encode(fid, bits, cent, thr, signs, inv_sqrt_d, x, codes, scales, slot0, work):
    T, hkv = x.shape[0], x.shape[1]
    slot = slot0 % codes.shape[0]
    for t in range(T):
        for g in range(hkv):
            row, words = x[t, g], codes[slot, g]
            if fid == TURBO:
                scales[slot, g, 0] = _turbo(row, bits, cent, thr, signs, inv_sqrt_d, words, work)
            elif fid == Q8_0:
                _q8_0(row, words, scales[slot, g])
            elif fid == Q4_0:
                _q4_0(row, words, scales[slot, g])
            elif fid == F16:
                _f16(row, words)
        slot += 1
        if slot == codes.shape[0]:
            slot = 0


def append_one(kk, vk, k, v, q, mean, scale, limits, kcodes, kscales, vcodes, vscales, slot,
               xt, work):
    """One decode token's K and V rows (1, HKV, d) float32 into slot `slot`, keys through the
    key transform (k - mean) * scale (float32 tables; empty: none), as KVCache.append does it;
    q, the same position's queries, only checked. limits: (k mult, k lim, v mult, v lim):
    a row set passes when max|x| * mult <= lim (each format's fp16 range test, or its
    sufficient condition). True when written; False, with nothing written, when any value is
    non-finite or a limit is not met: the caller's checked path then says what is wrong."""
    return _append_one(kk.fid, kk.bits, kk.centroids, kk.thresholds, kk.signs, kk.inv_sqrt_d,
                       vk.fid, vk.bits, vk.centroids, vk.thresholds, vk.signs, vk.inv_sqrt_d,
                       k, v, q, mean, scale, limits, kcodes, kscales, vcodes, vscales, slot,
                       xt, work)


@njit(cache=True)
def _fits(x, mult, lim):
    """x (flat) holds only finite values and max |x| * mult <= lim."""
    m = np.float32(0)
    for i in range(x.size):
        a = abs(x[i])
        if not a <= np.float32(3.4028235e38):   # NaN or Inf
            return False
        m = max(m, a)
    return np.float64(m) * mult <= lim


@njit(cache=True)
def _append_one(kfid, kbits, kcent, kthr, ksigns, kinv, vfid, vbits, vcent, vthr, vsigns,
                vinv, k, v, q, mean, scale, limits, kcodes, kscales, vcodes, vscales, slot,
                xt, work):
    flat = xt.reshape(-1)
    kf, mf, sf = k.reshape(-1), mean.reshape(-1), scale.reshape(-1)
    if mf.size:
        for i in range(flat.size):
            flat[i] = (kf[i] - mf[i]) * sf[i]
    else:
        flat[:] = kf
    # a non-finite key makes its transformed row non-finite (finite tables): one test each
    if not (_fits(q.reshape(-1), 0.0, 0.0) and _fits(flat, limits[0], limits[1])
            and _fits(v.reshape(-1), limits[2], limits[3])):
        return False
    _encode(kfid, kbits, kcent, kthr, ksigns, kinv, xt, kcodes, kscales, slot, work)
    _encode(vfid, vbits, vcent, vthr, vsigns, vinv, v, vcodes, vscales, slot, work)
    return True
