"""Every KV format: storage layout, encode and decode, in numpy float32 (the specification).

A vector of head_dim d is stored as `words` uint32 code words plus `n_scales` fp16 scales:

| format | code words                         | fp16 scales                  | bits/value  |
|--------|------------------------------------|------------------------------|-------------|
| f16    | d/2: two halves per word (low first)| none                        | 16          |
| q8_0   | d/4: int8 per byte, little-endian  | d/32: one per block of 32    | 8.5         |
| q4_0   | d/8: 4-bit (q+8) per nibble         | d/32                         | 4.5         |
| turboB | B*d/32: B-bit Lloyd-Max indices    | 1: corrected norm            | B + 16/d    |

q8_0 and q4_0 follow ggml's block-of-32 rules. turboB is TurboQuant's MSE scheme: rotate by
R = H D / sqrt(d), quantize each coordinate with the Lloyd-Max codebook of the exact
post-rotation law, store gamma/||c|| so the decoded vector keeps the original norm.
For attention, a format also exposes its "compute domain": turbo formats score and
accumulate in the rotated domain (rotate the query once, un-rotate the output once).
"""
import numpy as np

from nexvk.quant import hadamard, lloyd_max, pack

HEAD_DIMS = tuple(1 << k for k in range(4, 10))  # 16 .. 512
LANES = 64  # the shaders' workgroup width: sums of squares are reduced in their order


