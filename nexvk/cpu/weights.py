"""A GGML weight as the cpu kernels read it: the GGUF blocks rearranged so that the long
loops run over rows.

Every supported type is, per sub-block of BL values of a row (BL = 32; 16 for Q6_K, whose
scales cover 16 values), small integers q with one scale d and one offset m: w = d * q + m
(Q4_0: q - 8 folded into m = -8 d; Q4_K: d = d_super * sc, m = -dmin * min; Q6_K: signed
q - 32 and m = 0; F16/F32: the floats with d = 1, m = 0). Rows are grouped in chunks of R:
  q (C, S, L, R)  chunk, sub-block, value, row-in-chunk: 4-bit types keep two values per
                  byte (value i low, value i + BL/2 high; L = BL/2), 5/6/8-bit types one int8
                  (L = BL), float types float32 -- the loop over R rows is unit stride
  d, m (C, S, R)  float32
so a kernel reads each weight byte once, in order, and its inner loop runs over R rows
(cpu-kernels.md: per-block 32-long loops stay scalar, this one vectorizes). Rows past the
last chunk's end are zero. The rearrangement is lossless: `dequantize` gives gguf's values
(4/5/8-bit and Q6_K exactly; K-quant offsets as float32 products, as ggml computes them).
Bytes held: the file's for 4-bit types plus float32 scales (Q4_1: 0.75 B/value vs 0.625),
one byte per value for 5/6/8-bit ones, four for F16/F32.
"""
import numpy as np

from nexvk.kernels import ggml_types
from nexvk.kernels.ggml_types import _unpack, _unpairs

R = 64              # rows per chunk
CHUNK_BYTES = 8 << 20  # raw bytes rearranged at a time while loading


def _f16(a):
    return np.ascontiguousarray(a).view("<f2").astype(np.float32)


def _k_scales(sb):
    """Q4_K/Q5_K 12 scale bytes (..., 12) -> 6-bit scales and mins (..., 8) each."""
    sb = sb.astype(np.uint8)
    lo, mid, hi = sb[..., 0:4], sb[..., 4:8], sb[..., 8:12]
    sc = np.concatenate([lo & 63, (hi & 15) | ((lo >> 6) << 4)], -1)
    mn = np.concatenate([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], -1)
    return sc.astype(np.float32), mn.astype(np.float32)


def decompose(wt, blocks):
    """GGUF blocks (rows, nb, block_bytes) of type wt -> (q (rows, S, BL), d, m (rows, S)):
    w = d * q + m per sub-block, q uint8 (< 16 for 4-bit types), int8 or float32."""
    q, h, s = wt.split(blocks)
    r, U = q.shape[:2]
    n = wt.name
    if n == "f32":
        one = np.ones((r, U), np.float32)
        return np.ascontiguousarray(q).view("<f4").astype(np.float32), one, 0 * one
    if n == "f16":
        one = np.ones((r, U), np.float32)
        return _f16(q.astype("<u4")).reshape(r, U, 32), one, 0 * one
    if n == "q8_0":
        vals = np.ascontiguousarray(q.astype("<u4")).view(np.int8).reshape(r, U, 32)
    else:
        vals = _unpack(q, 4)
        if wt.hw:                                   # high bits: hw words = hw bits a value
            vals = vals | (_unpack(h, wt.hw) << 4)
    sb = np.ascontiguousarray(s.astype("<u4")).view(np.uint8).reshape(r, s.shape[1], -1)
    if n in ("q8_0", "q4_0", "q5_0"):
        d = _f16(_unpairs(s, U))
        return vals, d, d * {"q8_0": 0, "q4_0": -8, "q5_0": -16}[n]
    if n in ("q4_1", "q5_1"):
        dm = _f16(sb[..., :4]).reshape(r, U, 2)
        return vals, dm[..., 0], dm[..., 1]
    if n in ("q4_k", "q5_k"):
        dd = _f16(sb[..., :4]).reshape(r, -1, 2)                      # d, dmin per 256
        sc, mn = _k_scales(sb[..., 4:16])
        return vals, (dd[..., :1] * sc).reshape(r, U), (-(dd[..., 1:] * mn)).reshape(r, U)
    # q6_k: 16 int8 scales per 256 (one per 16 values), then fp16 d
    d = (_f16(sb[..., 16:18]) * sb[..., :16].view(np.int8)).reshape(r, 2 * U)
    vals = (vals.astype(np.int16) - 32).astype(np.int8).reshape(r, 2 * U, 16)
    return vals, d, np.zeros_like(d)


