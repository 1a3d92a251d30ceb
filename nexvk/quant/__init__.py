"""The KV codec in numpy: `Codec(name, head_dim, seed)` -> encode/decode.

numpy is the specification (formats.py); the vulkan codec (nexvk.kernels.codec.VulkanCodec,
a subclass) runs the same math in shaders/quantize.comp and shaders/dequantize.comp and must
agree with it. `nexvk.codec(..., backend=)` picks one. This package imports nothing from the
device or kernel layers.
"""
from dataclasses import dataclass

import numpy as np

from nexvk.quant.formats import HEAD_DIMS, REGISTRY, check_vectors, make

FORMATS = tuple(REGISTRY)


def bits_per_value(name, head_dim):
    """Real storage cost of a format in bits per value, norms and scales included."""
    return make(name, head_dim).bits_per_value


@dataclass
class Encoded:
    """Encoded vectors: `codes` (n, words) uint32 and `scales` (n, n_scales) float16, for n
    vectors of the original `shape` (..., head_dim)."""
    format: str
    shape: tuple
    codes: np.ndarray
    scales: np.ndarray

    @property
    def nbytes(self):
        return self.codes.nbytes + self.scales.nbytes


class Codec:
    """One format at one head_dim. encode(x) -> Encoded; decode(Encoded) -> float32."""

    backend = "numpy"

    def __init__(self, name, head_dim, seed=0):
        self.format = make(name, head_dim, seed)
        self.name, self.head_dim, self.seed = name, self.format.head_dim, seed

    @property
    def bits_per_value(self):
        return self.format.bits_per_value

    def encode(self, x):
        flat = self.format.storable(x)
        codes, scales = self._encode_rows(flat)
        return Encoded(self.name, tuple(x.shape), codes, scales)

    def decode(self, enc):
        if not isinstance(enc, Encoded):
            raise ValueError(f"decode takes an Encoded from encode(), got {type(enc).__name__}")
        if enc.format != self.name or enc.shape[-1] != self.head_dim:
            raise ValueError(f"this codec is {self.name} at head_dim {self.head_dim}; the data is "
                             f"{enc.format} with shape {enc.shape}")
        # codes of another width were decoded silently on the device (broadcast into its rows)
        n, f = int(np.prod(enc.shape[:-1], dtype=np.int64)), self.format
        for what, a, dtype, width in (("codes", enc.codes, np.uint32, f.words),
                                      ("scales", enc.scales, np.float16, f.n_scales)):
            if not isinstance(a, np.ndarray) or a.dtype != dtype or a.shape != (n, width):
                got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
                raise ValueError(f"{what} of {n} {self.name} vectors at head_dim {self.head_dim} "
                                 f"must be {np.dtype(dtype).name} ({n}, {width}), got {got}")
        return self._decode_rows(enc.codes, enc.scales).reshape(enc.shape)

    def _encode_rows(self, flat):
        return self.format.encode_rows(flat)

    def _decode_rows(self, codes, scales):
        return self.format.decode_rows(codes, scales)

    def __repr__(self):
        return f"Codec({self.name!r}, head_dim={self.head_dim}, backend={self.backend!r})"


__all__ = ["FORMATS", "HEAD_DIMS", "Codec", "Encoded", "bits_per_value", "check_vectors"]