def sum_squares(x):
    """Row sums of x*x in float32, in the exact order of quantize.comp: LANES sequential
    partial sums (lane t adds elements t, t+LANES, ...), then a halving tree. Summing the
    same way makes the fp32 norms, and so the codes and fp16 norms, identical on devices
    with correctly rounded arithmetic."""
    n, d = x.shape
    sq = np.zeros((n, -(-d // LANES) * LANES), np.float32)
    sq[:, :d] = x * x
    part = np.zeros((n, LANES), np.float32)
    for k in range(0, sq.shape[1], LANES):
        part += sq[:, k:k + LANES]
    s = LANES // 2
    while s:
        part[:, :s] += part[:, s:2 * s]
        s //= 2
    return part[:, 0]


def check_vectors(x, head_dim, what="x"):
    """Validate (..., head_dim) float32/float16 finite non-empty input; return float32 (n, d)."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{what} must be a numpy array, got {type(x).__name__}")
    if x.dtype not in (np.float32, np.float16):
        raise ValueError(f"{what} must be float32 or float16, got {x.dtype}")
    if x.ndim < 1 or x.shape[-1] != head_dim:
        raise ValueError(f"{what} must have shape (..., {head_dim}), got {x.shape}")
    if x.size == 0:
        raise ValueError(f"{what} is empty (shape {x.shape})")
    flat = np.ascontiguousarray(x.reshape(-1, head_dim), dtype=np.float32)
    if not np.isfinite(flat).all():
        bad = int((~np.isfinite(flat)).sum())
        raise ValueError(f"{what} contains {bad} non-finite values (NaN or Inf)")
    return flat


class Format:
    name = ""
    rotated = False  # scores/values live in the rotated domain

    def __init__(self, head_dim, seed=0):
        self.head_dim = head_dim
        self.seed = seed

    @property
    def bits_per_value(self):
        return (32 * self.words + 16 * self.n_scales) / self.head_dim

    def bytes_per_vector(self):
        return 4 * self.words + 2 * self.n_scales

    max_abs = np.inf  # largest |value| whose fp16 values/scales stay finite

    def storable(self, x, what="x"):
        """check_vectors, then check_range: x as float32 (n, d) rows this format can store."""
        flat = check_vectors(x, self.head_dim, what)
        self.check_range(flat, what)
        return flat

    def range_bound(self):
        """(mult, limit): rows whose max |value| * mult <= limit can be stored (for turbo
        formats a sufficient condition; check_range then decides the rest)."""
        return 1.0, self.max_abs

    def check_range(self, flat, what="x"):
        """ValueError when a vector cannot be stored without its fp16 parts overflowing."""
        amax = float(np.abs(flat).max())
        if amax > self.max_abs:
            raise ValueError(f"{what} has |values| up to {amax:.4g}; {self.name} stores fp16 "
                             f"values or scales and holds at most {self.max_abs:.6g}")

    # compute-domain hooks used by packed attention; identity unless rotated
    def to_compute(self, x):
        return np.asarray(x, np.float32)

    def from_compute(self, y):
        return np.asarray(y, np.float32)

    def decode_compute(self, codes, scales):
        """Decoded rows in the compute domain, float32 (n, d)."""
        return self.decode_rows(codes, scales)

    def decode_rows(self, codes, scales):
        return self.from_compute(self.decode_compute(codes, scales))

    def __repr__(self):
        return f"{self.name}(head_dim={self.head_dim})"


class F16(Format):
    name = "f16"
    max_abs = 65504.0

    def __init__(self, head_dim, seed=0):
        super().__init__(head_dim, seed)
        self.words, self.n_scales = head_dim // 2, 0

    def encode_rows(self, x):
        codes = np.ascontiguousarray(x.astype(np.float16)).view(np.uint32)
        return codes, np.zeros((len(x), 0), np.float16)

    def decode_compute(self, codes, scales):
        return np.ascontiguousarray(codes).view(np.float16).astype(np.float32)


def _round_half_away(x):
    """roundf() in float32, as the shader computes it: trunc(x + copysign(0.5, x))."""
    return np.trunc(x + np.copysign(np.float32(0.5), x))


class Q8_0(Format):
    name = "q8_0"
    max_abs = 65504.0 * 127

    def __init__(self, head_dim, seed=0):
        super().__init__(head_dim, seed)
        self.words, self.n_scales = head_dim // 4, head_dim // 32

    def encode_rows(self, x):
        b = x.reshape(len(x), -1, 32)                     # (n, d/32, 32)
        d = np.abs(b).max(axis=2, keepdims=True) / np.float32(127)
        with np.errstate(divide="ignore"):
            inv = np.where(d > 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
        q = _round_half_away(b * inv).astype(np.int8)
        codes = np.ascontiguousarray(q.reshape(len(x), -1)).view(np.uint32)
        return codes, d[..., 0].astype(np.float16)

    def decode_compute(self, codes, scales):
        q = np.ascontiguousarray(codes).view(np.int8).astype(np.float32)
        q = q.reshape(len(q), self.head_dim // 32, 32) * scales.astype(np.float32)[..., None]
        return q.reshape(len(q), self.head_dim)


class Q4_0(Format):
    name = "q4_0"
    max_abs = 65504.0 * 8

    def __init__(self, head_dim, seed=0):
        super().__init__(head_dim, seed)
        self.words, self.n_scales = head_dim // 8, head_dim // 32

    def encode_rows(self, x):
        b = x.reshape(len(x), -1, 32)
        idx = np.abs(b).argmax(axis=2)[..., None]
        mx = np.take_along_axis(b, idx, axis=2)           # signed value of largest magnitude
        d = mx / np.float32(-8)
        with np.errstate(divide="ignore"):
            inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
        q = np.minimum(15, np.trunc(b * inv + np.float32(8.5))).astype(np.uint8)
        return pack.pack(q.reshape(len(x), -1), 4), d[..., 0].astype(np.float16)

    def decode_compute(self, codes, scales):
        q = pack.unpack(codes, 4, self.head_dim).astype(np.float32) - 8
        q = q.reshape(len(q), self.head_dim // 32, 32) * scales.astype(np.float32)[..., None]
        return q.reshape(len(q), self.head_dim)


class Turbo(Format):
    bits = 0
    rotated = True

    def __init__(self, head_dim, seed=0):
        super().__init__(head_dim, seed)
        self.words, self.n_scales = pack.words_per_vector(self.bits, head_dim), 1
        self.signs = hadamard.signs(head_dim, seed)
        self.centroids, self.thresholds = lloyd_max.codebook(self.bits, head_dim)
        self._sqrt_d = float(np.sqrt(head_dim))
        self._norm_limit = 65504.0 * self._sqrt_d * float(np.abs(self.centroids).min())

    def range_bound(self):
        return self._sqrt_d, self._norm_limit   # no norm exceeds sqrt(d) max|x|

    def check_range(self, flat, what="x"):
        """The fp16 norm gamma/||c|| must stay finite; ||c|| is at least sqrt(d) times the
        smallest |centroid|, which bounds the vector norms a turbo format accepts."""
        mult, limit = self.range_bound()
        if float(np.abs(flat).max()) * mult <= limit:
            return   # one reduction settles it (decode rows)
        norm = float(np.sqrt(np.einsum("nd,nd->n", flat, flat, dtype=np.float64).max()))
        if norm > limit:
            raise ValueError(f"{what} has vector norms up to {norm:.4g}; {self.name} stores the "
                             f"norm as fp16 and accepts at most {limit:.6g} at head_dim {self.head_dim}")

    def to_compute(self, x):
        return hadamard.rotate(x, self.signs)

    def from_compute(self, y):
        return hadamard.unrotate(y, self.signs)

    def quantize_rotated(self, x):
        """x (n, d) -> (rotated unit vectors y, codes, norms gamma). Exposed for validation."""
        gamma = np.sqrt(sum_squares(x))
        y = hadamard.rotate(x, self.signs)
        with np.errstate(divide="ignore", invalid="ignore"):
            y = y * np.where(gamma > 0, np.float32(1) / gamma, np.float32(0))[:, None]
        codes = np.searchsorted(self.thresholds, y, side="right").astype(np.uint8)
        return y, codes, gamma

    def encode_rows(self, x):
        _, codes, gamma = self.quantize_rotated(x)
        c = self.centroids[codes]
        cn = np.sqrt(sum_squares(c))
        norm = np.where(cn > 0, gamma / cn, 0).astype(np.float16)
        return pack.pack(codes, self.bits), norm[:, None]

    def decode_compute(self, codes, scales):
        c = self.centroids[pack.unpack(codes, self.bits, self.head_dim)]
        return c * scales.astype(np.float32)


def _turbo(bits):
    return type(f"Turbo{bits}", (Turbo,), {"bits": bits, "name": f"turbo{bits}"})


REGISTRY = {cls.name: cls for cls in (F16, Q8_0, Q4_0, _turbo(2), _turbo(3), _turbo(4))}


def make(name, head_dim, seed=0):
    """The Format object for a name; ValueError naming what is supported otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"unknown KV format {name!r}; supported: {', '.join(REGISTRY)}")
    if not isinstance(head_dim, (int, np.integer)) or int(head_dim) not in HEAD_DIMS:
        raise ValueError(f"head_dim {head_dim!r} is not supported; nexvk supports powers of two "
                         f"{HEAD_DIMS[0]}..{HEAD_DIMS[-1]}")
    head_dim = int(head_dim)
    if name in ("q8_0", "q4_0") and head_dim % 32:
        raise ValueError(f"{name} needs head_dim to be a multiple of 32 (blocks of 32); got {head_dim}")
    return REGISTRY[name](head_dim, seed)