class CpuWeight:
    """(rows, cols) of GGML type `wtype` in the chunked layout above (q, d, m)."""

    def __init__(self, wtype, rows, cols, q, d, m, bl):
        self.wtype, self.rows, self.cols = ggml_types.get(wtype), rows, cols
        self.q, self.d, self.m, self.bl = q, d, m, bl
        self.nib = q.dtype == np.uint8          # two 4-bit values per byte

    @property
    def nbytes(self):
        return self.q.nbytes + self.d.nbytes + self.m.nbytes

    def __repr__(self):
        return (f"CpuWeight({self.wtype.name}, {self.rows} x {self.cols}, "
                f"{self.nbytes / 2**20:.1f} MiB)")

    @staticmethod
    def layout(kind, rows, cols):
        """(q shape, q dtype, d and m shape, BL) of a (rows, cols) weight of this type."""
        wt = ggml_types.get(kind)
        wt.check_cols(cols)
        bl = 16 if wt.name == "q6_k" else 32
        S, C = cols // bl, -(-rows // R)
        if wt.name in ("q4_0", "q4_1", "q4_k"):
            return (C, S, bl // 2, R), np.uint8, (C, S, R), bl
        return (C, S, bl, R), np.float32 if wt.name in ("f32", "f16") else np.int8, (C, S, R), bl

    @staticmethod
    def held_bytes(kind, rows, cols):
        """Bytes a (rows, cols) weight of this type takes in this layout (nexvk plan)."""
        qs, dt, ds, _ = CpuWeight.layout(kind, rows, cols)
        return int(np.prod(qs)) * np.dtype(dt).itemsize + 2 * 4 * int(np.prod(ds))

    @classmethod
    def empty(cls, kind, rows, cols):
        qs, dt, ds, bl = cls.layout(kind, rows, cols)
        return cls(kind, rows, cols, np.zeros(qs, dt), np.zeros(ds, np.float32),
                   np.zeros(ds, np.float32), bl)

    def fill(self, r0, raw):
        """Rows r0.. from their raw GGUF bytes; r0 a multiple of R."""
        wt = self.wtype
        n = raw.size // wt.file_bytes(1, self.cols)
        vals, d, m = decompose(wt, ggml_types._blocks(wt, raw, n, self.cols))
        if self.nib:
            half = self.bl // 2
            vals = vals[..., :half] | (vals[..., half:] << 4)
        pad = -n % R
        if pad:
            vals, d, m = (np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)])
                          for a in (vals, d, m))
        c0, C = r0 // R, (n + pad) // R
        S = d.shape[1]
        self.q[c0:c0 + C] = vals.reshape(C, R, S, -1).transpose(0, 2, 3, 1)
        self.d[c0:c0 + C] = d.reshape(C, R, S).transpose(0, 2, 1)
        self.m[c0:c0 + C] = m.reshape(C, R, S).transpose(0, 2, 1)

    @classmethod
    def from_bytes(cls, kind, raw, rows, cols):
        """From the raw GGUF bytes of the whole tensor."""
        return cls.load(kind, rows, cols, ggml_types.bytes_reader(kind, raw, rows, cols, "weight"))

    @classmethod
    def load(cls, kind, rows, cols, read_rows):
        """Rearranged from `read_rows(r0, r1)` -> raw bytes of rows r0..r1-1, a few MiB at a
        time (loading never holds the whole tensor twice)."""
        w = cls.empty(kind, rows, cols)
        step = max(R, CHUNK_BYTES // w.wtype.file_bytes(1, cols) // R * R)
        for a in range(0, rows, step):
            b = min(rows, a + step)
            w.fill(a, np.asarray(read_rows(a, b), np.uint8))
        return w

    def dequantize(self):
        """float32 (rows, cols): the values the kernels compute with."""
        q = self.q
        if self.nib:
            q = np.concatenate([q & 15, q >> 4], axis=2)
        w = q.astype(np.float32) * self.d[:, :, None] + self.m[:, :, None]   # (C, S, BL, R)
        return w.transpose(0, 3, 1, 2).reshape(-1, self.cols)[:self.rows]


def load_weights(g, a, device=None, progress=False):
    """The model's Weights for the cpu backend (device: unused, as for numpy)."""
    from nexvk.model.weights import Weights
    w = Weights.load(g, a, progress=progress, loader=loader(g))
    w.backend = "cpu"
    return w


def loader(g):
    """loader(ref) for Weights.load: matrices (or a fused tensor's rows) as CpuWeights read
    from the file in chunks, each chunk checked for NaN/Inf before it is kept; vectors (norm
    weights, biases) as float32 (g.tensor checks them)."""
    def load(r):
        t = g.shaped(r.name, r.file_shape)
        if len(r.shape) == 1:
            return np.ascontiguousarray(g.tensor(r.name).reshape(-1), np.float32)
        rows, cols = r.shape
        whole = ggml_types.file_reader(t.tensor_type, g.path, t.data_offset, cols, r.name)

        def read_rows(a, b):  # a fused tensor's part starts row0 whole rows into its bytes
            raw = whole(r.row0 + a, r.row0 + b)
            bad = ggml_types.count_nonfinite(t.tensor_type, raw)
            if bad:
                raise ValueError(f"{r.name}: {bad} non-finite values (NaN or Inf) in the "
                                 f"weights or their fp16 scales (rows {r.row0 + a}.."
                                 f"{r.row0 + b - 1})")
            return raw
        return CpuWeight.load(t.tensor_type, rows, cols, read_rows)
    return load
