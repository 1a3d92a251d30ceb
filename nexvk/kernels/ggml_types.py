"""GGML weight types as the device reads them: one row per type, like ggml's type traits.

A (rows, cols) weight is read in 32-value *units* (a K-quant 256-block is 8 units). On the
device every type is three word streams, each row-major, one after the other in the buffer:
  q  (rows, U, qw)  the low bits (or bytes, or halves, or floats) of each unit, in value order
  h  (rows, U, hw)  the high bits of 5/6-bit types, in value order
  s  (rows, G, sw)  the scales of each group of `group` units (G = ceil(U / group))
`repack` is a lossless rearrangement of the GGUF block bytes into these streams (bits are
moved, never re-rounded) and `unpack` is its exact inverse; shaders/include/weights_funcs.glsl
reads the same streams. 32-bit words throughout: Kompute enables no 8/16-bit storage.
Device bytes equal the file's bytes except Q6_K (its fp16 d gets a word of its own: +0.95%)
and an odd unit count per row for the d-pair types (+2 bytes per row).
"""
from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q

UNIT = 32  # values per unit


@dataclass(frozen=True)
class WeightType:
    name: str          # ggml's name in lower case; shader variants are <op>_<name>
    ggml: Q
    qw: int            # q words per unit
    hw: int            # h words per unit
    group: int         # units sharing one scale group
    sw: int            # s words per group
    halves: tuple      # byte offsets of the fp16 scale fields in a block (random_bytes)
    split: object      # (rows, nb, block_bytes) uint8 -> q, h, s uint32 arrays
    join: object       # (q, h, s) -> (rows, nb, block_bytes) uint8

    @property
    def block(self):
        return GGML_QUANT_SIZES[self.ggml][0]

    @property
    def block_bytes(self):
        return GGML_QUANT_SIZES[self.ggml][1]

    def check_cols(self, cols):
        if cols <= 0 or cols % max(self.block, UNIT):
            raise ValueError(f"{self.name}: a row of {cols} values is not a whole number of "
                             f"{max(self.block, UNIT)}-value blocks")

    def streams(self, rows, cols):
        """Word offsets (h, s) of the h and s streams and the total words of `rows` rows."""
        self.check_cols(cols)
        u = cols // UNIT
        g = -(-u // self.group)
        h = rows * u * self.qw
        s = h + rows * u * self.hw
        return h, s, s + rows * g * self.sw

    def words(self, rows, cols):
        return self.streams(rows, cols)[2]

    def file_bytes(self, rows, cols):
        self.check_cols(cols)
        return rows * cols // self.block * self.block_bytes


# ---- bit shuffling helpers (all exact) ------------------------------------------------------
_U32 = np.uint32


def _pack(v, bits):
    """(..., n) small ints -> (..., n*bits/32) words, value i at bit (i % per) * bits."""
    per = 32 // bits
    v = v.astype(_U32).reshape(*v.shape[:-1], -1, per)
    return (v << (bits * np.arange(per, dtype=_U32))).sum(-1, dtype=_U32)


def _unpack(w, bits):
    per = 32 // bits
    v = (w[..., None] >> (bits * np.arange(per, dtype=_U32))) & _U32((1 << bits) - 1)
    return v.reshape(*w.shape[:-1], -1).astype(np.uint8)


def _words(b):
    """(..., 4n) uint8 -> (..., n) little-endian words."""
    return np.ascontiguousarray(b).view("<u4").astype(_U32)


def _bytes(w):
    return np.ascontiguousarray(w.astype("<u4")).view(np.uint8)


def _nib32(qs):
    """16 bytes of a 32-block: values 0..15 are low nibbles, 16..31 high nibbles."""
    return np.concatenate([qs & 15, qs >> 4], axis=-1)


def _qs32(nib):
    return (nib[..., :16] | (nib[..., 16:] << 4)).astype(np.uint8)


def _pairs(d):
    """(rows, U) fp16 bit patterns -> (rows, ceil(U/2), 1) words, two per word."""
    if d.shape[1] % 2:
        d = np.concatenate([d, np.zeros((d.shape[0], 1), d.dtype)], axis=1)
    return np.ascontiguousarray(d.astype("<u2")).view("<u4").astype(_U32)[..., None]


def _unpairs(s, n):
    return np.ascontiguousarray(s.reshape(s.shape[0], -1).astype("<u4")).view("<u2")[:, :n]


# ---- per-type split / join ------------------------------------------------------------------
def _split_f(bpv):
    def split(b):
        r = b.shape[0]
        w = _words(b.reshape(r, -1))
        return w.reshape(r, -1, UNIT * bpv // 4), np.zeros((r, 0), _U32), np.zeros((r, 0), _U32)

    def join(q, h, s):
        return _bytes(q).reshape(q.shape[0], -1, bpv)
    return split, join


def _split_d_pairs(d_at, qs_at, qh_at=None):
    """Q8_0 / Q4_0 / Q5_0: one fp16 d per 32-block, stored in pairs."""
    def split(b):
        r, nb, _ = b.shape
        d = np.ascontiguousarray(b[..., d_at:d_at + 2]).view("<u2")[..., 0]
        if qs_at[1] - qs_at[0] == 32:                      # q8_0: bytes as they are
            q = _words(b[..., qs_at[0]:qs_at[1]])
        else:
            q = _pack(_nib32(b[..., qs_at[0]:qs_at[1]]), 4)
        h = _words(b[..., qh_at:qh_at + 4]) if qh_at is not None else np.zeros((r, nb, 0), _U32)
        return q, h, _pairs(d)

    def join(q, h, s):
        r, nb = q.shape[:2]
        size = 2 + (4 if qh_at is not None else 0) + (32 if q.shape[2] == 8 else 16)
        b = np.zeros((r, nb, size), np.uint8)
        b[..., d_at:d_at + 2] = _unpairs(s, nb)[..., None].view(np.uint8)
        if q.shape[2] == 8:
            b[..., qs_at[0]:qs_at[1]] = _bytes(q).reshape(r, nb, 32)
        else:
            b[..., qs_at[0]:qs_at[1]] = _qs32(_unpack(q, 4))
        if qh_at is not None:
            b[..., qh_at:qh_at + 4] = _bytes(h).reshape(r, nb, 4)
        return b
    return split, join


def _split_dm(qh):
    """Q4_1 / Q5_1: fp16 d and m in the first word of each 32-block (one group per unit)."""
    qs_at = 8 if qh else 4

    def split(b):
        r, nb, _ = b.shape
        h = _words(b[..., 4:8]) if qh else np.zeros((r, nb, 0), _U32)
        return _pack(_nib32(b[..., qs_at:qs_at + 16]), 4), h, _words(b[..., :4])

    def join(q, h, s):
        r, nb = q.shape[:2]
        b = np.zeros((r, nb, qs_at + 16), np.uint8)
        b[..., :4] = _bytes(s).reshape(r, nb, 4)
        if qh:
            b[..., 4:8] = _bytes(h).reshape(r, nb, 4)
        b[..., qs_at:] = _qs32(_unpack(q, 4))
        return b
    return split, join


def _k_nibbles(qs):
    """Q4_K/Q5_K qs (r, nb, 128): unit 2j is the low nibbles of bytes 32j.., 2j+1 the high."""
    r, nb = qs.shape[:2]
    qs = qs.reshape(r, nb, 4, 1, 32)
    return np.concatenate([qs & 15, qs >> 4], axis=3).reshape(r, nb * 8, 32)


def _k_qs(nib, nb):
    n = nib.reshape(nib.shape[0], nb, 4, 2, 32)
    return (n[:, :, :, 0] | (n[:, :, :, 1] << 4)).reshape(nib.shape[0], nb, 128).astype(np.uint8)


def _split_k(high):
    """Q4_K / Q5_K: d, dmin and 12 bytes of 6-bit scales/mins (the s group of 8 units), then
    for Q5_K 32 bytes whose bit u is the high bit of unit u, then the nibbles."""
    qs_at = 48 if high else 16

    def split(b):
        r, nb, _ = b.shape
        q = _pack(_k_nibbles(b[..., qs_at:qs_at + 128]), 4)
        if high:
            bits = (b[..., None, 16:48] >> np.arange(8, dtype=np.uint8)[:, None]) & 1  # (r,nb,8,32)
            h = _pack(bits.reshape(r, nb * 8, 32), 1)
        else:
            h = np.zeros((r, nb * 8, 0), _U32)
        return q, h, _words(b[..., :16])

    def join(q, h, s):
        r, u = q.shape[:2]
        nb = u // 8
        b = np.zeros((r, nb, qs_at + 128), np.uint8)
        b[..., :16] = _bytes(s).reshape(r, nb, 16)
        if high:
            bits = _unpack(h, 1).reshape(r, nb, 8, 32).astype(np.uint8)
            b[..., 16:48] = (bits << np.arange(8, dtype=np.uint8)[:, None]).sum(2, dtype=np.uint8)
        b[..., qs_at:] = _k_qs(_unpack(q, 4), nb)
        return b
    return split, join


def _q6k_split(b):
    """Q6_K: value 128n + 32g + l has its low nibble in ql[64n + 32(g&1) + l] >> 4(g>>1), its
    high 2 bits in qh[32n + l] >> 2g, scale sc[2u + l//16] (u = 4n + g), then fp16 d."""
    r, nb, _ = b.shape
    ql = b[..., :128].reshape(r, nb, 2, 1, 2, 32)
    nib = np.concatenate([ql & 15, ql >> 4], axis=3).reshape(r, nb * 8, 32)
    qh = b[..., 128:192].reshape(r, nb, 2, 1, 32)
    h2 = (qh >> (2 * np.arange(4, dtype=np.uint8))[:, None]) & 3            # (r,nb,2,4,32)
    d = np.concatenate([b[..., 208:210], np.zeros((r, nb, 2), np.uint8)], -1)
    s = np.concatenate([_words(b[..., 192:208]), _words(d)], -1)          # (r, nb, 5)
    return _pack(nib, 4), _pack(h2.reshape(r, nb * 8, 32), 2), s


def _q6k_join(q, h, s):
    r, u = q.shape[:2]
    nb = u // 8
    b = np.zeros((r, nb, 210), np.uint8)
    nib = _unpack(q, 4).reshape(r, nb, 2, 2, 2, 32)                         # n, g>>1, g&1, l
    b[..., :128] = (nib[:, :, :, 0] | (nib[:, :, :, 1] << 4)).reshape(r, nb, 128)
    h2 = _unpack(h, 2).reshape(r, nb, 2, 4, 32)
    b[..., 128:192] = (h2 << (2 * np.arange(4, dtype=np.uint8))[:, None]).sum(3, dtype=np.uint8) \
        .reshape(r, nb, 64)
    sb = _bytes(s).reshape(r, nb, 20)
    b[..., 192:210] = sb[..., :18]
    return b


def _row(name, ggml, qw, hw, group, sw, halves, fns):
    return WeightType(name, ggml, qw, hw, group, sw, halves, *fns)


TYPES = {t.name: t for t in [
    #    name    ggml   qw  hw group sw  fp16 fields
    _row("f32", Q.F32, 32, 0, 1, 0, (), _split_f(4)),
    _row("f16", Q.F16, 16, 0, 1, 0, (), _split_f(2)),
    _row("q8_0", Q.Q8_0, 8, 0, 2, 1, (0,), _split_d_pairs(0, (2, 34))),
    _row("q4_0", Q.Q4_0, 4, 0, 2, 1, (0,), _split_d_pairs(0, (2, 18))),
    _row("q4_1", Q.Q4_1, 4, 0, 1, 1, (0, 2), _split_dm(False)),
    _row("q5_0", Q.Q5_0, 4, 1, 2, 1, (0,), _split_d_pairs(0, (6, 22), qh_at=2)),
    _row("q5_1", Q.Q5_1, 4, 1, 1, 1, (0, 2), _split_dm(True)),
    _row("q4_k", Q.Q4_K, 4, 0, 8, 4, (0, 2), _split_k(False)),
    _row("q5_k", Q.Q5_K, 4, 1, 8, 4, (0, 2), _split_k(True)),
    _row("q6_k", Q.Q6_K, 4, 2, 8, 5, (208,), (_q6k_split, _q6k_join)),
]}
BY_GGML = {t.ggml: t for t in TYPES.values()}


def get(kind):
    """A WeightType from itself, its name ('q4_k'), a GGMLQuantizationType or its value."""
    if isinstance(kind, WeightType):
        return kind
    if isinstance(kind, str):
        t, name = TYPES.get(kind.lower()), kind
    else:
        g = Q._value2member_map_.get(int(kind))
        t, name = BY_GGML.get(g), (g.name if g is not None else f"#{int(kind)}")
    if t is None:
        raise ValueError(f"weight type {name} is not read by the device kernels "
                         f"(supported: {', '.join(TYPES)})")
    return t


def _blocks(wt, raw, rows, cols):
    raw = np.asarray(raw, np.uint8)
    want = wt.file_bytes(rows, cols)
    if raw.size != want:
        raise ValueError(f"{wt.name} ({rows}, {cols}) is {want} bytes in a GGUF, got {raw.size}")
    return raw.reshape(rows, cols // wt.block, wt.block_bytes)


def count_nonfinite(kind, raw):
    """How many NaN/Inf a tensor's raw GGUF bytes hold: among the values of f32 and f16, among
    the fp16 scale fields of the quantized types (their other fields are bounded integers, so
    these decide whether any value is finite). A check on the host before upload."""
    wt = get(kind)
    raw = np.ascontiguousarray(raw, np.uint8).reshape(-1)
    if not wt.halves:
        v = raw.view("<f4" if wt.name == "f32" else "<f2")
        return v.size - int(np.count_nonzero(np.isfinite(v)))
    b = raw.reshape(-1, wt.block_bytes)
    # an fp16 is NaN or Inf when its 5 exponent bits (0x7C of the high byte) are all set
    return sum(int(np.count_nonzero((b[:, o + 1] & 0x7C) == 0x7C)) for o in wt.halves)


def split(kind, raw, rows, cols):
    """Raw GGUF bytes of a (rows, cols) tensor -> its q, h and s streams (flat uint32)."""
    wt = get(kind)
    return tuple(a.reshape(-1).astype(_U32) for a in wt.split(_blocks(wt, raw, rows, cols)))


def repack(kind, raw, rows, cols):
    """Raw GGUF bytes of a (rows, cols) tensor -> the device's uint32 words (q, h, s streams)."""
    return np.concatenate(split(kind, raw, rows, cols))


def unpack(kind, words, rows, cols):
    """The exact inverse of repack: device words -> raw GGUF bytes (rows, row_bytes) uint8."""
    wt = get(kind)
    hoff, soff, total = wt.streams(rows, cols)
    words = np.asarray(words, _U32)
    if words.size != total:
        raise ValueError(f"{wt.name} ({rows}, {cols}) is {total} device words, got {words.size}")
    u = cols // UNIT
    q = words[:hoff].reshape(rows, u, wt.qw)
    h = words[hoff:soff].reshape(rows, u, wt.hw)
    s = words[soff:].reshape(rows, -1, wt.sw) if wt.sw else words[soff:].reshape(rows, 0, 0)
    return wt.join(q, h, s).reshape(rows, -1)


def dequantize(kind, raw, rows, cols):
    """float32 (rows, cols) through gguf's dequantizers: the specification of every format."""
    from gguf.quants import dequantize as gguf_dequantize
    wt = get(kind)
    return gguf_dequantize(_blocks(wt, raw, rows, cols).reshape(rows, -1), wt.ggml) \
        .reshape(rows, cols).astype(np.float32)


def random_bytes(kind, rows, cols, seed=0):
    """Valid GGUF bytes of a random (rows, cols) tensor: random quants and finite fp16 scales
    of a size that keeps values O(1..10) (test data for every type, also for `nexvk validate`)."""
    wt = get(kind)
    rng = np.random.default_rng(seed)
    if wt.name in ("f32", "f16"):
        return rng.standard_normal(rows * cols).astype("<f4" if wt.name == "f32" else "<f2").view(np.uint8)
    nb = rows * cols // wt.block
    b = rng.integers(0, 256, (nb, wt.block_bytes), dtype=np.uint8)
    for off in wt.halves:
        b[:, off:off + 2] = (rng.uniform(-1, 1, (nb, 1)) * 0.05).astype("<f2").view(np.uint8)
    return b.reshape(-1)
